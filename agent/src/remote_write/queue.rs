//! One endpoint's loop: read the WAL through its cursor, relabel, batch
//! (`max_samples_per_send` or `batch_send_deadline`, whichever first), send
//! with retries, then commit the cursor. Like Prometheus' queue manager:
//! network errors, 5xx and (with `retry_on_http_429`) 429 are retried with
//! exponential backoff from `min_backoff` to `max_backoff`, a Retry-After
//! header replacing the backoff; any other 4xx fails the batch for good
//! (samples_failed_total). The position is committed only after a batch was
//! delivered or failed for good, so a stop, crash or outage resends from there.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::config::RemoteWriteConfig;
use super::wire;
use crate::compat::relabel;
use crate::http_client::HttpConfig;
use crate::series::Labels;
use crate::store::{Store, WalBatch, WalCursor, WalPosition};
use crate::worker::Shutdown;

/// How often the WAL is polled for new records when there was nothing new
/// (the store writes it once per ingest tick).
const POLL: Duration = Duration::from_millis(200);
/// A Retry-After longer than this is treated as this (keeps a hostile
/// receiver from parking the queue for years).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const MAX_ERROR_BODY: usize = 512;

#[derive(Default)]
pub struct Stats {
    pub samples: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    /// Sum of send durations in microseconds.
    pub batch_micros: AtomicU64,
    /// Newest sample timestamp read from the WAL (ms).
    pub highest_read_ms: AtomicI64,
    /// Newest sample timestamp delivered (ms).
    pub highest_sent_ms: AtomicI64,
    pub pending: AtomicU64,
    pub segments_skipped: AtomicU64,
}

pub struct Endpoint {
    pub cfg: RemoteWriteConfig,
    /// `global.external_labels`, sorted by name.
    external_labels: Vec<(String, String)>,
    pub name: String,
    /// The url with user-info redacted: metric label and logs.
    pub url_label: String,
    http: HttpConfig,
    client: reqwest::Client,
    pub stats: Stats,
}

/// Samples read but not yet sent, grouped by (relabeled) series.
#[derive(Default)]
struct Pending {
    series: Vec<(Labels, Vec<(i64, f64)>)>,
    index: HashMap<Labels, usize>,
    samples: usize,
    since: Option<Instant>,
}

impl Pending {
    fn clear(&mut self) {
        *self = Pending::default();
    }
}

enum Outcome {
    Delivered,
    Failed,
    Stopped,
}

impl Endpoint {
    pub fn new(cfg: RemoteWriteConfig, external_labels: Vec<(String, String)>) -> Result<Endpoint, String> {
        let http = cfg.http().map_err(|(f, m)| format!("{f}: {m}"))?;
        let client = crate::http_client::build_client(&http)?;
        Ok(Endpoint {
            name: cfg.queue_name(),
            url_label: crate::secret::redact_url(&cfg.url),
            external_labels,
            http,
            client,
            cfg,
            stats: Stats {
                highest_read_ms: AtomicI64::new(0),
                highest_sent_ms: AtomicI64::new(0),
                ..Stats::default()
            },
        })
    }

    /// Adds the external labels, relabels a batch into `p`; samples of
    /// dropped series are counted.
    fn take(&self, batch: WalBatch, p: &mut Pending) {
        self.stats.dropped.fetch_add(batch.unknown_series, Relaxed);
        self.stats.segments_skipped.fetch_add(batch.segments_skipped, Relaxed);
        for (labels, samples) in batch.series {
            if let Some(&(t, _)) = samples.last() {
                self.stats.highest_read_ms.fetch_max(t, Relaxed);
            }
            // Prometheus's order: external labels first, then write_relabel_configs
            // (which can therefore match, rewrite or drop them).
            let labels = with_external_labels(labels, &self.external_labels);
            let labels = match self.cfg.write_relabel_configs.is_empty() {
                true => labels,
                false => {
                    let map: BTreeMap<String, String> = labels.0.into_iter().collect();
                    match relabel::process(&map, &self.cfg.write_relabel_configs) {
                        Some(m) if !m.is_empty() => Labels(m.into_iter().collect()),
                        _ => {
                            self.stats.dropped.fetch_add(samples.len() as u64, Relaxed);
                            continue;
                        }
                    }
                }
            };
            p.samples += samples.len();
            match p.index.get(&labels) {
                Some(&i) => p.series[i].1.extend(samples),
                None => {
                    p.index.insert(labels.clone(), p.series.len());
                    p.series.push((labels, samples));
                }
            }
        }
        if p.samples > 0 && p.since.is_none() {
            p.since = Some(Instant::now());
        }
        self.stats.pending.store(p.samples as u64, Relaxed);
    }

    /// The loop; returns when `stop` fires (the unsent batch is resent by
    /// the next start, from the committed position).
    pub async fn run(self: Arc<Self>, store: Arc<Store>, mut cursor: WalCursor, stop: Shutdown) {
        let q = self.cfg.queue_config.clone();
        let deadline = q.batch_send_deadline.as_duration();
        let mut pending = Pending::default();
        let mut committed = cursor.position();
        let mut read_to = committed;
        let mut last_commit = Instant::now();
        let mut read_failing = false;
        info!(remote_name = %self.name, url = %self.url_label, position = ?committed, "remote_write: started");
        while !stop.is_triggered() {
            let room = q.max_samples_per_send.saturating_sub(pending.samples);
            let mut got_new = false;
            if room > 0 {
                let st = store.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let r = cursor.read(&st, room);
                    (cursor, r)
                })
                .await;
                let (c, r) = match res {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(remote_name = %self.name, error = %e, "remote_write: WAL reader panicked (bug); queue stopped");
                        return;
                    }
                };
                cursor = c;
                match r {
                    Ok(batch) => {
                        if read_failing {
                            info!(remote_name = %self.name, "remote_write: reading the WAL works again");
                            read_failing = false;
                        }
                        got_new = batch.end != read_to;
                        read_to = batch.end;
                        self.take(batch, &mut pending);
                    }
                    Err(e) => {
                        if !read_failing {
                            warn!(remote_name = %self.name, error = %e, "remote_write: cannot read the WAL; retrying");
                            read_failing = true;
                        }
                    }
                }
            }
            let full = pending.samples >= q.max_samples_per_send;
            let due = pending.since.is_some_and(|s| s.elapsed() >= deadline);
            if pending.samples > 0 && (full || due) {
                match self.send(&pending, &stop).await {
                    Outcome::Stopped => return,
                    Outcome::Delivered | Outcome::Failed => {}
                }
                pending.clear();
                self.stats.pending.store(0, Relaxed);
                self.commit(&store, &cursor, read_to);
                committed = read_to;
                last_commit = Instant::now();
                continue;
            }
            if pending.samples == 0 && read_to != committed && last_commit.elapsed() >= deadline {
                // Only checkpoint copies or dropped series: move the position on anyway.
                self.commit(&store, &cursor, read_to);
                committed = read_to;
                last_commit = Instant::now();
            }
            if !got_new || room == 0 {
                let wait = match pending.since {
                    Some(s) => deadline.saturating_sub(s.elapsed()).min(POLL),
                    None => POLL,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => return,
                }
            }
        }
    }

    fn commit(&self, store: &Store, cursor: &WalCursor, pos: WalPosition) {
        if let Err(e) = store.commit_wal_cursor(cursor, pos) {
            warn!(remote_name = %self.name, error = %e, "remote_write: cannot save the WAL position; a restart would resend from the previous one");
        }
    }

    /// Sends one batch, retrying what can be retried until delivered, failed
    /// for good, or stopped.
    async fn send(&self, p: &Pending, stop: &Shutdown) -> Outcome {
        let n = p.samples as u64;
        let body = match wire::encode(&p.series) {
            Ok(b) => b,
            Err(e) => {
                warn!(remote_name = %self.name, error = %e, "remote_write: cannot compress a batch (bug); dropped");
                self.stats.failed.fetch_add(n, Relaxed);
                return Outcome::Failed;
            }
        };
        let newest = p
            .series
            .iter()
            .filter_map(|(_, s)| s.last().map(|x| x.0))
            .max()
            .unwrap_or(0);
        let q = &self.cfg.queue_config;
        let mut backoff = q.min_backoff.as_duration();
        let mut failing = false;
        loop {
            let started = Instant::now();
            let res = self.attempt(&body).await;
            self.stats.batches.fetch_add(1, Relaxed);
            self.stats
                .batch_micros
                .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
            self.stats.bytes.fetch_add(body.len() as u64, Relaxed);
            match res {
                Ok(()) => {
                    if failing {
                        info!(remote_name = %self.name, url = %self.url_label, "remote_write: receiver accepts samples again");
                    }
                    self.stats.samples.fetch_add(n, Relaxed);
                    self.stats.highest_sent_ms.fetch_max(newest, Relaxed);
                    return Outcome::Delivered;
                }
                Err(Attempt::Fatal(msg)) => {
                    warn!(remote_name = %self.name, url = %self.url_label, samples = n, error = %msg, "remote_write: non-recoverable error; batch dropped");
                    self.stats.failed.fetch_add(n, Relaxed);
                    return Outcome::Failed;
                }
                Err(Attempt::Retry(msg, retry_after)) => {
                    if !failing {
                        warn!(remote_name = %self.name, url = %self.url_label, error = %msg, "remote_write: send failed; retrying with backoff");
                        failing = true;
                    }
                    self.stats.retried.fetch_add(n, Relaxed);
                    let sleep = retry_after.map_or(backoff, |r| r.min(MAX_RETRY_AFTER));
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = stop.wait() => return Outcome::Stopped,
                    }
                    backoff = (backoff * 2).min(q.max_backoff.as_duration());
                }
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<(), Attempt> {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body.to_vec());
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        match crate::http_client::auth_header(&self.http) {
            Ok(Some(h)) => req = req.header("Authorization", h),
            Ok(None) => {}
            // A secret file that cannot be read now may be readable later (mount).
            Err(e) => return Err(Attempt::Retry(e, None)),
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Retry(format!("request failed: {}", e.without_url()), None)),
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::http_client::parse_retry_after);
        let text = resp.text().await.unwrap_or_default();
        // The receiver's words go into a log line: escaped, bounded.
        let snippet: String = text.chars().take(MAX_ERROR_BODY).flat_map(char::escape_debug).collect();
        let msg = format!("server returned HTTP status {status}: {snippet}");
        let code = status.as_u16();
        if status.is_server_error() || (code == 429 && self.cfg.queue_config.retry_on_http_429) {
            return Err(Attempt::Retry(msg, retry_after));
        }
        Err(Attempt::Fatal(msg))
    }
}

/// `labels` plus each external label it does not have (a series' own label
/// wins, as in Prometheus; labels never have empty values, so present means
/// set). Both are sorted by name and so is the result.
pub fn with_external_labels(labels: Labels, external: &[(String, String)]) -> Labels {
    if external.is_empty() {
        return labels;
    }
    let mut out = labels.0;
    for (name, value) in external {
        if let Err(i) = out.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            out.insert(i, (name.clone(), value.clone()));
        }
    }
    Labels(out)
}

enum Attempt {
    Retry(String, Option<Duration>),
    Fatal(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{WalBatch, WalPosition};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn external(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The label sets `take` queues for sending from one WAL batch.
    fn sent(cfg_yaml: &str, ext: &[(&str, &str)], series: Vec<Labels>) -> (Vec<Labels>, u64) {
        let cfg = crate::config::parse(std::path::Path::new("c.yml"), cfg_yaml).unwrap();
        let e = Endpoint::new(cfg.remote_write[0].clone(), external(ext)).unwrap();
        let batch = WalBatch {
            samples: series.len(),
            series: series.into_iter().map(|l| (l, vec![(1000, 1.0)])).collect(),
            end: WalPosition::default(),
            segments_skipped: 0,
            unknown_series: 0,
        };
        let mut p = Pending::default();
        e.take(batch, &mut p);
        (
            p.series.into_iter().map(|(l, _)| l).collect(),
            e.stats.dropped.load(Relaxed),
        )
    }

    #[test]
    fn external_labels_are_added_where_missing_and_own_labels_win() {
        let ext = external(&[("a_first", "1"), ("node", "node-1"), ("zone", "z")]);
        let got = with_external_labels(labels(&[("__name__", "up"), ("node", "mine")]), &ext);
        assert_eq!(
            got,
            labels(&[("__name__", "up"), ("a_first", "1"), ("node", "mine"), ("zone", "z")])
        );
        // Still sorted (receivers rely on it) and nothing changes without external labels.
        assert!(got.0.windows(2).all(|w| w[0].0 < w[1].0), "{got:?}");
        let plain = labels(&[("__name__", "up"), ("job", "x")]);
        assert_eq!(with_external_labels(plain.clone(), &[]), plain);
    }

    #[test]
    fn external_labels_come_before_write_relabel_configs() {
        let url = "remote_write:\n  - url: http://127.0.0.1:1/w\n";
        // Relabelling sees the external label: it can drop by it...
        let drop_node = format!(
            "{url}    write_relabel_configs:\n      - {{source_labels: [node], regex: node-1, action: drop}}\n"
        );
        let (out, dropped) = sent(
            &drop_node,
            &[("node", "node-1")],
            vec![
                labels(&[("__name__", "a")]),
                labels(&[("__name__", "b"), ("node", "other")]),
            ],
        );
        assert_eq!(out, vec![labels(&[("__name__", "b"), ("node", "other")])]);
        assert_eq!(dropped, 1);
        // ...and remove or rewrite it.
        let drop_label = format!("{url}    write_relabel_configs:\n      - {{regex: node, action: labeldrop}}\n");
        let (out, _) = sent(&drop_label, &[("node", "node-1")], vec![labels(&[("__name__", "a")])]);
        assert_eq!(out, vec![labels(&[("__name__", "a")])]);
        // Without relabelling every series gets it.
        let (out, dropped) = sent(
            url,
            &[("node", "node-1")],
            vec![labels(&[("__name__", "a"), ("conf_path", "/etc/nginx/nginx.conf")])],
        );
        assert_eq!(
            out,
            vec![labels(&[
                ("__name__", "a"),
                ("conf_path", "/etc/nginx/nginx.conf"),
                ("node", "node-1")
            ])]
        );
        assert_eq!(dropped, 0);
    }
}
