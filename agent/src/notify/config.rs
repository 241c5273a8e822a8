//! The Alertmanager-compatible configuration block: the same top-level keys
//! as `alertmanager.yml` (global, route, receivers, inhibit_rules, templates),
//! so a user's existing file (or the `config:` block of a Helm values file)
//! works unchanged. Of the integrations, Slack and webhooks are supported;
//! anything else is rejected by name rather than silently ignored.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NotifyError;
use super::matchers::{MatcherList, RegexString, valid_label_name};
use crate::compat::PromDuration;
use crate::compat::yaml::{self, InvalidField, dotted, locate_nearest};
pub(crate) use crate::compat::yaml::{Step, key};
use crate::secret::Secret;
// The receivers' `http_config` (shared with remote_write).
pub use crate::http_client::{Authorization, BasicAuth, HttpConfig, TlsConfig};

/// Alertmanager's top-level configuration keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub global: GlobalConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteConfig>,
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    /// Template file globs, relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<String>,
    /// Where relative paths (templates, *_file) are resolved and which file
    /// errors name. Set by [`load_file`] / [`parse`]; not part of the YAML.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a [`NotifyConfig`] came from, for relative paths and error messages.
#[derive(Clone, Default, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    /// The file's text, to find line numbers of fields.
    pub text: Option<String>,
    /// Path of the block inside the file, e.g. `["alertmanager"]` when it is
    /// embedded in the agent config; empty for a standalone alertmanager.yml.
    pub prefix: Vec<String>,
}

impl fmt::Debug for Origin {
    /// Never the text: it may contain secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("file", &self.file)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Origin {
    /// `file` holds this block under `prefix` (dotted path in the YAML).
    pub fn embedded(file: &Path, text: &str, prefix: &[&str]) -> Origin {
        Origin {
            file: file.to_path_buf(),
            text: Some(text.to_string()),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn base_dir(&self) -> PathBuf {
        self.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    pub resolve_timeout: PromDuration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack_api_url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack_api_url_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_config: Option<HttpConfig>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            resolve_timeout: PromDuration::from_secs(5 * 60),
            slack_api_url: None,
            slack_api_url_file: None,
            http_config: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    #[serde(rename = "continue")]
    pub continue_matching: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<MatcherList>,
    #[serde(rename = "match", skip_serializing_if = "BTreeMap::is_empty")]
    pub match_eq: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_re: BTreeMap<String, RegexString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<PromDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<PromDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<PromDuration>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InhibitRuleConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_matchers: Vec<MatcherList>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_matchers: Vec<MatcherList>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_match: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_match_re: BTreeMap<String, RegexString>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target_match: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target_match_re: BTreeMap<String, RegexString>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub equal: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slack_configs: Vec<SlackConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_configs: Vec<WebhookConfig>,
}

/// Every templated field is optional; unset ones use Alertmanager's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_config: Option<HttpConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<SlackField>,
    pub short_fields: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon_emoji: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumb_url: Option<String>,
    pub link_names: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mrkdwn_in: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackField {
    pub title: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_config: Option<HttpConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    pub max_alerts: u64,
}

/// The notify stage's section of the agent config, loaded: the inline
/// `alertmanager:` block, or the unchanged file `alertmanager_config_file`
/// names (relative to the agent config's directory), validated so that a bad
/// notifier config stops the agent at start with file, line and field.
/// `config_path` and `config_text` are the agent config's, to locate errors
/// in an inline block.
pub fn load_section(
    inline: Option<NotifyConfig>,
    file: Option<&Path>,
    config_path: &Path,
    config_text: &str,
) -> Result<Option<NotifyConfig>, NotifyError> {
    if let Some(file) = file {
        let file = match config_path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        };
        return load_file(&file).map(Some);
    }
    let Some(mut am) = inline else {
        return Ok(None);
    };
    am.origin = Origin::embedded(config_path, config_text, &["alertmanager"]);
    super::compile::validate(&am)?;
    Ok(Some(am))
}

/// Reads an unchanged `alertmanager.yml` (`alertmanager_config_file:`).
pub fn load_file(path: &Path) -> Result<NotifyConfig, NotifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses alertmanager.yml text; `path` names the file in errors and is the
/// base for relative paths. Also validates (receivers, templates, matchers).
pub fn parse(path: &Path, text: &str) -> Result<NotifyConfig, NotifyError> {
    let origin = Origin {
        file: path.to_path_buf(),
        text: Some(text.to_string()),
        prefix: Vec::new(),
    };
    let result = if text.trim().is_empty() {
        Ok(NotifyConfig::default())
    } else {
        yaml::from_str::<NotifyConfig>(text, None)
    };
    let mut cfg = match result {
        Ok(cfg) => cfg,
        Err(err) => {
            let message = match &err.unknown_field {
                Some((name, rest)) => unknown_field_message(name, rest),
                None => err.message.clone(),
            };
            return Err(origin.error_at(err.steps.clone(), message, err.position_nearest(text)));
        }
    };
    cfg.origin = origin;
    super::compile::validate(&cfg)?;
    Ok(cfg)
}

impl Origin {
    fn error_at(&self, steps: Vec<Step>, message: String, position: Option<(u64, u64)>) -> NotifyError {
        let mut all: Vec<Step> = self.prefix.iter().cloned().map(Step::Key).collect();
        all.extend(steps);
        NotifyError::Config(Box::new(InvalidField {
            file: self.file.clone(),
            position,
            field: dotted(&all),
            message,
        }))
    }

    /// An error about `steps` (relative to this block), located in the text.
    pub(crate) fn error(&self, steps: Vec<Step>, message: impl Into<String>, anchor_key: bool) -> NotifyError {
        let mut all: Vec<Step> = self.prefix.iter().cloned().map(Step::Key).collect();
        all.extend(steps.iter().cloned());
        let position = self.text.as_deref().and_then(|t| locate_nearest(t, &all, anchor_key));
        self.error_at(steps, message.into(), position)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())
    }
}

/// "unknown field" in Alertmanager's words, naming the receivers ngxprobe
/// does not implement instead of calling them unknown.
fn unknown_field_message(name: &str, rest: &str) -> String {
    if matches!(
        name,
        "email_configs"
            | "pagerduty_configs"
            | "opsgenie_configs"
            | "victorops_configs"
            | "pushover_configs"
            | "wechat_configs"
            | "sns_configs"
            | "telegram_configs"
            | "webex_configs"
            | "discord_configs"
            | "msteams_configs"
    ) {
        format!("{name} are not supported by ngxprobe (use slack_configs or webhook_configs)")
    } else {
        format!("unknown field{rest}")
    }
}

pub(crate) fn check_label_name(name: &str) -> bool {
    valid_label_name(name)
}
