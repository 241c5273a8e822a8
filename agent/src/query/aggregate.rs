//! Aggregation operators (sum, avg, min, max, count, group, stddev, stdvar,
//! topk, bottomk, quantile, count_values, limitk) with by/without.
use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier, token};

use super::{
    eval::{Ctx, EvalError, exec_err},
    value::{Grid, Series, Value},
};
use crate::compat::float::format_f;
use crate::series::Labels;

/// Neumaier-improved Kahan increment, as Prometheus's kahansum.Inc.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's quantile over plain values (φ-quantile with interpolation).
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap(),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

pub(crate) fn grouping_labels(l: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::default(),
        Some(LabelModifier::Include(ls)) => l.keep(&ls.labels),
        Some(LabelModifier::Exclude(ls)) => {
            let mut x = l.drop_names(&ls.labels);
            x.del("__name__");
            x
        }
    }
}

#[derive(Clone, Default)]
struct Group {
    seen: bool,
    value: f64,
    mean: f64,
    c: f64,
    count: f64,
    incremental: bool,
    heap: Vec<f64>,
}

pub(crate) fn eval_aggregate(ctx: &Ctx, a: &AggregateExpr, g: Grid) -> Result<Value, EvalError> {
    let op = a.op.id();
    let n = g.steps();
    if op == token::T_COUNT_VALUES {
        let label = match a.param.as_deref().map(super::eval::unparen) {
            Some(Expr::StringLiteral(s)) => s.val.clone(),
            _ => return exec_err("count_values: expected string parameter"),
        };
        if label.is_empty() || !valid_label_name(&label) {
            return exec_err(format!("invalid label name {label:?}"));
        }
        let input = ctx.eval_vector(&a.expr, g)?;
        return count_values(&input, &label, &a.modifier, n);
    }
    let param: Option<Vec<f64>> = match op {
        token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK | token::T_QUANTILE | token::T_LIMIT_RATIO => {
            let Some(p) = &a.param else {
                return exec_err("aggregation is missing its parameter");
            };
            Some(ctx.eval_scalar(p, g)?)
        }
        _ => None,
    };
    let input = ctx.eval_vector(&a.expr, g)?;
    match op {
        token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK => {
            return aggregate_k(ctx, op, &input, &a.modifier, param.unwrap(), g);
        }
        token::T_LIMIT_RATIO => return exec_err("limit_ratio is not supported (experimental)"),
        _ => {}
    }
    // Group assignment, once per series.
    let mut group_idx: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Series> = vec![];
    let mut series_group = Vec::with_capacity(input.len());
    for s in &input {
        let gl = grouping_labels(&s.labels, &a.modifier);
        let gi = match group_idx.get(&gl) {
            Some(&i) => i,
            None => {
                out.push(Series {
                    labels: gl.clone(),
                    vals: vec![None; n],
                });
                group_idx.insert(gl, out.len() - 1);
                out.len() - 1
            }
        };
        series_group.push(gi);
    }
    let mut groups = vec![Group::default(); out.len()];
    for i in 0..n {
        if i % 256 == 0 {
            ctx.check_deadline()?;
        }
        for gr in groups.iter_mut() {
            gr.seen = false;
        }
        for (si, s) in input.iter().enumerate() {
            let Some(f) = s.vals[i] else { continue };
            let gr = &mut groups[series_group[si]];
            if !gr.seen {
                *gr = Group {
                    seen: true,
                    value: f,
                    mean: f,
                    c: 0.0,
                    count: 1.0,
                    incremental: false,
                    heap: vec![],
                };
                match op {
                    token::T_STDDEV | token::T_STDVAR => {
                        gr.value = if f.is_nan() || f.is_infinite() { f64::NAN } else { 0.0 };
                    }
                    token::T_QUANTILE => gr.heap.push(f),
                    token::T_GROUP => gr.value = 1.0,
                    _ => {}
                }
                continue;
            }
            match op {
                token::T_SUM => {
                    let (v, c) = kahan_inc(f, gr.value, gr.c);
                    gr.value = v;
                    gr.c = c;
                }
                token::T_AVG => {
                    gr.count += 1.0;
                    if !gr.incremental {
                        let (nv, nc) = kahan_inc(f, gr.value, gr.c);
                        if !nv.is_infinite() {
                            gr.value = nv;
                            gr.c = nc;
                            continue;
                        }
                        gr.incremental = true;
                        gr.mean = gr.value / (gr.count - 1.0);
                        gr.c /= gr.count - 1.0;
                    }
                    let q = (gr.count - 1.0) / gr.count;
                    let (m, c) = kahan_inc(f / gr.count, q * gr.mean, q * gr.c);
                    gr.mean = m;
                    gr.c = c;
                }
                token::T_MAX => {
                    if gr.value < f || gr.value.is_nan() {
                        gr.value = f;
                    }
                }
                token::T_MIN => {
                    if gr.value > f || gr.value.is_nan() {
                        gr.value = f;
                    }
                }
                token::T_COUNT => gr.count += 1.0,
                token::T_GROUP => {}
                token::T_STDDEV | token::T_STDVAR => {
                    gr.count += 1.0;
                    let delta = f - gr.mean;
                    gr.mean += delta / gr.count;
                    gr.value += delta * (f - gr.mean);
                }
                token::T_QUANTILE => gr.heap.push(f),
                _ => return exec_err(format!("unsupported aggregation {}", a.op)),
            }
        }
        for (gi, gr) in groups.iter_mut().enumerate() {
            if !gr.seen {
                continue;
            }
            let v = match op {
                token::T_SUM => gr.value + gr.c,
                token::T_AVG => {
                    if gr.incremental {
                        gr.mean + gr.c
                    } else {
                        gr.value / gr.count + gr.c / gr.count
                    }
                }
                token::T_COUNT => gr.count,
                token::T_STDVAR => gr.value / gr.count,
                token::T_STDDEV => (gr.value / gr.count).sqrt(),
                token::T_QUANTILE => quantile(param.as_ref().unwrap()[i], &mut gr.heap),
                _ => gr.value,
            };
            out[gi].vals[i] = Some(v);
        }
    }
    out.retain(|s| s.vals.iter().any(|v| v.is_some()));
    ctx.count_samples(out.len() * n)?;
    Ok(Value::Vector(out))
}

pub(crate) fn valid_label_name(s: &str) -> bool {
    // Prometheus 3 accepts any valid UTF-8 label name.
    !s.is_empty()
}

fn count_values(input: &[Series], label: &str, modifier: &Option<LabelModifier>, n: usize) -> Result<Value, EvalError> {
    let mut idx: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Series> = vec![];
    // `by` keeps the value label too.
    let modifier = match modifier {
        Some(LabelModifier::Include(ls)) => {
            let mut ls = ls.clone();
            if !ls.labels.iter().any(|l| l == label) {
                ls.labels.push(label.to_string());
            }
            Some(LabelModifier::Include(ls))
        }
        other => other.clone(),
    };
    for i in 0..n {
        for s in input {
            let Some(f) = s.vals[i] else { continue };
            let mut l = s.labels.clone();
            l.set(label, &format_f(f));
            let gl = grouping_labels(&l, &modifier);
            let gl = if modifier.is_none() {
                let mut x = Labels::default();
                x.set(label, &format_f(f));
                x
            } else {
                gl
            };
            let oi = match idx.get(&gl) {
                Some(&oi) => oi,
                None => {
                    out.push(Series {
                        labels: gl.clone(),
                        vals: vec![None; n],
                    });
                    idx.insert(gl, out.len() - 1);
                    out.len() - 1
                }
            };
            let v = out[oi].vals[i].get_or_insert(0.0);
            *v += 1.0;
        }
    }
    Ok(Value::Vector(out))
}

fn aggregate_k(
    ctx: &Ctx,
    op: token::TokenId,
    input: &[Series],
    modifier: &Option<LabelModifier>,
    param: Vec<f64>,
    g: Grid,
) -> Result<Value, EvalError> {
    let n = g.steps();
    if param.iter().any(|p| p.is_nan()) {
        return exec_err("Parameter value is NaN");
    }
    let max_k = param.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max_k < 1.0 {
        return Ok(Value::Vector(vec![]));
    }
    if let Some(p) = param.iter().find(|p| **p <= i64::MIN as f64) {
        return exec_err(format!("Scalar value {p} underflows int64"));
    }
    if let Some(p) = param.iter().find(|p| **p >= i64::MAX as f64) {
        return exec_err(format!("Scalar value {p} overflows int64"));
    }
    let mut group_idx: HashMap<Labels, usize> = HashMap::new();
    let series_group: Vec<usize> = input
        .iter()
        .map(|s| {
            let gl = grouping_labels(&s.labels, modifier);
            let l = group_idx.len();
            *group_idx.entry(gl).or_insert(l)
        })
        .collect();
    let ngroups = group_idx.len();
    let mut out: Vec<Series> = input
        .iter()
        .map(|s| Series {
            labels: s.labels.clone(),
            vals: vec![None; n],
        })
        .collect();
    // For instant queries: output order (group, rank).
    let mut order: Vec<usize> = vec![];
    let mut members: Vec<Vec<usize>> = vec![vec![]; ngroups];
    for (i, &p) in param.iter().enumerate().take(n) {
        if i % 256 == 0 {
            ctx.check_deadline()?;
        }
        let k = (p as i64).min(input.len() as i64);
        if k < 1 {
            continue;
        }
        let k = k as usize;
        members.iter_mut().for_each(|m| m.clear());
        for (si, s) in input.iter().enumerate() {
            if s.vals[i].is_some() {
                members[series_group[si]].push(si);
            }
        }
        for m in members.iter_mut() {
            if m.is_empty() {
                continue;
            }
            let val = |si: &usize| input[*si].vals[i].unwrap();
            match op {
                token::T_TOPK => m.sort_by(|a, b| cmp_desc_nan_last(val(a), val(b))),
                token::T_BOTTOMK => m.sort_by(|a, b| cmp_asc_nan_last(val(a), val(b))),
                _ => {}
            }
            m.truncate(k);
            for &si in m.iter() {
                out[si].vals[i] = input[si].vals[i];
                if n == 1 {
                    order.push(si);
                }
            }
        }
    }
    if n == 1 {
        let out: Vec<Series> = order.into_iter().map(|si| out[si].clone()).collect();
        return Ok(Value::Vector(out));
    }
    out.retain(|s| s.vals.iter().any(|v| v.is_some()));
    Ok(Value::Vector(out))
}

fn cmp_desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => b.partial_cmp(&a).unwrap(),
    }
}

fn cmp_asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => a.partial_cmp(&b).unwrap(),
    }
}
