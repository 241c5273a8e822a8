//! Notify stage: Alertmanager-compatible routing, grouping and Slack/webhook
//! delivery, plus forwarding to external Alertmanagers.
//!
//! Flow: [`AlertSink::send`] → bounded queue (drops counted) → the run loop
//! feeds the [`dispatch::Dispatcher`] (alert store, aggregation groups,
//! inhibition) → due groups become flush jobs → per integration the
//! notification log decides whether to send → delivery tasks retry with
//! backoff until the flush deadline → successes are written to the
//! notification log, which is persisted (with the pending alerts) to
//! `<data_dir>/nflog.json` so a restart neither re-sends nor forgets.

mod clock;
pub mod compile;
pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod forward;
pub mod matchers;
pub mod template;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::alerts::{Alert, AlertSink};
use crate::compat::InvalidField;
use crate::metrics::{Family, MetricType};
use compile::{Compiled, IntegrationKind, UrlSource};
use config::HttpConfig;
use dispatch::{Dispatcher, FlushJob, Nflog, NflogEntry, StoredAlert};
use template::{TemplateAlert, TemplateData};

pub use config::{NotifyConfig, Origin, load_file, load_section, parse};
pub use forward::{AlertingConfig, AlertmanagerTarget, ForwardingSink};

/// How many alert batches may wait for the run loop before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
const STATE_FILE: &str = "nflog.json";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A config problem: `FILE:LINE:COL: field.path: message`.
    #[error("{0}")]
    Config(Box<InvalidField>),
    #[error("{}: cannot read alertmanager config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("notify data dir {}: {message}", path.display())]
    DataDir { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

/// Persisted state: the notification log and the alerts still pending.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    nflog: BTreeMap<String, NflogEntry>,
    alerts: Vec<StoredAlert>,
}

#[derive(Default)]
struct IntegrationMetrics {
    notifications: u64,
    notifications_failed: u64,
    requests: u64,
    requests_failed: u64,
    latency_sum: f64,
    latency_count: u64,
}

#[derive(Default)]
struct Metrics {
    received: AtomicU64,
    dropped: AtomicU64,
    state_write_failures: AtomicU64,
    by_integration: Mutex<BTreeMap<&'static str, IntegrationMetrics>>,
    alerts: AtomicU64,
    groups: AtomicU64,
}

struct Runtime {
    dispatcher: Dispatcher,
    nflog: Nflog,
    clients: HashMap<(String, usize), reqwest::Client>,
}

struct Inner {
    tx: mpsc::Sender<Vec<Alert>>,
    rx: Mutex<Option<mpsc::Receiver<Vec<Alert>>>>,
    state: Mutex<Runtime>,
    data_dir: PathBuf,
    external_url: Mutex<String>,
    metrics: Metrics,
    wake: tokio::sync::Notify,
}

/// The built-in Alertmanager. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// One message to deliver for one integration of a flush job.
struct Delivery {
    integration: &'static str,
    nflog_key: String,
    firing: BTreeSet<u64>,
    resolved: BTreeSet<u64>,
    /// None: nothing to send, only log (resolved-only, send_resolved off).
    body: Option<Vec<u8>>,
    url: UrlSource,
    http: HttpConfig,
    client: Option<reqwest::Client>,
    render_error: Option<String>,
}

struct JobResult {
    job: FlushJob,
    outcomes: Vec<(Delivery, bool)>,
}

fn build_clients(c: &Compiled) -> Result<HashMap<(String, usize), reqwest::Client>, NotifyError> {
    let mut clients = HashMap::new();
    for r in c.receivers.values() {
        for i in &r.integrations {
            let client = deliver::build_client(&i.http).map_err(|e| {
                NotifyError::Other(format!(
                    "receiver {:?} {} #{}: http_config: {e}",
                    r.name, i.name, i.index
                ))
            })?;
            clients.insert((r.name.clone(), i.index), client);
        }
    }
    Ok(clients)
}

fn default_external_url() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_string()
    } else {
        "localhost".to_string()
    };
    format!("http://{host}:9093")
}

impl Notifier {
    /// Compiles `cfg` (templates, routes, receivers) and restores the
    /// notification log and pending alerts from `data_dir/nflog.json`.
    pub fn new(cfg: NotifyConfig, data_dir: &Path) -> Result<Notifier, NotifyError> {
        let compiled = compile::compile(&cfg)?;
        let clients = build_clients(&compiled)?;
        // Private (0700, the state file 0600): it holds every alert's labels.
        crate::private_files::create_dir_all(data_dir).map_err(|e| NotifyError::DataDir {
            path: data_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let check = crate::private_files::secure_dir(data_dir, STATE_FILE);
        crate::private_files::log_dir_check(data_dir, &check);
        let mut dispatcher = Dispatcher::new(compiled);
        let mut nflog = Nflog::default();
        let now = SystemTime::now();
        let path = data_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
                Ok(state) => {
                    nflog.entries = state.nflog;
                    nflog.gc(now);
                    for a in state.alerts {
                        dispatcher.insert_stored(a, now);
                    }
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable notification log"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NotifyError::DataDir {
                    path: path.clone(),
                    message: e.to_string(),
                });
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        Ok(Notifier {
            inner: Arc::new(Inner {
                tx,
                rx: Mutex::new(Some(rx)),
                state: Mutex::new(Runtime {
                    dispatcher,
                    nflog,
                    clients,
                }),
                data_dir: data_dir.to_path_buf(),
                external_url: Mutex::new(default_external_url()),
                metrics: Metrics::default(),
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The URL templates see as `.ExternalURL` (Alertmanager's
    /// `--web.external-url`). Default `http://<hostname>:9093`.
    pub fn set_external_url(&self, url: &str) {
        if let Ok(mut u) = self.inner.external_url.lock() {
            *u = url.trim_end_matches('/').to_string();
        }
    }

    /// Applies a new config; on error the old one stays in force.
    pub fn reload(&self, cfg: NotifyConfig) -> Result<(), NotifyError> {
        let compiled = compile::compile(&cfg)?;
        let clients = build_clients(&compiled)?;
        let mut st = self.lock();
        st.dispatcher.reload(compiled, SystemTime::now());
        st.clients = clients;
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` completes; then saves the notification log.
    /// In-flight deliveries are abandoned (and re-sent after a restart).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let Some(mut rx) = self.inner.rx.lock().ok().and_then(|mut r| r.take()) else {
            tracing::error!("Notifier::run called twice");
            return;
        };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobResult>();
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let mut dirty = true;
        // None: never saved (Instant::now() - 10s would panic within 10 s of boot).
        let mut last_save: Option<Instant> = None;
        loop {
            // Start due flushes.
            let now = SystemTime::now();
            let jobs = self.lock().dispatcher.due(now);
            for job in jobs {
                let deliveries = self.plan(&job, now);
                let done = done_tx.clone();
                let me = self.clone();
                let deadline = clock::instant_after(Instant::now(), job.timeout);
                tasks.spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut set = tokio::task::JoinSet::new();
                    for (i, d) in deliveries.into_iter().enumerate() {
                        let me = me.clone();
                        set.spawn(async move {
                            let ok = me.run_delivery(&d, deadline).await;
                            (i, d, ok)
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        if let Ok((i, d, ok)) = r {
                            outcomes.push((i, d, ok));
                        }
                    }
                    outcomes.sort_by_key(|(i, _, _)| *i);
                    let outcomes = outcomes.into_iter().map(|(_, d, ok)| (d, ok)).collect();
                    let _ = done.send(JobResult { job, outcomes });
                });
            }
            if dirty && last_save.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.save();
                dirty = false;
                last_save = Some(Instant::now());
            }
            self.update_gauges();
            let sleep_for = {
                let st = self.lock();
                st.dispatcher
                    .next_deadline()
                    .map(|t| t.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(60))
                    .min(if dirty {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(60)
                    })
            };
            tokio::select! {
                _ = &mut shutdown => break,
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let now = SystemTime::now();
                    let mut st = self.lock();
                    for a in &batch {
                        st.dispatcher.insert(a, now);
                    }
                    dirty = true;
                }
                Some(result) = done_rx.recv() => {
                    self.finish(result);
                    self.save();
                    dirty = false;
                    last_save = Some(Instant::now());
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = self.inner.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.abort_all();
        self.save();
    }

    /// Dedup (notification log) and rendering for one flush job.
    fn plan(&self, job: &FlushJob, now: SystemTime) -> Vec<Delivery> {
        let external_url = self.inner.external_url.lock().map(|u| u.clone()).unwrap_or_default();
        let st = self.lock();
        let Some(receiver) = st.dispatcher.compiled().receivers.get(&job.receiver) else {
            return Vec::new();
        };
        let firing: BTreeSet<u64> = job
            .alerts
            .iter()
            .filter(|(_, r)| !r)
            .map(|(a, _)| a.fingerprint())
            .collect();
        let resolved: BTreeSet<u64> = job
            .alerts
            .iter()
            .filter(|(_, r)| *r)
            .map(|(a, _)| a.fingerprint())
            .collect();
        let mut out = Vec::new();
        for integ in &receiver.integrations {
            let key = dispatch::nflog_key(&receiver.name, integ.name, integ.index, &job.group_key);
            if !dispatch::needs_update(
                st.nflog.get(&key),
                &firing,
                &resolved,
                integ.send_resolved,
                job.repeat_interval,
                now,
            ) {
                continue;
            }
            let mut d = Delivery {
                integration: integ.name,
                nflog_key: key,
                firing: firing.clone(),
                resolved: resolved.clone(),
                body: None,
                url: integ.url.clone(),
                http: integ.http.clone(),
                client: st.clients.get(&(receiver.name.clone(), integ.index)).cloned(),
                render_error: None,
            };
            let alerts: Vec<TemplateAlert> = job
                .alerts
                .iter()
                .filter(|(_, r)| integ.send_resolved || !r)
                .map(|(a, r)| TemplateAlert {
                    status: if *r { "resolved" } else { "firing" },
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    starts_at: a.starts_at,
                    ends_at: r.then_some(a.ends_at),
                    generator_url: a.generator_url.clone(),
                    fingerprint: a.fingerprint(),
                })
                .collect();
            if !alerts.is_empty() && (!firing.is_empty() || integ.send_resolved) {
                let data = TemplateData::new(&receiver.name, &job.group_labels, alerts, &external_url);
                let body = match &integ.kind {
                    IntegrationKind::Slack(t) => deliver::slack_body(t, &data),
                    IntegrationKind::Webhook { max_alerts } => {
                        Ok(deliver::webhook_body(&data, &job.group_key, *max_alerts))
                    }
                };
                match body.and_then(|b| serde_json::to_vec(&b).map_err(|e| e.to_string())) {
                    Ok(mut b) => {
                        b.push(b'\n'); // Go's json.Encoder ends with a newline
                        d.body = Some(b);
                    }
                    Err(e) => d.render_error = Some(e),
                }
            }
            out.push(d);
        }
        out
    }

    fn finish(&self, result: JobResult) {
        let now = SystemTime::now();
        let mut st = self.lock();
        let mut all_ok = true;
        for (d, ok) in result.outcomes {
            if ok {
                st.nflog.log(d.nflog_key, d.firing, d.resolved, now);
            } else {
                all_ok = false;
            }
        }
        st.dispatcher.complete(&result.job, all_ok);
        st.nflog.gc(now);
    }

    fn save(&self) {
        let state = {
            let st = self.lock();
            PersistedState {
                version: 1,
                nflog: st.nflog.entries.clone(),
                alerts: st.dispatcher.stored_alerts(),
            }
        };
        let path = self.inner.data_dir.join(STATE_FILE);
        if let Err(e) = write_atomically(&path, &state) {
            self.inner.metrics.state_write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), error = %e, "cannot write notification log");
        }
    }

    fn update_gauges(&self) {
        let st = self.lock();
        self.inner
            .metrics
            .alerts
            .store(st.dispatcher.alert_count() as u64, Ordering::Relaxed);
        self.inner
            .metrics
            .groups
            .store(st.dispatcher.group_count() as u64, Ordering::Relaxed);
    }

    fn record(&self, integration: &'static str, f: impl FnOnce(&mut IntegrationMetrics)) {
        if let Ok(mut m) = self.inner.metrics.by_integration.lock() {
            f(m.entry(integration).or_default());
        }
    }

    /// The stage's own metrics (`ngxprobe_notify_*`).
    pub fn self_families(&self) -> Vec<Family> {
        let m = &self.inner.metrics;
        let mut out = Vec::new();
        let mut simple = |name: &str, help: &str, kind: MetricType, v: u64| {
            let mut f = Family::new(name, help, kind);
            f.push(&[], v as f64);
            out.push(f);
        };
        simple(
            "ngxprobe_notify_alerts_received_total",
            "Alerts handed to the notifier.",
            MetricType::Counter,
            m.received.load(Ordering::Relaxed),
        );
        simple(
            "ngxprobe_notify_alerts_dropped_total",
            "Alerts dropped because the notifier queue was full.",
            MetricType::Counter,
            m.dropped.load(Ordering::Relaxed),
        );
        simple(
            "ngxprobe_notify_alerts",
            "Alerts held by the notifier (firing and recently resolved).",
            MetricType::Gauge,
            m.alerts.load(Ordering::Relaxed),
        );
        simple(
            "ngxprobe_notify_aggregation_groups",
            "Active aggregation groups.",
            MetricType::Gauge,
            m.groups.load(Ordering::Relaxed),
        );
        simple(
            "ngxprobe_notify_queue_length",
            "Alert batches waiting for the notifier.",
            MetricType::Gauge,
            (self.inner.tx.max_capacity() - self.inner.tx.capacity()) as u64,
        );
        simple(
            "ngxprobe_notify_nflog_write_failures_total",
            "Failed writes of the notification log file.",
            MetricType::Counter,
            m.state_write_failures.load(Ordering::Relaxed),
        );
        let mut fams = [
            Family::new(
                "ngxprobe_notify_notifications_total",
                "Notifications attempted (Alertmanager's alertmanager_notifications_total).",
                MetricType::Counter,
            ),
            Family::new(
                "ngxprobe_notify_notifications_failed_total",
                "Notifications that failed after all retries.",
                MetricType::Counter,
            ),
            Family::new(
                "ngxprobe_notify_notification_requests_total",
                "HTTP requests sent to integrations.",
                MetricType::Counter,
            ),
            Family::new(
                "ngxprobe_notify_notification_requests_failed_total",
                "HTTP requests to integrations that failed.",
                MetricType::Counter,
            ),
            Family::new(
                "ngxprobe_notify_notification_latency_seconds_sum",
                "Total time spent delivering notifications, retries included.",
                MetricType::Counter,
            ),
            Family::new(
                "ngxprobe_notify_notification_latency_seconds_count",
                "Deliveries timed in the latency sum.",
                MetricType::Counter,
            ),
        ];
        if let Ok(by) = m.by_integration.lock() {
            for integ in ["slack", "webhook"] {
                let z = IntegrationMetrics::default();
                let v = by.get(integ).unwrap_or(&z);
                let l = [("integration", integ)];
                fams[0].push(&l, v.notifications as f64);
                fams[1].push(&l, v.notifications_failed as f64);
                fams[2].push(&l, v.requests as f64);
                fams[3].push(&l, v.requests_failed as f64);
                fams[4].push(&l, v.latency_sum);
                fams[5].push(&l, v.latency_count as f64);
            }
        }
        out.extend(fams);
        out
    }
}

impl Notifier {
    async fn run_delivery(&self, d: &Delivery, deadline: Instant) -> bool {
        let Some(body) = &d.body else {
            if let Some(e) = &d.render_error {
                tracing::error!(integration = d.integration, error = %e, "cannot render notification");
                self.record(d.integration, |m| {
                    m.notifications += 1;
                    m.notifications_failed += 1;
                });
                return false;
            }
            return true; // log-only
        };
        let Some(client) = &d.client else { return false };
        let integration = d.integration;
        let on_attempt = |ok: bool| {
            self.record(integration, |m| {
                m.requests += 1;
                m.requests_failed += u64::from(!ok);
            })
        };
        let r = deliver::deliver(client, &d.url, &d.http, body, deadline, &on_attempt).await;
        if let Some(e) = &r.last_error {
            tracing::warn!(integration = d.integration, attempts = r.attempts, error = %e, ok = r.ok, "notification delivery");
        }
        self.record(d.integration, |m| {
            m.notifications += 1;
            m.notifications_failed += u64::from(!r.ok);
            m.latency_sum += r.latency.as_secs_f64();
            m.latency_count += 1;
        });
        r.ok
    }
}

fn write_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    {
        let mut f = crate::private_files::open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // An older version's file, or one a user copied in, may be readable by others.
        crate::private_files::tighten_file(&f)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent().and_then(|dir| std::fs::File::open(dir).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl AlertSink for Notifier {
    fn send(&self, alerts: Vec<Alert>) {
        let n = alerts.len() as u64;
        if n == 0 {
            return;
        }
        self.inner.metrics.received.fetch_add(n, Ordering::Relaxed);
        if self.inner.tx.try_send(alerts).is_err() {
            self.inner.metrics.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl AlertSink for Arc<Notifier> {
    fn send(&self, alerts: Vec<Alert>) {
        self.as_ref().send(alerts)
    }
}

/// Hands every batch to several sinks (built-in notifier and forwarding).
pub struct FanoutSink(pub Vec<Arc<dyn AlertSink>>);

impl AlertSink for FanoutSink {
    fn send(&self, alerts: Vec<Alert>) {
        if let Some((last, rest)) = self.0.split_last() {
            for s in rest {
                s.send(alerts.clone());
            }
            last.send(alerts);
        }
    }
}
