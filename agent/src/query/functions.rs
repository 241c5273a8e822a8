//! PromQL functions over float samples.
use promql_parser::parser::{Call, Expr};

use super::{
    aggregate::{kahan_inc, quantile},
    eval::{Ctx, EvalError, RangeArg, exec_err, merge_same_labels, selector_matchers, unparen},
    value::{Grid, Series, Value},
};
use crate::compat::time::civil_from_days;
use crate::series::{Labels, MatchOp};

/// Functions that need native histograms, info() or other features ngxprobe
/// does not implement; evaluating them is an execution error.
pub const UNSUPPORTED: &[&str] = &[
    "info",
    "double_exponential_smoothing",
    "holt_winters",
    "histogram_quantiles",
    "histogram_fraction",
];

fn string_arg(e: &Expr) -> Result<String, EvalError> {
    match unparen(e) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => exec_err("expected string literal argument"),
    }
}

pub(crate) fn eval_call(ctx: &Ctx, c: &Call, g: Grid) -> Result<Value, EvalError> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let n = g.steps();
    if UNSUPPORTED.contains(&name) {
        return exec_err(format!("function {name:?} is not supported by ngxprobe"));
    }
    // Functions with a range-vector argument.
    if let Some(mi) = args
        .iter()
        .position(|a| matches!(unparen(a), Expr::MatrixSelector(_) | Expr::Subquery(_)))
    {
        return eval_range_fn(ctx, name, &args, mi, g);
    }
    match name {
        "time" => return Ok(Value::Scalar((0..n).map(|i| g.ts(i) as f64 / 1000.0).collect())),
        "start" => return Ok(Value::Scalar(vec![ctx.qstart as f64 / 1000.0; n])),
        "end" => return Ok(Value::Scalar(vec![ctx.qend as f64 / 1000.0; n])),
        "range" => return Ok(Value::Scalar(vec![(ctx.qend - ctx.qstart) as f64 / 1000.0; n])),
        "step" => return Ok(Value::Scalar(vec![ctx.qstep as f64 / 1000.0; n])),
        "min_of" | "max_of" => {
            let a = ctx.eval_scalar(args[0], g)?;
            let b = ctx.eval_scalar(args[1], g)?;
            let f = if name == "min_of" { go_min } else { go_max };
            return Ok(Value::Scalar(a.iter().zip(b.iter()).map(|(x, y)| f(*x, *y)).collect()));
        }
        "pi" => return Ok(Value::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let s = ctx.eval_scalar(args[0], g)?;
            return Ok(Value::Vector(vec![Series {
                labels: Labels::default(),
                vals: s.into_iter().map(Some).collect(),
            }]));
        }
        "scalar" => {
            let v = ctx.eval_vector(args[0], g)?;
            let out = (0..n)
                .map(|i| {
                    let mut it = v.iter().filter_map(|s| s.vals[i]);
                    match (it.next(), it.next()) {
                        (Some(x), None) => x,
                        _ => f64::NAN,
                    }
                })
                .collect();
            return Ok(Value::Scalar(out));
        }
        "timestamp" => {
            if let Expr::VectorSelector(vs) = unparen(args[0]) {
                let v = ctx.eval_vector_selector(vs, g, true)?;
                let v = v
                    .into_iter()
                    .map(|s| Series {
                        labels: s.labels.without_name(),
                        vals: s.vals,
                    })
                    .collect();
                return Ok(Value::Vector(merge_same_labels(v, true)?));
            }
            let v = ctx.eval_vector(args[0], g)?;
            let v = v
                .into_iter()
                .map(|s| Series {
                    labels: s.labels.without_name(),
                    vals: s
                        .vals
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x.map(|_| g.ts(i) as f64 / 1000.0))
                        .collect(),
                })
                .collect();
            return Ok(Value::Vector(merge_same_labels(v, true)?));
        }
        "absent" => {
            let v = ctx.eval_vector(args[0], g)?;
            let vals: Vec<Option<f64>> = (0..n)
                .map(|i| {
                    if v.iter().any(|s| s.vals[i].is_some()) {
                        None
                    } else {
                        Some(1.0)
                    }
                })
                .collect();
            if vals.iter().all(|x| x.is_none()) {
                return Ok(Value::Vector(vec![]));
            }
            return Ok(Value::Vector(vec![Series {
                labels: absent_labels(args[0]),
                vals,
            }]));
        }
        "label_replace" => {
            let dst = string_arg(args[1])?;
            let repl = string_arg(args[2])?;
            let src = string_arg(args[3])?;
            let re_s = string_arg(args[4])?;
            let re = regex::Regex::new(&format!("^(?s:{re_s})$"))
                .map_err(|_| EvalError::Execution(format!("invalid regular expression in label_replace(): {re_s}")))?;
            if dst.is_empty() || dst.contains('\u{FFFD}') {
                return exec_err(format!("invalid destination label name in label_replace(): {dst}"));
            }
            let v = ctx.eval_vector(args[0], g)?;
            let mut out = Vec::with_capacity(v.len());
            for mut s in v {
                let sv = s.labels.get(&src).unwrap_or("").to_string();
                if let Some(caps) = re.captures(&sv) {
                    let mut res = String::new();
                    caps.expand(&repl, &mut res);
                    s.labels.set(&dst, &res);
                }
                out.push(s);
            }
            return Ok(Value::Vector(merge_same_labels(out, true)?));
        }
        "label_join" => {
            let dst = string_arg(args[1])?;
            let sep = string_arg(args[2])?;
            let srcs: Vec<String> = args[3..].iter().map(|a| string_arg(a)).collect::<Result<_, _>>()?;
            if dst.is_empty() || dst.contains('\u{FFFD}') {
                return exec_err(format!("invalid destination label name in label_join(): {dst}"));
            }
            let v = ctx.eval_vector(args[0], g)?;
            let mut out = Vec::with_capacity(v.len());
            for mut s in v {
                let joined: Vec<&str> = srcs.iter().map(|l| s.labels.get(l).unwrap_or("")).collect();
                let j = joined.join(&sep);
                s.labels.set(&dst, &j);
                out.push(s);
            }
            return Ok(Value::Vector(merge_same_labels(out, true)?));
        }
        "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" => {
            let mut v = ctx.eval_vector(args[0], g)?;
            if n == 1 {
                match name {
                    "sort" => v.sort_by(|a, b| cmp_nan_last(a.vals[0].unwrap(), b.vals[0].unwrap(), false)),
                    "sort_desc" => v.sort_by(|a, b| cmp_nan_last(a.vals[0].unwrap(), b.vals[0].unwrap(), true)),
                    _ => {
                        let ls: Vec<String> = args[1..].iter().map(|a| string_arg(a)).collect::<Result<_, _>>()?;
                        let desc = name == "sort_by_label_desc";
                        v.sort_by(|a, b| {
                            for l in &ls {
                                let (x, y) = (a.labels.get(l).unwrap_or(""), b.labels.get(l).unwrap_or(""));
                                if x != y {
                                    let o = natural_cmp(x, y);
                                    return if desc { o.reverse() } else { o };
                                }
                            }
                            let o = a.labels.cmp(&b.labels);
                            if desc { o.reverse() } else { o }
                        });
                    }
                }
            }
            return Ok(Value::Vector(v));
        }
        "histogram_quantile" => {
            let q = ctx.eval_scalar(args[0], g)?;
            let v = ctx.eval_vector(args[1], g)?;
            return histogram_quantile(&q, v, n);
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev" | "histogram_stdvar" => {
            // Only native histograms have these; float samples are ignored.
            let _ = ctx.eval_vector(args[0], g)?;
            return Ok(Value::Vector(vec![]));
        }
        "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute" | "month" | "year" => {
            let f = date_fn(name);
            if args.is_empty() {
                let vals = (0..n).map(|i| Some(f(g.ts(i).div_euclid(1000)))).collect();
                return Ok(Value::Vector(vec![Series {
                    labels: Labels::default(),
                    vals,
                }]));
            }
            let v = ctx.eval_vector(args[0], g)?;
            return map_series(v, |x| {
                if x.is_nan() || x.is_infinite() {
                    f64::NAN
                } else {
                    f(x as i64)
                }
            });
        }
        _ => {}
    }
    // Element-wise functions, possibly with scalar parameters.
    let Some(first) = args.first() else {
        return exec_err(format!("function {name:?} needs an argument"));
    };
    let v = ctx.eval_vector(first, g)?;
    let scalars: Vec<Vec<f64>> = args[1..]
        .iter()
        .map(|a| ctx.eval_scalar(a, g))
        .collect::<Result<_, _>>()?;
    let f: fn(f64) -> f64 = match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "rad" => |x| x * std::f64::consts::PI / 180.0,
        "deg" => |x| x * 180.0 / std::f64::consts::PI,
        "sgn" => |x: f64| {
            if x < 0.0 {
                -1.0
            } else if x > 0.0 {
                1.0
            } else {
                x
            }
        },
        "round" | "clamp" | "clamp_min" | "clamp_max" => |x| x,
        other => return exec_err(format!("function {other:?} is not supported by ngxprobe")),
    };
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        let mut vals = s.vals;
        let mut any = false;
        for (i, slot) in vals.iter_mut().enumerate() {
            let Some(x) = *slot else { continue };
            let r = match name {
                "round" => {
                    let to = scalars.first().map(|s| s[i]).unwrap_or(1.0);
                    let inv = 1.0 / to;
                    Some((x * inv + 0.5).floor() / inv)
                }
                "clamp" => {
                    let (lo, hi) = (scalars[0][i], scalars[1][i]);
                    if hi < lo { None } else { Some(go_max(lo, go_min(hi, x))) }
                }
                "clamp_min" => Some(go_max(scalars[0][i], go_min(f64::INFINITY, x))),
                "clamp_max" => Some(go_max(f64::NEG_INFINITY, go_min(scalars[0][i], x))),
                _ => Some(f(x)),
            };
            *slot = r;
            any |= r.is_some();
        }
        if any {
            out.push(Series {
                labels: s.labels.without_name(),
                vals,
            });
        }
    }
    Ok(Value::Vector(merge_same_labels(out, true)?))
}

/// Go's math.Max/Min: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

fn map_series(v: Vec<Series>, f: impl Fn(f64) -> f64) -> Result<Value, EvalError> {
    let out = v
        .into_iter()
        .map(|s| Series {
            labels: s.labels.without_name(),
            vals: s.vals.into_iter().map(|x| x.map(&f)).collect(),
        })
        .collect();
    Ok(Value::Vector(merge_same_labels(out, true)?))
}

fn cmp_nan_last(a: f64, b: f64, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => {
            let o = a.partial_cmp(&b).unwrap();
            if desc { o.reverse() } else { o }
        }
    }
}

/// Natural ordering: runs of digits compare numerically.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx: &[u8] = &dx[dx.iter().take_while(|c| **c == b'0').count().min(nx.saturating_sub(1))..];
                let ty: &[u8] = &dy[dy.iter().take_while(|c| **c == b'0').count().min(ny.saturating_sub(1))..];
                let o = tx.len().cmp(&ty.len()).then(tx.cmp(ty));
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let Ok(sets) = selector_matchers(vs) else {
        return Labels::default();
    };
    let Some(ms) = sets.first() else {
        return Labels::default();
    };
    let mut l = Labels::default();
    let mut has = std::collections::HashSet::new();
    for m in ms {
        if m.name == "__name__" {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name) {
            l.set(&m.name, &m.value);
            has.insert(m.name.clone());
        } else {
            l.del(&m.name);
        }
    }
    l
}

fn histogram_quantile(q: &[f64], v: Vec<Series>, n: usize) -> Result<Value, EvalError> {
    use std::collections::HashMap;
    // Group by labels without `le` (name included in the key), output without name and le.
    let mut groups: HashMap<Labels, (Labels, Vec<(f64, usize)>)> = HashMap::new();
    let mut order: Vec<Labels> = vec![];
    for (si, s) in v.iter().enumerate() {
        let Some(le) = s.labels.get("le") else { continue };
        let Ok(ub) = parse_go_float(le) else { continue };
        let mut key = s.labels.clone();
        key.del("le");
        let e = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            let mut out = key.clone();
            out.del("__name__");
            (out, vec![])
        });
        e.1.push((ub, si));
    }
    let mut out: Vec<Series> = vec![];
    for key in order {
        let (labels, members) = &groups[&key];
        let mut vals = vec![None; n];
        for (i, slot) in vals.iter_mut().enumerate() {
            let mut buckets: Vec<(f64, f64)> = members
                .iter()
                .filter_map(|(ub, si)| v[*si].vals[i].map(|c| (*ub, c)))
                .collect();
            if buckets.is_empty() {
                continue;
            }
            *slot = Some(bucket_quantile(q[i], &mut buckets));
        }
        out.push(Series {
            labels: labels.clone(),
            vals,
        });
    }
    out.retain(|s| s.vals.iter().any(|x| x.is_some()));
    Ok(Value::Vector(merge_same_labels(out, true)?))
}

pub(crate) fn parse_go_float(s: &str) -> Result<f64, ()> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Ok(f64::INFINITY),
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        "nan" => return Ok(f64::NAN),
        _ => {}
    }
    if t != s {
        return Err(());
    }
    s.parse::<f64>().map_err(|_| ())
}

/// Prometheus's `almost.Equal`: equal within a relative tolerance `eps`
/// (NaN equals NaN).
pub(crate) fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    let min_normal = f64::from_bits(0x0010000000000000);
    if a == 0.0 || b == 0.0 || abs_sum < min_normal {
        return diff < eps * min_normal;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    // No +Inf bucket (or no buckets at all): no quantile.
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // coalesce
    let mut co: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match co.last_mut() {
            Some(l) if l.0 == b.0 => l.1 += b.1,
            _ => co.push(*b),
        }
    }
    // monotonic
    let mut prev = co[0].1;
    for b in co.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            continue;
        }
        prev = curr;
    }
    if co.len() < 2 {
        return f64::NAN;
    }
    let Some(&(_, obs)) = co.last() else { return f64::NAN };
    if obs == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * obs;
    let b = co[..co.len() - 1].partition_point(|x| x.1 < rank);
    if b == co.len() - 1 {
        return co[co.len() - 2].0;
    }
    if b == 0 && co[0].0 <= 0.0 {
        return co[0].0;
    }
    let mut start = 0.0;
    let end = co[b].0;
    let mut count = co[b].1;
    if b > 0 {
        start = co[b - 1].0;
        count -= co[b - 1].1;
        rank -= co[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_fn(name: &str) -> fn(i64) -> f64 {
    match name {
        "day_of_month" => |t| civil_from_days(t.div_euclid(86400)).2 as f64,
        "day_of_week" => |t| (t.div_euclid(86400) + 4).rem_euclid(7) as f64,
        "day_of_year" => |t| {
            let (y, m, d) = civil_from_days(t.div_euclid(86400));
            let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
            (cum[(m - 1) as usize] + d as i64 + if m > 2 && is_leap(y) { 1 } else { 0 }) as f64
        },
        "days_in_month" => |t| {
            let (y, m, _) = civil_from_days(t.div_euclid(86400));
            let dim = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            (dim[(m - 1) as usize] + if m == 2 && is_leap(y) { 1 } else { 0 }) as f64
        },
        "hour" => |t| (t.rem_euclid(86400) / 3600) as f64,
        "minute" => |t| (t.rem_euclid(3600) / 60) as f64,
        "month" => |t| civil_from_days(t.div_euclid(86400)).1 as f64,
        _ => |t| civil_from_days(t.div_euclid(86400)).0 as f64,
    }
}

/// Range-vector functions: evaluated per series and step over (ref-range, ref].
fn eval_range_fn(ctx: &Ctx, name: &str, args: &[&Expr], mi: usize, g: Grid) -> Result<Value, EvalError> {
    let n = g.steps();
    let mut scalars: Vec<Vec<f64>> = vec![];
    for (i, a) in args.iter().enumerate() {
        if i != mi {
            scalars.push(ctx.eval_scalar(a, g)?);
        }
    }
    let ra: RangeArg = ctx.eval_range_arg(args[mi], g)?;
    let keep_name = matches!(name, "last_over_time" | "first_over_time");
    let mut out: Vec<Series> = Vec::with_capacity(ra.series.len());
    for s in &ra.series {
        ctx.check_deadline()?;
        let mut vals = vec![None; n];
        let mut any = false;
        let (mut lo, mut hi) = (0usize, 0usize);
        for (i, slot) in vals.iter_mut().enumerate() {
            // A long grid over a wide window (a year-long subquery of a
            // week-long `_over_time`) can take seconds for one series: the
            // deadline is checked within the series too, not only between.
            if i % 1024 == 1023 {
                ctx.check_deadline()?;
            }
            let r = ra.reference(&g, i);
            let start = r - ra.range;
            while hi < s.samples.len() && s.samples[hi].0 <= r {
                hi += 1;
            }
            while lo < hi && s.samples[lo].0 <= start {
                lo += 1;
            }
            if ra.fixed_ref.is_some() {
                // Same window every step; cursors already positioned.
            }
            let w = &s.samples[lo.min(hi)..hi];
            if w.is_empty() {
                continue;
            }
            let p = |k: usize| scalars.get(k).map(|v| v[i]).unwrap_or(f64::NAN);
            let v = range_fn(name, w, start, r, ra.range, g.ts(i), p)?;
            if v.is_some() {
                any = true;
            }
            *slot = v;
        }
        if any {
            let labels = if keep_name {
                s.labels.clone()
            } else {
                s.labels.without_name()
            };
            out.push(Series { labels, vals });
        }
    }
    if name == "absent_over_time" {
        let vals: Vec<Option<f64>> = (0..n)
            .map(|i| {
                if out.iter().any(|s| s.vals[i].is_some()) {
                    None
                } else {
                    Some(1.0)
                }
            })
            .collect();
        if vals.iter().all(|v| v.is_none()) {
            return Ok(Value::Vector(vec![]));
        }
        return Ok(Value::Vector(vec![Series {
            labels: absent_labels(args[mi]),
            vals,
        }]));
    }
    // Prometheus: any two output series with the same labels are an error.
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    for s in &out {
        if !seen.insert(&s.labels) {
            return exec_err("vector cannot contain metrics with the same labelset");
        }
    }
    ctx.count_samples(out.len() * n)?;
    Ok(Value::Vector(out))
}

fn range_fn(
    name: &str,
    w: &[(i64, f64)],
    start: i64,
    end: i64,
    range: i64,
    ts: i64,
    p: impl Fn(usize) -> f64,
) -> Result<Option<f64>, EvalError> {
    Ok(match name {
        "rate" => extrapolated_rate(w, start, end, range, true, true),
        "increase" => extrapolated_rate(w, start, end, range, true, false),
        "delta" => extrapolated_rate(w, start, end, range, false, false),
        "irate" | "idelta" => {
            if w.len() < 2 {
                return Ok(None);
            }
            let (a, b) = (w[w.len() - 2], w[w.len() - 1]);
            let dt = b.0 - a.0;
            if dt == 0 {
                return Ok(None);
            }
            let is_rate = name == "irate";
            let mut v = if is_rate && b.1 < a.1 { b.1 } else { b.1 - a.1 };
            if is_rate {
                v /= dt as f64 / 1000.0;
            }
            Some(v)
        }
        "deriv" => {
            if w.len() < 2 {
                return Ok(None);
            }
            Some(linear_regression(w, w[0].0).0)
        }
        "predict_linear" => {
            if w.len() < 2 {
                return Ok(None);
            }
            let (slope, icpt) = linear_regression(w, ts);
            Some(slope * p(0) + icpt)
        }
        "resets" => Some(w.windows(2).filter(|x| x[1].1 < x[0].1).count() as f64),
        "changes" => Some(
            w.windows(2)
                .filter(|x| !(x[1].1 == x[0].1 || (x[1].1.is_nan() && x[0].1.is_nan())))
                .count() as f64,
        ),
        "avg_over_time" => {
            let (mut sum, mut count) = (w[0].1, 1.0);
            let (mut mean, mut c) = (0.0, 0.0);
            let mut incremental = false;
            for (i, x) in w[1..].iter().enumerate() {
                count = (i + 2) as f64;
                if !incremental {
                    let (ns, nc) = kahan_inc(x.1, sum, c);
                    if !ns.is_infinite() {
                        sum = ns;
                        c = nc;
                        continue;
                    }
                    incremental = true;
                    mean = sum / (count - 1.0);
                    c /= count - 1.0;
                }
                let q = (count - 1.0) / count;
                let (m, nc) = kahan_inc(x.1 / count, q * mean, q * c);
                mean = m;
                c = nc;
            }
            Some(if incremental { mean + c } else { sum / count + c / count })
        }
        "sum_over_time" => {
            let (mut sum, mut c) = (0.0, 0.0);
            for x in w {
                (sum, c) = kahan_inc(x.1, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        "count_over_time" => Some(w.len() as f64),
        "present_over_time" | "absent_over_time" => Some(1.0),
        "last_over_time" => Some(w[w.len() - 1].1),
        "first_over_time" => Some(w[0].1),
        "ts_of_last_over_time" => Some(w[w.len() - 1].0 as f64 / 1000.0),
        "ts_of_first_over_time" => Some(w[0].0 as f64 / 1000.0),
        "max_over_time" | "min_over_time" | "ts_of_max_over_time" | "ts_of_min_over_time" => {
            let is_max = name.contains("max");
            let (mut best, mut bt) = (w[0].1, w[0].0);
            for x in w {
                let better = if is_max { x.1 > best } else { x.1 < best };
                if better || best.is_nan() {
                    best = x.1;
                    bt = x.0;
                }
            }
            Some(if name.starts_with("ts_of") {
                bt as f64 / 1000.0
            } else {
                best
            })
        }
        "quantile_over_time" => {
            let mut vals: Vec<f64> = w.iter().map(|x| x.1).collect();
            Some(quantile(p(0), &mut vals))
        }
        "mad_over_time" => {
            if w.iter().any(|x| x.1.is_nan()) {
                return Ok(Some(f64::NAN));
            }
            let mut vals: Vec<f64> = w.iter().map(|x| x.1).collect();
            let med = quantile(0.5, &mut vals);
            let mut dev: Vec<f64> = vals.iter().map(|x| (x - med).abs()).collect();
            Some(quantile(0.5, &mut dev))
        }
        "stddev_over_time" | "stdvar_over_time" => {
            let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for x in w {
                count += 1.0;
                let delta = x.1 - (mean + cm);
                (mean, cm) = kahan_inc(delta / count, mean, cm);
                (aux, ca) = kahan_inc(delta * (x.1 - (mean + cm)), aux, ca);
            }
            let var = (aux + ca) / count;
            Some(if name == "stddev_over_time" { var.sqrt() } else { var })
        }
        other => return exec_err(format!("function {other:?} is not supported by ngxprobe")),
    })
}

fn extrapolated_rate(
    w: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.1 - first.1;
    if is_counter {
        for x in w.windows(2) {
            if x[1].1 < x[0].1 {
                result += x[0].1;
            }
        }
    }
    let mut dur_start = (first.0 - range_start) as f64 / 1000.0;
    let mut dur_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    let threshold = avg * 1.1;
    if dur_start >= threshold {
        dur_start = avg / 2.0;
    }
    if is_counter {
        let mut dur_zero = dur_start;
        if result > 0.0 && first.1 >= 0.0 {
            dur_zero = sampled * (first.1 / result);
        }
        if dur_zero < dur_start {
            dur_start = dur_zero;
        }
    }
    if dur_end >= threshold {
        dur_end = avg / 2.0;
    }
    let mut factor = if sampled != 0.0 {
        (sampled + dur_start + dur_end) / sampled
    } else {
        1.0
    };
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn linear_regression(w: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].1;
    let mut const_y = true;
    for (i, s) in w.iter().enumerate() {
        if const_y && i > 0 && s.1 != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (s.0 - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(s.1, sy, cy);
        (sxy, cxy) = kahan_inc(x * s.1, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}
