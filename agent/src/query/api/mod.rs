//! Prometheus HTTP API (`/api/v1/...`) over a [`SeriesReader`], with
//! Prometheus's JSON shapes, error types and status codes.
//!
//! Every endpoint that parses, evaluates or walks the index goes through
//! [`Admission`]: a place in line is taken before the body is read, the
//! body is read up to its limit, then the work (parse, evaluation, JSON)
//! runs on a query thread once a slot is free. The async workers only move
//! bytes, so /metrics and /healthz answer while the API is saturated.
mod encode;
mod params;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value as J, json};

pub use encode::result_body;
use params::{Params, limit_param, match_sets, range_params, range_query_params, time_param, timeout_param};

use super::admission::{Admission, NoSlot, Refusal, SlotBody};
use super::{EvalError, QueryError, QueryOptions, instant_query_expr, parse_limited, range_query_expr, stack};
use crate::compat::time::now_ms;
use crate::series::{Labels, MetricKind, ReadBudget, Selection, SeriesReader};

#[derive(Clone)]
struct ApiState {
    reader: Arc<dyn SeriesReader>,
    opts: QueryOptions,
    admission: Arc<Admission>,
}

/// The Prometheus-compatible API; merge into the agent's router.
pub fn api_router(reader: Arc<dyn SeriesReader>, opts: QueryOptions) -> Router {
    api(reader, opts).0
}

/// The API and its admission control, whose counters (`ngxprobe_query_*`)
/// belong on /metrics.
pub fn api(reader: Arc<dyn SeriesReader>, opts: QueryOptions) -> (Router, Arc<Admission>) {
    let admission = Admission::new(
        opts.max_concurrency,
        opts.max_queued,
        stack::query_stack_size(opts.max_depth),
    );
    let st = ApiState {
        reader,
        opts,
        admission: admission.clone(),
    };
    let router = Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .with_state(st);
    (router, admission)
}

pub(crate) struct ApiError {
    kind: &'static str,
    msg: String,
    /// Set when a limit refused the request (counted by reason).
    refusal: Option<Refusal>,
}

impl ApiError {
    fn new(kind: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            kind,
            msg: msg.into(),
            refusal: None,
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new("bad_data", msg)
    }
    fn param(p: &str, msg: impl std::fmt::Display) -> Self {
        Self::bad(format!("invalid parameter {p:?}: {msg}"))
    }
    fn refused(mut self, why: Refusal) -> Self {
        self.refusal = Some(why);
        self
    }
    fn internal(msg: impl Into<String>) -> Self {
        Self::new("internal", msg)
    }
    /// An error of parsing parameter `p` (keeps the refusal reason).
    fn in_param(p: &str, e: QueryError) -> Self {
        let refusal = ApiError::from(e.clone()).refusal;
        ApiError {
            refusal,
            ..Self::param(p, e)
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadData(m) => ApiError::bad(m),
            QueryError::TooDeep(m) => ApiError::bad(m).refused(Refusal::Depth),
            QueryError::TooLong(m) => ApiError::bad(m).refused(Refusal::Size),
            QueryError::Eval(EvalError::Timeout(m)) => {
                ApiError::new("timeout", format!("query timed out in {m}")).refused(Refusal::Timeout)
            }
            QueryError::Eval(EvalError::Storage(m)) => ApiError::internal(m),
            QueryError::Eval(e @ EvalError::TooManySamples(_)) => {
                ApiError::new("execution", e.to_string()).refused(Refusal::Samples)
            }
            QueryError::Eval(e) => ApiError::new("execution", e.to_string()),
        }
    }
}

impl From<crate::series::ReadError> for ApiError {
    fn from(e: crate::series::ReadError) -> Self {
        ApiError::from(QueryError::Eval(EvalError::from(e)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.kind {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "timeout" | "canceled" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({"status": "error", "errorType": self.kind, "error": self.msg});
        (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

fn ok_body(data: J) -> String {
    json!({"status": "success", "data": data}).to_string()
}

fn labels_json(l: &Labels) -> J {
    J::Object(l.0.iter().map(|(k, v)| (k.clone(), J::String(v.clone()))).collect())
}

/// What an endpoint does once it has a slot: runs on the query thread.
type Job = Box<dyn FnOnce(&ApiState, Params, Instant) -> Result<String, ApiError> + Send>;

/// The request body may be this much longer than the longest query text
/// (URL encoding triples a byte; other parameters come along).
const BODY_PER_QUERY_BYTE: usize = 4;

/// The body could not be read, and not because of our own limit: the
/// server's body limit (a layer around every route) cut it off, which is a
/// 413 as on every other route, or the client went away.
fn unreadable_body(e: &(dyn std::error::Error + 'static)) -> Response {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            let msg = "request body larger than the server accepts (web.max_request_body_bytes)";
            let mut r = ApiError::bad(msg).into_response();
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
        cause = c.source();
    }
    ApiError::bad(format!("cannot read the request body: {e}")).into_response()
}

/// Admission, body, parameters, slot, job, answer: the path of every
/// endpoint that does real work.
async fn admit_and_run(st: ApiState, req: Request, job: Job) -> Response {
    let arrived = Instant::now();
    let ticket = match st.admission.ticket() {
        Ok(t) => t,
        Err(e) => return no_slot(e).into_response(),
    };
    let (parts, body) = req.into_parts();
    let limit = st.opts.max_query_length.saturating_mul(BODY_PER_QUERY_BYTE);
    let query = parts.uri.query();
    let too_big = || {
        st.admission.refuse(Refusal::Size);
        ApiError::bad(format!(
            "request too large: query string and body may be at most {limit} bytes each ({BODY_PER_QUERY_BYTE} × query.max_query_length)"
        ))
        .into_response()
    };
    if query.is_some_and(|q| q.len() > limit) {
        return too_big();
    }
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    let body = match tokio::time::timeout(st.opts.timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => return unreadable_body(e.as_ref()),
        Err(_) => {
            st.admission.refuse(Refusal::Timeout);
            return ApiError::new("timeout", "query timed out in reading the request body").into_response();
        }
    };
    let params = match Params::new(query, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    drop(body);
    let deadline = match timeout_param(&params, &st.opts) {
        Ok(t) => arrived + t,
        Err(e) => return e.into_response(),
    };
    let admission = st.admission.clone();
    let send_time = st.opts.timeout;
    let state = st.clone();
    let answer = admission
        .run(ticket, deadline, move || job(&state, params, deadline))
        .await;
    match answer {
        Ok((Ok(Ok(text)), slot)) => (
            [(header::CONTENT_TYPE, "application/json")],
            SlotBody::body(Bytes::from(text), slot, send_time),
        )
            .into_response(),
        Ok((Ok(Err(e)), _slot)) => {
            if let Some(why) = e.refusal {
                admission.refuse(why);
            }
            e.into_response()
        }
        Ok((Err(_panic), _slot)) => ApiError::internal("query evaluation panicked").into_response(),
        Err(e) => no_slot(e).into_response(),
    }
}

fn no_slot(e: NoSlot) -> ApiError {
    match e {
        NoSlot::QueueFull { running, queued } => ApiError::new(
            "unavailable",
            format!(
                "too many queries: {running} running and {queued} waiting (query.max_concurrency, query.max_queued); retry later"
            ),
        ),
        NoSlot::Timeout => ApiError::new("timeout", "query timed out in query queue"),
        NoSlot::Thread(e) => ApiError::new("unavailable", format!("cannot start a query thread: {e}")),
    }
}

fn eval_opts(opts: &QueryOptions, deadline: Instant) -> super::EvalOpts {
    super::EvalOpts {
        lookback_ms: i64::try_from(opts.lookback_delta.as_millis()).unwrap_or(i64::MAX),
        subquery_step_ms: i64::try_from(opts.subquery_step.as_millis()).unwrap_or(i64::MAX).max(1),
        max_samples: opts.max_samples,
        deadline: Some(deadline),
    }
}

fn query_param(st: &ApiState, p: &Params) -> Result<promql_parser::parser::Expr, ApiError> {
    parse_limited(
        p.get("query").unwrap_or(""),
        st.opts.max_depth,
        st.opts.max_query_length,
    )
    .map_err(|e| ApiError::in_param("query", e))
}

async fn query(State(st): State<ApiState>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(|st, p, deadline| {
            let limit = limit_param(&p)?;
            let t = time_param(&p, "time", now_ms())?;
            let expr = query_param(st, &p)?;
            let r = instant_query_expr(st.reader.as_ref(), &expr, t, &eval_opts(&st.opts, deadline))?;
            Ok(result_body(&r, limit))
        }),
    )
    .await
}

async fn query_range(State(st): State<ApiState>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(|st, p, deadline| {
            let limit = limit_param(&p)?;
            let (start, end, step) = range_query_params(&p, &st.opts)?;
            let expr = query_param(st, &p)?;
            let eo = eval_opts(&st.opts, deadline);
            let r = range_query_expr(st.reader.as_ref(), &expr, start, end, step, &eo)?;
            Ok(result_body(&r, limit))
        }),
    )
    .await
}

/// The budget of an index walk: no samples are read, the deadline applies.
fn index_budget(st: &ApiState, deadline: Instant) -> ReadBudget {
    ReadBudget::new(st.opts.max_samples, Some(deadline))
}

async fn series(State(st): State<ApiState>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(|st, p, deadline| {
            let limit = limit_param(&p)?;
            let sets = match_sets(&p, &st.opts)?;
            if sets.is_empty() {
                return Err(ApiError::bad("no match[] parameter provided"));
            }
            let (s, e) = range_params(&p)?;
            let budget = index_budget(st, deadline);
            let mut all: Vec<Labels> = vec![];
            for set in &sets {
                all.extend(st.reader.series(&Selection::new(set, s, e, &budget))?);
            }
            all.sort();
            all.dedup();
            if limit > 0 {
                all.truncate(limit);
            }
            Ok(ok_body(J::Array(all.iter().map(labels_json).collect())))
        }),
    )
    .await
}

/// Sorted, deduplicated, limited strings over each `match[]` set (or all
/// series): label names or the values of one label.
fn label_strings(
    st: &ApiState,
    p: &Params,
    deadline: Instant,
    each: impl Fn(&Selection) -> Result<Vec<String>, crate::series::ReadError>,
) -> Result<String, ApiError> {
    let limit = limit_param(p)?;
    let sets = match_sets(p, &st.opts)?;
    let (s, e) = range_params(p)?;
    let sets = if sets.is_empty() { vec![vec![]] } else { sets };
    let budget = index_budget(st, deadline);
    let mut out = vec![];
    for set in &sets {
        out.extend(each(&Selection::new(set, s, e, &budget))?);
    }
    out.sort();
    out.dedup();
    if limit > 0 {
        out.truncate(limit);
    }
    Ok(ok_body(json!(out)))
}

async fn labels(State(st): State<ApiState>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(|st, p, deadline| label_strings(st, &p, deadline, |sel| st.reader.label_names(sel))),
    )
    .await
}

async fn label_values(State(st): State<ApiState>, Path(name): Path<String>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(move |st, p, deadline| {
            if name.starts_with("U__") {
                return Err(ApiError::bad("UTF-8 escaped label names are not supported"));
            }
            if name.is_empty() {
                return Err(ApiError::bad(format!("invalid label name: {name:?}")));
            }
            label_strings(st, &p, deadline, |sel| st.reader.label_values(&name, sel))
        }),
    )
    .await
}

async fn format_query(State(st): State<ApiState>, req: Request) -> Response {
    admit_and_run(
        st,
        req,
        Box::new(|st, p, _| Ok(ok_body(json!(query_param(st, &p)?.prettify())))),
    )
    .await
}

/// Metadata is a small in-memory map: answered on the async worker.
async fn metadata(State(st): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let r = (|| -> Result<String, ApiError> {
        let p = Params::new(q.as_deref(), &[])?;
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
        Ok(ok_body(J::Object(m)))
    })();
    match r {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn buildinfo() -> Response {
    let body = ok_body(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests;
