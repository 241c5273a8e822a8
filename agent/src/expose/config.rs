//! The `web:` section of the config file: where the server listens and the
//! path /metrics is served on.
use serde::{Deserialize, Deserializer, Serialize};

pub use super::listen::ListenAddress;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    pub listen_address: ListenAddress,
    #[serde(deserialize_with = "telemetry_path")]
    pub telemetry_path: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen_address: ListenAddress::AllInterfaces { port: 9113 },
            telemetry_path: "/metrics".to_string(),
        }
    }
}

impl WebConfig {
    /// Where a local client (the CLI) reaches this server: loopback when it
    /// listens on every interface.
    pub fn local_address(&self) -> String {
        match self.listen_address {
            ListenAddress::AllInterfaces { port } => format!("127.0.0.1:{port}"),
            ListenAddress::Socket(a) => a.to_string(),
        }
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
