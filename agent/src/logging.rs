//! Logging setup (tracing to stderr, text or JSON) and [`OnceLogger`], which
//! keeps repeating conditions ("no nginx found") from flooding the log.
use std::collections::HashMap;
use std::hash::Hash;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

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

/// Remembers the last state logged per key so a condition is logged when it
/// starts or changes, not on every tick:
///
/// ```ignore
/// static NGINX: OnceLogger<&str, bool> = OnceLogger::new();
/// let found = !instances.is_empty();
/// if NGINX.changed("nginx", found) {
///     if found { info!("nginx found") } else { warn!("no nginx found; waiting") }
/// }
/// ```
#[allow(dead_code)] // for the discovery loop's "no nginx found" style messages
pub struct OnceLogger<K, S> {
    last: Mutex<Option<HashMap<K, S>>>,
}

impl<K: Eq + Hash, S: PartialEq> Default for OnceLogger<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(dead_code)]
impl<K: Eq + Hash, S: PartialEq> OnceLogger<K, S> {
    pub const fn new() -> Self {
        OnceLogger { last: Mutex::new(None) }
    }

    /// Records `state` for `key`; true when it differs from the last one
    /// recorded (or is the first), i.e. when the caller should log.
    pub fn changed(&self, key: K, state: S) -> bool {
        // A panic while holding the lock must not silence logging forever.
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        if map.get(&key) == Some(&state) {
            return false;
        }
        map.insert(key, state);
        true
    }

    /// Forgets a key (e.g. an nginx instance that went away), so its next
    /// state is logged again and the map doesn't grow without bound.
    pub fn forget(&self, key: &K) {
        let mut guard = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.as_mut() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_on_first_sight_and_on_change_only() {
        let once: OnceLogger<&str, bool> = OnceLogger::new();
        assert!(once.changed("nginx", false)); // "no nginx found": logged
        assert!(!once.changed("nginx", false)); // still none: quiet
        assert!(!once.changed("nginx", false));
        assert!(once.changed("nginx", true)); // appeared: logged
        assert!(!once.changed("nginx", true));
        assert!(once.changed("nginx", false)); // gone again: logged again
        assert!(once.changed("other", false)); // keys are independent
        once.forget(&"nginx");
        assert!(once.changed("nginx", false));
    }

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
