//! Alertmanager's notification templates on top of the `gotmpl` crate (Go's
//! text/template). gotmpl has maps, not Go types with methods, so the
//! methods Alertmanager's data model offers (`.SortedPairs`, `.Names`,
//! `.Values`, `.Remove`, `.Alerts.Firing`, `.Alerts.Resolved`) are rewritten
//! after parsing into calls of hidden functions taking the receiver first.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
#[cfg(test)]
use std::time::UNIX_EPOCH;

use crate::compat::time::go_time;

use gotmpl::parse::{BranchNode, CommandNode, Expr, ListNode, Node, Parser, PipeNode, SmolStr};
use gotmpl::{Template, Value};
use regex::Regex;

/// The Slack part of Alertmanager 0.25's default.tmpl, plus the shared
/// definitions it relies on. (Same output; Alertmanager's file is the spec.)
pub const DEFAULT_TEMPLATES: &str = concat!(
    r#"{{ define "__alertmanager" }}Alertmanager{{ end }}"#,
    r#"{{ define "__alertmanagerURL" }}{{ .ExternalURL }}/#/alerts?receiver={{ .Receiver | urlquery }}{{ end }}"#,
    r#"{{ define "__subject" }}[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] "#,
    r#"{{ .GroupLabels.SortedPairs.Values | join " " }} "#,
    r#"{{ if gt (len .CommonLabels) (len .GroupLabels) }}({{ with .CommonLabels.Remove .GroupLabels.Names }}{{ .Values | join " " }}{{ end }}){{ end }}{{ end }}"#,
    r#"{{ define "__description" }}{{ end }}"#,
    "{{ define \"__text_alert_list\" }}{{ range . }}Labels:\n",
    "{{ range .Labels.SortedPairs }} - {{ .Name }} = {{ .Value }}\n",
    "{{ end }}Annotations:\n",
    "{{ range .Annotations.SortedPairs }} - {{ .Name }} = {{ .Value }}\n",
    "{{ end }}Source: {{ .GeneratorURL }}\n",
    "{{ end }}{{ end }}",
    r#"{{ define "slack.default.title" }}{{ template "__subject" . }}{{ end }}"#,
    r#"{{ define "slack.default.username" }}{{ template "__alertmanager" . }}{{ end }}"#,
    r#"{{ define "slack.default.fallback" }}{{ template "slack.default.title" . }} | {{ template "slack.default.titlelink" . }}{{ end }}"#,
    r#"{{ define "slack.default.callbackid" }}{{ end }}"#,
    r#"{{ define "slack.default.pretext" }}{{ end }}"#,
    r#"{{ define "slack.default.titlelink" }}{{ template "__alertmanagerURL" . }}{{ end }}"#,
    r#"{{ define "slack.default.iconemoji" }}{{ end }}"#,
    r#"{{ define "slack.default.iconurl" }}{{ end }}"#,
    r#"{{ define "slack.default.text" }}{{ end }}"#,
    r#"{{ define "slack.default.footer" }}{{ end }}"#,
);

const METHODS: [&str; 6] = ["SortedPairs", "Names", "Values", "Remove", "Firing", "Resolved"];
const METHOD_PREFIX: &str = "__am_";
const BUILTINS: [&str; 19] = [
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html", "js", "urlquery", "eq", "ne",
    "lt", "le", "gt", "ge", "call",
];
const FUNCS: [&str; 9] = [
    "toUpper",
    "toLower",
    "title",
    "join",
    "match",
    "safeHtml",
    "reReplaceAll",
    "stringSlice",
    "trimSpace",
];

/// A template parse error: where (1-based line in its source) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The set of named templates: defaults plus the user's template files.
#[derive(Clone)]
pub struct Templates {
    base: Template,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    /// Defaults, then each (name, text) in order (later definitions win).
    pub fn new(files: &[(String, String)]) -> Result<Templates, (usize, TemplateError)> {
        let mut base = with_funcs(Template::new(""));
        let mut sources = vec![DEFAULT_TEMPLATES.to_string()];
        sources.extend(files.iter().map(|(_, t)| t.clone()));
        for (i, src) in sources.iter().enumerate() {
            let (tree, defines) = parse_src(src).map_err(|e| (i.saturating_sub(1), e))?;
            let _ = tree; // top-level text of a template file is ignored, as in Go
            for def in defines {
                let mut body = def.body;
                rewrite_list(&mut body);
                check_funcs_list(&body).map_err(|e| (i.saturating_sub(1), e))?;
                base = base.add_parse_tree(def.name.as_str(), body);
            }
        }
        Ok(Templates { base })
    }

    /// Compiles one config field (`title: '{{ ... }}'`).
    pub fn field(&self, text: &str) -> Result<FieldTemplate, TemplateError> {
        let (mut tree, defines) = parse_src(text)?;
        rewrite_list(&mut tree);
        check_funcs_list(&tree)?;
        let mut t = self.base.clone();
        for def in defines {
            let mut body = def.body;
            rewrite_list(&mut body);
            check_funcs_list(&body)?;
            t = t.add_parse_tree(def.name.as_str(), body);
        }
        let plain = !text.contains("{{");
        t = t.add_parse_tree(FIELD, tree);
        Ok(FieldTemplate {
            tmpl: Arc::new(t),
            plain: plain.then(|| text.to_string()),
        })
    }
}

const FIELD: &str = "__ngxprobe_field__";

/// One compiled templated field.
#[derive(Clone)]
pub struct FieldTemplate {
    tmpl: Arc<Template>,
    plain: Option<String>,
}

impl std::fmt::Debug for FieldTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FieldTemplate")
    }
}

impl FieldTemplate {
    pub fn render(&self, data: &Value) -> Result<String, String> {
        if let Some(p) = &self.plain {
            return Ok(p.clone());
        }
        self.tmpl
            .execute_template_to_string(FIELD, data)
            .map_err(|e| e.to_string())
    }
}

fn parse_src(src: &str) -> Result<(ListNode, Vec<gotmpl::parse::DefineNode>), TemplateError> {
    // gotmpl accepts an `{{ if }}`/`{{ range }}`/`{{ define }}` left open at
    // the end; Go says "unexpected EOF". If the text still parses with one
    // more `{{ end }}` appended, a block was open.
    const SENTINEL: &str = "\u{1}ngxprobe-eof\u{1}";
    let closed = format!("{src}{{{{ end }}}}{SENTINEL}");
    let open_block = Parser::with_name(None, &closed, "{{", "}}")
        .and_then(|p| p.parse())
        .is_ok_and(|(tree, _)| matches!(tree.nodes.last(), Some(Node::Text(t)) if t.text.ends_with(SENTINEL)));
    if open_block {
        return Err(TemplateError {
            line: Some(src.lines().count().max(1)),
            message: "unexpected EOF: a block ({{ if }}, {{ range }}, {{ with }} or {{ define }}) is not closed with {{ end }}".into(),
        });
    }
    Parser::with_name(None, src, "{{", "}}")
        .and_then(|p| p.parse())
        .map_err(|e| {
            let line = match &e {
                gotmpl::TemplateError::Parse { line, .. } => Some(*line),
                _ => None,
            };
            TemplateError {
                line,
                message: e.to_string(),
            }
        })
}

fn with_funcs(t: Template) -> Template {
    t.func("toUpper", |a| Ok(Value::String(arg_str(a, 0).to_uppercase().into())))
        .func("toLower", |a| Ok(Value::String(arg_str(a, 0).to_lowercase().into())))
        .func("title", |a| Ok(Value::String(go_title(&arg_str(a, 0)).into())))
        .func("trimSpace", |a| Ok(Value::String(arg_str(a, 0).trim().into())))
        .func("safeHtml", |a| Ok(Value::String(arg_str(a, 0).into())))
        .func("join", |a| {
            let sep = arg_str(a, 0);
            let items = string_list(a.get(1));
            Ok(Value::String(items.join(&sep).into()))
        })
        .func("match", |a| {
            let re = Regex::new(&arg_str(a, 0)).map_err(|e| exec_err(e.to_string()))?;
            Ok(Value::Bool(re.is_match(&arg_str(a, 1))))
        })
        .func("reReplaceAll", |a| {
            let re = Regex::new(&arg_str(a, 0)).map_err(|e| exec_err(e.to_string()))?;
            let repl = arg_str(a, 1);
            Ok(Value::String(
                re.replace_all(&arg_str(a, 2), repl.as_str()).into_owned().into(),
            ))
        })
        .func("stringSlice", |a| {
            Ok(Value::List(
                a.iter()
                    .map(|v| Value::String(value_str(v).into()))
                    .collect::<Vec<_>>()
                    .into(),
            ))
        })
        .func("__am_get", |a| {
            let mut v = a.first().cloned().unwrap_or(Value::Nil);
            for name in a.iter().skip(1) {
                let name = value_str(name);
                v = match &v {
                    Value::Map(m) => m
                        .get(name.as_str())
                        .cloned()
                        .unwrap_or_else(|| Value::String("".into())),
                    Value::Nil => Value::Nil,
                    other => {
                        return Err(exec_err(format!(
                            "can't evaluate field {name} in type {}",
                            other.type_name()
                        )));
                    }
                };
            }
            Ok(v)
        })
        .func("index", |a| {
            let mut v = a.first().cloned().unwrap_or(Value::Nil);
            for i in a.iter().skip(1) {
                v = match (&v, i) {
                    (Value::Map(m), Value::String(k)) => {
                        m.get(&**k).cloned().unwrap_or_else(|| Value::String("".into()))
                    }
                    _ => v.index(i)?,
                };
            }
            Ok(v)
        })
        .func("__am_SortedPairs", |a| Ok(sorted_pairs(a.first())))
        .func("__am_Names", |a| Ok(pair_part(a.first(), "Name")))
        .func("__am_Values", |a| Ok(pair_part(a.first(), "Value")))
        .func("__am_Remove", |a| {
            let drop = string_list(a.get(1));
            let mut out = BTreeMap::new();
            if let Some(Value::Map(m)) = a.first() {
                for (k, v) in m.iter() {
                    if !drop.iter().any(|d| **d == **k) {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(Value::Map(Arc::new(out)))
        })
        .func("__am_Firing", |a| Ok(alerts_with_status(a.first(), "firing")))
        .func("__am_Resolved", |a| Ok(alerts_with_status(a.first(), "resolved")))
}

fn exec_err(msg: String) -> gotmpl::TemplateError {
    gotmpl::TemplateError::Exec(msg)
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Nil => String::new(),
        other => other.to_string(),
    }
}

fn arg_str(a: &[Value], i: usize) -> String {
    a.get(i).map(value_str).unwrap_or_default()
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::List(items)) => items.iter().map(value_str).collect(),
        Some(Value::Nil) | None => Vec::new(),
        Some(other) => vec![value_str(other)],
    }
}

/// Go's `KV.SortedPairs`: `alertname` first, then the other names sorted.
fn sorted_pairs(v: Option<&Value>) -> Value {
    let Some(Value::Map(m)) = v else {
        return Value::List(Vec::new().into());
    };
    let mut keys: Vec<&Arc<str>> = m.keys().collect();
    keys.sort_by_key(|k| (&***k != "alertname", k.to_string()));
    Value::List(
        keys.into_iter()
            .map(|k| {
                let mut p = BTreeMap::new();
                p.insert(Arc::<str>::from("Name"), Value::String(k.clone()));
                p.insert(Arc::<str>::from("Value"), m.get(k).cloned().unwrap_or(Value::Nil));
                Value::Map(Arc::new(p))
            })
            .collect::<Vec<_>>()
            .into(),
    )
}

/// `.Names` / `.Values` of a KV (via its sorted pairs) or of Pairs.
fn pair_part(v: Option<&Value>, part: &str) -> Value {
    let pairs = match v {
        Some(Value::Map(_)) => sorted_pairs(v),
        Some(other) => other.clone(),
        None => Value::Nil,
    };
    let Value::List(items) = pairs else {
        return Value::List(Vec::new().into());
    };
    Value::List(
        items
            .iter()
            .map(|p| p.field(part).cloned().unwrap_or(Value::Nil))
            .collect::<Vec<_>>()
            .into(),
    )
}

fn alerts_with_status(v: Option<&Value>, status: &str) -> Value {
    let Some(Value::List(items)) = v else {
        return Value::List(Vec::new().into());
    };
    Value::List(
        items
            .iter()
            .filter(|a| a.field("Status").and_then(Value::as_str) == Some(status))
            .cloned()
            .collect::<Vec<_>>()
            .into(),
    )
}

/// Go's deprecated `strings.Title`: upper-case the first letter of each word.
pub fn go_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else if c.is_alphanumeric() {
            false
        } else {
            c.is_whitespace()
        };
    }
    out
}

// ---- AST rewrite: methods → functions ----------------------------------

fn rewrite_list(list: &mut ListNode) {
    for node in &mut list.nodes {
        rewrite_node(node);
    }
}

fn rewrite_node(node: &mut Node) {
    match node {
        Node::List(l) => rewrite_list(l),
        Node::Action(a) => rewrite_pipe(&mut a.pipe),
        Node::If(b) | Node::Range(b) | Node::With(b) => rewrite_branch(b),
        Node::Template(t) => {
            if let Some(p) = &mut t.pipe {
                rewrite_pipe(p);
            }
        }
        Node::Define(d) => rewrite_list(&mut d.body),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
    }
}

fn rewrite_branch(b: &mut BranchNode) {
    rewrite_pipe(&mut b.pipe);
    rewrite_list(&mut b.body);
    if let Some(e) = &mut b.else_body {
        rewrite_list(e);
    }
}

fn rewrite_pipe(p: &mut PipeNode) {
    for cmd in &mut p.commands {
        rewrite_command(cmd);
    }
}

fn rewrite_command(cmd: &mut CommandNode) {
    // `.CommonLabels.Remove .GroupLabels.Names`: a method called with arguments.
    if cmd.args.len() > 1
        && let Some((base, method)) = split_trailing_method(&cmd.args[0])
    {
        let pos = cmd.args[0].pos();
        let mut args = vec![Expr::Identifier(pos, SmolStr::new(format!("{METHOD_PREFIX}{method}")))];
        args.push(rewrite_expr(base));
        args.extend(cmd.args.drain(1..).map(rewrite_expr));
        cmd.args = args;
        return;
    }
    let args = std::mem::take(&mut cmd.args);
    cmd.args = args.into_iter().map(rewrite_expr).collect();
}

/// `X.M` where M is the only method in the chain and comes last.
fn split_trailing_method(e: &Expr) -> Option<(Expr, String)> {
    type MakeBase = Box<dyn Fn(Vec<SmolStr>) -> Expr>;
    let (fields, make): (&Vec<SmolStr>, MakeBase) = match e {
        Expr::Field(pos, f) => {
            let pos = *pos;
            (
                f,
                Box::new(move |rest| {
                    if rest.is_empty() {
                        Expr::Dot(pos)
                    } else {
                        Expr::Field(pos, rest)
                    }
                }),
            )
        }
        Expr::Variable(pos, name, f) => {
            let (pos, name) = (*pos, name.clone());
            (f, Box::new(move |rest| Expr::Variable(pos, name.clone(), rest)))
        }
        Expr::Chain(pos, inner, f) => {
            let (pos, inner) = (*pos, inner.clone());
            (
                f,
                Box::new(move |rest| {
                    if rest.is_empty() {
                        (*inner).clone()
                    } else {
                        Expr::Chain(pos, inner.clone(), rest)
                    }
                }),
            )
        }
        _ => return None,
    };
    let last = fields.last()?;
    if !METHODS.contains(&last.as_str()) || fields[..fields.len() - 1].iter().any(|f| METHODS.contains(&f.as_str())) {
        return None;
    }
    Some((make(fields[..fields.len() - 1].to_vec()), last.to_string()))
}

fn rewrite_expr(e: Expr) -> Expr {
    match e {
        Expr::Pipe(pos, mut p) => {
            rewrite_pipe(&mut p);
            Expr::Pipe(pos, p)
        }
        Expr::Field(pos, fields) => match method_index(&fields) {
            None => field_get(pos, Expr::Dot(pos), &fields),
            Some(i) => {
                let base = field_get(pos, Expr::Dot(pos), &fields[..i]);
                apply_method(pos, base, &fields[i], fields[i + 1..].to_vec())
            }
        },
        Expr::Variable(pos, name, fields) => {
            let var = Expr::Variable(pos, name, Vec::new());
            match method_index(&fields) {
                None => field_get(pos, var, &fields),
                Some(i) => {
                    let base = field_get(pos, var, &fields[..i]);
                    apply_method(pos, base, &fields[i], fields[i + 1..].to_vec())
                }
            }
        }
        Expr::Chain(pos, inner, fields) => {
            let inner = rewrite_expr(*inner);
            match method_index(&fields) {
                None => field_get(pos, inner, &fields),
                Some(i) => {
                    let base = field_get(pos, inner, &fields[..i]);
                    apply_method(pos, base, &fields[i], fields[i + 1..].to_vec())
                }
            }
        }
        other => other,
    }
}

/// `base.f1.f2` as `__am_get base "f1" "f2"`: Alertmanager runs templates
/// with missingkey=zero, so a missing label is "" (not "<no value>").
fn field_get(pos: gotmpl::parse::Pos, base: Expr, fields: &[SmolStr]) -> Expr {
    if fields.is_empty() {
        return base;
    }
    let mut args = vec![Expr::Identifier(pos, SmolStr::new("__am_get")), base];
    args.extend(fields.iter().map(|f| Expr::String(pos, Arc::from(f.as_str()))));
    Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode { pos, args }],
            is_assign: false,
        },
    )
}

fn method_index(fields: &[SmolStr]) -> Option<usize> {
    fields.iter().position(|f| METHODS.contains(&f.as_str()))
}

fn apply_method(pos: gotmpl::parse::Pos, base: Expr, method: &str, rest: Vec<SmolStr>) -> Expr {
    let call = Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode {
                pos,
                args: vec![
                    Expr::Identifier(pos, SmolStr::new(format!("{METHOD_PREFIX}{method}"))),
                    base,
                ],
            }],
            is_assign: false,
        },
    );
    if rest.is_empty() {
        call
    } else {
        rewrite_expr(Expr::Chain(pos, Box::new(call), rest))
    }
}

// ---- parse-time function check (Go rejects unknown functions at parse) --

fn check_funcs_list(list: &ListNode) -> Result<(), TemplateError> {
    list.nodes.iter().try_for_each(check_funcs_node)
}

fn check_funcs_node(node: &Node) -> Result<(), TemplateError> {
    match node {
        Node::List(l) => check_funcs_list(l),
        Node::Action(a) => check_funcs_pipe(&a.pipe),
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            check_funcs_pipe(&b.pipe)?;
            check_funcs_list(&b.body)?;
            b.else_body.as_ref().map_or(Ok(()), check_funcs_list)
        }
        Node::Template(t) => t.pipe.as_ref().map_or(Ok(()), check_funcs_pipe),
        Node::Define(d) => check_funcs_list(&d.body),
        _ => Ok(()),
    }
}

fn check_funcs_pipe(p: &PipeNode) -> Result<(), TemplateError> {
    for cmd in &p.commands {
        for arg in &cmd.args {
            check_funcs_expr(arg)?;
        }
    }
    Ok(())
}

fn check_funcs_expr(e: &Expr) -> Result<(), TemplateError> {
    match e {
        Expr::Identifier(pos, name) => {
            let n = name.as_str();
            if BUILTINS.contains(&n) || FUNCS.contains(&n) || n.starts_with(METHOD_PREFIX) {
                Ok(())
            } else {
                Err(TemplateError {
                    line: Some(pos.line),
                    message: format!("line {}: function {n:?} not defined", pos.line),
                })
            }
        }
        Expr::Pipe(_, p) => check_funcs_pipe(p),
        Expr::Chain(_, inner, _) => check_funcs_expr(inner),
        _ => Ok(()),
    }
}

// ---- the data model -----------------------------------------------------

/// One alert as templates see it.
#[derive(Clone, Debug)]
pub struct TemplateAlert {
    pub status: &'static str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: SystemTime,
    /// None for firing alerts (Alertmanager hides a future EndsAt).
    pub ends_at: Option<SystemTime>,
    pub generator_url: String,
    pub fingerprint: u64,
}

/// Alertmanager's `template.Data`.
#[derive(Clone, Debug)]
pub struct TemplateData {
    pub receiver: String,
    pub status: &'static str,
    pub alerts: Vec<TemplateAlert>,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub external_url: String,
}

impl TemplateData {
    /// Builds the data like Alertmanager's `Template.Data`: the receiver name
    /// regex-quoted, status firing if any alert fires, common labels and
    /// annotations shared by all alerts.
    pub fn new(
        receiver: &str,
        group_labels: &BTreeMap<String, String>,
        alerts: Vec<TemplateAlert>,
        external_url: &str,
    ) -> TemplateData {
        let status = if alerts.iter().any(|a| a.status == "firing") {
            "firing"
        } else {
            "resolved"
        };
        let mut common_labels = BTreeMap::new();
        let mut common_annotations = BTreeMap::new();
        if let Some(first) = alerts.first() {
            common_labels = first.labels.clone();
            common_annotations = first.annotations.clone();
            for a in &alerts[1..] {
                common_labels.retain(|k, v| a.labels.get(k) == Some(v));
                common_annotations.retain(|k, v| a.annotations.get(k) == Some(v));
            }
        }
        TemplateData {
            receiver: quote_meta(receiver),
            status,
            alerts,
            group_labels: group_labels.clone(),
            common_labels,
            common_annotations,
            external_url: external_url.to_string(),
        }
    }

    pub fn to_value(&self) -> Value {
        let alerts: Vec<Value> = self.alerts.iter().map(alert_value).collect();
        map_value([
            ("Receiver", Value::String(self.receiver.as_str().into())),
            ("Status", Value::String(self.status.into())),
            ("Alerts", Value::List(alerts.into())),
            ("GroupLabels", kv_value(&self.group_labels)),
            ("CommonLabels", kv_value(&self.common_labels)),
            ("CommonAnnotations", kv_value(&self.common_annotations)),
            ("ExternalURL", Value::String(self.external_url.as_str().into())),
        ])
    }
}

/// Go's `regexp.QuoteMeta` (fewer characters than `regex::escape`).
pub fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn alert_value(a: &TemplateAlert) -> Value {
    map_value([
        ("Status", Value::String(a.status.into())),
        ("Labels", kv_value(&a.labels)),
        ("Annotations", kv_value(&a.annotations)),
        ("StartsAt", Value::String(go_time(a.starts_at).into())),
        (
            "EndsAt",
            Value::String(
                a.ends_at
                    .map(go_time)
                    .unwrap_or_else(|| "0001-01-01 00:00:00 +0000 UTC".into())
                    .into(),
            ),
        ),
        ("GeneratorURL", Value::String(a.generator_url.as_str().into())),
        ("Fingerprint", Value::String(format!("{:016x}", a.fingerprint).into())),
    ])
}

fn map_value<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(Arc::new(
        entries.into_iter().map(|(k, v)| (Arc::<str>::from(k), v)).collect(),
    ))
}

fn kv_value(kv: &BTreeMap<String, String>) -> Value {
    Value::Map(Arc::new(
        kv.iter()
            .map(|(k, v)| (Arc::<str>::from(k.as_str()), Value::String(v.as_str().into())))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn alert(status: &'static str, l: &[(&str, &str)], ann: &[(&str, &str)]) -> TemplateAlert {
        TemplateAlert {
            status,
            labels: labels(l),
            annotations: labels(ann),
            starts_at: UNIX_EPOCH,
            ends_at: None,
            generator_url: "http://prom/graph".into(),
            fingerprint: 1,
        }
    }

    fn render(t: &Templates, text: &str, data: &TemplateData) -> String {
        t.field(text).unwrap().render(&data.to_value()).unwrap()
    }

    #[test]
    fn default_slack_title_and_methods() {
        let t = Templates::new(&[]).unwrap();
        let data = TemplateData::new(
            "team-x",
            &labels(&[("alertname", "HighLatency")]),
            vec![
                alert(
                    "firing",
                    &[("alertname", "HighLatency"), ("job", "nginx"), ("instance", "a")],
                    &[("summary", "s")],
                ),
                alert(
                    "resolved",
                    &[("alertname", "HighLatency"), ("job", "nginx"), ("instance", "b")],
                    &[("summary", "s")],
                ),
            ],
            "http://am:9093",
        );
        assert_eq!(
            render(&t, r#"{{ template "slack.default.title" . }}"#, &data),
            "[FIRING:1] HighLatency (nginx)"
        );
        assert_eq!(
            render(&t, r#"{{ template "slack.default.fallback" . }}"#, &data),
            "[FIRING:1] HighLatency (nginx) | http://am:9093/#/alerts?receiver=team-x"
        );
        assert_eq!(
            render(&t, "{{ .CommonLabels.Names | join \",\" }}", &data),
            "alertname,job"
        );
        assert_eq!(
            render(&t, "{{ range .Alerts.Resolved }}{{ .Labels.instance }}{{ end }}", &data),
            "b"
        );
        assert_eq!(render(&t, "{{ .CommonLabels.missing }}", &data), "");
        assert_eq!(
            render(
                &t,
                r#"{{ if eq .CommonLabels.missing "" }}empty{{ end }}{{ index .CommonLabels "nope" }}"#,
                &data
            ),
            "empty"
        );
        assert_eq!(
            render(
                &t,
                "{{ with $a := index .Alerts 1 }}{{ $a.Labels.instance }}{{ end }}",
                &data
            ),
            "b"
        );
        assert_eq!(
            render(&t, "{{ .Status | title }} {{ \"a-b c\" | title }}", &data),
            "Firing A-B C"
        );
        assert_eq!(render(&t, r#"{{ reReplaceAll "(.*)-(.*)" "$2" "a-b" }}"#, &data), "b");
        assert_eq!(
            render(&t, r#"{{ if match "^High" .CommonLabels.alertname }}y{{ end }}"#, &data),
            "y"
        );
        assert_eq!(render(&t, r#"{{ stringSlice "a" "b" | join "+" }}"#, &data), "a+b");
        assert_eq!(
            render(
                &t,
                r#"{{ range $i, $p := .CommonLabels.SortedPairs }}{{ $p.Name }};{{ end }}"#,
                &data
            ),
            "alertname;job;"
        );
        assert!(t.field("{{ nope .Status }}").is_err());
        assert!(t.field("{{ .Status ").is_err());
        assert!(t.field("{{ if .Status }}").is_err());
    }

    #[test]
    fn go_time_format() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_705_407_980, 526_679_846);
        assert_eq!(go_time(t), "2024-01-16 12:26:20.526679846 +0000 UTC");
        assert_eq!(crate::compat::time::rfc3339(t), "2024-01-16T12:26:20.526679846Z");
        assert_eq!(go_title("hello wORLD_x y"), "Hello WORLD_x Y");
    }
}
