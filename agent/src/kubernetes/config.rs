//! The `kubernetes:` section of the config file.
use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the service account's files are mounted in every pod.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Labels the resolver adds itself; a pod label may not be exported as one of them.
pub const RESERVED_LABELS: [&str; 5] = ["conf_path", "container_id", "namespace", "pod", "container"];

/// Kubernetes metadata (namespace, pod, container) for nginx running in pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `auto`: on when the agent runs in a pod whose spec gives it NODE_NAME
    /// (downward API) and the API server's address (KUBERNETES_SERVICE_HOST);
    /// `on`: required (a missing setting stops the agent at start);
    /// `off`: never contact the API server.
    pub metadata: Mode,
    /// The API server's base URL; empty = `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_server: String,
    /// The node whose pods are watched; empty = `$NODE_NAME`.
    pub node_name: String,
    /// Bearer token, re-read when it changes (the kubelet rotates it).
    pub token_file: PathBuf,
    /// CA bundle (PEM) the API server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Pod labels exported on nginx's series, e.g. `app.kubernetes.io/name`
    /// as `app_kubernetes_io_name` (every character other than
    /// `[a-zA-Z0-9_]` becomes `_`, as Prometheus's Kubernetes discovery does).
    pub pod_labels: Vec<PodLabelKey>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            metadata: Mode::Auto,
            api_server: String::new(),
            node_name: String::new(),
            token_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"),
            ca_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"),
            pod_labels: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Auto,
    On,
    Off,
}

/// Where and as which node to watch pods, once the environment is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub api_server: String,
    pub node_name: String,
}

impl KubernetesConfig {
    /// Checks that need no environment: label keys are checked when parsed.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for key in &self.pod_labels {
            let name = key.label_name();
            if RESERVED_LABELS.contains(&name.as_str()) {
                return Err(format!(
                    "kubernetes.pod_labels: {key} would be exported as {name:?}, a label ngxprobe sets itself"
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("kubernetes.pod_labels: two keys are both exported as {name:?}"));
            }
        }
        if !self.api_server.is_empty() && !self.api_server.starts_with("https://") {
            return Err(format!(
                "kubernetes.api_server: {:?} is not an https:// URL (the token is never sent in clear)",
                self.api_server
            ));
        }
        Ok(())
    }

    /// The API server and node to watch, from this section and the
    /// environment (`env` looks a variable up). `Ok(None)`: metadata is off,
    /// or `auto` outside a pod. `Err`: `on` but something is missing.
    pub fn target(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<Target>, String> {
        if self.metadata == Mode::Off {
            return Ok(None);
        }
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let api_server = match self.api_server.as_str() {
            "" => env("KUBERNETES_SERVICE_HOST").map(|host| {
                let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                // An IPv6 service address needs brackets in a URL.
                match host.contains(':') {
                    true => format!("https://[{host}]:{port}"),
                    false => format!("https://{host}:{port}"),
                }
            }),
            s => Some(s.trim_end_matches('/').to_string()),
        };
        let node_name = match self.node_name.as_str() {
            "" => env("NODE_NAME"),
            s => Some(s.to_string()),
        };
        match (api_server, node_name, self.metadata) {
            (Some(api_server), Some(node_name), _) => Ok(Some(Target { api_server, node_name })),
            (_, _, Mode::Auto) => Ok(None),
            (None, _, _) => Err(
                "kubernetes.metadata is on but the API server is unknown: set kubernetes.api_server or KUBERNETES_SERVICE_HOST".into(),
            ),
            (_, None, _) => Err(
                "kubernetes.metadata is on but the node name is unknown: set kubernetes.node_name or NODE_NAME (downward API: spec.nodeName)".into(),
            ),
        }
    }
}

/// A Kubernetes label key (`[prefix/]name`, as the API server validates it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, SerializeDisplay, DeserializeFromStr)]
pub struct PodLabelKey(String);

impl PodLabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Prometheus label name it is exported as.
    pub fn label_name(&self) -> String {
        sanitize_label_name(&self.0)
    }
}

/// Every character outside `[a-zA-Z0-9_]` becomes `_` (Prometheus's
/// `strutil.SanitizeLabelName`, used by its Kubernetes discovery).
pub fn sanitize_label_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

impl FromStr for PodLabelKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, name) = match s.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, s),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let prefix_ok = prefix.is_none_or(|p| {
            !p.is_empty()
                && p.len() <= 253
                && p.split('.').all(|part| {
                    !part.is_empty()
                        && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                        && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                })
        });
        if !(name_ok && prefix_ok) {
            return Err(format!(
                "invalid pod label key {s:?}: want [prefix/]name, e.g. app.kubernetes.io/name"
            ));
        }
        let name = sanitize_label_name(s);
        if name.starts_with("__") || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "pod label key {s:?} cannot be a Prometheus label name ({name:?})"
            ));
        }
        Ok(PodLabelKey(s.to_string()))
    }
}

impl fmt::Display for PodLabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::collections::HashMap;
    use std::path::Path;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn auto_is_off_outside_a_pod() {
        let c = KubernetesConfig::default();
        assert_eq!(c.target(env(&[])), Ok(None));
        // In a pod without NODE_NAME from the downward API: still off.
        assert_eq!(c.target(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])), Ok(None));
        assert_eq!(c.target(env(&[("NODE_NAME", "n1")])), Ok(None));
    }

    #[test]
    fn auto_in_a_pod_uses_the_service_env() {
        let c = KubernetesConfig::default();
        let t = c
            .target(env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("NODE_NAME", "node-a"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(t.api_server, "https://10.96.0.1:443");
        assert_eq!(t.node_name, "node-a");
        let t = c
            .target(env(&[("KUBERNETES_SERVICE_HOST", "fd00::1"), ("NODE_NAME", "n")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.api_server, "https://[fd00::1]:443");
    }

    #[test]
    fn off_never_targets_and_on_requires_everything() {
        let full = env(&[("KUBERNETES_SERVICE_HOST", "h"), ("NODE_NAME", "n")]);
        let off = KubernetesConfig {
            metadata: Mode::Off,
            ..Default::default()
        };
        assert_eq!(off.target(&full), Ok(None));
        let on = KubernetesConfig {
            metadata: Mode::On,
            ..Default::default()
        };
        assert!(
            on.target(env(&[("NODE_NAME", "n")]))
                .unwrap_err()
                .contains("KUBERNETES_SERVICE_HOST")
        );
        assert!(
            on.target(env(&[("KUBERNETES_SERVICE_HOST", "h")]))
                .unwrap_err()
                .contains("NODE_NAME")
        );
        assert!(on.target(&full).unwrap().is_some());
    }

    #[test]
    fn pod_label_keys_are_checked_and_sanitized() {
        let k: PodLabelKey = "app.kubernetes.io/name".parse().unwrap();
        assert_eq!(k.label_name(), "app_kubernetes_io_name");
        assert_eq!("team".parse::<PodLabelKey>().unwrap().label_name(), "team");
        for bad in ["", "-x", "a/", "/a", "Upper.Case/x", &"a".repeat(64), "a b"] {
            assert!(bad.parse::<PodLabelKey>().is_err(), "{bad:?} accepted");
        }
        // Exported as a label ngxprobe sets itself: refused when the file is read.
        let err = config::parse(Path::new("c.yml"), "kubernetes:\n  pod_labels: [pod]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.yml") && err.contains("kubernetes.pod_labels"), "{err}");
        let err = config::parse(Path::new("c.yml"), "kubernetes:\n  pod_labels: [a, 'Bad Key']\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.yml:2:") && err.contains("invalid pod label key"),
            "{err}"
        );
        let err = config::parse(Path::new("c.yml"), "kubernetes:\n  api_server: http://x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://"), "{err}");
    }
}
