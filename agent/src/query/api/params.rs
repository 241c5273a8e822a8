//! Request parameters as Prometheus's API reads them (form values of the
//! query string and a POST body; times, durations, limits, match[]). Every
//! malformed value is a `bad_data` error naming the parameter.
use std::time::Duration;

use super::ApiError;
use crate::compat::{duration::parse_api_duration, time::parse_api_time};
use crate::query::{QueryOptions, eval, parse_limited};
use crate::series::Matcher;

/// Form values from the query string and (for POST) the urlencoded body.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(q: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let mut v: Vec<(String, String)> = match q {
            Some(q) => {
                serde_urlencoded::from_str(q).map_err(|e| ApiError::bad(format!("invalid query string: {e}")))?
            }
            None => vec![],
        };
        if !body.is_empty() {
            let b: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| ApiError::bad(format!("invalid form body: {e}")))?;
            // Body values come first, as Go's r.FormValue prefers them.
            v = b.into_iter().chain(v).collect();
        }
        Ok(Params(v))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| b.as_str())
            .filter(|s| !s.is_empty())
    }

    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(a, _)| a == k).map(|(_, b)| b.as_str()).collect()
    }
}

pub fn time_param(p: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(s) => parse_api_time(s).map_err(|e| ApiError::param(name, e)),
    }
}

/// A time parameter that must be given.
pub fn required_time(p: &Params, name: &str) -> Result<i64, ApiError> {
    match p.get(name) {
        Some(s) => parse_api_time(s).map_err(|e| ApiError::param(name, e)),
        None => Err(ApiError::param(name, "cannot parse \"\" to a valid timestamp")),
    }
}

pub fn limit_param(p: &Params) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(0),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(_) => Err(ApiError::param("limit", "limit must be non-negative")),
            Err(_) => Err(ApiError::param(
                "limit",
                format!("cannot parse \"{s}\" to a valid limit"),
            )),
        },
    }
}

/// The request's timeout: the `timeout` parameter, at most `query.timeout`.
pub fn timeout_param(p: &Params, opts: &QueryOptions) -> Result<Duration, ApiError> {
    match p.get("timeout") {
        None => Ok(opts.timeout),
        Some(s) => {
            let ms = parse_api_duration(s).map_err(|e| ApiError::param("timeout", e))?;
            Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(opts.timeout))
        }
    }
}

/// `start`, `end` and `step` of a range query, checked like Prometheus
/// (with checked arithmetic: `end - start` of extreme times overflows).
pub fn range_query_params(p: &Params, opts: &QueryOptions) -> Result<(i64, i64, i64), ApiError> {
    let start = required_time(p, "start")?;
    let end = required_time(p, "end")?;
    if end < start {
        return Err(ApiError::param("end", "end timestamp must not be before start time"));
    }
    let step = match p.get("step") {
        Some(s) => parse_api_duration(s).map_err(|e| ApiError::param("step", e))?,
        None => return Err(ApiError::param("step", "cannot parse \"\" to a valid duration")),
    };
    if step <= 0 {
        return Err(ApiError::param(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let points = end.checked_sub(start).map(|span| span / step);
    if points.is_none_or(|n| n > opts.max_points_per_series) {
        return Err(ApiError::bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    Ok((start, end, step))
}

/// `start` and `end` of the metadata endpoints (default: all time).
pub fn range_params(p: &Params) -> Result<(i64, i64), ApiError> {
    Ok((
        time_param(p, "start", i64::MIN / 2)?,
        time_param(p, "end", i64::MAX / 2)?,
    ))
}

/// Parses `match[]` selectors into matcher sets (one per alternative).
pub fn match_sets(p: &Params, opts: &QueryOptions) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut out = vec![];
    for m in p.all("match[]") {
        let e = parse_limited(m, opts.max_depth, opts.max_query_length).map_err(ApiError::from)?;
        match eval::unparen(&e) {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                out.extend(eval::selector_matchers(vs).map_err(|e| ApiError::bad(e.to_string()))?);
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "invalid parameter \"match[]\": {m}: expected a vector selector"
                )));
            }
        }
    }
    Ok(out)
}
