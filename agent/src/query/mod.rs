//! Query stage: PromQL engine and Prometheus HTTP API (see issue 4).
//!
//! Parsing is promql-parser's; evaluation is ours, over [`SeriesReader`]
//! with Prometheus 3.x semantics. Entry points: [`instant_query`],
//! [`range_query`], [`api::api_router`], [`cli::run_query_cli`].
#![allow(dead_code)]

pub mod aggregate;
pub mod api;
pub mod binary;
pub mod cli;
pub mod eval;
pub mod functions;
pub mod value;

#[cfg(test)]
mod differential;
#[cfg(test)]
pub(crate) mod promharness;
#[cfg(test)]
mod promqltest;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::{cell::Cell, time::Duration};

pub use eval::{EvalError, EvalOpts};
use promql_parser::parser::{value::ValueType, Expr};
pub use value::{RangeSeries, Value};

use crate::series::{Labels, SeriesReader};
use value::Grid;

/// Engine limits and defaults (Prometheus's defaults unless noted).
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// How far back an instant selector looks for a sample (default 5m).
    pub lookback_delta: Duration,
    /// Default and maximum query timeout (default 2m).
    pub timeout: Duration,
    /// Maximum samples one query may hold (default 50,000,000).
    pub max_samples: usize,
    /// Step of subqueries written without one (default 1m).
    pub subquery_step: Duration,
    /// Maximum points per series of a range query (11,000).
    pub max_points_per_series: i64,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            lookback_delta: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            subquery_step: Duration::from_secs(60),
            max_points_per_series: 11_000,
        }
    }
}

/// A query result, shaped as the Prometheus API returns it.
#[derive(Clone, Debug)]
pub enum QueryResult {
    Scalar(i64, f64),
    String(i64, String),
    /// Instant vector: (labels, timestamp ms, value), in result order.
    Vector(Vec<(Labels, i64, f64)>),
    Matrix(Vec<RangeSeries>),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Malformed query or parameters: errorType "bad_data", HTTP 400.
    #[error("{0}")]
    BadData(String),
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Parses a PromQL expression; the error carries Prometheus-style position text.
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    if q.trim().is_empty() {
        return Err(QueryError::BadData("1:1: parse error: no expression found in input".into()));
    }
    match std::panic::catch_unwind(|| promql_parser::parser::parse(q)) {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(msg)) => Err(QueryError::BadData(parse_error_text(q, &msg))),
        Err(_) => Err(QueryError::BadData("parse error: invalid query".into())),
    }
}

/// Adds a `line:col:` position to a parser message when it has none.
fn parse_error_text(q: &str, msg: &str) -> String {
    if msg.starts_with(|c: char| c.is_ascii_digit()) {
        return format!("parse error: {msg}");
    }
    // promql-parser reports syntax errors without a position; locate the first
    // token the lexer rejects, or else point at the end of input.
    let pos = error_position(q);
    let (line, col) = line_col(q, pos);
    format!("{line}:{col}: parse error: {msg}")
}

fn line_col(q: &str, byte: usize) -> (usize, usize) {
    let before = &q[..byte.min(q.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Byte offset of the longest prefix that still lexes and parses as a
/// prefix: we find the shortest prefix at which the lexer fails, or the end.
fn error_position(q: &str) -> usize {
    // Grow the input token-wise: the first prefix ending at a char boundary
    // whose lexing fails marks the error.
    let mut last_ok = 0;
    for (i, _) in q.char_indices().chain(std::iter::once((q.len(), ' '))) {
        if promql_parser::parser::lexer(&q[..i]).is_ok() {
            last_ok = i;
        } else {
            break;
        }
    }
    last_ok.min(q.len().saturating_sub(1))
}

/// Parses a Prometheus duration such as `1h30m`, `15s`, `500ms`.
pub fn promqltest_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let nd = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if nd == 0 {
            return None;
        }
        let n: i64 = rest[..nd].parse().ok()?;
        rest = &rest[nd..];
        let ul = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let mult = match &rest[..ul] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        rest = &rest[ul..];
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

fn eval_opts(opts: &QueryOptions) -> EvalOpts {
    EvalOpts {
        lookback_ms: opts.lookback_delta.as_millis() as i64,
        subquery_step_ms: opts.subquery_step.as_millis().max(1) as i64,
        max_samples: opts.max_samples,
        deadline: Some(std::time::Instant::now() + opts.timeout),
    }
}

/// Evaluates a parsed expression at one instant (`t` in ms).
pub fn instant_query_expr(reader: &dyn SeriesReader, expr: &Expr, t: i64, eo: &EvalOpts) -> Result<QueryResult, QueryError> {
    let ctx = eval::Ctx { reader, opts: eo, qstart: t, qend: t, qstep: 0, loaded: Cell::new(0) };
    let g = Grid { start: t, end: t, step: 1 };
    Ok(match ctx.eval(expr, g)? {
        Value::Scalar(v) => QueryResult::Scalar(t, v[0]),
        Value::String(s) => QueryResult::String(t, s),
        Value::Vector(vs) => QueryResult::Vector(vs.into_iter().filter_map(|s| s.vals[0].map(|v| (s.labels, t, v))).collect()),
        Value::Matrix(m) => {
            let mut m = m;
            m.sort_by(|a, b| a.labels.cmp(&b.labels));
            QueryResult::Matrix(m)
        }
    })
}

/// Evaluates a parsed expression over [start, end] every `step` ms.
pub fn range_query_expr(
    reader: &dyn SeriesReader,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    eo: &EvalOpts,
) -> Result<QueryResult, QueryError> {
    match expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        t => {
            let name = match t {
                ValueType::Matrix => "range vector",
                ValueType::String => "string",
                _ => "unknown",
            };
            return Err(QueryError::BadData(format!(
                "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    let ctx = eval::Ctx { reader, opts: eo, qstart: start, qend: end, qstep: step, loaded: Cell::new(0) };
    let g = Grid { start, end, step: step.max(1) };
    let series: Vec<RangeSeries> = match ctx.eval(expr, g)? {
        Value::Scalar(v) => {
            vec![RangeSeries { labels: Labels::default(), samples: v.iter().enumerate().map(|(i, x)| (g.ts(i), *x)).collect() }]
        }
        Value::Vector(vs) => {
            let mut m: Vec<RangeSeries> = vs
                .into_iter()
                .map(|s| RangeSeries {
                    labels: s.labels,
                    samples: s.vals.iter().enumerate().filter_map(|(i, v)| v.map(|x| (g.ts(i), x))).collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect();
            m.sort_by(|a, b| a.labels.cmp(&b.labels));
            m
        }
        _ => return Err(QueryError::BadData("invalid expression type for range query".into())),
    };
    Ok(QueryResult::Matrix(series))
}

/// Parses and evaluates `q` at `t` (ms).
pub fn instant_query(reader: &dyn SeriesReader, q: &str, t: i64, opts: &QueryOptions) -> Result<QueryResult, QueryError> {
    let e = parse(q)?;
    instant_query_expr(reader, &e, t, &eval_opts(opts))
}

/// Parses and evaluates `q` as a range query (all times in ms).
pub fn range_query(
    reader: &dyn SeriesReader,
    q: &str,
    start: i64,
    end: i64,
    step: i64,
    opts: &QueryOptions,
) -> Result<QueryResult, QueryError> {
    if end < start {
        return Err(QueryError::BadData("end timestamp must not be before start time".into()));
    }
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if (end - start) / step > opts.max_points_per_series {
        return Err(QueryError::BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let e = parse(q)?;
    range_query_expr(reader, &e, start, end, step, &eval_opts(opts))
}
