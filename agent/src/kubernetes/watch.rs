//! The watch loop: list this node's pods, then watch them from the list's
//! resourceVersion, resuming from the last one seen (events and BOOKMARKs)
//! whenever the server ends a watch, and listing again only when the server
//! says that version is gone (410). Failures are retried with capped
//! exponential backoff; the cache keeps what it had meanwhile.
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::cache::{MetadataCache, Outcome};
use super::client::{ApiClient, ApiError, without_url};
use super::config::PodLabelKey;
use super::pods::{Pod, Status, WatchEvent, pod_meta};
use crate::worker::Shutdown;

const LIST: usize = 0;
const WATCH: usize = 1;
/// Longest watch event line accepted (a pod with huge annotations is big,
/// but not this big): a longer one means the stream is not the API's.
const MAX_EVENT_BYTES: usize = 8 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub async fn run(client: ApiClient, cache: MetadataCache, pod_labels: Vec<PodLabelKey>, stop: Shutdown) {
    let mut w = Watcher {
        client,
        cache,
        pod_labels,
        outage: None,
        backoff: BACKOFF_MIN,
    };
    tokio::select! {
        _ = stop.wait() => {}
        _ = w.forever() => {}
    }
}

struct Watcher {
    client: ApiClient,
    cache: MetadataCache,
    pod_labels: Vec<PodLabelKey>,
    /// When the current outage began (None: the API answers).
    outage: Option<Instant>,
    backoff: Duration,
}

/// How a watch stream ended.
enum StreamEnd {
    /// The server closed it (timeoutSeconds): resume.
    Closed,
    /// 410 in an ERROR event, or another ERROR: list again.
    Relist(Outcome, String),
    /// The connection broke: retry after a pause, resuming.
    Broken(String),
}

impl Watcher {
    async fn forever(&mut self) {
        loop {
            let mut rv = match self.client.list().await {
                Ok((list, rv)) => {
                    self.cache.stats().request(LIST, Outcome::Ok);
                    self.reachable();
                    let pods = list.items.iter().filter_map(|p| self.meta(p)).collect();
                    self.cache.replace(pods);
                    self.cache.mark_answered();
                    rv
                }
                Err(e) => {
                    // Discovery waits for the first answer; a failure is one.
                    self.cache.mark_answered();
                    self.failed(LIST, &e).await;
                    continue;
                }
            };
            // Watch until the server says the version is gone.
            loop {
                let resp = match self.client.watch(&rv).await {
                    Ok(r) => r,
                    Err(e) if e.outcome == Outcome::Expired => {
                        self.cache.stats().request(WATCH, Outcome::Expired);
                        break;
                    }
                    Err(e) => {
                        self.failed(WATCH, &e).await;
                        continue;
                    }
                };
                self.reachable();
                let opened = Instant::now();
                match self.read_stream(resp, &mut rv).await {
                    StreamEnd::Closed => {
                        self.cache.stats().request(WATCH, Outcome::Ok);
                        // A server that ends every watch at once must not make us spin.
                        if opened.elapsed() < Duration::from_secs(1) {
                            tokio::time::sleep(BACKOFF_MIN).await;
                        }
                    }
                    StreamEnd::Relist(outcome, why) => {
                        self.cache.stats().request(WATCH, outcome);
                        if outcome != Outcome::Expired {
                            warn!("Kubernetes watch of this node's pods failed, listing them again: {why}");
                        }
                        break;
                    }
                    StreamEnd::Broken(why) => {
                        let e = ApiError {
                            outcome: Outcome::Unreachable,
                            message: why,
                        };
                        self.failed(WATCH, &e).await;
                    }
                }
            }
        }
    }

    fn meta(&self, pod: &Pod) -> Option<super::pods::PodMeta> {
        match pod_meta(pod, &self.pod_labels) {
            Ok(m) => Some(m),
            Err(why) => {
                self.cache
                    .stats()
                    .skipped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!("Kubernetes pod skipped: {why}");
                None
            }
        }
    }

    /// Applies the events of one watch response until it ends.
    async fn read_stream(&mut self, mut resp: reqwest::Response, rv: &mut String) -> StreamEnd {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => return StreamEnd::Closed,
                Err(e) => return StreamEnd::Broken(format!("watch stream: {}", without_url(&e))),
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = memchr::memchr(b'\n', &buf) {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(end) = self.apply(&line, rv) {
                    return end;
                }
            }
            if buf.len() > MAX_EVENT_BYTES {
                self.cache.stats().event("invalid");
                return StreamEnd::Relist(
                    Outcome::Invalid,
                    format!("a watch event longer than {MAX_EVENT_BYTES} bytes"),
                );
            }
            // A successful event is proof enough that the API is back.
            self.backoff = BACKOFF_MIN;
        }
    }

    /// One WatchEvent line; `Some` ends the stream.
    fn apply(&mut self, line: &[u8], rv: &mut String) -> Option<StreamEnd> {
        let event: WatchEvent = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                self.cache.stats().event("invalid");
                return Some(StreamEnd::Relist(
                    Outcome::Invalid,
                    format!("watch event is not JSON: {e}"),
                ));
            }
        };
        self.cache.stats().event(&event.kind);
        if event.kind == "ERROR" {
            let s: Status = serde_json::from_value(event.object).unwrap_or_default();
            let outcome = match s.code {
                410 => Outcome::Expired,
                _ => Outcome::HttpError,
            };
            let msg: String = s.message.chars().take(300).collect();
            return Some(StreamEnd::Relist(outcome, format!("{} {}: {msg:?}", s.code, s.reason)));
        }
        let pod: Pod = match serde_json::from_value(event.object) {
            Ok(p) => p,
            Err(e) => {
                return Some(StreamEnd::Relist(
                    Outcome::Invalid,
                    format!("{} event: {e}", event.kind),
                ));
            }
        };
        if !pod.metadata.resource_version.is_empty() {
            rv.clone_from(&pod.metadata.resource_version);
        }
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                if let Some(m) = self.meta(&pod) {
                    self.cache.upsert(m);
                }
            }
            "DELETED" => self.cache.delete(&pod.metadata.uid),
            // BOOKMARK: only the resourceVersion, taken above. Unknown types
            // are counted as invalid and ignored.
            _ => {}
        }
        None
    }

    fn reachable(&mut self) {
        self.backoff = BACKOFF_MIN;
        if let Some(since) = self.outage.take() {
            info!(
                "Kubernetes API server reachable again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Counts the failure, logs it once per outage, and waits the backoff.
    async fn failed(&mut self, request: usize, e: &ApiError) {
        self.cache.stats().request(request, e.outcome);
        if self.outage.is_none() {
            let (pods, _) = self.cache.sizes();
            warn!(
                "Kubernetes API server: {} failed: {}; keeping the metadata of the {pods} pods known, retrying with backoff (logged once per outage)",
                if request == LIST {
                    "listing this node's pods"
                } else {
                    "watching this node's pods"
                },
                e.message
            );
            self.outage = Some(Instant::now());
        }
        tokio::time::sleep(jitter(self.backoff)).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// `d` plus up to 20%, so a fleet of agents does not retry in lockstep
/// after an API server restart.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 5000.0)
}
