//! `--web.config.file`: the web configuration file of Prometheus and the
//! exporters (exporter-toolkit's format, unchanged): `tls_server_config`,
//! `http_server_config` and `basic_auth_users`.
//!
//! The file is read and checked once at start, before the port is opened:
//! any problem (unknown field, unreadable certificate, a setting rustls
//! cannot honour) is an error naming file, line and field, and the agent
//! does not start. What rustls cannot do is refused by name, never ignored:
//! TLS 1.0/1.1, CBC and RSA-key-exchange cipher suites, P-521, e-mail and
//! URI entries in `client_allowed_sans`, `rate_limit`.
//!
//! Unlike exporter-toolkit, which re-reads the whole file on every request,
//! users, headers and TLS settings are fixed until restart; only the server
//! certificate and key files are picked up when they change (see `tls`), the
//! case that matters (cert-manager renewing a Secret). Relative paths are
//! relative to the file's directory, as in exporter-toolkit.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::IgnoredAny;

pub use super::auth::BasicAuth;
use super::tls;
use crate::compat::yaml::{self, InvalidField, Step, key, locate_nearest};
use crate::secret::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfigFile {
    pub tls_server_config: Option<TlsServerConfig>,
    pub http_server_config: HttpServerConfig,
    pub basic_auth_users: BTreeMap<String, Secret>,
    /// exporter-toolkit's token bucket: refused (see `web.max_api_requests`).
    rate_limit: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsServerConfig {
    /// Inline PEM (instead of `cert_file`).
    pub cert: Option<String>,
    /// Inline PEM (instead of `key_file`).
    pub key: Option<Secret>,
    /// Inline PEM (instead of `client_ca_file`).
    pub client_ca: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_auth_type: ClientAuthType,
    pub client_ca_file: Option<PathBuf>,
    pub client_allowed_sans: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub cipher_suites: Vec<String>,
    pub prefer_server_cipher_suites: bool,
    pub curve_preferences: Vec<String>,
}

impl Default for TlsServerConfig {
    fn default() -> Self {
        TlsServerConfig {
            cert: None,
            key: None,
            client_ca: None,
            cert_file: None,
            key_file: None,
            client_auth_type: ClientAuthType::NoClientCert,
            client_ca_file: None,
            client_allowed_sans: Vec::new(),
            min_version: TlsVersion::TLS12,
            max_version: TlsVersion::TLS13,
            cipher_suites: Vec::new(),
            prefer_server_cipher_suites: true,
            curve_preferences: Vec::new(),
        }
    }
}

/// Go's `tls.ClientAuthType`, by the names exporter-toolkit accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ClientAuthType {
    #[serde(alias = "")]
    NoClientCert,
    RequestClientCert,
    /// `RequireClientCert` is exporter-toolkit's old name.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[allow(clippy::upper_case_acronyms)] // the file's spelling
pub enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    /// HTTP/2 is not served (hyper's HTTP/1.1 only, ALPN offers http/1.1):
    /// clients fall back to HTTP/1.1, as Prometheus does.
    pub http2: bool,
    pub headers: BTreeMap<String, String>,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            http2: true,
            headers: BTreeMap::new(),
        }
    }
}

/// The headers exporter-toolkit lets a user add, and their allowed values
/// where the header has a fixed set (empty: any value).
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// The web config file, loaded: what the server needs to apply it.
pub struct WebSecurity {
    pub file: PathBuf,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub basic_auth: Option<Arc<BasicAuth>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSecurity")
            .field("file", &self.file)
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.basic_auth.is_some())
            .field("headers", &self.headers)
            .finish()
    }
}

/// A problem found in the file, located: `file:line:col: field: message`.
pub struct Problem {
    pub steps: Vec<Step>,
    pub message: String,
}

impl Problem {
    pub fn at(steps: &[&str], message: impl Into<String>) -> Problem {
        Problem {
            steps: steps.iter().map(|s| key(s)).collect(),
            message: message.into(),
        }
    }

    pub fn index(mut self, i: usize) -> Problem {
        self.steps.push(Step::Index(i));
        self
    }
}

/// Reads, parses and checks the web config file (certificates and keys
/// loaded, hashes parsed). Errors name the file, line and field; they never
/// contain a password hash or a key.
pub fn load(path: &Path) -> Result<WebSecurity, Box<InvalidField>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Box::new(InvalidField {
            file: path.to_path_buf(),
            position: None,
            field: String::new(),
            message: format!("cannot read web config file: {e}"),
        })
    })?;
    parse(path, &text)
}

/// [`load`] on text already read; `path` names the file and is the base of
/// relative paths.
pub fn parse(path: &Path, text: &str) -> Result<WebSecurity, Box<InvalidField>> {
    // An empty file is valid in exporter-toolkit: plain HTTP, no auth.
    let file: WebConfigFile = if yaml::has_content(text) {
        yaml::from_str(text, None).map_err(|err| {
            let mut invalid = err.in_file(path.to_path_buf(), text);
            if let Some((_, rest)) = &err.unknown_field {
                invalid.message = format!("unknown field{rest}");
            }
            Box::new(invalid)
        })?
    } else {
        WebConfigFile::default()
    };
    let located = |p: Problem| {
        Box::new(InvalidField {
            file: path.to_path_buf(),
            position: locate_nearest(text, &p.steps, false),
            field: yaml::dotted(&p.steps),
            message: p.message,
        })
    };
    if file.rate_limit.is_some() {
        return Err(located(Problem::at(
            &["rate_limit"],
            "not supported by ngxprobe (web.max_api_requests and web.max_connections bound the load)",
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = match &file.tls_server_config {
        Some(t) => Some(Arc::new(tls::server_config(t, dir).map_err(located)?)),
        None => None,
    };
    let headers = headers(&file.http_server_config.headers).map_err(located)?;
    let basic_auth = match file.basic_auth_users.is_empty() {
        true => None,
        false => Some(Arc::new(BasicAuth::new(&file.basic_auth_users).map_err(located)?)),
    };
    Ok(WebSecurity {
        file: path.to_path_buf(),
        tls,
        basic_auth,
        headers,
    })
}

fn headers(configured: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, Problem> {
    let mut out = Vec::new();
    for (name, value) in configured {
        let at = || Problem::at(&["http_server_config", "headers", name], "");
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(Problem {
                message: format!(
                    "HTTP header {name:?} can not be configured (allowed: {})",
                    names.join(", ")
                ),
                ..at()
            });
        };
        if value.is_empty() {
            continue; // "Unset if blank."
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(Problem {
                message: format!("invalid value {value:?}, expected one of {allowed:?}"),
                ..at()
            });
        }
        let value = HeaderValue::from_str(value).map_err(|_| Problem {
            message: "not a valid HTTP header value (control characters?)".to_string(),
            ..at()
        })?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Problem {
            message: "not a valid HTTP header name".to_string(),
            ..at()
        })?;
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "web_config_tests.rs"]
mod tests;
