//! Binary operators: arithmetic, comparison (with `bool`), set operators,
//! vector matching with on/ignoring and group_left/group_right.
use std::collections::HashMap;

use promql_parser::parser::{
    BinaryExpr, LabelModifier, VectorMatchCardinality,
    token::{self, TokenId},
};

use super::{
    eval::{Ctx, EvalError, exec_err, merge_same_labels},
    value::{Grid, Series, Value},
};
use crate::series::Labels;

pub(crate) fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

fn changes_schema(op: TokenId) -> bool {
    matches!(
        op,
        token::T_ADD | token::T_SUB | token::T_MUL | token::T_DIV | token::T_POW | token::T_MOD | token::T_ATAN2
    )
}

/// Scalar/element operation: (value, keep).
pub(crate) fn elem(op: TokenId, l: f64, r: f64) -> (f64, bool) {
    match op {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_POW => (go_pow(l, r), true),
        token::T_MOD => (l % r, true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

/// Go's math.Pow special cases (differ from C pow for x = -1 and y = ±Inf).
fn go_pow(x: f64, y: f64) -> f64 {
    if x == -1.0 && y.is_infinite() {
        return 1.0;
    }
    x.powf(y)
}

/// Prometheus's `labels.String()`: `{__name__="x", a="b"}`.
pub(crate) fn prom_labels_string(l: &Labels) -> String {
    let parts: Vec<String> = l.0.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

struct Matching {
    on: bool,
    labels: Vec<String>,
}

impl Matching {
    fn signature(&self, l: &Labels) -> Labels {
        if self.on {
            l.keep(&self.labels)
        } else {
            let mut x = l.drop_names(&self.labels);
            x.del("__name__");
            x
        }
    }
}

pub(crate) fn eval_binary(ctx: &Ctx, b: &BinaryExpr, g: Grid) -> Result<Value, EvalError> {
    let op = b.op.id();
    let ret_bool = b.return_bool();
    let lhs = ctx.eval(&b.lhs, g)?;
    let rhs = ctx.eval(&b.rhs, g)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(
            l.iter()
                .zip(r.iter())
                .map(|(a, c)| {
                    let (v, keep) = elem(op, *a, *c);
                    if is_comparison(op) {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Value::Vector(v), Value::Scalar(s)) => vector_scalar(op, v, &s, false, ret_bool),
        (Value::Scalar(s), Value::Vector(v)) => vector_scalar(op, v, &s, true, ret_bool),
        (Value::Vector(l), Value::Vector(r)) => {
            let (card, matching) = match &b.modifier {
                Some(m) => (m.card.clone(), m.matching.clone()),
                None => (VectorMatchCardinality::OneToOne, None),
            };
            let matching = match matching {
                Some(LabelModifier::Include(ls)) => Matching {
                    on: true,
                    labels: ls.labels.clone(),
                },
                Some(LabelModifier::Exclude(ls)) => Matching {
                    on: false,
                    labels: ls.labels.clone(),
                },
                None => Matching {
                    on: false,
                    labels: vec![],
                },
            };
            match op {
                token::T_LAND | token::T_LOR | token::T_LUNLESS => set_op(ctx, op, l, r, &matching, g),
                _ => vector_vector(ctx, op, l, r, &matching, card, ret_bool, g),
            }
        }
        _ => exec_err("binary operators are only defined on scalars and instant vectors"),
    }
}

fn vector_scalar(op: TokenId, v: Vec<Series>, s: &[f64], swap: bool, ret_bool: bool) -> Result<Value, EvalError> {
    let drop_name = changes_schema(op) || ret_bool;
    let mut out = Vec::with_capacity(v.len());
    for mut ser in v {
        let mut any = false;
        for (i, slot) in ser.vals.iter_mut().enumerate() {
            let Some(x) = *slot else { continue };
            let (l, r) = if swap { (s[i], x) } else { (x, s[i]) };
            let (mut val, mut keep) = elem(op, l, r);
            if is_comparison(op) && swap {
                val = r;
            }
            if ret_bool {
                val = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            if keep {
                *slot = Some(val);
                any = true;
            } else {
                *slot = None;
            }
        }
        if any {
            if drop_name {
                ser.labels = ser.labels.without_name();
            }
            out.push(ser);
        }
    }
    let out = if drop_name { merge_same_labels(out, true)? } else { out };
    Ok(Value::Vector(out))
}

/// Interns label signatures into dense ids.
fn intern(sigs: &mut HashMap<Labels, usize>, l: Labels) -> usize {
    let n = sigs.len();
    *sigs.entry(l).or_insert(n)
}

/// At step `i`, drops the values of `target` whose matching signature has a
/// value in `by` (`if_present`), or has none (`!if_present`). `present` is
/// scratch space indexed by signature.
fn drop_at_step(
    i: usize,
    present: &mut [bool],
    (by, by_sig): (&[Series], &[usize]),
    (target, target_sig): (&mut [Series], &[usize]),
    if_present: bool,
) {
    present.iter_mut().for_each(|p| *p = false);
    for (j, s) in by.iter().enumerate() {
        if s.vals[i].is_some() {
            present[by_sig[j]] = true;
        }
    }
    for (j, s) in target.iter_mut().enumerate() {
        if present[target_sig[j]] == if_present {
            s.vals[i] = None;
        }
    }
}

fn set_op(ctx: &Ctx, op: TokenId, l: Vec<Series>, r: Vec<Series>, m: &Matching, g: Grid) -> Result<Value, EvalError> {
    let mut sigs = HashMap::new();
    let lsig: Vec<usize> = l.iter().map(|s| intern(&mut sigs, m.signature(&s.labels))).collect();
    let rsig: Vec<usize> = r.iter().map(|s| intern(&mut sigs, m.signature(&s.labels))).collect();
    let n = g.steps();
    let mut l = l;
    let mut r = r;
    let mut present = vec![false; sigs.len()];
    for i in 0..n {
        if i % 1024 == 0 {
            ctx.check_deadline()?;
        }
        let l_any = l.iter().any(|s| s.vals[i].is_some());
        let r_any = r.iter().any(|s| s.vals[i].is_some());
        match op {
            token::T_LAND => {
                if !l_any || !r_any {
                    for s in l.iter_mut() {
                        s.vals[i] = None;
                    }
                    continue;
                }
                drop_at_step(i, &mut present, (&r, &rsig), (&mut l, &lsig), false);
            }
            token::T_LUNLESS => {
                if !l_any || !r_any {
                    continue;
                }
                drop_at_step(i, &mut present, (&r, &rsig), (&mut l, &lsig), true);
            }
            // or
            _ => drop_at_step(i, &mut present, (&l, &lsig), (&mut r, &rsig), true),
        }
    }
    let mut out: Vec<Series> = l.into_iter().filter(|s| s.vals.iter().any(|v| v.is_some())).collect();
    if op == token::T_LOR {
        out.extend(r.into_iter().filter(|s| s.vals.iter().any(|v| v.is_some())));
        out = merge_same_labels(out, false)?;
    }
    Ok(Value::Vector(out))
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    ctx: &Ctx,
    op: TokenId,
    l: Vec<Series>,
    r: Vec<Series>,
    m: &Matching,
    card: VectorMatchCardinality,
    ret_bool: bool,
    g: Grid,
) -> Result<Value, EvalError> {
    let (include, swap, one_to_one) = match &card {
        VectorMatchCardinality::ManyToOne(ls) => (ls.labels.clone(), false, false),
        VectorMatchCardinality::OneToMany(ls) => (ls.labels.clone(), true, false),
        _ => (vec![], false, true),
    };
    // After a swap, `lhs` is the "many" side and `rhs` the "one" side.
    let (lhs, rhs) = if swap { (r, l) } else { (l, r) };
    let mut sigs = HashMap::new();
    let lsig: Vec<usize> = lhs.iter().map(|s| intern(&mut sigs, m.signature(&s.labels))).collect();
    let rsig: Vec<usize> = rhs.iter().map(|s| intern(&mut sigs, m.signature(&s.labels))).collect();
    let nsig = sigs.len();
    let n = g.steps();
    let drop_name = ret_bool || changes_schema(op);

    let mut out: Vec<Series> = vec![];
    let mut out_idx: HashMap<Labels, usize> = HashMap::new();
    let mut pair_cache: HashMap<(usize, usize), usize> = HashMap::new();
    let mut right_at: Vec<Option<usize>> = vec![None; nsig];
    let mut matched: Vec<bool> = vec![false; nsig];
    let mut matched_sets: Vec<Vec<usize>> = vec![vec![]; nsig];
    let mut out_seen_step: Vec<usize> = vec![];

    for i in 0..n {
        if i % 256 == 0 {
            ctx.check_deadline()?;
        }
        right_at.iter_mut().for_each(|x| *x = None);
        let mut any_right = false;
        for (j, s) in rhs.iter().enumerate() {
            if s.vals[i].is_none() {
                continue;
            }
            any_right = true;
            if let Some(prev) = right_at[rsig[j]] {
                let side = if swap { "left" } else { "right" };
                let matched_labels = m.signature(&s.labels);
                let matched_labels = if m.on { s.labels.keep(&m.labels) } else { matched_labels };
                let mut d1 = prom_labels_string(&s.labels);
                let mut d2 = prom_labels_string(&rhs[prev].labels);
                if d1 > d2 {
                    std::mem::swap(&mut d1, &mut d2);
                }
                return exec_err(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{d1}, {d2}];many-to-many matching not allowed: matching labels must be unique on one side",
                    prom_labels_string(&matched_labels)
                ));
            }
            right_at[rsig[j]] = Some(j);
        }
        if !any_right {
            continue;
        }
        if one_to_one {
            matched.iter_mut().for_each(|x| *x = false);
        } else {
            matched_sets.iter_mut().for_each(|x| x.clear());
        }
        for (li, ls) in lhs.iter().enumerate() {
            let Some(lv) = ls.vals[i] else { continue };
            let sig = lsig[li];
            let Some(rj) = right_at[sig] else { continue };
            let rv = rhs[rj].vals[i].expect("present");
            let (fl, fr) = if swap { (rv, lv) } else { (lv, rv) };
            let (mut val, keep) = elem(op, fl, fr);
            if ret_bool {
                val = if keep { 1.0 } else { 0.0 };
            }
            let oi = match pair_cache.get(&(li, rj)) {
                Some(&oi) => oi,
                None => {
                    let mut lab = ls.labels.clone();
                    if drop_name {
                        lab.del("__name__");
                    }
                    if one_to_one {
                        lab = if m.on {
                            lab.keep(&m.labels)
                        } else {
                            lab.drop_names(&m.labels)
                        };
                    }
                    for ln in &include {
                        match rhs[rj].labels.get(ln) {
                            Some(v) => {
                                let v = v.to_string();
                                lab.set(ln, &v)
                            }
                            None => lab.del(ln),
                        }
                    }
                    let oi = match out_idx.get(&lab) {
                        Some(&oi) => oi,
                        None => {
                            out.push(Series {
                                labels: lab.clone(),
                                vals: vec![None; n],
                            });
                            out_seen_step.push(usize::MAX);
                            out_idx.insert(lab, out.len() - 1);
                            out.len() - 1
                        }
                    };
                    pair_cache.insert((li, rj), oi);
                    oi
                }
            };
            if one_to_one {
                if matched[sig] {
                    return exec_err(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    );
                }
                matched[sig] = true;
            } else {
                if matched_sets[sig].contains(&oi) {
                    return exec_err("multiple matches for labels: grouping labels must ensure unique matches");
                }
                matched_sets[sig].push(oi);
            }
            if !keep && !ret_bool {
                continue;
            }
            if out_seen_step[oi] == i {
                return exec_err("vector cannot contain metrics with the same labelset");
            }
            out_seen_step[oi] = i;
            out[oi].vals[i] = Some(val);
        }
    }
    out.retain(|s| s.vals.iter().any(|v| v.is_some()));
    ctx.count_samples(out.len() * n)?;
    Ok(Value::Vector(out))
}
