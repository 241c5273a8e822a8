//! Kubernetes metadata stage: for nginx running in a pod, the `namespace`,
//! `pod` and `container` labels (and chosen pod labels), resolved from the
//! container id and pod UID that discovery reads from the cgroup paths.
//!
//! When the agent runs in a pod (KUBERNETES_SERVICE_HOST, and NODE_NAME from
//! the downward API) it lists and watches only this node's pods
//! (`fieldSelector=spec.nodeName=<node>`) with the pod's service account;
//! elsewhere it does nothing and contacts nothing. The one interface other
//! stages use is [`MetadataCache`] (read by collect when it labels an
//! instance); the loop owning it is started by [`spawn`].
//!
//! The client is written here on reqwest + rustls (already in the agent)
//! rather than taken from kube/k8s-openapi: it makes two requests (list,
//! watch), and those crates more than doubled the agent's clean build on
//! the project's 2-core machines (README, "Kubernetes metadata").
mod cache;
mod client;
mod config;
mod pods;
mod watch;

pub use cache::MetadataCache;
pub use config::{KubernetesConfig, Mode, PodLabelKey, RESERVED_LABELS};

use tracing::info;

use crate::worker::Worker;

/// Starts the watch loop if metadata applies here (`Ok(None)` otherwise:
/// outside Kubernetes nothing is contacted). `env` looks up environment
/// variables. Errors are configuration errors (e.g. an unreadable CA file).
pub fn spawn(
    cfg: &KubernetesConfig,
    env: impl Fn(&str) -> Option<String>,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<(Worker, MetadataCache)>, String> {
    let Some(target) = cfg.target(env)? else {
        return Ok(None);
    };
    let client = client::ApiClient::new(
        &target.api_server,
        &target.node_name,
        &cfg.ca_file,
        cfg.token_file.clone(),
    )?;
    let cache = MetadataCache::default();
    let c = cache.clone();
    let labels = cfg.pod_labels.clone();
    info!(
        api_server = %target.api_server,
        node = %target.node_name,
        "Kubernetes metadata: watching this node's pods"
    );
    let worker = Worker::spawn_task("kubernetes", runtime, move |stop| watch::run(client, c, labels, stop));
    Ok(Some((worker, cache)))
}
