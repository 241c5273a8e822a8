//! What /metrics shows and the sampler stores: the collect stage's families
//! plus every later stage's self-metrics.
use std::sync::Arc;

use crate::expose;
use crate::metrics::{Family, MetricsSource};
use crate::notify::{ForwardingSink, Notifier};
use crate::query::Admission;
use crate::remote_write::RemoteWrite;
use crate::rules::RuleManager;
use crate::store::Store;

/// The collect stage's families plus every later stage's own.
pub struct Pipeline {
    pub collect: Arc<dyn MetricsSource>,
    pub store: Option<Arc<Store>>,
    pub remote_write: Option<Arc<RemoteWrite>>,
    /// The query API's admission control (ngxprobe_query_*).
    pub queries: Option<Arc<Admission>>,
    pub rules: Option<Arc<RuleManager>>,
    pub notifier: Option<Notifier>,
    pub forwarder: Option<Arc<ForwardingSink>>,
    /// The Kubernetes metadata resolver (ngxprobe_kubernetes_*), when it runs.
    pub kubernetes: Option<crate::kubernetes::MetadataCache>,
}

impl MetricsSource for Pipeline {
    fn families(&self) -> Vec<Family> {
        let mut f = self.collect.families();
        f.extend(crate::privilege::families());
        if let Some(s) = &self.store {
            f.extend(s.self_families());
        }
        if let Some(rw) = &self.remote_write {
            f.extend(rw.self_families());
        }
        if let Some(q) = &self.queries {
            f.extend(q.families());
        }
        if let Some(r) = &self.rules {
            f.extend(r.families());
        }
        if let Some(n) = &self.notifier {
            f.extend(n.self_families());
        }
        if let Some(fw) = &self.forwarder {
            f.extend(fw.self_families());
        }
        if let Some(k) = &self.kubernetes {
            f.extend(k.families());
        }
        f
    }
}

/// What the sampler stores: the pipeline plus the process metrics the
/// server adds to every scrape, so the store holds what /metrics shows.
pub struct Sampled(pub Arc<dyn MetricsSource>);

impl MetricsSource for Sampled {
    fn families(&self) -> Vec<Family> {
        let mut f = self.0.families();
        f.extend(expose::process_families());
        f
    }
}
