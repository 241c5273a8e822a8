//! The agent's YAML config file (`--config FILE`): Prometheus-style
//! snake_case names, every field optional with the defaults in `default.yml`.
//!
//! This module *describes* the file: [`Config`] is the list of sections, each
//! section's type belongs to the stage that uses it (`web` → expose,
//! `storage` → store, `rules` → rules, `alertmanager`/`alerting` → notify, ...).
//! Stages never import this module; the supervisor (`agent`) hands each
//! stage its section, and a stage that needs more than its section's values
//! (notify reads `alertmanager_config_file`) loads it there.
//!
//! Adding a section: write a struct with `#[serde(default, deny_unknown_fields)]`
//! and a `Default` impl in the stage, add it as a field of [`Config`], and a
//! block to `default.yml` (the `embedded_defaults_match` test keeps the two in
//! sync). Secrets use [`crate::secret::Secret`].
mod error;
mod global;
mod overrides;
mod values;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use global::GlobalConfig;
pub use overrides::Overrides;
pub use values::LabelName;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compat::yaml;
use crate::discover::DiscoveryConfig;
use crate::expose::WebConfig;
use crate::logging::LogConfig;
use crate::probe::EbpfConfig;

/// The documented defaults, shipped in the binary.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yml");

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `external_labels`, as Prometheus's `global:` (remote_write, alerts).
    pub global: GlobalConfig,
    pub web: WebConfig,
    pub log: LogConfig,
    pub discovery: DiscoveryConfig,
    pub ebpf: EbpfConfig,
    /// Per-request RED metrics from the uprobe on nginx (collect stage).
    pub per_request: crate::collect::requests::PerRequestConfig,
    /// namespace/pod/container labels for nginx in pods (kubernetes stage).
    pub kubernetes: crate::kubernetes::KubernetesConfig,
    /// Extra constant labels added to every nginx_* sample.
    pub labels: BTreeMap<LabelName, String>,
    /// The embedded time-series store (store stage).
    pub storage: crate::store::StorageConfig,
    /// PromQL engine and API limits (query stage).
    pub query: crate::query::QueryConfig,
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
    /// Send everything stored to Prometheus-compatible receivers
    /// (Prometheus `remote_write:` syntax; remote_write stage).
    pub remote_write: Vec<crate::remote_write::RemoteWriteConfig>,
}

/// Reads a config file's text (the caller parses it with [`parse`]).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(path, &read(path)?)
}

/// Parses config text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    if !yaml::has_content(text) {
        return Err(ConfigError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut config = yaml::from_str::<Config>(text, None).map_err(|err| {
        let mut invalid = err.in_file(path.to_path_buf(), text);
        if let Some((_, rest)) = &err.unknown_field {
            invalid.message = format!("unknown field{rest}");
        }
        ConfigError::Invalid(Box::new(invalid))
    })?;
    let located = |(field, message): (String, String)| {
        let steps = yaml_steps(&field);
        ConfigError::Invalid(Box::new(crate::compat::InvalidField {
            file: path.to_path_buf(),
            position: crate::compat::yaml::locate_nearest(text, &steps, false),
            field,
            message,
        }))
    };
    resolve_external_labels(&mut config, &|name| std::env::var(name).ok()).map_err(located)?;
    crate::remote_write::validate(&config.remote_write).map_err(located)?;
    config.validate().map_err(|message| ConfigError::Semantic {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// Expands environment variables in the external labels and moves the
/// older `rules.external_labels` (alerts only, before `global:` existed) into
/// `global.external_labels`, where every stage reads them. `Err((field, message))`.
fn resolve_external_labels(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Result<(), (String, String)> {
    let mut section = "global.external_labels";
    if !config.rules.external_labels.is_empty() {
        section = "rules.external_labels";
        if !config.global.external_labels.is_empty() {
            return Err((
                section.into(),
                "set global.external_labels only (rules.external_labels is its older name)".into(),
            ));
        }
        for (name, value) in std::mem::take(&mut config.rules.external_labels) {
            let label = name
                .parse::<LabelName>()
                .map_err(|m| (format!("{section}.{name}"), m))?;
            config.global.external_labels.insert(label, value);
        }
    }
    for (name, value) in config.global.external_labels.iter_mut() {
        let field = || format!("{section}.{name}");
        *value = global::expand_env(value, env).map_err(|m| (field(), m))?;
        if value.is_empty() {
            return Err((field(), "empty value (an empty external label is no label)".into()));
        }
    }
    Ok(())
}

/// `a[0].b.c` as path steps (for locating a field found by validation).
fn yaml_steps(dotted: &str) -> Vec<crate::compat::Step> {
    use crate::compat::Step;
    let mut steps = Vec::new();
    for part in dotted.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            steps.push(Step::Key(rest[..i].to_string()));
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                if let Ok(n) = rest[1..end].parse() {
                    steps.push(Step::Index(n));
                }
                rest = &rest[end + 1..];
            }
        } else {
            steps.push(Step::Key(rest.to_string()));
        }
    }
    steps
}

impl Config {
    /// `global.external_labels` (expanded), sorted by name.
    pub fn external_labels(&self) -> Vec<(String, String)> {
        self.global
            .external_labels
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect()
    }

    /// Checks across fields that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.web.validate()?;
        self.storage.validate()?;
        self.query.validate()?;
        self.kubernetes.validate()?;
        if self.alertmanager.is_some() && self.alertmanager_config_file.is_some() {
            return Err("set either alertmanager (inline) or alertmanager_config_file, not both".into());
        }
        Ok(())
    }
}

/// The effective config as YAML, with every secret shown as `<secret>`.
pub fn redacted_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).unwrap_or_else(|err| format!("# cannot render the config as YAML: {err}\n"))
}
