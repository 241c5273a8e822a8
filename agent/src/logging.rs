//! Logging: the `log:` config section and the global subscriber (tracing to
//! stderr, text or JSON).
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The `log:` section of the config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

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

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?}: {reason}")]
    Level { level: String, reason: String },
    #[error("invalid RUST_LOG: {0}")]
    Env(String),
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Installs the global subscriber. `level` is the config/flag level
/// (`info`, `debug`, ...); a set RUST_LOG wins over it, so a developer can
/// still say `RUST_LOG=ngxprobe::discover=trace`.
pub fn init(level: &str, format: LogFormat) -> Result<(), LoggingError> {
    let filter = filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    // Colours only for a person at a terminal, never into journald or files.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        // One JSON object per line, fields flattened for log shippers.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|err| LoggingError::AlreadyInitialised(err.to_string()))
}

fn filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    if let Some(directives) = rust_log.filter(|d| !d.trim().is_empty()) {
        return EnvFilter::try_new(directives).map_err(|err| LoggingError::Env(err.to_string()));
    }
    let level = level.trim().to_ascii_lowercase();
    let known = ["trace", "debug", "info", "warn", "error", "off"];
    if !known.contains(&level.as_str()) {
        return Err(LoggingError::Level {
            level,
            reason: "expected one of trace, debug, info, warn, error".to_string(),
        });
    }
    EnvFilter::try_new(&level).map_err(|err| LoggingError::Level {
        level,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_and_rust_log() {
        for level in ["info", "DEBUG", "warn", "error", "trace", "off"] {
            assert!(filter(level, None).is_ok(), "{level}");
        }
        let err = filter("loud", None).map(|_| ()).map_err(|e| e.to_string());
        assert!(matches!(&err, Err(e) if e.contains("\"loud\"")), "{err:?}");
        // RUST_LOG wins, even over an invalid configured level.
        let f = filter("loud", Some("ngxprobe=debug")).map(|f| f.to_string());
        assert_eq!(f.ok().as_deref(), Some("ngxprobe=debug"));
        // Blank RUST_LOG is ignored.
        assert_eq!(
            filter("warn", Some(" ")).map(|f| f.to_string()).ok().as_deref(),
            Some("warn")
        );
        assert!(filter("info", Some("ngxprobe=[")).is_err());
    }

    #[test]
    fn init_once() {
        // Only the first init in a process succeeds; the second must error, not panic.
        let first = init("info", LogFormat::Json);
        let second = init("info", LogFormat::Text);
        assert!(first.is_ok() || second.is_err());
        assert!(second.is_err());
    }
}
