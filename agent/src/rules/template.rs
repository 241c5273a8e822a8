//! Go-template expansion of alert labels and annotations, with Prometheus's
//! function set (prometheus/template/template.go) on top of the `gotmpl` crate.
//!
//! Two gaps between gotmpl and Go's text/template are patched here:
//! - Go prints a float64 with `%v` (`1e+06`, `1.5e-05`); gotmpl prints Rust's
//!   `Display`. Every printing action gets a final `__gofmt` command that formats
//!   floats the Go way.
//! - `$labels.missing` on Go's `map[string]string` is `""`; gotmpl's maps are
//!   untyped and print `<no value>`. Label keys named in the template are
//!   pre-filled with `""`, and `index` on a string map returns `""` for a missing key.
use std::{collections::BTreeMap, sync::Arc};

use crate::compat::{duration, float::format_g, time::format_utc};
use gotmpl::{
    Template, TemplateError, Value,
    parse::{CommandNode, Expr, ListNode, Node},
};

/// Prepended to every alert template, exactly as Prometheus does.
pub const DEFS: &str =
    "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// Runs a PromQL instant query at the evaluation time for the `query` function.
pub type QueryFn = Arc<dyn Fn(&str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> + Send + Sync>;

/// What an alert template sees.
pub struct AlertData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub value: f64,
    /// Evaluation time (ms), for `now`.
    pub ts_ms: i64,
    pub query: Option<QueryFn>,
}

/// Names of the functions Prometheus adds to text/template's builtins.
pub const PROM_FUNCS: &[&str] = &[
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "stripPort",
    "stripDomain",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "toDuration",
    "now",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "urlQueryEscape",
];

const GO_BUILTINS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "call", "eq", "ne", "lt", "le", "gt",
    "ge", "html", "js", "urlquery",
];

fn exec_err(msg: impl Into<String>) -> TemplateError {
    TemplateError::Exec(msg.into())
}

/// Go's `ConvertToFloat` (prometheus/common helpers/templates).
fn to_float(v: &Value) -> Result<f64, TemplateError> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Uint(u) => Ok(*u as f64),
        Value::String(s) => {
            go_parse_float(s).ok_or_else(|| exec_err(format!("strconv.ParseFloat: parsing {:?}: invalid syntax", &**s)))
        }
        other => Err(exec_err(format!("can't convert {} to float", other.type_name()))),
    }
}

fn go_parse_float(s: &str) -> Option<f64> {
    let t = s.strip_prefix('+').unwrap_or(s);
    match t.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => {
            return Some(if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if s.contains('_') || s.trim() != s {
        return None;
    }
    s.parse::<f64>().ok()
}

fn str_arg<'a>(args: &'a [Value], i: usize, f: &str) -> Result<&'a str, TemplateError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(exec_err(format!(
            "wrong type for value; expected string; got {}",
            other.type_name()
        ))),
        None => Err(exec_err(format!(
            "wrong number of args for {f}: want {} got {}",
            i + 1,
            args.len()
        ))),
    }
}

fn s(v: impl Into<Arc<str>>) -> Value {
    Value::String(v.into())
}

// ---------- Go number formatting ----------

/// Go's `fmt.Sprint` of a value, as a template action prints it.
fn go_print(v: &Value) -> Value {
    match v {
        Value::Float(f) => s(format_g(*f, None)),
        other => other.clone(),
    }
}

fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return format_g(v, Some(4));
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", format_g(v, Some(4)));
    }
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}", format_g(v, Some(4)))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return format_g(v, Some(4));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", format_g(v, Some(4)))
}

fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return format_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", format_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let d = v as i64;
        let (secs, mins, hours, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {hours}h {mins}m {secs}s");
        }
        if hours != 0 {
            return format!("{sign}{hours}h {mins}m {secs}s");
        }
        if mins != 0 {
            return format!("{sign}{mins}m {secs}s");
        }
        return format!("{sign}{}s", format_g(v, Some(4)));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", format_g(v, Some(4)))
}

/// Go's `time.Time.String()` in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`.
pub fn go_time_string(secs: f64) -> Result<String, TemplateError> {
    let ns = secs * 1e9;
    if ns > i64::MAX as f64 || ns < i64::MIN as f64 {
        return Err(exec_err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            format_g(secs, None)
        )));
    }
    // model.TimeFromUnixNano truncates to milliseconds.
    let ms = (ns as i64) / 1_000_000;
    let (sec, msr) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    Ok(format_utc(sec, msr as u32 * 1_000_000, ' ', " +0000 UTC"))
}

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `net.SplitHostPort` (host part), None when it fails.
fn split_host_port(hp: &str) -> Option<(String, String)> {
    if let Some(rest) = hp.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = after.strip_prefix(':')?;
        if port.contains(':') {
            return None;
        }
        return Some((host.to_string(), port.to_string()));
    }
    let i = hp.rfind(':')?;
    let host = &hp[..i];
    if host.contains(':') || host.contains('[') || host.contains(']') {
        return None;
    }
    Some((host.to_string(), hp[i + 1..].to_string()))
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_word = false;
    for c in s.chars() {
        if c.is_alphanumeric() || c == '_' || c == '\'' {
            if !in_word {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}

/// Prometheus's `model.ParseDurationAllowNegative`, in seconds.
fn parse_duration_secs(d: &str) -> Result<f64, TemplateError> {
    let ms =
        duration::parse_ms_allow_negative(d).ok_or_else(|| exec_err(format!("not a valid duration string: {d:?}")))?;
    Ok(ms as f64 / 1000.0)
}

fn sample_value(labels: &BTreeMap<String, String>, v: f64) -> Value {
    let lm: BTreeMap<Arc<str>, Value> = labels
        .iter()
        .map(|(k, v)| (Arc::from(k.as_str()), s(v.as_str())))
        .collect();
    let mut m: BTreeMap<Arc<str>, Value> = BTreeMap::new();
    m.insert("Labels".into(), Value::Map(Arc::new(lm)));
    m.insert("Value".into(), Value::Float(v));
    Value::Map(Arc::new(m))
}

fn sample_labels(v: &Value) -> Option<&BTreeMap<Arc<str>, Value>> {
    match v.field("Labels") {
        Some(Value::Map(m)) => Some(m),
        _ => None,
    }
}

fn string_map(m: &BTreeMap<String, String>, extra_keys: &[String]) -> Value {
    let mut out: BTreeMap<Arc<str>, Value> = m.iter().map(|(k, v)| (Arc::from(k.as_str()), s(v.as_str()))).collect();
    for k in extra_keys {
        out.entry(Arc::from(k.as_str())).or_insert_with(|| s(""));
    }
    Value::Map(Arc::new(out))
}

/// Label names the template reads as fields (`$labels.x`, `.Labels.x`, and the
/// external-label forms), so they can be pre-filled with "".
fn referenced_label_keys(text: &str) -> Vec<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"(?:\$labels|\.Labels|\$externalLabels|\.ExternalLabels)\.([A-Za-z_][A-Za-z0-9_]*)")
            .unwrap_or_else(|_| regex::Regex::new("$^").expect("trivial regex"))
    });
    re.captures_iter(text)
        .filter_map(|c| c.get(1).map(|m| m.as_str().to_string()))
        .collect()
}

fn build_template(name: &str, ts_ms: i64, external_url: &str, query: Option<QueryFn>) -> Template {
    let ext = external_url.to_string();
    let ext_path = url_path(external_url);
    let mut t = Template::new(name);
    t = t.func(
        "__gofmt",
        called("__gofmt", |a| Ok(a.last().map(go_print).unwrap_or(Value::Nil))),
    );
    t = t.func("index", called("index", go_index));
    t = t.func(
        "query",
        called("query", move |a| {
            let q = str_arg(a, 0, "query")?;
            let f = query
                .as_ref()
                .ok_or_else(|| exec_err("queries are not available here"))?;
            let res = f(q).map_err(|e| exec_err(e.to_string()))?;
            Ok(Value::List(
                res.iter().map(|(l, v)| sample_value(l, *v)).collect::<Vec<_>>().into(),
            ))
        }),
    );
    t = t.func(
        "first",
        called("first", |a| match a.first() {
            Some(Value::List(l)) if !l.is_empty() => Ok(l[0].clone()),
            Some(Value::List(_)) | Some(Value::Nil) => Err(exec_err("first() called on vector with no elements")),
            _ => Err(exec_err("wrong type for value; expected template.queryResult")),
        }),
    );
    t = t.func(
        "label",
        called("label", |a| {
            let name = str_arg(a, 0, "label")?;
            Ok(a.get(1)
                .and_then(sample_labels)
                .and_then(|m| m.get(name).cloned())
                .unwrap_or_else(|| s("")))
        }),
    );
    t = t.func(
        "value",
        called("value", |a| {
            Ok(a.first().and_then(|v| v.field("Value").cloned()).unwrap_or(Value::Nil))
        }),
    );
    t = t.func(
        "strvalue",
        called("strvalue", |a| {
            Ok(a.first()
                .and_then(sample_labels)
                .and_then(|m| m.get("__value__").cloned())
                .unwrap_or_else(|| s("")))
        }),
    );
    t = t.func(
        "args",
        called("args", |a| {
            let m: BTreeMap<Arc<str>, Value> = a
                .iter()
                .enumerate()
                .map(|(i, v)| (Arc::from(format!("arg{i}").as_str()), v.clone()))
                .collect();
            Ok(Value::Map(Arc::new(m)))
        }),
    );
    t = t.func(
        "reReplaceAll",
        called("reReplaceAll", |a| {
            let (p, r, t) = (
                str_arg(a, 0, "reReplaceAll")?,
                str_arg(a, 1, "reReplaceAll")?,
                str_arg(a, 2, "reReplaceAll")?,
            );
            let re = regex::Regex::new(p).map_err(|e| exec_err(format!("regexp: Compile({p:?}): {e}")))?;
            Ok(s(re.replace_all(t, r).into_owned()))
        }),
    );
    t = t.func("safeHtml", called("safeHtml", |a| Ok(s(str_arg(a, 0, "safeHtml")?))));
    t = t.func(
        "match",
        called("match", |a| {
            let (p, t) = (str_arg(a, 0, "match")?, str_arg(a, 1, "match")?);
            let re = regex::Regex::new(p).map_err(|e| exec_err(e.to_string()))?;
            Ok(Value::Bool(re.is_match(t)))
        }),
    );
    t = t.func("title", called("title", |a| Ok(s(title_case(str_arg(a, 0, "title")?)))));
    t = t.func(
        "toUpper",
        called("toUpper", |a| Ok(s(str_arg(a, 0, "toUpper")?.to_uppercase()))),
    );
    t = t.func(
        "toLower",
        called("toLower", |a| Ok(s(str_arg(a, 0, "toLower")?.to_lowercase()))),
    );
    t = t.func(
        "graphLink",
        called("graphLink", |a| {
            Ok(s(format!(
                "/graph?g0.expr={}&g0.tab=0",
                query_escape(str_arg(a, 0, "graphLink")?)
            )))
        }),
    );
    t = t.func(
        "tableLink",
        called("tableLink", |a| {
            Ok(s(format!(
                "/graph?g0.expr={}&g0.tab=1",
                query_escape(str_arg(a, 0, "tableLink")?)
            )))
        }),
    );
    t = t.func(
        "sortByLabel",
        called("sortByLabel", |a| {
            let label = str_arg(a, 0, "sortByLabel")?.to_string();
            let mut v: Vec<Value> = match a.get(1) {
                Some(Value::List(l)) => l.to_vec(),
                _ => vec![],
            };
            let key = |x: &Value| {
                sample_labels(x)
                    .and_then(|m| m.get(label.as_str()))
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            v.sort_by_key(key);
            Ok(Value::List(v.into()))
        }),
    );
    t = t.func(
        "stripPort",
        called("stripPort", |a| {
            let hp = str_arg(a, 0, "stripPort")?;
            Ok(s(split_host_port(hp).map(|(h, _)| h).unwrap_or_else(|| hp.to_string())))
        }),
    );
    t = t.func(
        "stripDomain",
        called("stripDomain", |a| {
            let hp = str_arg(a, 0, "stripDomain")?;
            let (host, port) = split_host_port(hp).unwrap_or_else(|| (hp.to_string(), String::new()));
            if host.parse::<std::net::IpAddr>().is_ok() {
                return Ok(s(hp));
            }
            let short = host.split('.').next().unwrap_or("").to_string();
            if port.is_empty() {
                Ok(s(short))
            } else if short.contains(':') {
                Ok(s(format!("[{short}]:{port}")))
            } else {
                Ok(s(format!("{short}:{port}")))
            }
        }),
    );
    t = t.func(
        "humanize",
        called("humanize", |a| {
            Ok(s(humanize(to_float(a.first().unwrap_or(&Value::Nil))?)))
        }),
    );
    t = t.func(
        "humanize1024",
        called("humanize1024", |a| {
            Ok(s(humanize1024(to_float(a.first().unwrap_or(&Value::Nil))?)))
        }),
    );
    t = t.func(
        "humanizeDuration",
        called("humanizeDuration", |a| {
            Ok(s(humanize_duration(to_float(a.first().unwrap_or(&Value::Nil))?)))
        }),
    );
    t = t.func(
        "humanizePercentage",
        called("humanizePercentage", |a| {
            Ok(s(format!(
                "{}%",
                format_g(to_float(a.first().unwrap_or(&Value::Nil))? * 100.0, Some(4))
            )))
        }),
    );
    t = t.func(
        "humanizeTimestamp",
        called("humanizeTimestamp", |a| {
            let v = to_float(a.first().unwrap_or(&Value::Nil))?;
            if v.is_nan() || v.is_infinite() {
                return Ok(s(format_g(v, Some(4))));
            }
            Ok(s(go_time_string(v)?))
        }),
    );
    t = t.func(
        "toTime",
        called("toTime", |a| {
            let v = to_float(a.first().unwrap_or(&Value::Nil))?;
            if v.is_nan() || v.is_infinite() {
                return Err(exec_err("value is NaN or Inf"));
            }
            Ok(s(go_time_string(v)?))
        }),
    );
    t = t.func(
        "toDuration",
        called("toDuration", |a| {
            let v = to_float(a.first().unwrap_or(&Value::Nil))?;
            Ok(s(duration::go_duration_string((v * 1e9) as i64)))
        }),
    );
    t = t.func("now", called("now", move |_| Ok(Value::Float(ts_ms as f64 / 1000.0))));
    t = t.func("pathPrefix", called("pathPrefix", move |_| Ok(s(ext_path.as_str()))));
    t = t.func("externalURL", called("externalURL", move |_| Ok(s(ext.as_str()))));
    t = t.func(
        "parseDuration",
        called("parseDuration", |a| {
            Ok(Value::Float(parse_duration_secs(str_arg(a, 0, "parseDuration")?)?))
        }),
    );
    t = t.func(
        "urlQueryEscape",
        called("urlQueryEscape", |a| {
            Ok(s(query_escape(str_arg(a, 0, "urlQueryEscape")?)))
        }),
    );
    t = t.missing_key(gotmpl::MissingKey::ZeroValue);
    t
}

/// Prefixes a function's errors with `error calling NAME: `, as Go does.
fn called(
    name: &'static str,
    f: impl Fn(&[Value]) -> gotmpl::Result<Value> + Send + Sync + 'static,
) -> impl Fn(&[Value]) -> gotmpl::Result<Value> + Send + Sync + 'static {
    move |a| {
        f(a).map_err(|e| match e {
            TemplateError::Exec(m) if !m.starts_with("error calling") && !m.starts_with("wrong number") => {
                exec_err(format!("error calling {name}: {m}"))
            }
            other => other,
        })
    }
}

fn url_path(u: &str) -> String {
    let rest = u.split_once("://").map(|(_, r)| r).unwrap_or("");
    match rest.find('/') {
        Some(i) => rest[i..].split(['?', '#']).next().unwrap_or("").to_string(),
        None => String::new(),
    }
}

/// text/template's `index`, except that a missing key of a string map yields
/// "" (Go's zero value for `map[string]string`) instead of no value.
fn go_index(a: &[Value]) -> gotmpl::Result<Value> {
    let Some(mut cur) = a.first().cloned() else {
        return Err(exec_err("wrong number of args for index: want at least 1 got 0"));
    };
    for idx in &a[1..] {
        cur = match (&cur, idx) {
            (Value::Map(m), Value::String(k)) if !m.contains_key(&**k) => {
                if m.values().all(|v| matches!(v, Value::String(_))) {
                    s("")
                } else {
                    Value::Nil
                }
            }
            _ => cur.index(idx)?,
        };
    }
    Ok(cur)
}

fn known_function(name: &str) -> bool {
    PROM_FUNCS.contains(&name) || GO_BUILTINS.contains(&name) || name == "__gofmt"
}

/// What the parse-time checks found (Go reports these when parsing; gotmpl
/// only when executing).
#[derive(Default)]
struct Problems {
    unknown_funcs: Vec<String>,
    undefined_vars: Vec<String>,
}

/// Appends `__gofmt` to every printing action and checks function and
/// variable names, with Go's variable scoping (a variable lives until the end
/// of the enclosing block).
fn rewrite(list: &mut ListNode, scope: &mut Vec<String>, pr: &mut Problems) {
    let depth = scope.len();
    for node in &mut list.nodes {
        match node {
            Node::Action(a) => {
                check_pipe(&a.pipe, scope, pr);
                if a.pipe.decl.is_empty() {
                    let pos = a.pos;
                    a.pipe.commands.push(CommandNode {
                        pos,
                        args: vec![Expr::Identifier(pos, "__gofmt".into())],
                    });
                } else if !a.pipe.is_assign {
                    scope.extend(a.pipe.decl.iter().map(|d| d.to_string()));
                }
            }
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                check_pipe(&b.pipe, scope, pr);
                let inner = scope.len();
                if !b.pipe.is_assign {
                    scope.extend(b.pipe.decl.iter().map(|d| d.to_string()));
                }
                rewrite(&mut b.body, scope, pr);
                if let Some(e) = &mut b.else_body {
                    rewrite(e, scope, pr);
                }
                scope.truncate(inner);
            }
            Node::List(l) => rewrite(l, scope, pr),
            Node::Template(t) => {
                if let Some(p) = &t.pipe {
                    check_pipe(p, scope, pr);
                }
            }
            _ => {}
        }
    }
    scope.truncate(depth);
}

fn check_pipe(p: &gotmpl::parse::PipeNode, scope: &[String], pr: &mut Problems) {
    for c in &p.commands {
        for e in &c.args {
            check_expr(e, scope, pr);
        }
    }
}

fn check_expr(e: &Expr, scope: &[String], pr: &mut Problems) {
    match e {
        Expr::Identifier(_, name) if !known_function(name) => pr.unknown_funcs.push(name.to_string()),
        Expr::Variable(_, name, _) if name != "$" && !scope.iter().any(|v| v == name.as_str()) => {
            pr.undefined_vars.push(name.to_string())
        }
        Expr::Pipe(_, p) => check_pipe(p, scope, pr),
        Expr::Chain(_, inner, _) => check_expr(inner, scope, pr),
        _ => {}
    }
}

/// Parses `DEFS + text` as Prometheus does; the result executes `__ngx_main`.
fn prepare(name: &str, text: &str, ts_ms: i64, external_url: &str, query: Option<QueryFn>) -> Result<Template, String> {
    let full = format!("{DEFS}{text}");
    let t = build_template(name, ts_ms, external_url, query)
        .parse(&full)
        .map_err(|e| go_error(name, &full, &e))?;
    let mut pr = Problems::default();
    let mut trees: Vec<(String, ListNode)> = Vec::new();
    for tn in t.templates() {
        if let Some(tree) = t.lookup(tn) {
            let mut tree = tree.clone();
            rewrite(&mut tree, &mut Vec::new(), &mut pr);
            let key = if tn == name {
                "__ngx_main".to_string()
            } else {
                tn.to_string()
            };
            trees.push((key, tree));
        }
    }
    if let Some(v) = pr.undefined_vars.first() {
        return Err(format!(
            "template: {name}:{}: undefined variable {v:?}",
            line_of(&full, v)
        ));
    }
    if let Some(f) = pr.unknown_funcs.first() {
        return Err(format!(
            "template: {name}:{}: function {f:?} not defined",
            line_of(&full, f)
        ));
    }
    let mut t = t;
    let mut has_main = false;
    for (k, tree) in trees {
        has_main |= k == "__ngx_main";
        t = t.add_parse_tree(&k, tree);
    }
    if !has_main {
        t = t.add_parse_tree(
            "__ngx_main",
            ListNode {
                pos: gotmpl::parse::Pos { offset: 0, line: 1 },
                nodes: vec![],
            },
        );
    }
    Ok(t)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map(|i| text[..i].matches('\n').count() + 1)
        .unwrap_or(1)
}

/// gotmpl's error in Go's words (`template: NAME:LINE: message`).
fn go_error(name: &str, full: &str, e: &TemplateError) -> String {
    match e {
        TemplateError::Parse { line, message, .. } | TemplateError::Lex { line, message, .. } => {
            format!("template: {name}:{line}: {message}")
        }
        TemplateError::UndefinedVariable(v) => {
            format!("template: {name}:{}: undefined variable {v:?}", line_of(full, v))
        }
        TemplateError::UndefinedFunction(f) => {
            format!("template: {name}:{}: function {f:?} not defined", line_of(full, f))
        }
        TemplateError::Exec(m) => match m.strip_prefix("error calling ").and_then(|r| r.split_once(':')) {
            Some((f, _)) => format!(
                "template: {name}:{}: executing {name:?} at <{f}>: {m}",
                line_of(full, f)
            ),
            None => format!("template: {name}: executing {name:?}: {m}"),
        },
        other => format!("template: {name}: executing {name:?}: {other}"),
    }
}

/// Checks that an alert template parses (promtool's `ParseTest`).
pub fn parse_test(name: &str, text: &str) -> Result<(), String> {
    prepare(name, text, 0, "", None).map(|_| ())
}

/// Expands an alert label or annotation template. Errors read like
/// Prometheus's (`error executing template NAME: template: ...`).
pub fn expand(name: &str, text: &str, data: &AlertData) -> Result<String, String> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let t = prepare(name, text, data.ts_ms, data.external_url, data.query.clone())
        .map_err(|e| format!("error parsing template {name}: {e}"))?;
    let keys = referenced_label_keys(text);
    let mut m: BTreeMap<Arc<str>, Value> = BTreeMap::new();
    m.insert("Labels".into(), string_map(data.labels, &keys));
    m.insert("ExternalLabels".into(), string_map(data.external_labels, &keys));
    m.insert("ExternalURL".into(), s(data.external_url));
    m.insert("Value".into(), Value::Float(data.value));
    let root = Value::Map(Arc::new(m));
    t.execute_template_to_string("__ngx_main", &root)
        .map_err(|e| format!("error executing template {name}: {}", go_error(name, text, &e)))
}
