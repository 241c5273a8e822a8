//! Validation and compilation of a [`NotifyConfig`] into the route tree,
//! receivers (with compiled templates) and inhibit rules the dispatcher uses.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::NotifyError;
use super::config::{HttpConfig, InhibitRuleConfig, NotifyConfig, Origin, RouteConfig, SlackConfig, Step, key};
use super::matchers::{MatchOp, Matcher};
use super::template::{FieldTemplate, Templates};
use crate::secret::{Secret, load_secret_file};

pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

#[derive(Clone, Debug, PartialEq)]
pub enum GroupBy {
    /// `group_by: ['...']`: every label.
    All,
    Labels(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Alertmanager's route key (`{}/{severity="page"}`), part of group keys.
    pub key: String,
    pub receiver: String,
    pub group_by: GroupBy,
    pub matchers: Vec<Matcher>,
    pub continue_matching: bool,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub routes: Vec<Route>,
}

impl Route {
    /// Alertmanager's `Route.Match`: depth first, first matching child wins
    /// unless it has `continue`; a node with no matching child matches itself.
    pub fn matching<'a>(&'a self, labels: &BTreeMap<String, String>) -> Vec<&'a Route> {
        if !self.matchers.iter().all(|m| m.matches(labels)) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for child in &self.routes {
            let m = child.matching(labels);
            let matched = !m.is_empty();
            all.extend(m);
            if matched && !child.continue_matching {
                break;
            }
        }
        if all.is_empty() {
            all.push(self);
        }
        all
    }
}

#[derive(Clone, Debug)]
pub struct InhibitRule {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum UrlSource {
    Inline(Secret),
    File(PathBuf),
}

impl UrlSource {
    pub fn get(&self) -> Result<Secret, String> {
        match self {
            UrlSource::Inline(s) => Ok(s.clone()),
            UrlSource::File(p) => load_secret_file(p).map_err(|e| e.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SlackTemplates {
    pub channel: FieldTemplate,
    pub username: FieldTemplate,
    pub color: FieldTemplate,
    pub title: FieldTemplate,
    pub title_link: FieldTemplate,
    pub pretext: FieldTemplate,
    pub text: FieldTemplate,
    pub fields: Vec<(FieldTemplate, FieldTemplate, bool)>,
    pub footer: FieldTemplate,
    pub fallback: FieldTemplate,
    pub callback_id: FieldTemplate,
    pub icon_emoji: FieldTemplate,
    pub icon_url: FieldTemplate,
    pub image_url: FieldTemplate,
    pub thumb_url: FieldTemplate,
    pub link_names: bool,
    pub mrkdwn_in: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum IntegrationKind {
    Slack(Box<SlackTemplates>),
    Webhook { max_alerts: u64 },
}

#[derive(Clone, Debug)]
pub struct Integration {
    /// "slack" or "webhook" (the `integration` metric label).
    pub name: &'static str,
    /// Index among the receiver's integrations (nflog key part).
    pub index: usize,
    pub send_resolved: bool,
    pub url: UrlSource,
    pub http: HttpConfig,
    pub kind: IntegrationKind,
}

#[derive(Clone, Debug)]
pub struct Receiver {
    pub name: String,
    pub integrations: Vec<Integration>,
}

#[derive(Clone, Debug)]
pub struct Compiled {
    pub route: Route,
    pub receivers: BTreeMap<String, Receiver>,
    pub inhibit_rules: Vec<InhibitRule>,
    pub resolve_timeout: Duration,
}

/// Checks everything a parse can't: receivers, matchers' placement,
/// templates. Used by `parse` so `check config` catches it too.
pub fn validate(cfg: &NotifyConfig) -> Result<(), NotifyError> {
    compile(cfg).map(|_| ())
}

/// Expands `${VAR}` (the whole value) from the environment.
fn env_secret(s: &Secret, origin: &Origin, steps: Vec<Step>) -> Result<Secret, NotifyError> {
    let v = s.expose();
    if let Some(name) = v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        return match std::env::var(name) {
            Ok(val) if !val.trim().is_empty() => Ok(Secret::new(val.trim())),
            _ => Err(origin.error(steps, format!("environment variable {name} is not set"), false)),
        };
    }
    Ok(s.clone())
}

pub fn compile(cfg: &NotifyConfig) -> Result<Compiled, NotifyError> {
    let origin = &cfg.origin;
    // Templates first: receivers reference them.
    let mut files = Vec::new();
    for (i, pattern) in cfg.templates.iter().enumerate() {
        let full = origin.resolve(std::path::Path::new(pattern));
        let paths = expand_glob(&full).map_err(|e| origin.error(vec![key("templates"), Step::Index(i)], e, false))?;
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                origin.error(
                    vec![key("templates"), Step::Index(i)],
                    format!("{}: {e}", p.display()),
                    false,
                )
            })?;
            files.push((p, text));
        }
    }
    let named: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.display().to_string(), t.clone()))
        .collect();
    let templates = Templates::new(&named).map_err(|(idx, e)| {
        let file = files.get(idx).map(|(p, _)| p.display().to_string()).unwrap_or_default();
        let at = e.line.map(|l| format!(":{l}")).unwrap_or_default();
        let which = cfg
            .templates
            .iter()
            .position(|pat| {
                expand_glob(&origin.resolve(std::path::Path::new(pat)))
                    .map(|v| v.iter().any(|p| p.display().to_string() == file))
                    .unwrap_or(false)
            })
            .unwrap_or(0);
        origin.error(
            vec![key("templates"), Step::Index(which)],
            format!("bad template file {file}{at}: {}", e.message),
            false,
        )
    })?;

    // Receivers.
    let mut receivers = BTreeMap::new();
    for (ri, r) in cfg.receivers.iter().enumerate() {
        let at = |rest: Vec<Step>| {
            let mut s = vec![key("receivers"), Step::Index(ri)];
            s.extend(rest);
            s
        };
        if r.name.is_empty() {
            return Err(origin.error(at(vec![key("name")]), "missing name in receiver", false));
        }
        if receivers.contains_key(&r.name) {
            return Err(origin.error(
                at(vec![key("name")]),
                format!("notification config name {:?} is not unique", r.name),
                false,
            ));
        }
        let mut integrations = Vec::new();
        for (si, s) in r.slack_configs.iter().enumerate() {
            let steps = |f: &str| at(vec![key("slack_configs"), Step::Index(si), key(f)]);
            let url = slack_url(cfg, s, origin, &steps)?;
            let http = s
                .http_config
                .clone()
                .or_else(|| cfg.global.http_config.clone())
                .unwrap_or_default();
            let t = slack_templates(&templates, s, origin, &steps, &|fi: usize, f: &str| {
                at(vec![
                    key("slack_configs"),
                    Step::Index(si),
                    key("fields"),
                    Step::Index(fi),
                    key(f),
                ])
            })?;
            integrations.push(Integration {
                name: "slack",
                index: integrations.len(),
                send_resolved: s.send_resolved.unwrap_or(false),
                url,
                http,
                kind: IntegrationKind::Slack(Box::new(t)),
            });
        }
        for (wi, w) in r.webhook_configs.iter().enumerate() {
            let steps = |f: &str| at(vec![key("webhook_configs"), Step::Index(wi), key(f)]);
            let url = match (&w.url, &w.url_file) {
                (Some(_), Some(_)) => {
                    return Err(origin.error(
                        steps("url_file"),
                        "at most one of url & url_file must be configured",
                        true,
                    ));
                }
                (Some(u), None) => UrlSource::Inline(env_secret(u, origin, steps("url"))?),
                (None, Some(f)) => UrlSource::File(origin.resolve(f)),
                (None, None) => {
                    return Err(origin.error(
                        at(vec![key("webhook_configs"), Step::Index(wi)]),
                        "one of url or url_file must be configured",
                        false,
                    ));
                }
            };
            if let UrlSource::Inline(u) = &url {
                check_url(u, origin, steps("url"))?;
            }
            integrations.push(Integration {
                name: "webhook",
                index: integrations.len(),
                send_resolved: w.send_resolved.unwrap_or(true),
                url,
                http: w
                    .http_config
                    .clone()
                    .or_else(|| cfg.global.http_config.clone())
                    .unwrap_or_default(),
                kind: IntegrationKind::Webhook {
                    max_alerts: w.max_alerts,
                },
            });
        }
        receivers.insert(
            r.name.clone(),
            Receiver {
                name: r.name.clone(),
                integrations,
            },
        );
    }

    // Routes.
    let Some(root) = &cfg.route else {
        return Err(origin.error(vec![key("route")], "no route provided in config", false));
    };
    if root.receiver.as_deref().unwrap_or("").is_empty() {
        return Err(origin.error(
            vec![key("route"), key("receiver")],
            "root route must specify a default receiver",
            false,
        ));
    }
    if !root.matchers.is_empty() || !root.match_eq.is_empty() || !root.match_re.is_empty() {
        return Err(origin.error(vec![key("route")], "root route must not have any matchers", false));
    }
    if root.continue_matching {
        return Err(origin.error(
            vec![key("route"), key("continue")],
            "cannot have continue in root route",
            true,
        ));
    }
    let defaults = Route {
        key: String::new(),
        receiver: String::new(),
        group_by: GroupBy::Labels(Vec::new()),
        matchers: Vec::new(),
        continue_matching: false,
        group_wait: DEFAULT_GROUP_WAIT,
        group_interval: DEFAULT_GROUP_INTERVAL,
        repeat_interval: DEFAULT_REPEAT_INTERVAL,
        routes: Vec::new(),
    };
    let route = build_route(root, &defaults, None, vec![key("route")], origin, &receivers)?;

    // Inhibit rules.
    let mut inhibit_rules = Vec::new();
    for (i, r) in cfg.inhibit_rules.iter().enumerate() {
        inhibit_rules.push(build_inhibit(r, origin, vec![key("inhibit_rules"), Step::Index(i)])?);
    }
    if cfg.global.resolve_timeout.is_zero() {
        return Err(origin.error(
            vec![key("global"), key("resolve_timeout")],
            "resolve_timeout must be greater than 0",
            false,
        ));
    }
    Ok(Compiled {
        route,
        receivers,
        inhibit_rules,
        resolve_timeout: cfg.global.resolve_timeout.as_duration(),
    })
}

fn check_url(u: &Secret, origin: &Origin, steps: Vec<Step>) -> Result<(), NotifyError> {
    match reqwest::Url::parse(u.expose()) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => Ok(()),
        // Never echo the URL: it is a secret.
        _ => Err(origin.error(
            steps,
            "invalid URL: expected an absolute http:// or https:// URL",
            false,
        )),
    }
}

fn slack_url(
    cfg: &NotifyConfig,
    s: &SlackConfig,
    origin: &Origin,
    steps: &dyn Fn(&str) -> Vec<Step>,
) -> Result<UrlSource, NotifyError> {
    let url = match (&s.api_url, &s.api_url_file) {
        (Some(_), Some(_)) => {
            return Err(origin.error(
                steps("api_url_file"),
                "at most one of api_url & api_url_file must be configured",
                true,
            ));
        }
        (Some(u), None) => UrlSource::Inline(env_secret(u, origin, steps("api_url"))?),
        (None, Some(f)) => UrlSource::File(origin.resolve(f)),
        (None, None) => match (&cfg.global.slack_api_url, &cfg.global.slack_api_url_file) {
            (Some(_), Some(_)) => {
                return Err(origin.error(
                    vec![key("global"), key("slack_api_url_file")],
                    "at most one of slack_api_url & slack_api_url_file must be configured",
                    true,
                ));
            }
            (Some(u), None) => UrlSource::Inline(env_secret(u, origin, vec![key("global"), key("slack_api_url")])?),
            (None, Some(f)) => UrlSource::File(origin.resolve(f)),
            (None, None) => {
                let mut st = steps("api_url");
                st.pop();
                return Err(origin.error(st, "no global Slack API URL set either inline or in a file", false));
            }
        },
    };
    if let UrlSource::Inline(u) = &url {
        check_url(u, origin, steps("api_url"))?;
    }
    Ok(url)
}

fn slack_templates(
    templates: &Templates,
    s: &SlackConfig,
    origin: &Origin,
    steps: &dyn Fn(&str) -> Vec<Step>,
    field_steps: &dyn Fn(usize, &str) -> Vec<Step>,
) -> Result<SlackTemplates, NotifyError> {
    let compile = |name: &str, value: &Option<String>, default: &str| -> Result<FieldTemplate, NotifyError> {
        let text = value.as_deref().unwrap_or(default);
        templates
            .field(text)
            .map_err(|e| origin.error(steps(name), format!("bad template: {}", e.message), false))
    };
    let d = |n: &str| format!("{{{{ template \"slack.default.{n}\" . }}}}");
    let mut fields = Vec::new();
    for (i, f) in s.fields.iter().enumerate() {
        if f.title.is_empty() {
            return Err(origin.error(
                field_steps(i, "title"),
                "missing title in Slack field configuration",
                false,
            ));
        }
        if f.value.is_empty() {
            return Err(origin.error(
                field_steps(i, "value"),
                "missing value in Slack field configuration",
                false,
            ));
        }
        let t = templates
            .field(&f.title)
            .map_err(|e| origin.error(field_steps(i, "title"), format!("bad template: {}", e.message), false))?;
        let v = templates
            .field(&f.value)
            .map_err(|e| origin.error(field_steps(i, "value"), format!("bad template: {}", e.message), false))?;
        fields.push((t, v, f.short.unwrap_or(s.short_fields)));
    }
    Ok(SlackTemplates {
        channel: compile("channel", &s.channel, "")?,
        username: compile("username", &s.username, &d("username"))?,
        color: compile(
            "color",
            &s.color,
            r#"{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}"#,
        )?,
        title: compile("title", &s.title, &d("title"))?,
        title_link: compile("title_link", &s.title_link, &d("titlelink"))?,
        pretext: compile("pretext", &s.pretext, &d("pretext"))?,
        text: compile("text", &s.text, &d("text"))?,
        fields,
        footer: compile("footer", &s.footer, &d("footer"))?,
        fallback: compile("fallback", &s.fallback, &d("fallback"))?,
        callback_id: compile("callback_id", &s.callback_id, &d("callbackid"))?,
        icon_emoji: compile("icon_emoji", &s.icon_emoji, &d("iconemoji"))?,
        icon_url: compile("icon_url", &s.icon_url, &d("iconurl"))?,
        image_url: compile("image_url", &s.image_url, "")?,
        thumb_url: compile("thumb_url", &s.thumb_url, "")?,
        link_names: s.link_names,
        mrkdwn_in: s.mrkdwn_in.clone(),
    })
}

fn route_matchers(r: &RouteConfig) -> Vec<Matcher> {
    let mut ms: Vec<Matcher> = Vec::new();
    for (k, v) in &r.match_eq {
        if let Ok(m) = Matcher::new(k, MatchOp::Equal, v) {
            ms.push(m);
        }
    }
    for (k, v) in &r.match_re {
        if let Ok(m) = Matcher::new(k, MatchOp::Regex, &v.0) {
            ms.push(m);
        }
    }
    for l in &r.matchers {
        ms.extend(l.1.iter().cloned());
    }
    ms.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    ms
}

fn build_route(
    r: &RouteConfig,
    parent: &Route,
    parent_key: Option<&str>,
    steps: Vec<Step>,
    origin: &Origin,
    receivers: &BTreeMap<String, Receiver>,
) -> Result<Route, NotifyError> {
    let sub = |k: &str| {
        let mut s = steps.clone();
        s.push(key(k));
        s
    };
    for (k, _) in r.match_eq.iter().chain(r.match_re.iter().map(|(k, v)| (k, &v.0))) {
        if !super::config::check_label_name(k) {
            return Err(origin.error(sub("match"), format!("invalid label name {k:?}"), false));
        }
    }
    let matchers = route_matchers(r);
    let receiver = match &r.receiver {
        Some(name) if !name.is_empty() => {
            if !receivers.contains_key(name) {
                return Err(origin.error(
                    sub("receiver"),
                    format!("undefined receiver {name:?} used in route"),
                    false,
                ));
            }
            name.clone()
        }
        _ => parent.receiver.clone(),
    };
    let group_by = match &r.group_by {
        None => parent.group_by.clone(),
        Some(list) => {
            if list.iter().any(|l| l == "...") {
                if list.len() > 1 {
                    return Err(origin.error(
                        sub("group_by"),
                        "cannot have wildcard group_by (`...`) and other labels at the same time",
                        false,
                    ));
                }
                GroupBy::All
            } else {
                let mut seen = BTreeSet::new();
                for (i, l) in list.iter().enumerate() {
                    let mut st = sub("group_by");
                    st.push(Step::Index(i));
                    if !super::config::check_label_name(l) {
                        return Err(origin.error(st, format!("invalid label name {l:?} in group_by list"), false));
                    }
                    if !seen.insert(l.clone()) {
                        return Err(origin.error(st, format!("duplicated label {l:?} in group_by"), false));
                    }
                }
                GroupBy::Labels(list.clone())
            }
        }
    };
    let group_interval = r
        .group_interval
        .map(|d| d.as_duration())
        .unwrap_or(parent.group_interval);
    if group_interval.is_zero() {
        return Err(origin.error(sub("group_interval"), "group_interval cannot be zero", false));
    }
    let repeat_interval = r
        .repeat_interval
        .map(|d| d.as_duration())
        .unwrap_or(parent.repeat_interval);
    if repeat_interval.is_zero() {
        return Err(origin.error(sub("repeat_interval"), "repeat_interval cannot be zero", false));
    }
    let mkey = format!(
        "{{{}}}",
        matchers.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",")
    );
    let route_key = match parent_key {
        Some(p) => format!("{p}/{mkey}"),
        None => mkey,
    };
    let mut route = Route {
        key: route_key.clone(),
        receiver,
        group_by,
        matchers,
        continue_matching: r.continue_matching,
        group_wait: r.group_wait.map(|d| d.as_duration()).unwrap_or(parent.group_wait),
        group_interval,
        repeat_interval,
        routes: Vec::new(),
    };
    for (i, child) in r.routes.iter().enumerate() {
        let mut st = sub("routes");
        st.push(Step::Index(i));
        let c = build_route(child, &route, Some(&route_key), st, origin, receivers)?;
        route.routes.push(c);
    }
    Ok(route)
}

fn build_inhibit(r: &InhibitRuleConfig, origin: &Origin, steps: Vec<Step>) -> Result<InhibitRule, NotifyError> {
    let mk = |eq: &BTreeMap<String, String>,
              re: &BTreeMap<String, super::matchers::RegexString>,
              list: &[super::matchers::MatcherList],
              field: &str| {
        let mut out = Vec::new();
        for (k, v) in eq {
            out.push(Matcher::new(k, MatchOp::Equal, v).map_err(|e| {
                let mut s = steps.clone();
                s.push(key(field));
                origin.error(s, e, false)
            })?);
        }
        for (k, v) in re {
            out.push(Matcher::new(k, MatchOp::Regex, &v.0).map_err(|e| {
                let mut s = steps.clone();
                s.push(key(field));
                origin.error(s, e, false)
            })?);
        }
        for l in list {
            out.extend(l.1.iter().cloned());
        }
        Ok::<_, NotifyError>(out)
    };
    let source = mk(&r.source_match, &r.source_match_re, &r.source_matchers, "source_match")?;
    let target = mk(&r.target_match, &r.target_match_re, &r.target_matchers, "target_match")?;
    for (i, l) in r.equal.iter().enumerate() {
        if !super::config::check_label_name(l) {
            let mut s = steps.clone();
            s.push(key("equal"));
            s.push(Step::Index(i));
            return Err(origin.error(s, format!("invalid label name {l:?}"), false));
        }
    }
    Ok(InhibitRule {
        source,
        target,
        equal: r.equal.clone(),
    })
}

/// Minimal glob: `*` and `?` in the file name part only (Alertmanager users
/// write `/etc/alertmanager/templates/*.tmpl`). No match is not an error.
fn expand_glob(pattern: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if !name.contains('*') && !name.contains('?') {
        return if pattern.exists() {
            Ok(vec![pattern.to_path_buf()])
        } else {
            Err(format!("template file {} not found", pattern.display()))
        };
    }
    let dir = pattern.parent().unwrap_or(std::path::Path::new("."));
    let re = regex::Regex::new(&format!(
        "^{}$",
        regex::escape(&name).replace("\\*", "[^/]*").replace("\\?", "[^/]")
    ))
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if re.is_match(&n) && e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
