//! The interface between the rules stage (which decides what fires) and the
//! notify stage (which groups, routes and delivers). Shapes follow what
//! Prometheus posts to Alertmanager's /api/v2/alerts.
use std::{collections::BTreeMap, time::SystemTime};

/// One alert as the rules stage hands it on.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Identity of the alert (alertname + labels). Sorted.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: SystemTime,
    /// For a firing alert: a time in the future past which the alert is
    /// considered resolved unless sent again (Prometheus: now + 4 × max(resend
    /// delay, eval interval)). For a resolved alert: when it resolved.
    pub ends_at: SystemTime,
    pub generator_url: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("")
    }

    /// Resolved as of `now` (Alertmanager's rule: EndsAt not after now).
    pub fn resolved_at(&self, now: SystemTime) -> bool {
        self.ends_at <= now
    }
}

/// Where the rules stage sends alerts: the built-in notifier, external
/// Alertmanagers, or both. Must not block the caller for long.
pub trait AlertSink: Send + Sync {
    fn send(&self, alerts: Vec<Alert>);
}
