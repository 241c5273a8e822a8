//! Per-request limits, as axum middleware: a body size limit on every
//! route, and for the API routes (everything but telemetry, health and the
//! landing page) a cap on requests in flight and a deadline. Each refusal
//! is counted in `ngxprobe_http_requests_refused_total{reason}`.
//!
//! The telemetry path has no deadline: rendering is synchronous and quick,
//! and a timer could not interrupt it anyway.
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::Semaphore;

use super::http_stats::{HttpStats, RequestRefusal};

pub struct RequestLimits {
    pub max_body_bytes: u64,
    pub api_timeout: Duration,
    pub api_in_flight: Arc<Semaphore>,
    pub stats: Arc<HttpStats>,
    /// Where /metrics is served (a route of its own in the answer counts).
    pub telemetry_path: String,
}

/// Counts every answer by route and status code
/// (`ngxprobe_http_requests_total`). The route is the router's template
/// (`/api/v1/label/{name}/values`), or the fixed path of the telemetry and
/// health endpoints, else "other": a client cannot add label values.
pub async fn count_answers(State(limits): State<Arc<RequestLimits>>, req: Request, next: Next) -> Response {
    let handler = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_string(),
        None => match req.uri().path() {
            p if p == limits.telemetry_path || p == "/healthz" || p == "/readyz" => p.to_string(),
            _ => "other".to_string(),
        },
    };
    let response = next.run(req).await;
    limits.stats.answered(&handler, response.status().as_u16());
    response
}

/// Refuses a body announced larger than the limit at once (413), and cuts
/// off one that turns out larger while the handler reads it (the handler's
/// extractor answers 413).
pub async fn limit_body(State(limits): State<Arc<RequestLimits>>, req: Request, next: Next) -> Response {
    let max = limits.max_body_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        limits.stats.request_refused(RequestRefusal::BodyTooLarge);
        let message = format!("request body larger than {max} bytes (web.max_request_body_bytes)");
        return refusal(req.uri().path(), StatusCode::PAYLOAD_TOO_LARGE, "bad_data", &message);
    }
    let (parts, body) = req.into_parts();
    let stats = limits.stats.clone();
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |e| {
        if e.is::<LengthLimitError>() {
            stats.request_refused(RequestRefusal::BodyTooLarge);
        }
        e
    });
    next.run(Request::from_parts(parts, Body::new(limited))).await
}

/// At most `web.max_api_requests` API requests in flight (503 beyond, at
/// once: queueing would hold connections), each within `web.api_timeout`.
pub async fn limit_api(State(limits): State<Arc<RequestLimits>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Ok(_permit) = limits.api_in_flight.clone().try_acquire_owned() else {
        limits.stats.request_refused(RequestRefusal::TooManyRequests);
        let mut r = refusal(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many API requests in flight (web.max_api_requests); try again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let _in_flight = InFlight::new(&limits.stats);
    match tokio::time::timeout(limits.api_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            limits.stats.request_refused(RequestRefusal::Timeout);
            let message = format!("request not answered within {:?} (web.api_timeout)", limits.api_timeout);
            refusal(&path, StatusCode::SERVICE_UNAVAILABLE, "timeout", &message)
        }
    }
}

/// Counts a request in `ngxprobe_http_api_requests_in_flight` while it lives.
struct InFlight<'a>(&'a HttpStats);

impl<'a> InFlight<'a> {
    fn new(stats: &'a HttpStats) -> Self {
        stats.api_in_flight.fetch_add(1, Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.api_in_flight.fetch_sub(1, Relaxed);
    }
}

/// An error answer: Prometheus' JSON error shape on /api/ paths (what
/// Grafana and promtool parse), plain text elsewhere.
pub fn refusal(path: &str, status: StatusCode, error_type: &str, message: &str) -> Response {
    if path.starts_with("/api/") {
        let body = serde_json::json!({"status": "error", "errorType": error_type, "error": message});
        let content_type = HeaderValue::from_static("application/json");
        return (status, [(header::CONTENT_TYPE, content_type)], body.to_string()).into_response();
    }
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("{message}\n"),
    )
        .into_response()
}
