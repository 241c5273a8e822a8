//! The agent's YAML config file (`--config FILE`): Prometheus-style
//! snake_case names, every field optional with the defaults in `default.yml`.
//!
//! Adding a section: write a struct with `#[serde(default, deny_unknown_fields)]`
//! and a `Default` impl, add it as a field of [`Config`], and a block to
//! `default.yml` (the `embedded_defaults_match` test keeps the two in sync).
//! Secrets use [`Secret`]; `*_file` variants are read with [`load_secret_file`].
mod duration;
mod error;
mod listen;
pub mod locate;
mod overrides;
// Secrets are used once alerting receivers (api_url / api_url_file) land.
#[allow(dead_code)]
mod secret;
mod values;

#[cfg(test)]
mod tests;

pub use duration::PromDuration;
pub use error::{ConfigError, InvalidField};
pub use listen::ListenAddress;
pub use overrides::Overrides;
#[allow(unused_imports)]
pub use secret::{REDACTED, Secret, load_secret_file};
pub use values::{LabelName, LogFormat, LogLevel, validate_telemetry_path};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

/// The documented defaults, shipped in the binary (`ngxprobe` can print it).
#[cfg_attr(not(test), allow(dead_code))]
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yml");

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub web: WebConfig,
    pub log: LogConfig,
    pub discovery: DiscoveryConfig,
    pub ebpf: EbpfConfig,
    /// Extra constant labels added to every nginx_* sample.
    pub labels: BTreeMap<LabelName, String>,
    /// The embedded time-series store (store stage).
    pub storage: crate::store::StorageConfig,
    /// Alerting and recording rules (rules stage).
    pub rules: crate::rules::RulesConfig,
    /// Built-in notifier, configured exactly like alertmanager.yml (global,
    /// route, receivers, inhibit_rules, templates), inline...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<crate::notify::NotifyConfig>,
    /// ...or an unchanged alertmanager.yml (relative to this file's directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager_config_file: Option<PathBuf>,
    /// Also forward alerts to external Alertmanagers (Prometheus `alerting:` syntax).
    pub alerting: crate::notify::AlertingConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    pub listen_address: ListenAddress,
    #[serde(deserialize_with = "values::telemetry_path")]
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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(deserialize_with = "values::positive_duration")]
    pub interval: PromDuration,
    pub proc_path: PathBuf,
    pub stopped_instance_retention: PromDuration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interval: PromDuration::from_secs(1),
            proc_path: PathBuf::from("/proc"),
            stopped_instance_retention: PromDuration::from_secs(5 * 60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EbpfConfig {
    pub max_seeded_connections: NonZeroU32,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            max_seeded_connections: NonZeroU32::new(65_536).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse(path, &text)
}

/// Parses config text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    if !has_yaml_content(text) {
        return Err(ConfigError::Empty {
            path: path.to_path_buf(),
        });
    }
    let options = serde_saphyr::Options {
        // We print FILE:LINE:COL ourselves; snippets would make multi-line errors.
        with_snippet: false,
        ..serde_saphyr::Options::default()
    };
    // serde-saphyr knows *where*, serde_path_to_error knows *which field*.
    let mut field_path: Option<serde_path_to_error::Path> = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|err| {
            field_path = Some(err.path().clone());
            err.into_inner()
        })
    });
    let config = result.map_err(|err| {
        ConfigError::Invalid(Box::new(InvalidField::from_yaml(
            path.to_path_buf(),
            text,
            &err,
            field_path.as_ref(),
        )))
    })?;
    let mut config = config;
    config.validate().map_err(|message| ConfigError::Semantic {
        path: path.to_path_buf(),
        message,
    })?;
    config
        .resolve_notify(path, text)
        .map_err(|message| ConfigError::Semantic {
            path: path.to_path_buf(),
            message,
        })?;
    Ok(config)
}

impl Config {
    /// Checks across fields that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.storage.validate()?;
        if self.alertmanager.is_some() && self.alertmanager_config_file.is_some() {
            return Err("set either alertmanager (inline) or alertmanager_config_file, not both".into());
        }
        Ok(())
    }

    /// Loads `alertmanager_config_file` (relative to the config file) into
    /// `alertmanager`, and validates receivers and templates, so a bad
    /// notifier config stops the agent at start with file, line and field.
    fn resolve_notify(&mut self, path: &Path, text: &str) -> Result<(), String> {
        if let Some(file) = self.alertmanager_config_file.clone() {
            let file = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            let am = crate::notify::load_file(&file).map_err(|e| e.to_string())?;
            self.alertmanager = Some(am);
        } else if let Some(am) = self.alertmanager.as_mut() {
            am.origin = crate::notify::Origin::embedded(path, text, &["alertmanager"]);
        }
        if let Some(am) = &self.alertmanager {
            crate::notify::compile::validate(am).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A file of only comments, blank lines and document markers configures
/// nothing; that is almost always a mistake (wrong file, failed templating).
fn has_yaml_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|line| !(line.is_empty() || line.starts_with('#') || line == "---" || line == "..."))
}

/// `ngxprobe check config FILE`: promtool-style success text. On error the
/// CLI prints `  FAILED: {error}` and exits 1.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    load(path)?;
    Ok(format!(
        "Checking {file}\n  SUCCESS: {file} is valid ngxprobe config file syntax",
        file = path.display()
    ))
}

/// The effective config as YAML, with every [`Secret`] shown as `<secret>`.
pub fn redacted_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).unwrap_or_else(|err| format!("# cannot render the config as YAML: {err}\n"))
}
