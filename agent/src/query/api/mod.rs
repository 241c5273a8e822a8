//! Prometheus HTTP API (`/api/v1/...`) over a [`SeriesReader`], with
//! Prometheus's JSON shapes, error types and status codes.
use std::{sync::Arc, time::Duration};

use crate::compat::{
    duration::parse_api_duration,
    time::{now_ms, parse_api_time},
};
use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value as J, json};

use super::{EvalError, QueryError, QueryOptions, QueryResult, instant_query_expr, parse, range_query_expr};
use crate::series::{Labels, MatchOp, Matcher, MetricKind, SeriesReader};

#[derive(Clone)]
struct ApiState {
    reader: Arc<dyn SeriesReader>,
    opts: QueryOptions,
}

/// The Prometheus-compatible API; merge into the agent's router.
pub fn api_router(reader: Arc<dyn SeriesReader>, opts: QueryOptions) -> Router {
    let st = ApiState { reader, opts };
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .with_state(st)
}

pub(crate) struct ApiError {
    kind: &'static str,
    msg: String,
}

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError {
            kind: "bad_data",
            msg: msg.into(),
        }
    }
    fn param(p: &str, msg: impl std::fmt::Display) -> Self {
        Self::bad(format!("invalid parameter {p:?}: {msg}"))
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadData(m) => ApiError::bad(m),
            QueryError::Eval(EvalError::Timeout(m)) => ApiError {
                kind: "timeout",
                msg: format!("query timed out in {m}"),
            },
            QueryError::Eval(EvalError::Storage(m)) => ApiError {
                kind: "internal",
                msg: m,
            },
            QueryError::Eval(e) => ApiError {
                kind: "execution",
                msg: e.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.kind {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "timeout" | "canceled" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        json_response(
            code,
            json!({"status": "error", "errorType": self.kind, "error": self.msg}),
        )
    }
}

fn json_response(code: StatusCode, v: J) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn json_body(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ok(data: J) -> Response {
    json_response(StatusCode::OK, json!({"status": "success", "data": data}))
}

/// Form values from the query string and (for POST) the urlencoded body.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(q: Option<String>, body: &Bytes) -> Result<Self, ApiError> {
        let mut v: Vec<(String, String)> = match q {
            Some(q) => {
                serde_urlencoded::from_str(&q).map_err(|e| ApiError::bad(format!("invalid query string: {e}")))?
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
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| b.as_str())
            .filter(|s| !s.is_empty())
    }
    fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(a, _)| a == k).map(|(_, b)| b.as_str()).collect()
    }
}

fn time_param(p: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(s) => parse_api_time(s).map_err(|e| ApiError::param(name, e)),
    }
}

fn limit_param(p: &Params) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(0),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n as usize),
            Ok(_) => Err(ApiError::param("limit", "limit must be non-negative")),
            Err(_) => Err(ApiError::param(
                "limit",
                format!("cannot parse \"{s}\" to a valid limit"),
            )),
        },
    }
}

fn timeout_param(p: &Params, opts: &QueryOptions) -> Result<Duration, ApiError> {
    match p.get("timeout") {
        None => Ok(opts.timeout),
        Some(s) => {
            let ms = parse_api_duration(s).map_err(|e| ApiError::param("timeout", e))?;
            Ok(Duration::from_millis(ms.max(0) as u64).min(opts.timeout))
        }
    }
}

fn labels_json(l: &Labels) -> J {
    J::Object(l.0.iter().map(|(k, v)| (k.clone(), J::String(v.clone()))).collect())
}

/// The success body of a query answer (`{"status":"success","data":...}`),
/// written straight into a string (building a `serde_json::Value` tree costs
/// more than evaluating a large range query). Same shapes and number formats
/// as Prometheus. `limit` > 0 keeps at most that many series (the API's
/// `limit` parameter); 0 keeps all.
pub fn result_body(r: &QueryResult, limit: usize) -> String {
    let lim = |n: usize| if limit == 0 { n } else { n.min(limit) };
    let mut o = String::with_capacity(64);
    o.push_str(r#"{"status":"success","data":{"resultType":"#);
    let point = |o: &mut String, t: i64, v: f64| {
        o.push('[');
        push_ts(o, t);
        o.push_str(",\"");
        crate::compat::float::push_f(o, v);
        o.push_str("\"]");
    };
    match r {
        QueryResult::Scalar(t, v) => {
            o.push_str(r#""scalar","result":"#);
            point(&mut o, *t, *v);
        }
        QueryResult::String(t, s) => {
            o.push_str(r#""string","result":["#);
            push_ts(&mut o, *t);
            o.push(',');
            push_str(&mut o, s);
            o.push(']');
        }
        QueryResult::Vector(vs) => {
            o.push_str(r#""vector","result":["#);
            for (i, (l, t, v)) in vs.iter().take(lim(vs.len())).enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(r#"{"metric":"#);
                push_labels(&mut o, l);
                o.push_str(r#","value":"#);
                point(&mut o, *t, *v);
                o.push('}');
            }
            o.push(']');
        }
        QueryResult::Matrix(m) => {
            o.push_str(r#""matrix","result":["#);
            let points: usize = m.iter().take(lim(m.len())).map(|s| s.samples.len()).sum();
            // `[1763712000.123,"0.13333333333333333"],` is ~40 bytes: one
            // allocation instead of a doubling (and a 10+ MB copy) at the end.
            o.reserve(points * 42);
            for (i, s) in m.iter().take(lim(m.len())).enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str(r#"{"metric":"#);
                push_labels(&mut o, &s.labels);
                o.push_str(r#","values":["#);
                for (k, (t, v)) in s.samples.iter().enumerate() {
                    if k > 0 {
                        o.push(',');
                    }
                    point(&mut o, *t, *v);
                }
                o.push_str("]}");
            }
            o.push(']');
        }
    }
    o.push_str("}}");
    o
}

/// Unix seconds as Prometheus writes them: `1700000000`, `1700000000.5`
/// (no allocation: this runs once per point of a range query).
fn push_ts(o: &mut String, t: i64) {
    use std::fmt::Write as _;
    if t < 0 {
        // Exact and simple for the rare negative timestamp.
        let _ = write!(o, "{}", t as f64 / 1000.0);
        return;
    }
    let (mut s, ms) = (t / 1000, t % 1000);
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (s % 10) as u8;
        s /= 10;
        if s == 0 {
            break;
        }
    }
    o.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
    if ms != 0 {
        let d = [
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
        ];
        let n = if ms % 100 == 0 {
            2
        } else if ms % 10 == 0 {
            3
        } else {
            4
        };
        o.push_str(std::str::from_utf8(&d[..n]).unwrap_or(""));
    }
}

fn push_str(o: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        o.push('"');
        o.push_str(s);
        o.push('"');
    } else {
        o.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

fn push_labels(o: &mut String, l: &Labels) {
    o.push('{');
    for (i, (k, v)) in l.0.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        push_str(o, k);
        o.push(':');
        push_str(o, v);
    }
    o.push('}');
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))).await {
        Ok(Ok(r)) => r.map_err(ApiError::from),
        _ => Err(ApiError {
            kind: "internal",
            msg: "query evaluation panicked".into(),
        }),
    }
}

fn eval_opts(opts: &QueryOptions, timeout: Duration) -> super::EvalOpts {
    super::EvalOpts {
        lookback_ms: opts.lookback_delta.as_millis() as i64,
        subquery_step_ms: opts.subquery_step.as_millis().max(1) as i64,
        max_samples: opts.max_samples,
        deadline: Some(std::time::Instant::now() + timeout),
    }
}

async fn query(State(st): State<ApiState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    match query_inner(st, q, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn query_inner(st: ApiState, q: Option<String>, body: Bytes) -> Result<Response, ApiError> {
    let p = Params::new(q, &body)?;
    let limit = limit_param(&p)?;
    let t = time_param(&p, "time", now_ms())?;
    let timeout = timeout_param(&p, &st.opts)?;
    let qs = p.get("query").unwrap_or("").to_string();
    let expr = parse(&qs).map_err(|e| ApiError::param("query", e))?;
    let eo = eval_opts(&st.opts, timeout);
    let reader = st.reader.clone();
    let r = run_blocking(move || instant_query_expr(reader.as_ref(), &expr, t, &eo)).await?;
    Ok(json_body(StatusCode::OK, result_body(&r, limit)))
}

async fn query_range(State(st): State<ApiState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    match query_range_inner(st, q, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn query_range_inner(st: ApiState, q: Option<String>, body: Bytes) -> Result<Response, ApiError> {
    let p = Params::new(q, &body)?;
    let limit = limit_param(&p)?;
    let start = match p.get("start") {
        Some(s) => parse_api_time(s).map_err(|e| ApiError::param("start", e))?,
        None => return Err(ApiError::param("start", "cannot parse \"\" to a valid timestamp")),
    };
    let end = match p.get("end") {
        Some(s) => parse_api_time(s).map_err(|e| ApiError::param("end", e))?,
        None => return Err(ApiError::param("end", "cannot parse \"\" to a valid timestamp")),
    };
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
    if (end - start) / step > st.opts.max_points_per_series {
        return Err(ApiError::bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let timeout = timeout_param(&p, &st.opts)?;
    let qs = p.get("query").unwrap_or("").to_string();
    let expr = parse(&qs).map_err(|e| ApiError::param("query", e))?;
    let eo = eval_opts(&st.opts, timeout);
    let reader = st.reader.clone();
    let r = run_blocking(move || range_query_expr(reader.as_ref(), &expr, start, end, step, &eo)).await?;
    Ok(json_body(StatusCode::OK, result_body(&r, limit)))
}

/// Parses `match[]` selectors into matcher sets.
fn match_sets(p: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut out = vec![];
    for m in p.all("match[]") {
        let e = parse(m).map_err(|e| ApiError::bad(e.to_string()))?;
        match super::eval::unparen(&e) {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                out.extend(super::eval::selector_matchers(vs).map_err(|e| ApiError::bad(e.to_string()))?);
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

fn range_params(p: &Params) -> Result<(i64, i64), ApiError> {
    Ok((
        time_param(p, "start", i64::MIN / 2)?,
        time_param(p, "end", i64::MAX / 2)?,
    ))
}

async fn series(State(st): State<ApiState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let r = (|| -> Result<Response, ApiError> {
        let p = Params::new(q, &body)?;
        let limit = limit_param(&p)?;
        let sets = match_sets(&p)?;
        if sets.is_empty() {
            return Err(ApiError::bad("no match[] parameter provided"));
        }
        let (s, e) = range_params(&p)?;
        let mut all: Vec<Labels> = vec![];
        for set in &sets {
            let got = st.reader.select(set, s, e).map_err(|e| ApiError {
                kind: "internal",
                msg: e.to_string(),
            })?;
            all.extend(got.into_iter().map(|x| x.labels));
        }
        all.sort();
        all.dedup();
        if limit > 0 {
            all.truncate(limit);
        }
        Ok(ok(J::Array(all.iter().map(labels_json).collect())))
    })();
    r.unwrap_or_else(|e| e.into_response())
}

async fn labels(State(st): State<ApiState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let r = (|| -> Result<Response, ApiError> {
        let p = Params::new(q, &body)?;
        let limit = limit_param(&p)?;
        let sets = match_sets(&p)?;
        let (s, e) = range_params(&p)?;
        let sets = if sets.is_empty() { vec![vec![]] } else { sets };
        let mut names = vec![];
        for set in &sets {
            names.extend(st.reader.label_names(set, s, e).map_err(|e| ApiError {
                kind: "internal",
                msg: e.to_string(),
            })?);
        }
        names.sort();
        names.dedup();
        if limit > 0 {
            names.truncate(limit);
        }
        Ok(ok(json!(names)))
    })();
    r.unwrap_or_else(|e| e.into_response())
}

async fn label_values(State(st): State<ApiState>, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    let r = (|| -> Result<Response, ApiError> {
        let p = Params::new(q, &Bytes::new())?;
        let limit = limit_param(&p)?;
        let name = match name.strip_prefix("U__") {
            Some(_) => return Err(ApiError::bad("UTF-8 escaped label names are not supported")),
            None => name,
        };
        if name.is_empty() {
            return Err(ApiError::bad(format!("invalid label name: {name:?}")));
        }
        let sets = match_sets(&p)?;
        let (s, e) = range_params(&p)?;
        let sets = if sets.is_empty() { vec![vec![]] } else { sets };
        let mut vals = vec![];
        for set in &sets {
            vals.extend(st.reader.label_values(&name, set, s, e).map_err(|e| ApiError {
                kind: "internal",
                msg: e.to_string(),
            })?);
        }
        vals.sort();
        vals.dedup();
        if limit > 0 {
            vals.truncate(limit);
        }
        Ok(ok(json!(vals)))
    })();
    r.unwrap_or_else(|e| e.into_response())
}

async fn metadata(State(st): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let r = (|| -> Result<Response, ApiError> {
        let p = Params::new(q, &Bytes::new())?;
        let limit = limit_param(&p)?;
        let mut m = serde_json::Map::new();
        for (name, meta) in st.reader.metadata(p.get("metric")) {
            if limit > 0 && m.len() >= limit && !m.contains_key(&name) {
                break;
            }
            let kind = match meta.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
                MetricKind::Summary => "summary",
                MetricKind::Unknown => "unknown",
            };
            let e = m.entry(name).or_insert_with(|| J::Array(vec![]));
            if let J::Array(a) = e {
                a.push(json!({"type": kind, "help": meta.help, "unit": meta.unit}));
            }
        }
        Ok(ok(J::Object(m)))
    })();
    r.unwrap_or_else(|e| e.into_response())
}

async fn buildinfo() -> Response {
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

async fn format_query(RawQuery(q): RawQuery, body: Bytes) -> Response {
    let r = (|| -> Result<Response, ApiError> {
        let p = Params::new(q, &body)?;
        let e = parse(p.get("query").unwrap_or("")).map_err(|e| ApiError::param("query", e))?;
        Ok(ok(json!(e.prettify())))
    })();
    r.unwrap_or_else(|e| e.into_response())
}

#[allow(unused)]
fn _matcher_for_name(n: &str) -> Matcher {
    Matcher::new(MatchOp::Equal, "__name__", n).expect("eq")
}
