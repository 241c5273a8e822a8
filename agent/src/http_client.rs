//! Outbound HTTP of the stages that deliver to receivers (notify's webhooks
//! and Slack, remote_write): Prometheus' `http_config` block (TLS, basic
//! auth, authorization, bearer tokens from files), the client built from it,
//! and `Retry-After` parsing. A leaf module: it knows no stage.
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::compat::PromDuration;
use crate::secret::Secret;

/// Longest `Retry-After` taken literally: absurd values (centuries) mean
/// "not any time soon" and must not overflow a deadline computed from them.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// rustls' process-wide crypto provider (ring); a second install (or one by
/// another stage) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The subset of Prometheus' `http_config` that applies to webhooks, plus
/// `timeout` (per request; ngxprobe extension, default 10s).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<PromDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub insecure_skip_verify: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

pub fn build_client(http: &HttpConfig) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(http.timeout.map(|d| d.as_duration()).unwrap_or(Duration::from_secs(10)))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("ngxprobe/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if http.follow_redirects == Some(false) {
        b = b.redirect(reqwest::redirect::Policy::none());
    }
    if let Some(p) = &http.proxy_url {
        b = b.proxy(reqwest::Proxy::all(p.expose()).map_err(|_| "invalid proxy_url".to_string())?);
    }
    if let Some(tls) = &http.tls_config {
        if tls.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| e.to_string())
}

/// The `Authorization` header `http` asks for; `*_file` secrets are read
/// on every call, so rotated files take effect without a restart.
pub fn auth_header(http: &HttpConfig) -> Result<Option<String>, String> {
    let read = |p: &std::path::Path| {
        crate::secret::load_secret_file(p)
            .map(|s| s.expose().to_string())
            .map_err(|e| e.to_string())
    };
    if let Some(b) = &http.basic_auth {
        let pw = match (&b.password, &b.password_file) {
            (Some(p), _) => p.expose().to_string(),
            (None, Some(f)) => read(f)?,
            _ => String::new(),
        };
        return Ok(Some(format!("Basic {}", base64(&format!("{}:{pw}", b.username)))));
    }
    if let Some(a) = &http.authorization {
        let cred = match (&a.credentials, &a.credentials_file) {
            (Some(c), _) => c.expose().to_string(),
            (None, Some(f)) => read(f)?,
            _ => String::new(),
        };
        return Ok(Some(format!("{} {cred}", a.kind.as_deref().unwrap_or("Bearer"))));
    }
    match (&http.bearer_token, &http.bearer_token_file) {
        (Some(t), _) => Ok(Some(format!("Bearer {}", t.expose()))),
        (None, Some(f)) => Ok(Some(format!("Bearer {}", read(f)?))),
        _ => Ok(None),
    }
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `Retry-After` in seconds or as an HTTP date; absurd values (past u64,
/// centuries) mean "not within this flush", capped so no sum overflows.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    let when = humantime::parse_rfc3339_weak(v).ok().or_else(|| httpdate(v))?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_CAP),
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == parts[2])? + 1;
    let s = format!("{}-{:02}-{:0>2}T{}Z", parts[3], m, parts[1], parts[4]);
    humantime::parse_rfc3339(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_header_and_retry_after_forms() {
        assert_eq!(base64("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64("a"), "YQ==");
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999999999999999999"), Some(RETRY_AFTER_CAP));
        assert!(httpdate("Sun, 06 Nov 1994 08:49:37 GMT").is_some());
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
    }
}
