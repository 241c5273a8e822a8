//! Prometheus rule files (`groups:`), and Kubernetes PrometheusRule manifests
//! (`spec.groups`), parsed and validated like `rulefmt.Parse`.
use std::{collections::BTreeMap, fmt, path::Path};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny},
};
use serde_saphyr::Spanned;

use super::template;
use crate::compat::{PromDuration, yaml};
pub use crate::series::is_valid_label_name;

/// A validated rule group.
#[derive(Clone, Debug)]
pub struct GroupDef {
    pub name: String,
    pub file: String,
    /// Own `interval:` (ms), if set.
    pub interval_ms: Option<i64>,
    pub query_offset_ms: Option<i64>,
    pub limit: usize,
    pub labels: BTreeMap<String, String>,
    pub rules: Vec<RuleDef>,
}

#[derive(Clone, Debug)]
pub struct RuleDef {
    /// Alerting (`alert:`) or recording (`record:`).
    pub alerting: bool,
    pub name: String,
    /// The expression as written.
    pub expr: String,
    pub parsed: promql_parser::parser::Expr,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    /// Rule labels (group labels merged in, the rule's winning).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What is wrong with a rule file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Unreadable file.
    Io,
    /// YAML syntax, wrong type.
    Yaml,
    /// A field Prometheus's format does not have.
    UnknownField,
    /// Expression does not parse.
    Promql,
    /// A label/annotation template does not parse.
    Template,
    /// Other semantic errors (names, missing fields, record+alert, ...).
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub kind: ErrorKind,
    /// Already includes positions and the group/rule as Prometheus prints them.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// A string scalar; YAML ints/floats/bools are taken as their text, as yaml.v3
/// does for a Go string field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct YStr(pub String);

impl<'de> Deserialize<'de> for YStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = YStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<YStr, E> {
                Ok(YStr(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<YStr, E> {
                Ok(YStr(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<YStr, E> {
                Ok(YStr(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<YStr, E> {
                Ok(YStr(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<YStr, E> {
                Ok(YStr(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<YStr, E> {
                Ok(YStr(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<YStr, E> {
                Ok(YStr(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A Prometheus duration (`5m`, `1h30m`) that may also be written as a bare `0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dur(pub PromDuration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = YStr::deserialize(d)?;
        s.0.parse::<PromDuration>().map(Dur).map_err(de::Error::custom)
    }
}

impl Dur {
    pub fn ms(self) -> i64 {
        self.0.as_duration().as_millis() as i64
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, deserialize_with = "null_default")]
    groups: Vec<Spanned<RawGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: YStr,
    #[serde(default)]
    interval: Option<Dur>,
    #[serde(default)]
    query_offset: Option<Dur>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default, deserialize_with = "null_default")]
    labels: BTreeMap<String, YStr>,
    #[serde(default, deserialize_with = "null_default")]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    record: Option<Spanned<YStr>>,
    #[serde(default)]
    alert: Option<Spanned<YStr>>,
    #[serde(default)]
    expr: Option<Spanned<YStr>>,
    #[serde(default, rename = "for")]
    for_: Option<Dur>,
    #[serde(default)]
    keep_firing_for: Option<Dur>,
    #[serde(default, deserialize_with = "null_default")]
    labels: BTreeMap<String, YStr>,
    #[serde(default, deserialize_with = "null_default")]
    annotations: BTreeMap<String, YStr>,
}

/// A Kubernetes manifest: only `spec` is read.
#[derive(Deserialize)]
struct K8sManifest {
    #[serde(default)]
    spec: RawFile,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    kind: Option<IgnoredAny>,
    #[serde(default)]
    spec: Option<IgnoredAny>,
    #[serde(default)]
    groups: Option<IgnoredAny>,
}

/// Reads and validates a rule file.
pub fn load_file(path: &Path) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_text(&name, &text),
        Err(e) => Err(vec![RuleError {
            file: name,
            kind: ErrorKind::Io,
            message: e.to_string(),
        }]),
    }
}

/// Parses and validates rule file text; `file` names it in errors.
pub fn parse_text(file: &str, text: &str) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    if !yaml::has_content(text) {
        return Ok(vec![]);
    }
    let is_k8s = matches!(
        serde_saphyr::from_str::<Probe>(text),
        Ok(Probe {
            kind: Some(_),
            spec: Some(_),
            groups: None
        }) | Ok(Probe {
            spec: Some(_),
            groups: None,
            ..
        })
    );
    // `value` is Spanned's own field (no rule-file field has that name).
    let raw = if is_k8s {
        yaml::from_str::<K8sManifest>(text, Some("value")).map(|m| m.spec)
    } else {
        yaml::from_str::<RawFile>(text, Some("value"))
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => return Err(vec![yaml_error(file, text, &e)]),
    };
    validate(file, raw)
}

fn yaml_error(file: &str, text: &str, err: &yaml::YamlError) -> RuleError {
    let (kind, message) = match &err.unknown_field {
        Some((name, rest)) => (
            ErrorKind::UnknownField,
            format!("field {name} not found in rule file format{rest}"),
        ),
        None => (ErrorKind::Yaml, err.message.clone()),
    };
    let mut msg = String::new();
    if let Some((l, c)) = err.position(text) {
        msg.push_str(&format!("{l}:{c}: "));
    }
    let dotted = err.field();
    if !dotted.is_empty() {
        msg.push_str(&dotted);
        msg.push_str(": ");
    }
    msg.push_str(&message);
    RuleError {
        file: file.to_string(),
        kind,
        message: msg,
    }
}

pub fn is_valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn pos<T>(s: &Spanned<T>) -> String {
    format!("{}:{}", s.referenced.line(), s.referenced.column())
}

fn validate(file: &str, raw: RawFile) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    let mut errs: Vec<RuleError> = Vec::new();
    let mut push = |kind: ErrorKind, message: String| {
        errs.push(RuleError {
            file: file.to_string(),
            kind,
            message,
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut groups = Vec::new();
    for g in raw.groups {
        let gpos = pos(&g);
        let g = g.value;
        let gname = g.name.0.clone();
        if gname.is_empty() {
            push(ErrorKind::Invalid, format!("{gpos}: Groupname must not be empty"));
        }
        if !seen.insert(gname.clone()) {
            push(
                ErrorKind::Invalid,
                format!("{gpos}: groupname: \"{gname}\" is repeated in the same file"),
            );
        }
        let glabels: BTreeMap<String, String> = g.labels.into_iter().map(|(k, v)| (k, v.0)).collect();
        for k in glabels.keys() {
            if !is_valid_label_name(k) {
                push(
                    ErrorKind::Invalid,
                    format!("{gpos}: group {gname:?}: invalid label name: {k}"),
                );
            }
        }
        let mut rules = Vec::new();
        for (i, r) in g.rules.into_iter().enumerate() {
            let rpos = pos(&r);
            let r = r.value;
            let record = r.record.as_ref().map(|s| s.value.0.clone()).unwrap_or_default();
            let alert = r.alert.as_ref().map(|s| s.value.0.clone()).unwrap_or_default();
            let rname = if !alert.is_empty() {
                alert.clone()
            } else {
                record.clone()
            };
            let head = format!("group {gname:?}, rule {}, {rname:?}", i + 1);
            let mut bad = false;
            let mut rule_err = |kind: ErrorKind, at: Option<String>, msg: String| {
                let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
                push(kind, format!("{at}{head}: {msg}"));
            };
            let rec_pos = r.record.as_ref().map(pos);
            if !record.is_empty() && !alert.is_empty() {
                let at = format!(
                    "{}: {}",
                    pos(r.record.as_ref().expect("record set")),
                    pos(r.alert.as_ref().expect("alert set"))
                );
                rule_err(
                    ErrorKind::Invalid,
                    Some(at),
                    "only one of 'record' and 'alert' must be set".into(),
                );
                bad = true;
            }
            if record.is_empty() && alert.is_empty() {
                rule_err(
                    ErrorKind::Invalid,
                    Some(rpos.clone()),
                    "one of 'record' or 'alert' must be set".into(),
                );
                bad = true;
            }
            let expr_text = r.expr.as_ref().map(|s| s.value.0.clone()).unwrap_or_default();
            let mut parsed = None;
            if expr_text.is_empty() {
                rule_err(
                    ErrorKind::Invalid,
                    r.expr.as_ref().map(pos).or(Some(rpos.clone())),
                    "field 'expr' must be set in rule".into(),
                );
                bad = true;
            } else {
                match crate::query::parse(&expr_text) {
                    Ok(e) => parsed = Some(e),
                    Err(e) => {
                        rule_err(
                            ErrorKind::Promql,
                            r.expr.as_ref().map(pos),
                            format!("could not parse expression: {e}"),
                        );
                        bad = true;
                    }
                }
            }
            let for_ms = r.for_.map(Dur::ms).unwrap_or(0);
            let kff_ms = r.keep_firing_for.map(Dur::ms).unwrap_or(0);
            if !record.is_empty() {
                if !r.annotations.is_empty() {
                    rule_err(
                        ErrorKind::Invalid,
                        rec_pos.clone(),
                        "invalid field 'annotations' in recording rule".into(),
                    );
                    bad = true;
                }
                if for_ms != 0 {
                    rule_err(
                        ErrorKind::Invalid,
                        rec_pos.clone(),
                        "invalid field 'for' in recording rule".into(),
                    );
                    bad = true;
                }
                if kff_ms != 0 {
                    rule_err(
                        ErrorKind::Invalid,
                        rec_pos.clone(),
                        "invalid field 'keep_firing_for' in recording rule".into(),
                    );
                    bad = true;
                }
                if !is_valid_metric_name(&record) {
                    rule_err(
                        ErrorKind::Invalid,
                        rec_pos.clone(),
                        format!("invalid recording rule name: {record}"),
                    );
                    bad = true;
                }
            }
            let labels: BTreeMap<String, String> = r.labels.into_iter().map(|(k, v)| (k, v.0)).collect();
            let annotations: BTreeMap<String, String> = r.annotations.into_iter().map(|(k, v)| (k, v.0)).collect();
            for k in labels.keys() {
                if !is_valid_label_name(k) || k == "__name__" {
                    rule_err(ErrorKind::Invalid, None, format!("invalid label name: {k}"));
                    bad = true;
                }
            }
            for k in annotations.keys() {
                if !is_valid_label_name(k) {
                    rule_err(ErrorKind::Invalid, None, format!("invalid annotation name: {k}"));
                    bad = true;
                }
            }
            if !alert.is_empty() {
                let tname = format!("__alert_{alert}");
                for (k, v) in &labels {
                    if let Err(e) = template::parse_test(&tname, v) {
                        rule_err(ErrorKind::Template, None, format!("label {k:?}: {e}"));
                        bad = true;
                    }
                }
                for (k, v) in &annotations {
                    if let Err(e) = template::parse_test(&tname, v) {
                        rule_err(ErrorKind::Template, None, format!("annotation {k:?}: {e}"));
                        bad = true;
                    }
                }
            }
            if let (false, Some(parsed)) = (bad, parsed) {
                let mut all = glabels.clone();
                all.extend(labels);
                rules.push(RuleDef {
                    alerting: !alert.is_empty(),
                    name: rname,
                    expr: expr_text,
                    parsed,
                    for_ms,
                    keep_firing_for_ms: kff_ms,
                    labels: all,
                    annotations,
                });
            }
        }
        groups.push(GroupDef {
            name: gname,
            file: file.to_string(),
            interval_ms: g.interval.map(Dur::ms).filter(|v| *v > 0),
            query_offset_ms: g.query_offset.map(Dur::ms),
            limit: g.limit.unwrap_or(0),
            labels: glabels,
            rules,
        });
    }
    if errs.is_empty() { Ok(groups) } else { Err(errs) }
}

/// Number of rules in a file as written (valid or not), for messages.
pub fn count_rules(groups: &[GroupDef]) -> usize {
    groups.iter().map(|g| g.rules.len()).sum()
}
