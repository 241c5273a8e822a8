//! Small validated value types used by config sections.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use super::PromDuration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            // Prometheus and Go tools say "warn"; accept the long form too.
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            _ => Err(format!(
                "unknown log level {s:?}, expected one of trace, debug, info, warn, error"
            )),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "logfmt" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?}, expected one of text, json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__reserved`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelName(String);

impl LabelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name {s:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        if s.starts_with("__") {
            return Err(format!("invalid label name {s:?}: names starting with __ are reserved"));
        }
        Ok(LabelName(s.to_string()))
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for LabelName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LabelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `deserialize_with` for intervals that must not be zero (a zero tick
/// interval would spin).
pub(super) fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<PromDuration, D::Error> {
    let duration = PromDuration::deserialize(d)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be greater than 0s"));
    }
    Ok(duration)
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

pub(super) fn telemetry_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    validate_telemetry_path(&path).map_err(serde::de::Error::custom)?;
    Ok(path)
}
