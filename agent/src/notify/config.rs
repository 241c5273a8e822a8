//! The Alertmanager-compatible configuration block: the same top-level keys
//! as `alertmanager.yml` (global, route, receivers, inhibit_rules, templates),
//! so a user's existing file (or the `config:` block of a Helm values file)
//! works unchanged. Of the integrations, Slack and webhooks are supported;
//! anything else is rejected by name rather than silently ignored.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::NotifyError;
use super::matchers::{MatcherList, RegexString, valid_label_name};
use crate::config::{InvalidField, PromDuration, Secret};

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
        f.debug_struct("Origin").field("file", &self.file).field("prefix", &self.prefix).finish()
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

/// The subset of Prometheus' `http_config` that applies to webhooks, plus
/// `timeout` (per request; ngxprobe extension, default 10s).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_http2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<PromDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub insecure_skip_verify: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
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
    let options = serde_saphyr::Options {
        with_snippet: false,
        ..serde_saphyr::Options::default()
    };
    let origin = Origin {
        file: path.to_path_buf(),
        text: Some(text.to_string()),
        prefix: Vec::new(),
    };
    let mut field_path: Option<serde_path_to_error::Path> = None;
    let result = if text.trim().is_empty() {
        Ok(NotifyConfig::default())
    } else {
        serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            serde_path_to_error::deserialize::<_, NotifyConfig>(de).map_err(|err| {
                field_path = Some(err.path().clone());
                err.into_inner()
            })
        })
    };
    let mut cfg = match result {
        Ok(cfg) => cfg,
        Err(err) => {
            let steps = steps_from_path(field_path.as_ref());
            let (mut steps, message, anchor_key) = refine(steps, bare_message(&err));
            if steps.is_empty() {
                let position = err.location().map(|l| (l.line(), l.column()));
                return Err(origin.error_at(std::mem::take(&mut steps), message, position));
            }
            let position = locate(text, &steps, anchor_key)
                .or_else(|| err.location().map(|l| (l.line(), l.column())));
            return Err(origin.error_at(steps, message, position));
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
        let position = self.text.as_deref().and_then(|t| locate(t, &all, anchor_key));
        self.error_at(steps, message.into(), position)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())
    }
}

fn steps_from_path(path: Option<&serde_path_to_error::Path>) -> Vec<Step> {
    use serde_path_to_error::Segment;
    let mut steps = Vec::new();
    for segment in path.into_iter().flat_map(|p| p.iter()) {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => steps.push(Step::Key(key.clone())),
            Segment::Seq { index } => steps.push(Step::Index(*index)),
            Segment::Unknown => break,
        }
    }
    steps
}

/// Moves the field name of "unknown field `x`" into the path.
fn refine(mut steps: Vec<Step>, message: String) -> (Vec<Step>, String, bool) {
    if let Some((name, rest)) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))
    {
        if steps.last() != Some(&Step::Key(name.to_string())) {
            steps.push(Step::Key(name.to_string()));
        }
        let mut msg = format!("unknown field{}", rest.replace('`', ""));
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
            msg = format!("{name} are not supported by ngxprobe (use slack_configs or webhook_configs)");
        }
        return (steps, msg, true);
    }
    (steps, message, false)
}

fn bare_message(err: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    match err.without_snippet() {
        E::Message { msg, .. } | E::HookError { msg, .. } => msg.clone(),
        E::Eof { .. } => "unexpected end of input".to_string(),
        E::Unexpected { expected, .. } => match *expected {
            "mapping start" => "expected a mapping (key: value pairs)".to_string(),
            "sequence start" => "expected a list".to_string(),
            other => format!("expected {other}"),
        },
        other => {
            let s = other.to_string();
            match s.find(" at line ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

pub(crate) fn key(s: &str) -> Step {
    Step::Key(s.to_string())
}

fn dotted(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based (line, column) of `path` in YAML `text`: the key when `anchor_key`
/// (unknown fields), else the value. Falls back to the deepest found parent.
fn locate(text: &str, path: &[Step], anchor_key: bool) -> Option<(u64, u64)> {
    let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
    let mut node = &root;
    let mut key_pos = None;
    let mut best = None;
    for step in path {
        match (&node.value, step) {
            (Node::Map(entries), Step::Key(name)) => {
                let Some((k, v)) = entries.iter().find(|(k, _)| k.value == *name) else {
                    return best;
                };
                key_pos = Some((k.referenced.line(), k.referenced.column()));
                node = v;
            }
            (Node::Seq(items), Step::Index(i)) => {
                let Some(item) = items.get(*i) else { return best };
                node = item;
                key_pos = None;
            }
            _ => return best,
        }
        best = Some(key_pos.unwrap_or((node.referenced.line(), node.referenced.column())));
    }
    match (anchor_key, key_pos) {
        (true, Some(k)) => Some(k),
        _ => Some((node.referenced.line(), node.referenced.column())),
    }
}

enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            let v = map.next_value::<Spanned<Node>>()?;
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

pub(crate) fn check_label_name(name: &str) -> bool {
    valid_label_name(name)
}
