//! Command-line flags win over the config file (like Prometheus flags do).
use std::path::PathBuf;

use super::{Config, ConfigError};
use crate::compat::PromDuration;
use crate::expose::ListenAddress;
use crate::logging::{LogFormat, LogLevel};

/// Raw flag values; `None` means "flag not given, keep the file's value".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen_address: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub discovery_interval: Option<String>,
    pub proc_path: Option<PathBuf>,
    pub storage_path: Option<PathBuf>,
    /// `--web.config.file` (relative to the working directory).
    pub web_config_file: Option<PathBuf>,
    /// `--web.disable-api`.
    pub disable_api: bool,
}

impl Config {
    /// Applies command-line overrides; an invalid flag value is an error
    /// naming the config field it overrides.
    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Override { field, message };
        if let Some(text) = overrides.listen_address {
            self.web.listen_address = text
                .parse::<ListenAddress>()
                .map_err(|e| invalid("web.listen_address", e.to_string()))?;
        }
        if let Some(text) = overrides.log_level {
            self.log.level = text.parse::<LogLevel>().map_err(|e| invalid("log.level", e))?;
        }
        if let Some(text) = overrides.log_format {
            self.log.format = text.parse::<LogFormat>().map_err(|e| invalid("log.format", e))?;
        }
        if let Some(text) = overrides.discovery_interval {
            let interval = text
                .parse::<PromDuration>()
                .map_err(|e| invalid("discovery.interval", e.to_string()))?;
            if interval.is_zero() {
                return Err(invalid("discovery.interval", "must be greater than 0s".to_string()));
            }
            self.discovery.interval = interval;
        }
        if let Some(path) = overrides.proc_path {
            if path.as_os_str().is_empty() {
                return Err(invalid("discovery.proc_path", "must not be empty".to_string()));
            }
            self.discovery.proc_path = path;
        }
        if let Some(path) = overrides.storage_path {
            if path.as_os_str().is_empty() {
                return Err(invalid("storage.path", "must not be empty".to_string()));
            }
            self.storage.path = path;
        }
        if let Some(path) = overrides.web_config_file {
            if path.as_os_str().is_empty() {
                return Err(invalid("web.config_file", "must not be empty".to_string()));
            }
            self.web.config_file = Some(path);
        }
        if overrides.disable_api {
            self.web.enable_api = false;
        }
        Ok(())
    }
}
