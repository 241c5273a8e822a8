//! The `remote_write:` list, field for field as Prometheus' (2.42 defaults).
//! What ngxprobe cannot do is refused by name rather than ignored: oauth2,
//! sigv4, azuread, exemplars, native histograms.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compat::PromDuration;
use crate::compat::relabel::RelabelConfig;
use crate::http_client::{Authorization, BasicAuth, HttpConfig, TlsConfig};
use crate::secret::Secret;

/// One `remote_write:` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The receiver (`http(s)://host:port/api/v1/write`). May carry
    /// `user:pass@`: shown redacted everywhere.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// Names the queue in metrics and the WAL position file; default: a hash
    /// of the url (as Prometheus).
    pub name: String,
    pub remote_timeout: PromDuration,
    pub headers: BTreeMap<String, String>,
    pub write_relabel_configs: Vec<RelabelConfig>,
    pub send_exemplars: bool,
    pub send_native_histograms: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azuread: Option<serde_json::Value>,
    pub queue_config: QueueConfig,
    pub metadata_config: MetadataConfig,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            url: String::new(),
            name: String::new(),
            remote_timeout: PromDuration::from_secs(30),
            headers: BTreeMap::new(),
            write_relabel_configs: Vec::new(),
            send_exemplars: false,
            send_native_histograms: false,
            basic_auth: None,
            authorization: None,
            bearer_token: None,
            bearer_token_file: None,
            tls_config: None,
            proxy_url: None,
            follow_redirects: None,
            enable_http2: None,
            oauth2: None,
            sigv4: None,
            azuread: None,
            queue_config: QueueConfig::default(),
            metadata_config: MetadataConfig::default(),
        }
    }
}

/// A secret written as `"${VAR}"` (the whole value) comes from the
/// environment, like the notifier's; an unset or empty variable is an error
/// naming `field`, never the value.
fn env_secret(s: &Option<Secret>, field: &str) -> Result<Option<Secret>, (String, String)> {
    let Some(s) = s else { return Ok(None) };
    match s.expose().strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(name) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim()))),
            _ => Err((field.to_string(), format!("environment variable {name} is not set"))),
        },
        None => Ok(Some(s.clone())),
    }
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::secret::redact_url(url))
}

/// Prometheus' `queue_config`. ngxprobe's queue is the WAL itself (nothing
/// is held in memory but the batch being sent) and it sends with one shard,
/// in WAL order, so receivers never see a series out of order: `capacity`,
/// `min_shards` and `max_shards` are accepted and validated, not used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub capacity: usize,
    pub max_shards: usize,
    pub min_shards: usize,
    pub max_samples_per_send: usize,
    pub batch_send_deadline: PromDuration,
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    pub retry_on_http_429: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 2500,
            max_shards: 200,
            min_shards: 1,
            max_samples_per_send: 500,
            batch_send_deadline: PromDuration::from_secs(5),
            min_backoff: PromDuration::from_millis(30),
            max_backoff: PromDuration::from_secs(5),
            retry_on_http_429: false,
        }
    }
}

/// Prometheus' `metadata_config`: accepted; metric metadata is not sent
/// (remote-write 1.0 does not require it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    pub send: bool,
    pub send_interval: PromDuration,
    pub max_samples_per_send: usize,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            send: true,
            send_interval: PromDuration::from_secs(60),
            max_samples_per_send: 500,
        }
    }
}

impl RemoteWriteConfig {
    /// The queue's name: `name`, else the first 6 hex digits of a hash of
    /// the url, as Prometheus names unnamed queues.
    pub fn queue_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let d = ring::digest::digest(&ring::digest::SHA256, self.url.as_bytes());
        d.as_ref()[..3].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The HTTP client settings, in the shape the notifier's client takes,
    /// with `"${VAR}"` secrets taken from the environment.
    pub fn http(&self) -> Result<HttpConfig, (String, String)> {
        let mut basic_auth = self.basic_auth.clone();
        if let Some(b) = basic_auth.as_mut() {
            b.password = env_secret(&b.password, "basic_auth.password")?;
        }
        let mut authorization = self.authorization.clone();
        if let Some(a) = authorization.as_mut() {
            a.credentials = env_secret(&a.credentials, "authorization.credentials")?;
        }
        Ok(HttpConfig {
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
            proxy_url: self.proxy_url.clone(),
            tls_config: self.tls_config.clone(),
            basic_auth,
            authorization,
            bearer_token: env_secret(&self.bearer_token, "bearer_token")?,
            bearer_token_file: self.bearer_token_file.clone(),
            timeout: Some(self.remote_timeout),
        })
    }

    /// `Err((field, message))`, field relative to this entry.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let e = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return e("url", "must be an http:// or https:// URL"),
        }
        for (f, set) in [
            ("oauth2", self.oauth2.is_some()),
            ("sigv4", self.sigv4.is_some()),
            ("azuread", self.azuread.is_some()),
        ] {
            if set {
                return e(
                    f,
                    "not supported by ngxprobe (use basic_auth, authorization or bearer_token_file)",
                );
            }
        }
        if self.send_exemplars {
            return e("send_exemplars", "ngxprobe stores no exemplars; set false");
        }
        if self.send_native_histograms {
            return e(
                "send_native_histograms",
                "ngxprobe stores no native histograms; set false",
            );
        }
        let auths = [
            self.basic_auth.is_some(),
            self.authorization.is_some(),
            self.bearer_token.is_some() || self.bearer_token_file.is_some(),
        ];
        if auths.iter().filter(|x| **x).count() > 1 {
            return e(
                "authorization",
                "at most one of basic_auth, authorization and bearer_token(_file) must be configured",
            );
        }
        if let Some(b) = &self.basic_auth
            && b.password.is_some()
            && b.password_file.is_some()
        {
            return e("basic_auth.password_file", "at most one of password and password_file");
        }
        if let Some(a) = &self.authorization
            && a.credentials.is_some()
            && a.credentials_file.is_some()
        {
            return e(
                "authorization.credentials_file",
                "at most one of credentials and credentials_file",
            );
        }
        if self.bearer_token.is_some() && self.bearer_token_file.is_some() {
            return e("bearer_token_file", "at most one of bearer_token and bearer_token_file");
        }
        for h in self.headers.keys() {
            let lower = h.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "authorization"
                    | "host"
                    | "content-encoding"
                    | "content-length"
                    | "content-type"
                    | "user-agent"
                    | "connection"
                    | "keep-alive"
                    | "proxy-authenticate"
                    | "proxy-authorization"
                    | "www-authenticate"
                    | "retry-after"
                    | "x-prometheus-remote-write-version"
            ) {
                return Err((format!("headers.{h}"), "is a reserved header".into()));
            }
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((format!("headers.{h}"), "is not a valid header name".into()));
            }
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err((format!("headers.{k}"), "is not a valid header value".into()));
            }
        }
        self.http()?;
        if self.remote_timeout.is_zero() {
            return e("remote_timeout", "must be > 0");
        }
        let q = &self.queue_config;
        if q.max_samples_per_send == 0 {
            return e("queue_config.max_samples_per_send", "must be > 0");
        }
        if q.batch_send_deadline.is_zero() {
            return e("queue_config.batch_send_deadline", "must be > 0");
        }
        if q.min_shards == 0 || q.max_shards < q.min_shards {
            return e("queue_config.max_shards", "must be >= min_shards >= 1");
        }
        if q.max_backoff.as_duration() < q.min_backoff.as_duration() {
            return e("queue_config.max_backoff", "must be >= min_backoff");
        }
        for (i, r) in self.write_relabel_configs.iter().enumerate() {
            r.validate().map_err(|m| (format!("write_relabel_configs[{i}]"), m))?;
        }
        Ok(())
    }
}

/// Checks the whole list: each entry, and names unique (they name position
/// files and metrics). `Err((field path, message))`.
pub fn validate(list: &[RemoteWriteConfig]) -> Result<(), (String, String)> {
    let mut names = BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        c.validate().map_err(|(f, m)| (format!("remote_write[{i}].{f}"), m))?;
        if let Some(j) = names.insert(c.queue_name(), i) {
            return Err((
                format!("remote_write[{i}].name"),
                format!(
                    "duplicate remote write configs are not allowed, found duplicate for URL/name of remote_write[{j}]"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn err(yaml: &str) -> String {
        match crate::config::parse(Path::new("c.yml"), yaml) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn prometheus_config_parses_and_bad_fields_are_named() {
        let good = "remote_write:\n  - url: http://u:pw@127.0.0.1:9090/api/v1/write\n    basic_auth: {username: a, password_file: /x}\n    headers: {X-Scope-OrgID: t}\n    write_relabel_configs:\n      - {source_labels: [__name__], regex: 'nginx_.*', action: keep}\n    queue_config: {max_samples_per_send: 100, retry_on_http_429: true}\n    metadata_config: {send: false}\n";
        let cfg = crate::config::parse(Path::new("c.yml"), good).unwrap();
        assert_eq!(cfg.remote_write[0].queue_config.max_samples_per_send, 100);
        assert_eq!(cfg.remote_write[0].queue_config.max_backoff.as_duration().as_secs(), 5);
        // Credentials in the url never reach show-config.
        let shown = crate::config::redacted_yaml(&cfg);
        assert!(
            !shown.contains("pw@") && shown.contains("<secret>@127.0.0.1"),
            "{shown}"
        );

        let e = err(
            "remote_write:\n  - url: http://h/w\n    queue_config:\n      min_backoff: 2s\n      max_backoff: 1s\n",
        );
        assert!(
            e.starts_with("c.yml:5:") && e.contains("remote_write[0].queue_config.max_backoff: must be >= min_backoff"),
            "{e}"
        );
        let e = err("remote_write:\n  - url: http://h/w\n  - url: ftp://h/w\n");
        assert!(e.starts_with("c.yml:3:") && e.contains("remote_write[1].url:"), "{e}");
        let e = err("remote_write:\n  - url: http://h/w\n    sigv4: {region: x}\n");
        assert!(e.contains("remote_write[0].sigv4: not supported"), "{e}");
        let e = err("remote_write:\n  - url: http://h/w\n    send_exemplars: true\n");
        assert!(e.contains("remote_write[0].send_exemplars"), "{e}");
        let e = err(
            "remote_write:\n  - url: http://h/w\n    write_relabel_configs:\n      - {action: hashmod, target_label: s}\n",
        );
        assert!(
            e.contains("remote_write[0].write_relabel_configs[0]: ") && e.contains("modulus"),
            "{e}"
        );
        let e = err("remote_write:\n  - url: http://h/w\n  - url: http://h/w\n");
        assert!(e.contains("remote_write[1].name: duplicate"), "{e}");
        let e = err("remote_write:\n  - url: http://h/w\n    headers: {Authorization: x}\n");
        assert!(
            e.contains("remote_write[0].headers.Authorization: is a reserved header"),
            "{e}"
        );
        let e = err("remote_write:\n  - url: http://h/w\n    bearer_token: ${NGXPROBE_TEST_UNSET_RW_TOKEN}\n");
        assert!(
            e.contains("remote_write[0].bearer_token: environment variable NGXPROBE_TEST_UNSET_RW_TOKEN is not set"),
            "{e}"
        );
        let e = err("remote_write:\n  - url: http://h/w\n    queue_config: {max_samples_per_sned: 1}\n");
        assert!(e.contains("remote_write[0].queue_config.max_samples_per_sned"), "{e}");
    }
}
