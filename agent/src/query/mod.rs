//! Query stage: PromQL engine and Prometheus HTTP API.
//!
//! Parsing is promql-parser's; evaluation is ours, over [`SeriesReader`]
//! with Prometheus 3.x semantics. Entry points: [`instant_query`],
//! [`range_query`], [`api::api_router`], [`cli::run_query_cli`].

mod admission;
pub mod aggregate;
pub mod api;
pub mod binary;
pub mod cli;
mod config;
pub mod eval;
pub mod functions;
mod go_strings;
pub mod stack;
pub mod value;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod promharness;
#[cfg(test)]
mod promqltest;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use admission::Admission;
pub use config::QueryConfig;
pub use eval::{EvalError, EvalOpts};
use promql_parser::parser::{Expr, value::ValueType};
pub use value::{RangeSeries, Value};

use crate::series::{Labels, ReadBudget, SeriesReader};
use value::Grid;

/// Engine and serving limits; the defaults are [`QueryConfig`]'s (the
/// `query:` config section), chosen for the agent's memory budget.
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// How far back an instant selector looks for a sample.
    pub lookback_delta: Duration,
    /// Default and maximum query timeout (queue wait included).
    pub timeout: Duration,
    /// Maximum samples one query may hold, counted as they are decoded.
    pub max_samples: usize,
    /// Step of subqueries written without one (Prometheus: 1m).
    pub subquery_step: Duration,
    /// Maximum points per series of a range query (Prometheus: 11,000).
    pub max_points_per_series: i64,
    /// Queries evaluated at once by the API; more wait in a queue.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot.
    pub max_queued: usize,
    /// Deepest expression tree accepted (see [`stack`]).
    pub max_depth: usize,
    /// Longest query text accepted, in bytes.
    pub max_query_length: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryConfig::default().options()
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
    /// The text is nested deeper than `query.max_depth`: errorType
    /// "bad_data", HTTP 400 (apart from BadData to be counted as a refusal).
    #[error("{0}")]
    TooDeep(String),
    /// The text is longer than `query.max_query_length`: "bad_data", 400.
    #[error("{0}")]
    TooLong(String),
}

/// Parses a PromQL expression with the default depth limit; the error
/// carries Prometheus-style position text. The caller's stack must hold
/// [`stack::query_stack_size`] of the default `max_depth` (the API's query
/// threads do; the rules thread's 2 MiB does in a release build, and rule
/// expressions come from the operator's files).
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    parse_limited(q, QueryConfig::default().max_depth, usize::MAX)
}

/// Parses with explicit limits: expressions whose tree could be deeper than
/// `max_depth` or whose text is longer than `max_len` bytes are refused before
/// the parser sees them.
pub fn parse_limited(q: &str, max_depth: usize, max_len: usize) -> Result<Expr, QueryError> {
    if q.len() > max_len {
        return Err(QueryError::TooLong(format!(
            "query is {} bytes long, more than query.max_query_length ({max_len} bytes)",
            q.len()
        )));
    }
    stack::check_depth(q, max_depth).map_err(QueryError::TooDeep)?;
    if q.trim().is_empty() {
        return Err(QueryError::BadData(
            "1:1: parse error: no expression found in input".into(),
        ));
    }
    match std::panic::catch_unwind(|| promql_parser::parser::parse(q)) {
        Ok(Ok(mut e)) => {
            go_strings::apply_go_bytes(q, &mut e);
            Ok(e)
        }
        Ok(Err(msg)) => Err(QueryError::BadData(parse_error_text(q, &msg))),
        Err(_) => Err(QueryError::BadData("parse error: invalid query".into())),
    }
}

/// Adds a `line:col:` position to a parser message when it has none, and
/// rewords promql-parser's messages where Prometheus says it differently.
fn parse_error_text(q: &str, msg: &str) -> String {
    if msg.starts_with(|c: char| c.is_ascii_digit()) {
        return format!("parse error: {msg}");
    }
    let (pos, msg) = locate_error(q, msg);
    let (line, col) = line_col(q, pos);
    format!("{line}:{col}: parse error: {msg}")
}

fn line_col(q: &str, byte: usize) -> (usize, usize) {
    let before = &q[..floor_boundary(q, byte)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn floor_boundary(q: &str, mut i: usize) -> usize {
    i = i.min(q.len());
    while !q.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where the error is (byte offset; `q.len()` = after the end) and the
/// message to show. Cheap heuristics over promql-parser's position-less
/// messages; only runs on the error path.
fn locate_error(q: &str, msg: &str) -> (usize, String) {
    static QUOTED: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let quoted = QUOTED.get_or_init(|| regex::Regex::new(r"(name|function|call to|operator) '([^']*)'").unwrap());
    // Prometheus quotes names with "..." and says "range vector"/"instant vector".
    let mut text = quoted.replace_all(msg, "$1 \"$2\"").into_owned();
    for (a, b) in [
        ("type matrix", "type range vector"),
        ("got matrix", "got range vector"),
        ("type vector", "type instant vector"),
        ("got vector", "got instant vector"),
    ] {
        text = text.replace(a, b);
    }
    let end = q.trim_end().len();
    if msg == promql_parser_invalid() {
        return match first_unviable_token(q) {
            Some((at, tok)) => (at, format!("unexpected {}", describe_token(tok))),
            None => (end, "unexpected end of input".into()),
        };
    }
    if msg.contains("unclosed left") || msg.contains("end of input") {
        let text = if msg.contains("end of input inside brackets") {
            "unclosed left bracket".into()
        } else {
            text
        };
        return (end, text);
    }
    let first = q.len() - q.trim_start().len();
    // Errors about a call: Prometheus points at the call (arity, unknown
    // function) or at the offending argument (argument type).
    if let Some(c) = quoted.captures(msg) {
        let name = c.get(2).map_or("", |m| m.as_str());
        if (c[1].starts_with("function") || c[1].starts_with("call") || c[1].starts_with("name"))
            && let Some(at) = find_call(q, name)
        {
            if msg.starts_with("expected type") {
                let open = q[at..].find('(').map_or(at, |i| at + i + 1);
                let arg = open + (q[open..].len() - q[open..].trim_start().len());
                return (arg, text);
            }
            return (at, text);
        }
        return (first, text);
    }
    if msg.starts_with("binary expression")
        || msg.starts_with("set operator")
        || msg.starts_with("wrong number of arguments")
    {
        return (first, text);
    }
    (error_position(q), text)
}

fn promql_parser_invalid() -> &'static str {
    "invalid promql query"
}

/// Byte offset of `name(` in `q` (first occurrence as a whole word).
fn find_call(q: &str, name: &str) -> Option<usize> {
    if name.is_empty() {
        return None;
    }
    let b = q.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    q.match_indices(name)
        .map(|(i, _)| i)
        .find(|&i| (i == 0 || !word(b[i - 1])) && q[i + name.len()..].trim_start().starts_with('('))
}

/// A rough PromQL tokenizer (enough to find token starts for error positions).
fn rough_tokens(q: &str) -> Vec<(usize, &str)> {
    let b = q.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' && c != b'`' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else if c.is_ascii_alphabetic()
            || c == b'_'
            || c == b':'
                && !out.last().is_some_and(|(_, t): &(usize, &str)| {
                    t.ends_with(|x: char| x.is_ascii_digit() || x.is_ascii_alphabetic())
                })
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if !c.is_ascii() {
            i += q[i..].chars().next().map_or(1, char::len_utf8);
        } else {
            let two = q.get(i..i + 2).unwrap_or("");
            i += if ["==", "!=", ">=", "<=", "=~", "!~"].contains(&two) {
                2
            } else {
                1
            };
        }
        out.push((start, &q[start..floor_boundary(q, i)]));
    }
    out
}

fn describe_token(t: &str) -> String {
    const KEYWORDS: [&str; 11] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
    ];
    let c = t.chars().next().unwrap_or(' ');
    if KEYWORDS.contains(&t.to_ascii_lowercase().as_str()) {
        format!("<{}>", t.to_ascii_lowercase())
    } else if c.is_ascii_alphabetic() || c == '_' {
        format!("identifier {t:?}")
    } else if c.is_ascii_digit() || c == '.' {
        format!("number {t:?}")
    } else if matches!(c, '"' | '\'' | '`') {
        format!("string {t}")
    } else if matches!(c, '(' | ')' | '{' | '}' | '[' | ']' | ',' | ':' | '@') {
        format!("{t:?}")
    } else {
        format!("<op:{t}>")
    }
}

/// Whether some completion makes `prefix` syntactically valid (semantic
/// errors count as valid syntax): a small set of continuations plus the
/// closers of every open bracket.
fn viable_prefix(prefix: &str) -> bool {
    let mut stack = vec![];
    for (_, t) in rough_tokens(prefix) {
        match t {
            "(" | "{" | "[" => stack.push(t),
            ")" | "}" | "]" => {
                stack.pop();
            }
            _ => {}
        }
    }
    let closers: String = stack
        .iter()
        .rev()
        .map(|t| match *t {
            "(" => ")",
            "{" => "}",
            _ => "]",
        })
        .collect();
    const PRE: [&str; 9] = ["", " x", " 1", "=\"v\"", "\"v\"", "m", ":1m", " 1m", " x=\"v\""];
    const POST: [&str; 4] = ["", " (x)", " x", " (x) (x)"];
    PRE.iter().any(|pre| {
        POST.iter().any(|post| {
            let cand = format!("{prefix}{pre}{closers}{post}");
            match std::panic::catch_unwind(|| promql_parser::parser::parse(&cand)) {
                Ok(Ok(_)) => true,
                Ok(Err(m)) => {
                    !(m == promql_parser_invalid()
                        || m.contains("unexpected")
                        || m.contains("unclosed")
                        || m.contains("end of input"))
                }
                Err(_) => false,
            }
        })
    })
}

/// The first token after which the query cannot be completed (binary search:
/// non-viability is inherited by longer prefixes), or None when every prefix
/// could continue (the input ended too early). Queries too long for this to
/// be cheap are located by the lexer instead.
fn first_unviable_token(q: &str) -> Option<(usize, &str)> {
    let toks = rough_tokens(q);
    if toks.is_empty() || q.len() > 4096 {
        return None;
    }
    let end_of = |k: usize| toks[k].0 + toks[k].1.len();
    if viable_prefix(q) {
        return None;
    }
    // Invariant: prefix through token lo-1 viable (or empty), through hi not.
    let (mut lo, mut hi) = (0usize, toks.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if viable_prefix(&q[..end_of(mid)]) {
            lo = mid + 1
        } else {
            hi = mid
        }
    }
    Some(toks[hi])
}

/// Byte offset of the longest prefix that still lexes: the first prefix
/// ending at a char boundary whose lexing fails marks the error. Long texts
/// are searched by bisection (lexing every prefix is quadratic).
fn error_position(q: &str) -> usize {
    let lexes = |i: usize| promql_parser::parser::lexer(&q[..i]).is_ok();
    let ends: Vec<usize> = q
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(q.len()))
        .collect();
    let last_ok = if q.len() <= 4096 {
        ends.iter().copied().take_while(|&i| lexes(i)).last().unwrap_or(0)
    } else {
        // Invariant: ends[lo] lexes (the empty prefix does), ends[hi] does not.
        let (mut lo, mut hi) = (0, ends.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if lexes(ends[mid]) { lo = mid } else { hi = mid }
        }
        ends[lo]
    };
    last_ok.min(q.len().saturating_sub(1))
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
pub fn instant_query_expr(
    reader: &dyn SeriesReader,
    expr: &Expr,
    t: i64,
    eo: &EvalOpts,
) -> Result<QueryResult, QueryError> {
    let ctx = eval::Ctx {
        reader,
        opts: eo,
        qstart: t,
        qend: t,
        qstep: 0,
        budget: &ReadBudget::new(eo.max_samples, eo.deadline),
    };
    let g = Grid {
        start: t,
        end: t,
        step: 1,
    };
    Ok(match ctx.eval(expr, g)? {
        Value::Scalar(v) => QueryResult::Scalar(t, v[0]),
        Value::String(s) => QueryResult::String(t, s),
        Value::Vector(vs) => QueryResult::Vector(
            vs.into_iter()
                .filter_map(|s| s.vals[0].map(|v| (s.labels, t, v)))
                .collect(),
        ),
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
    let ctx = eval::Ctx {
        reader,
        opts: eo,
        qstart: start,
        qend: end,
        qstep: step,
        budget: &ReadBudget::new(eo.max_samples, eo.deadline),
    };
    let g = Grid {
        start,
        end,
        step: step.max(1),
    };
    let series: Vec<RangeSeries> = match ctx.eval(expr, g)? {
        Value::Scalar(v) => {
            vec![RangeSeries {
                labels: Labels::default(),
                samples: v.iter().enumerate().map(|(i, x)| (g.ts(i), *x)).collect(),
            }]
        }
        Value::Vector(vs) => {
            let mut m: Vec<RangeSeries> = vs
                .into_iter()
                .map(|s| RangeSeries {
                    labels: s.labels,
                    samples: s
                        .vals
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| v.map(|x| (g.ts(i), x)))
                        .collect(),
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
pub fn instant_query(
    reader: &dyn SeriesReader,
    q: &str,
    t: i64,
    opts: &QueryOptions,
) -> Result<QueryResult, QueryError> {
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
        return Err(QueryError::BadData(
            "end timestamp must not be before start time".into(),
        ));
    }
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end
        .checked_sub(start)
        .is_none_or(|span| span / step > opts.max_points_per_series)
    {
        return Err(QueryError::BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let e = parse(q)?;
    range_query_expr(reader, &e, start, end, step, &eval_opts(opts))
}
