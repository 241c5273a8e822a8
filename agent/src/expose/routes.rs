//! What the server itself answers: the telemetry path, /healthz, /readyz and
//! a landing page.
//!
//! Routing is a single fallback handler matching the path, so no telemetry
//! path from a config file can make axum's router panic.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::http_stats::HttpStats;
use super::negotiate::{Format, negotiate};
use super::render::{render_openmetrics, render_text};
use super::{Health, process_families};
use crate::metrics::MetricsSource;

pub struct AppState {
    pub telemetry_path: String,
    /// The landing page at /: off with the API (`web.enable_api: false`).
    pub landing_page: bool,
    pub source: Arc<dyn MetricsSource>,
    pub health: Arc<Health>,
    pub stats: Arc<HttpStats>,
}

pub async fn dispatch(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut response = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = uri.path();
    if path == state.telemetry_path {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        return metrics_response(&state, negotiate(accept));
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => match state.health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
        "/" if state.landing_page => landing_page(&state.telemetry_path),
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n".to_string()),
    }
}

fn metrics_response(state: &AppState, format: Format) -> Response {
    let mut families = state.source.families();
    families.extend(process_families());
    families.extend(state.stats.families());
    let body = match format {
        Format::Text => render_text(&families),
        Format::OpenMetrics => render_openmetrics(&families),
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn landing_page(telemetry_path: &str) -> Response {
    // The path is validated to [A-Za-z0-9/_.~-], so it is safe inside HTML.
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>ngxprobe</title></head><body>\n\
         <h1>ngxprobe</h1>\n<p>nginx metrics from eBPF.</p>\n\
         <ul><li><a href=\"{telemetry_path}\">Metrics</a></li>\n\
         <li><a href=\"/healthz\">Health</a></li>\n<li><a href=\"/readyz\">Readiness</a></li></ul>\n\
         </body></html>\n"
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
