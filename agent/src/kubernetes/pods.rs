//! The parts of the Kubernetes API's JSON the resolver reads (core/v1 Pod,
//! PodList, meta/v1 WatchEvent and Status), and what one pod contributes to
//! the cache. Fields are named exactly as the API serializes them; unknown
//! fields are ignored, as every API client must (the API adds fields).
use serde::Deserialize;
use std::collections::BTreeMap;

use super::config::PodLabelKey;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    /// Set when the list is paginated (`limit`): pass it back as `continue`.
    #[serde(default, rename = "continue")]
    pub continue_token: String,
}

/// `GET /api/v1/pods` (kind PodList).
#[derive(Debug, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    /// Includes native sidecars (restartPolicy: Always), which run all along.
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// `<runtime>://<id>`, e.g. `containerd://<64 hex>`, `cri-o://…`,
    /// `docker://…`; absent until the container was created.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// core/v1 Pod, the fields we use. A BOOKMARK's object is a Pod carrying
/// only `metadata.resourceVersion`.
#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

/// One line of a watch stream (meta/v1 WatchEvent).
#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// meta/v1 Status: the object of an ERROR event, and the body of failed
/// requests. `code` 410 (reason `Expired` / `Gone`): the resourceVersion
/// is too old, list again.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// What the cache keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The configured pod labels this pod has, as (Prometheus name, value).
    pub labels: Vec<(String, String)>,
    /// (container id, container name) of every container that has one.
    pub containers: Vec<(String, String)>,
}

/// The cache entry for `pod`, or why it cannot be used (a pod without
/// uid/name/namespace is not one the API server sends; skipped, not guessed).
pub fn pod_meta(pod: &Pod, pod_labels: &[PodLabelKey]) -> Result<PodMeta, String> {
    let m = &pod.metadata;
    for (what, v) in [
        ("metadata.uid", &m.uid),
        ("metadata.name", &m.name),
        ("metadata.namespace", &m.namespace),
    ] {
        if !is_name(v) {
            return Err(format!("pod {:?}/{:?}: bad or missing {what}", m.namespace, m.name));
        }
    }
    let labels = pod_labels
        .iter()
        .filter_map(|key| {
            let v = m.labels.get(key.as_str())?;
            // Label values are at most 63 characters of [-A-Za-z0-9_.];
            // the API server enforces it. An empty value is no label.
            (!v.is_empty() && v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .then(|| (key.label_name(), v.clone()))
        })
        .collect();
    let s = &pod.status;
    let containers = s
        .container_statuses
        .iter()
        .chain(&s.init_container_statuses)
        .chain(&s.ephemeral_container_statuses)
        .filter_map(|c| Some((runtime_container_id(c.container_id.as_deref()?)?, c.name.clone())))
        .filter(|(_, name)| is_name(name))
        .collect();
    Ok(PodMeta {
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        labels,
        containers,
    })
}

/// The 64-hex id in `containerd://<id>` (any runtime scheme), as it
/// appears in cgroup paths; None for anything else.
pub fn runtime_container_id(s: &str) -> Option<String> {
    let (_scheme, id) = s.split_once("://")?;
    (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| id.to_string())
}

/// Names and UIDs the API server accepts: DNS-1123 subdomains (≤ 253) and UUIDs.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SIDECAR: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// A pod as `kubectl get pod -o json` prints it (trimmed, fields as the API writes them).
    fn pod_json() -> String {
        format!(
            r#"{{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {{
    "name": "web-7d4b9c8f6-x2x9q", "namespace": "shop", "uid": "1234abcd-5678-90ef-1234-567890abcdef",
    "resourceVersion": "4711", "creationTimestamp": "2026-01-01T00:00:00Z",
    "labels": {{"app.kubernetes.io/name": "web", "pod-template-hash": "7d4b9c8f6", "tier": ""}},
    "ownerReferences": [{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6", "uid": "x"}}]
  }},
  "spec": {{"nodeName": "node-a", "containers": [{{"name": "nginx", "image": "nginx:1.27"}}]}},
  "status": {{
    "phase": "Running", "podIP": "10.0.0.5",
    "initContainerStatuses": [{{"name": "log-shipper", "containerID": "cri-o://{SIDECAR}", "ready": true, "restartCount": 0}}],
    "containerStatuses": [
      {{"name": "nginx", "containerID": "containerd://{ID}", "ready": true, "restartCount": 0,
        "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:00", "started": true,
        "state": {{"running": {{"startedAt": "2026-01-01T00:00:01Z"}}}}}},
      {{"name": "pending", "ready": false, "restartCount": 0, "state": {{"waiting": {{"reason": "ContainerCreating"}}}}}}
    ]
  }}
}}"#
        )
    }

    #[test]
    fn pod_json_maps_to_metadata() {
        let pod: Pod = serde_json::from_str(&pod_json()).unwrap();
        let keys: Vec<PodLabelKey> = ["app.kubernetes.io/name", "tier", "missing"]
            .iter()
            .map(|k| k.parse().unwrap())
            .collect();
        let m = pod_meta(&pod, &keys).unwrap();
        assert_eq!(m.namespace, "shop");
        assert_eq!(m.name, "web-7d4b9c8f6-x2x9q");
        assert_eq!(m.uid, "1234abcd-5678-90ef-1234-567890abcdef");
        // Empty and absent labels are no label; unselected ones are not exported.
        assert_eq!(m.labels, [("app_kubernetes_io_name".to_string(), "web".to_string())]);
        // A container without an id yet is left out; sidecars are in.
        assert_eq!(
            m.containers,
            [
                (ID.to_string(), "nginx".to_string()),
                (SIDECAR.to_string(), "log-shipper".to_string())
            ]
        );
    }

    #[test]
    fn container_ids_of_every_runtime() {
        for scheme in ["containerd", "cri-o", "docker"] {
            assert_eq!(runtime_container_id(&format!("{scheme}://{ID}")).as_deref(), Some(ID));
        }
        assert_eq!(runtime_container_id(ID), None);
        assert_eq!(runtime_container_id("containerd://abc"), None);
        assert_eq!(
            runtime_container_id(&format!("containerd://{}", ID.to_uppercase())),
            None
        );
    }

    #[test]
    fn pods_missing_identity_are_refused() {
        let pod: Pod = serde_json::from_str(r#"{"metadata": {"name": "x", "namespace": "n"}}"#).unwrap();
        assert!(pod_meta(&pod, &[]).unwrap_err().contains("metadata.uid"));
    }

    #[test]
    fn watch_event_and_status_as_the_api_sends_them() {
        let e: WatchEvent = serde_json::from_str(
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (4711)","reason":"Expired","code":410}}"#,
        )
        .unwrap();
        assert_eq!(e.kind, "ERROR");
        let s: Status = serde_json::from_value(e.object).unwrap();
        assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
        let b: WatchEvent = serde_json::from_str(
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12746","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
        )
        .unwrap();
        let p: Pod = serde_json::from_value(b.object).unwrap();
        assert_eq!(p.metadata.resource_version, "12746");
        let l: PodList = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"99","continue":"tok"},"items":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (l.metadata.resource_version.as_str(), l.metadata.continue_token.as_str()),
            ("99", "tok")
        );
    }
}
