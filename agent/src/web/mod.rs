//! The browser page: nginx at a glance, served from the agent's own binary.
//!
//! `/` is a small hand-written single-page app (HTML, CSS, JS embedded with
//! `include_bytes!`, uPlot vendored for the graphs: no CDN, works offline).
//! The page reads everything through the Prometheus-compatible API the agent
//! already serves (`/api/v1/...`, PromQL over the `ngxprobe_*` self-metrics
//! too); the one thing the API lacks is the agent's own settings (retention,
//! store path, rule files, receivers), which `/ui/api/status` answers.
//!
//! Assets are served under content-hashed paths (`/ui/<hash>/<name>`) with a
//! year-long immutable cache; the page itself revalidates with an ETag.
//! Responses are gzip-compressed when the browser asks.
mod assets;
mod status;

pub use status::{AgentInfo, ReceiverInfo, RulesInfo, StorageInfo};

use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use tower_http::compression::CompressionLayer;

/// The page's routes: `/`, `/ui/<hash>/<asset>`, `/ui/api/status`. Merge
/// into the agent's router next to the API; `telemetry_path` is linked from
/// the page.
pub fn router(info: AgentInfo) -> Router {
    let site = Arc::new(assets::Site::new(&info.telemetry_path));
    let status = Arc::new(status::StatusState::new(info));
    let pages = Router::new()
        .route("/", get(assets::index))
        .route("/ui/{hash}/{name}", get(assets::asset))
        .with_state(site);
    let api = Router::new()
        .route("/ui/api/status", get(status::status))
        .with_state(status);
    pages.merge(api).layer(CompressionLayer::new().gzip(true))
}

#[cfg(test)]
mod tests;
