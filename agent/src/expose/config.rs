//! The `web:` section of the config file: where the server listens, the
//! path /metrics is served on, and the limits that keep the server up
//! whatever clients do (see `conns` and `limits` for how they are enforced).
use serde::{Deserialize, Deserializer, Serialize};

use crate::compat::PromDuration;
use crate::compat::duration::deserialize_positive;

pub use super::listen::ListenAddress;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    pub listen_address: ListenAddress,
    #[serde(deserialize_with = "telemetry_path")]
    pub telemetry_path: String,
    /// Open connections at most. At the limit an idle connection, or one
    /// whose request headers are still incomplete, is closed to admit a new
    /// one; a new connection is refused only when every open one is busy
    /// with a request.
    #[serde(deserialize_with = "max_connections")]
    pub max_connections: u32,
    /// Requests on routes other than the telemetry path, /healthz, /readyz
    /// and / (the query, rules and alerts API) handled at once; more get 503
    /// at once. Below `max_connections`, so the API can never hold every
    /// connection and /metrics always finds one.
    #[serde(deserialize_with = "at_least_one")]
    pub max_api_requests: u32,
    /// Time from a request's first byte to the end of its headers.
    #[serde(deserialize_with = "deserialize_positive")]
    pub header_read_timeout: PromDuration,
    /// How long a connection may wait for its (next) request.
    #[serde(deserialize_with = "deserialize_positive")]
    pub idle_timeout: PromDuration,
    /// Time an API request may take (reading its body, queueing, answering).
    /// Longer than the query timeout (2m), which answers first with a
    /// Prometheus-style error.
    #[serde(deserialize_with = "deserialize_positive")]
    pub api_timeout: PromDuration,
    /// Largest request line plus headers (the URL included); larger → 431.
    #[serde(deserialize_with = "max_header_bytes")]
    pub max_header_bytes: u32,
    /// Largest request body on any route; larger → 413.
    pub max_request_body_bytes: u64,
    /// TLS, basic auth and headers: exporter-toolkit's web config file
    /// (`--web.config.file`); relative to this config file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<std::path::PathBuf>,
    /// false: serve only the telemetry path, /healthz and /readyz (the
    /// exporter's surface); the PromQL API, rules/alerts API and the page
    /// answer 404.
    pub enable_api: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen_address: ListenAddress::AllInterfaces { port: 9113 },
            telemetry_path: "/metrics".to_string(),
            max_connections: 256,
            max_api_requests: 64,
            header_read_timeout: PromDuration::from_secs(10),
            idle_timeout: PromDuration::from_secs(120),
            api_timeout: PromDuration::from_secs(150),
            max_header_bytes: 32 * 1024,
            max_request_body_bytes: 1024 * 1024,
            config_file: None,
            enable_api: true,
        }
    }
}

/// The smallest header limit: hyper's smallest read buffer.
pub const MIN_HEADER_BYTES: u32 = 8 * 1024;
/// Headers beyond this are no client's, and each connection may buffer this much.
pub const MAX_HEADER_BYTES: u32 = 1024 * 1024;

impl WebConfig {
    /// Where a local client (the CLI) reaches this server: loopback when it
    /// listens on every interface.
    pub fn local_address(&self) -> String {
        match self.listen_address {
            ListenAddress::AllInterfaces { port } => format!("127.0.0.1:{port}"),
            ListenAddress::Socket(a) => a.to_string(),
        }
    }

    /// Checks across fields that serde cannot express (each field alone is
    /// checked while parsing).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_api_requests >= self.max_connections {
            return Err(format!(
                "web.max_api_requests ({}) must be below web.max_connections ({}): \
                 otherwise API requests can hold every connection and /metrics finds none",
                self.max_api_requests, self.max_connections
            ));
        }
        Ok(())
    }
}

/// Paths the server itself serves; the telemetry path may not shadow them.
pub const RESERVED_PATHS: [&str; 3] = ["/", "/healthz", "/readyz"];

pub fn validate_telemetry_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("telemetry path {path:?} must start with /"));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!("telemetry path {path:?} is reserved"));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "/-_.~".contains(c);
    if !path.chars().all(ok_char) {
        return Err(format!(
            "telemetry path {path:?} may contain only letters, digits and / - _ . ~"
        ));
    }
    Ok(())
}

fn telemetry_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    validate_telemetry_path(&path).map_err(serde::de::Error::custom)?;
    Ok(path)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    // One for the API and one that the API can never take (see max_api_requests).
    if n < 2 {
        return Err(serde::de::Error::custom("must be at least 2"));
    }
    Ok(n)
}

fn max_header_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"
        )));
    }
    Ok(n)
}
