//! `alerting.alertmanagers`: posts alerts to external Alertmanagers the way
//! Prometheus' notifier does, so a cluster Alertmanager deduplicates across
//! nodes: JSON array of {labels, annotations, startsAt, endsAt,
//! generatorURL} to `<scheme>://<target><path_prefix>/api/v2/alerts`, in
//! batches of at most 64, to every Alertmanager; a bounded queue that drops
//! the oldest alerts when full; no retries (the rules stage re-sends active
//! alerts every resend interval, and resolved ones for a while).
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::compile::UrlSource;
use super::config::{Authorization, BasicAuth, HttpConfig, TlsConfig};
use crate::alerts::{Alert, AlertSink};
use crate::compat::PromDuration;
use crate::compat::time::rfc3339_millis;
use crate::metrics::{Family, MetricType};

pub const MAX_BATCH: usize = 64;
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Prometheus' `alerting:` block (the part ngxprobe uses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    pub alertmanagers: Vec<AlertmanagerTarget>,
}

/// One `alertmanagers:` entry, Prometheus syntax (static targets only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerTarget {
    pub scheme: String,
    pub path_prefix: String,
    pub timeout: PromDuration,
    pub api_version: String,
    pub static_configs: Vec<StaticConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
}

impl Default for AlertmanagerTarget {
    fn default() -> Self {
        AlertmanagerTarget {
            scheme: "http".into(),
            path_prefix: String::new(),
            timeout: PromDuration::from_secs(10),
            api_version: "v2".into(),
            static_configs: Vec::new(),
            basic_auth: None,
            authorization: None,
            tls_config: None,
            follow_redirects: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticConfig {
    /// `host:port`, or `user:pass@host:port` (basic auth): shown redacted.
    #[serde(serialize_with = "redacted_targets")]
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn redacted_targets<S: serde::Serializer>(targets: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(targets.iter().map(|t| crate::secret::redact_url(t)))
}

struct Endpoint {
    /// The real URL: may carry `user:pass@` (basic auth), so it is only
    /// used for the request.
    url: String,
    /// `url` with user-info redacted: the metric label and what logs show.
    label: String,
    http: HttpConfig,
    client: reqwest::Client,
    sent: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    queue: Mutex<VecDeque<Alert>>,
    capacity: usize,
    wake: tokio::sync::Notify,
    endpoints: Vec<Endpoint>,
    dropped: AtomicU64,
}

/// An [`AlertSink`] that forwards to external Alertmanagers.
#[derive(Clone)]
pub struct ForwardingSink {
    shared: Arc<Shared>,
}

/// The body Prometheus posts to /api/v2/alerts.
pub fn alerts_body(alerts: &[Alert]) -> serde_json::Value {
    serde_json::Value::Array(
        alerts
            .iter()
            .map(|a| {
                let mut v = json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339_millis(a.starts_at),
                    "generatorURL": a.generator_url,
                });
                if a.ends_at != UNIX_EPOCH {
                    v["endsAt"] = json!(rfc3339_millis(a.ends_at));
                }
                v
            })
            .collect(),
    )
}

impl ForwardingSink {
    pub fn new(cfg: &AlertingConfig) -> Result<ForwardingSink, super::NotifyError> {
        Self::with_capacity(cfg, DEFAULT_QUEUE_CAPACITY)
    }

    pub fn with_capacity(cfg: &AlertingConfig, capacity: usize) -> Result<ForwardingSink, super::NotifyError> {
        let mut endpoints = Vec::new();
        for (i, am) in cfg.alertmanagers.iter().enumerate() {
            if am.api_version != "v2" {
                return Err(super::NotifyError::Other(format!(
                    "alerting.alertmanagers[{i}].api_version: only v2 is supported, got {:?}",
                    am.api_version
                )));
            }
            if am.scheme != "http" && am.scheme != "https" {
                return Err(super::NotifyError::Other(format!(
                    "alerting.alertmanagers[{i}].scheme: expected http or https, got {:?}",
                    am.scheme
                )));
            }
            let http = HttpConfig {
                follow_redirects: am.follow_redirects,
                tls_config: am.tls_config.clone(),
                basic_auth: am.basic_auth.clone(),
                authorization: am.authorization.clone(),
                timeout: Some(am.timeout),
                ..HttpConfig::default()
            };
            let client = super::deliver::build_client(&http)
                .map_err(|e| super::NotifyError::Other(format!("alerting.alertmanagers[{i}]: {e}")))?;
            for sc in &am.static_configs {
                for t in &sc.targets {
                    let prefix = am.path_prefix.trim_end_matches('/');
                    let url = format!("{}://{}{}/api/v2/alerts", am.scheme, t, prefix);
                    endpoints.push(Endpoint {
                        label: crate::secret::redact_url(&url),
                        url,
                        http: http.clone(),
                        client: client.clone(),
                        sent: AtomicU64::new(0),
                        errors: AtomicU64::new(0),
                    });
                }
            }
        }
        Ok(ForwardingSink {
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                wake: tokio::sync::Notify::new(),
                endpoints,
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// Sends queued alerts until `shutdown`; then a last flush of the queue.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.flush().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.shared.wake.notified() => {}
            }
        }
        self.flush().await;
    }

    async fn flush(&self) {
        for _ in 0..1000 {
            let batch: Vec<Alert> = {
                let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let body = match serde_json::to_vec(&alerts_body(&batch)) {
                Ok(b) => b,
                Err(_) => return,
            };
            let mut set = tokio::task::JoinSet::new();
            for i in 0..self.shared.endpoints.len() {
                let shared = self.shared.clone();
                let body = body.clone();
                let n = batch.len() as u64;
                set.spawn(async move {
                    let ep = &shared.endpoints[i];
                    let url = UrlSource::Inline(crate::secret::Secret::new(ep.url.clone()));
                    match super::deliver::attempt(&ep.client, &url, &ep.http, &body).await {
                        Ok(()) => {
                            ep.sent.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            ep.errors.fetch_add(n, Ordering::Relaxed);
                            tracing::warn!(alertmanager = %ep.label, error = %e.message, count = n, "error sending alerts");
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// Prometheus' `prometheus_notifications_*` as `ngxprobe_notify_forward_*`.
    pub fn self_families(&self) -> Vec<Family> {
        let mut sent = Family::new(
            "ngxprobe_notify_forward_sent_total",
            "Alerts sent to external Alertmanagers.",
            MetricType::Counter,
        );
        let mut errors = Family::new(
            "ngxprobe_notify_forward_errors_total",
            "Alerts that could not be sent to an external Alertmanager.",
            MetricType::Counter,
        );
        for ep in &self.shared.endpoints {
            let l = [("alertmanager", ep.label.as_str())];
            sent.push(&l, ep.sent.load(Ordering::Relaxed) as f64);
            errors.push(&l, ep.errors.load(Ordering::Relaxed) as f64);
        }
        let mut dropped = Family::new(
            "ngxprobe_notify_forward_dropped_total",
            "Alerts dropped because the forwarding queue was full.",
            MetricType::Counter,
        );
        dropped.push(&[], self.shared.dropped.load(Ordering::Relaxed) as f64);
        let mut qlen = Family::new(
            "ngxprobe_notify_forward_queue_length",
            "Alerts waiting to be forwarded.",
            MetricType::Gauge,
        );
        qlen.push(&[], self.shared.queue.lock().map(|q| q.len()).unwrap_or(0) as f64);
        vec![sent, errors, dropped, qlen]
    }
}

impl AlertSink for ForwardingSink {
    fn send(&self, alerts: Vec<Alert>) {
        if self.shared.endpoints.is_empty() {
            return;
        }
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.extend(alerts);
            // Prometheus drops the oldest alerts when the queue overflows.
            let over = q.len().saturating_sub(self.shared.capacity);
            if over > 0 {
                q.drain(..over);
                self.shared.dropped.fetch_add(over as u64, Ordering::Relaxed);
            }
        }
        self.shared.wake.notify_one();
    }
}
