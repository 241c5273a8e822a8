//! Evaluator core: walks promql-parser's AST over a [`SeriesReader`] with
//! Prometheus 3.x semantics (left-open windows, lookback delta, staleness
//! markers, offset, @ incl. start()/end(), subqueries).
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use promql_parser::{
    label::MatchOp as PMatchOp,
    parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector},
};

use super::{
    aggregate, binary, functions,
    value::{Grid, RangeSeries, Series, Value},
};
use crate::series::{Labels, MatchOp, Matcher, ReadBudget, ReadError, Selection, SeriesReader, is_stale_marker};

/// Why an evaluation failed; maps onto Prometheus's API error types.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// errorType "execution" (HTTP 422).
    #[error("{0}")]
    Execution(String),
    /// errorType "timeout" (HTTP 503).
    #[error("query timed out in {0}")]
    Timeout(String),
    /// errorType "execution" (HTTP 422), Prometheus's exact text.
    #[error("query processing would load too many samples into memory in {0}")]
    TooManySamples(String),
    /// errorType "internal" (HTTP 500).
    #[error("{0}")]
    Storage(String),
}

pub(crate) fn exec_err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Execution(msg.into()))
}

/// Knobs of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalOpts {
    pub lookback_ms: i64,
    /// Step of subqueries written without one (`x[5m:]`).
    pub subquery_step_ms: i64,
    pub max_samples: usize,
    pub deadline: Option<Instant>,
}

impl Default for EvalOpts {
    fn default() -> Self {
        EvalOpts {
            lookback_ms: 5 * 60 * 1000,
            subquery_step_ms: 60 * 1000,
            max_samples: 50_000_000,
            deadline: None,
        }
    }
}

/// Hard cap on the step grid of one subquery evaluation.
pub const MAX_SUBQUERY_STEPS: u64 = 2_000_000;

pub(crate) struct Ctx<'a> {
    pub reader: &'a dyn SeriesReader,
    pub opts: &'a EvalOpts,
    /// Start and end of the top-level query, for `@ start()` / `@ end()`.
    pub qstart: i64,
    pub qend: i64,
    /// Step of the top-level query (0 for instant queries), for `step()`.
    pub qstep: i64,
    /// Samples the query holds (selected and produced) and its deadline,
    /// shared with the reader, which charges samples as it decodes them.
    pub budget: &'a ReadBudget,
}

impl From<ReadError> for EvalError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooManySamples => EvalError::TooManySamples("query execution".into()),
            ReadError::Timeout => EvalError::Timeout("expression evaluation".into()),
            e => EvalError::Storage(e.to_string()),
        }
    }
}

/// A range-vector argument prepared for per-step windowing.
pub(crate) struct RangeArg {
    pub series: Vec<RangeSeries>,
    pub range: i64,
    /// Fixed reference time (`@` minus offset), if any.
    pub fixed_ref: Option<i64>,
    pub offset: i64,
}

impl RangeArg {
    pub fn reference(&self, g: &Grid, i: usize) -> i64 {
        self.fixed_ref.unwrap_or_else(|| g.ts(i) - self.offset)
    }
}

pub(crate) fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

/// Strips parentheses (Prometheus unwraps them around range arguments).
pub(crate) fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Converts a selector's matchers (incl. the metric name and `or` sets) into
/// anchored store matchers; one inner Vec per alternative.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, EvalError> {
    let conv = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, EvalError> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        if let Some(n) = &vs.name {
            out.push(Matcher::new(MatchOp::Equal, "__name__", n).expect("equality matcher"));
        }
        for m in ms {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            let mm = Matcher::new(op, &m.name, &m.value)
                .or_else(|_| Matcher::new(op, &m.name, &escape_go_braces(&m.value)))
                .map_err(|e| EvalError::Execution(format!("invalid regular expression {:?}: {e}", m.value)))?;
            out.push(mm);
        }
        Ok(out)
    };
    let mut sets = vec![];
    if vs.matchers.or_matchers.is_empty() {
        sets.push(conv(&vs.matchers.matchers)?);
    } else {
        for alt in &vs.matchers.or_matchers {
            sets.push(conv(alt)?);
        }
    }
    Ok(sets)
}

/// Go's RE2 treats `{` that does not start a repetition as a literal; Rust's
/// regex rejects it. Escape such braces.
fn escape_go_braces(re: &str) -> String {
    let b: Vec<char> = re.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '\\' && i + 1 < b.len() {
            out.push(c);
            out.push(b[i + 1]);
            i += 2;
            continue;
        }
        if c == '{' {
            let rest: String = b[i + 1..].iter().collect();
            let valid = rest
                .find('}')
                .map(|end| {
                    let inner = &rest[..end];
                    !inner.is_empty()
                        && inner.split(',').count() <= 2
                        && inner
                            .split(',')
                            .next()
                            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                        && inner
                            .split(',')
                            .nth(1)
                            .is_none_or(|p| p.chars().all(|c| c.is_ascii_digit()))
                })
                .unwrap_or(false);
            if !valid {
                out.push('\\');
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

impl<'a> Ctx<'a> {
    pub fn check_deadline(&self) -> Result<(), EvalError> {
        if let Some(d) = self.opts.deadline
            && Instant::now() >= d
        {
            return Err(EvalError::Timeout("expression evaluation".into()));
        }
        Ok(())
    }

    pub fn count_samples(&self, n: usize) -> Result<(), EvalError> {
        Ok(self.budget.charge(n)?)
    }

    pub fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|a| match a {
            AtModifier::Start => self.qstart,
            AtModifier::End => self.qend,
            AtModifier::At(t) => system_time_ms(t),
        })
    }

    fn select(&self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<Vec<crate::series::SeriesData>, EvalError> {
        self.check_deadline()?;
        let sets = selector_matchers(vs)?;
        let mut out: Vec<crate::series::SeriesData> = vec![];
        for set in &sets {
            // The reader charges every sample it loads to the budget.
            let got = self.reader.select(&Selection::new(set, mint, maxt, self.budget))?;
            if sets.len() == 1 {
                out = got;
            } else {
                for s in got {
                    if !out.iter().any(|o| o.labels == s.labels) {
                        out.push(s);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Evaluates `e` over grid `g`.
    pub fn eval(&self, e: &Expr, g: Grid) -> Result<Value, EvalError> {
        self.check_deadline()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(vec![n.val; g.steps()])),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, g),
            Expr::Unary(u) => match self.eval(&u.expr, g)? {
                Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
                Value::Vector(vs) => {
                    let out = vs
                        .into_iter()
                        .map(|s| Series {
                            labels: s.labels.without_name(),
                            vals: s.vals.into_iter().map(|v| v.map(|x| -x)).collect(),
                        })
                        .collect();
                    Ok(Value::Vector(merge_same_labels(out, true)?))
                }
                _ => exec_err("unary expression only allowed on expressions of type scalar or instant vector"),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.eval_vector_selector(vs, g, false)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                if g.steps() != 1 || g.start != g.end {
                    return exec_err(
                        "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector",
                    );
                }
                let ra = self.eval_range_arg(e, g)?;
                let r = ra.reference(&g, 0);
                let mut out = vec![];
                for s in ra.series {
                    let w = window(&s.samples, r - ra.range, r);
                    if !w.is_empty() {
                        out.push(RangeSeries {
                            labels: s.labels,
                            samples: w.to_vec(),
                        });
                    }
                }
                Ok(Value::Matrix(out))
            }
            Expr::Aggregate(a) => aggregate::eval_aggregate(self, a, g),
            Expr::Binary(b) => binary::eval_binary(self, b, g),
            Expr::Call(c) => functions::eval_call(self, c, g),
            Expr::Extension(_) => exec_err("extension expressions are not supported"),
        }
    }

    /// Evaluates `e`, which must yield an instant vector.
    pub fn eval_vector(&self, e: &Expr, g: Grid) -> Result<Vec<Series>, EvalError> {
        match self.eval(e, g)? {
            Value::Vector(v) => Ok(v),
            Value::Scalar(_) => exec_err("expected instant vector, got scalar"),
            Value::String(_) => exec_err("expected instant vector, got string"),
            Value::Matrix(_) => exec_err("expected instant vector, got range vector"),
        }
    }

    /// Evaluates `e`, which must yield a scalar.
    pub fn eval_scalar(&self, e: &Expr, g: Grid) -> Result<Vec<f64>, EvalError> {
        match self.eval(e, g)? {
            Value::Scalar(v) => Ok(v),
            _ => exec_err("expected scalar"),
        }
    }

    /// Instant-vector selection. With `ts_mode`, values are the sample
    /// timestamps in seconds (for `timestamp()`).
    pub fn eval_vector_selector(&self, vs: &VectorSelector, g: Grid, ts_mode: bool) -> Result<Vec<Series>, EvalError> {
        let off = offset_ms(&vs.offset);
        let fixed = self.at_ms(&vs.at).map(|a| a - off);
        let n = g.steps();
        let lb = self.opts.lookback_ms;
        let (lo, hi) = match fixed {
            Some(r) => (r, r),
            None => (g.start - off, g.ts(n - 1) - off),
        };
        let data = self.select(vs, lo - lb + 1, hi)?;
        let mut out = Vec::with_capacity(data.len());
        for sd in data {
            let s = &sd.samples;
            let mut vals = vec![None; n];
            let mut j = 0usize;
            let mut any = false;
            for (i, slot) in vals.iter_mut().enumerate() {
                let r = fixed.unwrap_or_else(|| g.ts(i) - off);
                if fixed.is_some() && i > 0 {
                    // Same reference each step.
                } else {
                    while j < s.len() && s[j].0 <= r {
                        j += 1;
                    }
                }
                if j > 0 {
                    let (t, v) = s[j - 1];
                    if t > r - lb && !is_stale_marker(v) {
                        *slot = Some(if ts_mode { t as f64 / 1000.0 } else { v });
                        any = true;
                    }
                }
            }
            if any {
                out.push(Series {
                    labels: sd.labels,
                    vals,
                });
            }
        }
        self.count_samples(out.len() * n)?;
        Ok(out)
    }

    /// Prepares a matrix selector or subquery argument for windowing over `g`.
    pub fn eval_range_arg(&self, e: &Expr, g: Grid) -> Result<RangeArg, EvalError> {
        let last = g.ts(g.steps() - 1);
        match unparen(e) {
            Expr::MatrixSelector(ms) => {
                let off = offset_ms(&ms.vs.offset);
                let fixed = self.at_ms(&ms.vs.at).map(|a| a - off);
                let range = ms.range.as_millis() as i64;
                let (lo, hi) = match fixed {
                    Some(r) => (r, r),
                    None => (g.start - off, last - off),
                };
                let data = self.select(&ms.vs, lo - range + 1, hi)?;
                let series = data
                    .into_iter()
                    .map(|sd| {
                        let mut samples = sd.samples;
                        samples.retain(|(_, v)| !is_stale_marker(*v)); // in place
                        RangeSeries {
                            labels: sd.labels,
                            samples,
                        }
                    })
                    .collect();
                Ok(RangeArg {
                    series,
                    range,
                    fixed_ref: fixed,
                    offset: off,
                })
            }
            Expr::Subquery(sq) => self.eval_subquery(sq, g),
            _ => exec_err("expected range vector"),
        }
    }

    fn eval_subquery(&self, sq: &SubqueryExpr, g: Grid) -> Result<RangeArg, EvalError> {
        let off = offset_ms(&sq.offset);
        let fixed = self.at_ms(&sq.at).map(|a| a - off);
        let range = sq.range.as_millis() as i64;
        let step = sq
            .step
            .map(|s| s.as_millis() as i64)
            .unwrap_or(self.opts.subquery_step_ms)
            .max(1);
        let (lo, hi) = match fixed {
            Some(r) => (r, r),
            None => (g.start - off, g.ts(g.steps() - 1) - off),
        };
        let mut start = step * (lo - range).div_euclid(step);
        if start <= lo - range {
            start += step;
        }
        let mut series = vec![];
        if start <= hi {
            // Dense grids: refuse subqueries whose step grid alone would
            // exceed the sample budget (e.g. `x[1y:1ms]`).
            let steps = ((hi - start) / step) as u64 + 1;
            if steps > (self.opts.max_samples as u64).min(MAX_SUBQUERY_STEPS) {
                return Err(EvalError::TooManySamples("query execution".into()));
            }
            let inner = Grid { start, end: hi, step };
            match self.eval(&sq.expr, inner)? {
                Value::Vector(vs) => {
                    for s in vs {
                        let samples: Vec<(i64, f64)> = s
                            .vals
                            .iter()
                            .enumerate()
                            .filter_map(|(i, v)| v.map(|x| (inner.ts(i), x)))
                            .collect();
                        series.push(RangeSeries {
                            labels: s.labels,
                            samples,
                        });
                    }
                }
                Value::Scalar(v) => {
                    let samples = v.iter().enumerate().map(|(i, x)| (inner.ts(i), *x)).collect();
                    series.push(RangeSeries {
                        labels: Labels::default(),
                        samples,
                    });
                }
                _ => return exec_err("subquery is only allowed on instant vector"),
            }
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        Ok(RangeArg {
            series,
            range,
            fixed_ref: fixed,
            offset: off,
        })
    }
}

/// Samples with timestamp in (lo, hi].
pub(crate) fn window(s: &[(i64, f64)], lo: i64, hi: i64) -> &[(i64, f64)] {
    let a = s.partition_point(|p| p.0 <= lo);
    let b = s.partition_point(|p| p.0 <= hi);
    if a >= b { &[] } else { &s[a..b] }
}

/// Merges series with identical label sets. With `strict`, two values at the
/// same step are Prometheus's "same labelset" error; otherwise the first wins.
pub(crate) fn merge_same_labels(series: Vec<Series>, strict: bool) -> Result<Vec<Series>, EvalError> {
    use std::collections::HashMap;
    let mut idx: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for s in series {
        match idx.get(&s.labels) {
            Some(&i) => {
                let o = &mut out[i];
                for (a, b) in o.vals.iter_mut().zip(s.vals) {
                    match (a.is_some(), b) {
                        (true, Some(_)) if strict => {
                            return exec_err("vector cannot contain metrics with the same labelset");
                        }
                        (false, Some(v)) => *a = Some(v),
                        _ => {}
                    }
                }
            }
            None => {
                idx.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    Ok(out)
}
