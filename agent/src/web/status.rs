//! `GET /ui/api/status`: what the page needs about the agent that neither
//! the Prometheus API nor the `ngxprobe_*` families carry — its settings
//! (store path and retention, rule files, receivers) and its clock.
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The agent's settings as the page shows them; the supervisor fills it in
/// from the config. Never carries secrets (no URLs of receivers).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentInfo {
    /// Where /metrics is served.
    pub telemetry_path: String,
    /// `None` when the store is disabled (then there is no /api/v1 either).
    pub storage: Option<StorageInfo>,
    /// `None` when rules are not evaluated (no store).
    pub rules: Option<RulesInfo>,
    /// The built-in notifier's receivers; empty without `alertmanager:`.
    pub receivers: Vec<ReceiverInfo>,
    /// External Alertmanagers alerts are forwarded to (count of entries).
    pub alertmanagers: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StorageInfo {
    pub path: String,
    /// As written in the config, e.g. `15d`.
    pub retention: String,
    pub retention_seconds: f64,
    /// 0 = unlimited.
    pub retention_size_bytes: u64,
    /// How often everything on /metrics is sampled.
    pub interval_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RulesInfo {
    pub files: Vec<String>,
    pub evaluation_interval_seconds: f64,
    pub default_rules: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceiverInfo {
    pub name: String,
    /// Integration kind (`slack`, `webhook`) → how many this receiver has.
    pub integrations: Vec<(String, usize)>,
}

pub(super) struct StatusState {
    info: AgentInfo,
    started: SystemTime,
}

impl StatusState {
    pub fn new(info: AgentInfo) -> Self {
        StatusState {
            info,
            started: SystemTime::now(),
        }
    }

    /// The response body: the settings plus version, start and current time
    /// (the page takes query times from the agent's clock, not the browser's).
    pub fn body(&self, now: SystemTime) -> serde_json::Value {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut v = serde_json::to_value(&self.info).unwrap_or_default();
        v["version"] = env!("CARGO_PKG_VERSION").into();
        v["started_unix"] = unix(self.started).into();
        v["now_unix"] = unix(now).into();
        v
    }
}

pub(super) async fn status(State(st): State<Arc<StatusState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        st.body(SystemTime::now()).to_string(),
    )
        .into_response()
}
