//! [`MetadataCache`]: the pods of this node as last seen from the API server.
//! Written by the watch loop, read by the collect stage for every scrape. It
//! keeps the last known state through API outages; only a successful list
//! replaces it whole, and only a DELETED event removes a pod.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::pods::PodMeta;
use crate::metrics::{Family, MetricType};

/// The typed interface the collect stage reads: the labels of the pod and
/// container an nginx instance runs in. Cloning shares the same cache.
#[derive(Clone, Default)]
pub struct MetadataCache(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: RwLock<State>,
    pub(super) stats: Stats,
    /// The first list has been answered (or has failed).
    answered: std::sync::atomic::AtomicBool,
    answered_notify: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// By pod UID.
    pods: HashMap<String, PodMeta>,
    /// Container id → pod UID.
    containers: HashMap<String, String>,
}

impl State {
    fn insert(&mut self, pod: PodMeta) {
        self.remove(&pod.uid);
        for (id, _) in &pod.containers {
            self.containers.insert(id.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (id, _) in &old.containers {
                if self.containers.get(id).map(String::as_str) == Some(uid) {
                    self.containers.remove(id);
                }
            }
        }
    }
}

impl MetadataCache {
    /// `namespace`, `pod`, `container` and the configured pod labels of the
    /// instance in container `container_id` of pod `pod_uid`. The pod alone
    /// (no `container`) when its status does not list the container yet;
    /// nothing when the pod is unknown.
    pub fn labels(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Vec<(String, String)> {
        let state = self.0.state.read().unwrap_or_else(|p| p.into_inner());
        let by_container = container_id.and_then(|id| {
            let pod = state.pods.get(state.containers.get(id)?)?;
            let name = pod.containers.iter().find(|(c, _)| c == id).map(|(_, n)| n.clone())?;
            Some((pod, Some(name)))
        });
        let Some((pod, container)) = by_container.or_else(|| Some((state.pods.get(pod_uid?)?, None))) else {
            return Vec::new();
        };
        let mut l = vec![
            ("namespace".to_string(), pod.namespace.clone()),
            ("pod".to_string(), pod.name.clone()),
        ];
        if let Some(c) = container {
            l.push(("container".to_string(), c));
        }
        l.extend(pod.labels.iter().cloned());
        l
    }

    /// Replaces everything with a fresh list.
    pub(super) fn replace(&self, pods: Vec<PodMeta>) {
        let mut s = State::default();
        for p in pods {
            s.insert(p);
        }
        *self.0.state.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub(super) fn upsert(&self, pod: PodMeta) {
        self.0.state.write().unwrap_or_else(|p| p.into_inner()).insert(pod);
    }

    pub(super) fn delete(&self, uid: &str) {
        self.0.state.write().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// Resolves once the first list of pods has succeeded or failed, so
    /// discovery can wait (bounded) for it and not export an instance's
    /// series first without its pod labels, then again with them.
    pub async fn first_list(&self) {
        let notified = self.0.answered_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.0.answered.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    pub(super) fn mark_answered(&self) {
        if !self.0.answered.swap(true, Ordering::SeqCst) {
            self.0.answered_notify.notify_waiters();
        }
    }

    pub(super) fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// (pods, container ids) cached.
    pub fn sizes(&self) -> (usize, usize) {
        let s = self.0.state.read().unwrap_or_else(|p| p.into_inner());
        (s.pods.len(), s.containers.len())
    }

    /// The resolver's self-metrics.
    pub fn families(&self) -> Vec<Family> {
        let st = &self.0.stats;
        let mut requests = Family::new(
            "ngxprobe_kubernetes_api_requests_total",
            "Requests to the Kubernetes API server for this node's pods, by request (list, watch) and outcome",
            MetricType::Counter,
        );
        for (i, request) in REQUESTS.iter().enumerate() {
            for (j, outcome) in Outcome::ALL.iter().enumerate() {
                let n = st.requests[i * Outcome::ALL.len() + j].load(Ordering::Relaxed);
                requests.push(&[("request", request), ("outcome", outcome.as_str())], n as f64);
            }
        }
        let mut events = Family::new(
            "ngxprobe_kubernetes_watch_events_total",
            "Watch events received from the Kubernetes API server, by type",
            MetricType::Counter,
        );
        for (i, t) in EVENT_TYPES.iter().enumerate() {
            events.push(&[("type", t)], st.events[i].load(Ordering::Relaxed) as f64);
        }
        let mut up = Family::new(
            "ngxprobe_kubernetes_api_up",
            "Whether the last request to the Kubernetes API server succeeded (1) or not (0)",
            MetricType::Gauge,
        );
        up.push(&[], st.up.load(Ordering::Relaxed) as f64);
        let (pods, containers) = self.sizes();
        let mut cached_pods = Family::new(
            "ngxprobe_kubernetes_cached_pods",
            "Pods of this node in the metadata cache (kept through API server outages)",
            MetricType::Gauge,
        );
        cached_pods.push(&[], pods as f64);
        let mut cached_containers = Family::new(
            "ngxprobe_kubernetes_cached_containers",
            "Container ids in the metadata cache",
            MetricType::Gauge,
        );
        cached_containers.push(&[], containers as f64);
        let mut skipped = Family::new(
            "ngxprobe_kubernetes_pods_skipped_total",
            "Pods from the API server that could not be used (missing uid, name or namespace)",
            MetricType::Counter,
        );
        skipped.push(&[], st.skipped.load(Ordering::Relaxed) as f64);
        vec![requests, events, up, cached_pods, cached_containers, skipped]
    }
}

/// Values of the `request` label.
pub const REQUESTS: [&str; 2] = ["list", "watch"];
/// Values of the `type` label (WatchEvent.type), plus what we could not parse.
pub const EVENT_TYPES: [&str; 6] = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "invalid"];

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx; for a watch, the stream ended as the server closed it.
    Ok,
    /// 410 Gone (status or ERROR event): the resourceVersion is too old.
    Expired,
    /// 401 / 403: the token or the RBAC rules.
    Unauthorized,
    /// Another HTTP error status.
    HttpError,
    /// No answer: connection, TLS, timeout, or the stream broke.
    Unreachable,
    /// An answer that is not the API's JSON.
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Expired,
        Outcome::Unauthorized,
        Outcome::HttpError,
        Outcome::Unreachable,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Expired => "expired",
            Outcome::Unauthorized => "unauthorized",
            Outcome::HttpError => "http_error",
            Outcome::Unreachable => "unreachable",
            Outcome::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

#[derive(Default)]
pub(super) struct Stats {
    requests: [AtomicU64; REQUESTS.len() * Outcome::ALL.len()],
    events: [AtomicU64; EVENT_TYPES.len()],
    up: AtomicU64,
    pub(super) skipped: AtomicU64,
}

impl Stats {
    /// `request` is an index into [`REQUESTS`].
    pub(super) fn request(&self, request: usize, outcome: Outcome) {
        self.requests[request * Outcome::ALL.len() + outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.up.store(u64::from(outcome == Outcome::Ok), Ordering::Relaxed);
    }

    pub(super) fn event(&self, kind: &str) {
        let i = EVENT_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(EVENT_TYPES.len() - 1);
        self.events[i].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "ns".into(),
            name: name.into(),
            labels: vec![("app_kubernetes_io_name".into(), "web".into())],
            containers: containers.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect(),
        }
    }

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn lookup_by_container_then_pod() {
        let c = MetadataCache::default();
        c.replace(vec![pod("u1", "web-1", &[("c1", "nginx")])]);
        let full = l(&[
            ("namespace", "ns"),
            ("pod", "web-1"),
            ("container", "nginx"),
            ("app_kubernetes_io_name", "web"),
        ]);
        assert_eq!(c.labels(Some("c1"), Some("u1")), full);
        assert_eq!(c.labels(Some("c1"), None), full);
        // Container not in the status yet: the pod, without `container`.
        assert_eq!(
            c.labels(Some("c9"), Some("u1")),
            l(&[("namespace", "ns"), ("pod", "web-1"), ("app_kubernetes_io_name", "web")])
        );
        assert!(c.labels(Some("c9"), Some("u9")).is_empty());
        assert!(c.labels(None, None).is_empty());
    }

    #[test]
    fn delete_drops_and_relist_replaces() {
        let c = MetadataCache::default();
        c.upsert(pod("u1", "web-1", &[("c1", "nginx")]));
        c.upsert(pod("u2", "web-2", &[("c2", "nginx")]));
        assert_eq!(c.sizes(), (2, 2));
        // A restarted container gets a new id: the old one is dropped.
        c.upsert(pod("u1", "web-1", &[("c3", "nginx")]));
        assert!(c.labels(Some("c1"), None).is_empty());
        assert_eq!(c.sizes(), (2, 2));
        c.delete("u2");
        assert!(c.labels(Some("c2"), Some("u2")).is_empty());
        c.replace(vec![pod("u4", "web-4", &[("c4", "nginx")])]);
        assert_eq!(c.sizes(), (1, 1));
        assert!(c.labels(Some("c3"), None).is_empty());
    }

    #[test]
    fn first_list_resolves_once_answered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = MetadataCache::default();
        let pending =
            rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(20), c.first_list()).await });
        assert!(pending.is_err(), "resolved before any answer");
        let c2 = c.clone();
        rt.block_on(async {
            let waiter = tokio::spawn(async move { c2.first_list().await });
            tokio::task::yield_now().await;
            c.mark_answered();
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .unwrap();
        });
        // Already answered: resolves at once.
        rt.block_on(c.first_list());
    }

    #[test]
    fn stats_count_by_request_and_outcome() {
        let c = MetadataCache::default();
        c.stats().request(0, Outcome::Ok);
        c.stats().request(1, Outcome::Expired);
        c.stats().event("BOOKMARK");
        c.stats().event("WEIRD");
        let f = c.families();
        let text = format!("{f:?}");
        assert!(text.contains("ngxprobe_kubernetes_api_requests_total"), "{text}");
        let up = f.iter().find(|f| f.name == "ngxprobe_kubernetes_api_up").unwrap();
        assert_eq!(up.samples[0].value, 0.0);
    }
}
