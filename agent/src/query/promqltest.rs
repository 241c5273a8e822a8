//! Runner for Prometheus's promqltest format (`load`, `clear`,
//! `eval instant at`, `eval range from .. to .. step`, `eval_fail`,
//! `eval_ordered`, `expect ...` lines, expanding series notation).
//!
//! Generic over the store: it reads through `&dyn SeriesReader` and writes
//! through a loader closure, so the lead can swap in the real store.
//!
//! Skip rules (every skipped case is counted and reported with its rule):
//! - `native-histogram`: the case's expected output has a native histogram
//!   (`{{...}}`), or its query names a metric loaded with native histogram
//!   samples (ngxprobe stores floats only), or the file loads with
//!   `load_with_nhcb`.
//! - `info`: the query uses `info()`.
//! - `experimental`: the query uses experimental PromQL that Prometheus only
//!   enables behind feature flags: fill()/fill_left()/fill_right(), smoothed,
//!   anchored, limit_ratio, double_exponential_smoothing, duration
//!   arithmetic and step()/range() inside brackets, `__type__`/`__unit__`
//!   labels, start timestamps (`@st` load lines).
//!
//! Not checked: annotation expectations (`expect warn|info|no_warn|no_info`)
//! — ngxprobe does not produce annotations; Prometheus's extra @-modifier
//! re-runs of instant cases. Checked like Prometheus does: every instant case
//! is also run as a range query from t-1m to t+1m step 1m and compared at t.
use std::{collections::HashMap, time::Duration};

use super::{QueryError, QueryResult, eval::EvalOpts, instant_query_expr, parse, range_query_expr};
use crate::series::{Labels, SeriesReader, stale_marker};

pub enum LoadOp<'a> {
    Clear,
    Sample(&'a Labels, i64, f64),
}

#[derive(Default, Debug, Clone)]
pub struct FileReport {
    pub passed: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    pub skipped: Vec<(usize, &'static str)>,
}

#[derive(Clone, Debug)]
enum Seq {
    Omitted,
    Val(f64),
}

struct Eval {
    line: usize,
    expr: String,
    range: Option<(i64, i64, i64)>,
    at: i64,
    fail: bool,
    fail_msg: Option<String>,
    fail_regex: Option<regex::Regex>,
    ordered: bool,
    expect_string: Option<String>,
    expect_range_vector: Option<(i64, i64, i64)>,
    scalar: Option<f64>,
    expected: Vec<(Labels, Vec<Seq>)>,
    has_histogram: bool,
    bad: Option<String>,
}

fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()? as f64
    } else {
        match body.to_ascii_lowercase().as_str() {
            "inf" | "infinity" => f64::INFINITY,
            "nan" => f64::NAN,
            _ => {
                if body.is_empty() || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                    return None;
                }
                body.parse::<f64>().ok()?
            }
        }
    };
    Some(if neg { -v } else { v })
}

/// Parses a Go-quoted string at the start of `s`; returns (value, rest).
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next()?;
    if q != '"' && q != '\'' && q != '`' {
        return None;
    }
    let mut out = String::new();
    let mut it = s[1..].char_indices();
    while let Some((i, c)) = it.next() {
        if c == q {
            return Some((out, &s[1 + i + 1..]));
        }
        if c == '\\' && q != '`' {
            let (_, e) = it.next()?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'u' | 'x' | 'U' => {
                    let n = match e {
                        'u' => 4,
                        'x' => 2,
                        _ => 8,
                    };
                    let hex: String = (0..n).filter_map(|_| it.next().map(|x| x.1)).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => {
                    out.push('\\');
                    out.push(other)
                }
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Parses `name{a="b", ...}` at the start of `s`; returns (labels, rest).
fn parse_metric(s: &str) -> Option<(Labels, &str)> {
    let s = s.trim_start();
    let name_len = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .count();
    let mut pairs: Vec<(String, String)> = vec![];
    if name_len > 0 {
        pairs.push(("__name__".into(), s[..name_len].to_string()));
    }
    let mut rest = &s[name_len..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (name, r) = if rest.starts_with('"') {
                parse_quoted(rest)?
            } else {
                let n = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .count();
                if n == 0 {
                    return None;
                }
                (rest[..n].to_string(), &rest[n..])
            };
            let r = r.trim_start();
            if let Some(r2) = r.strip_prefix('=') {
                let (v, r3) = parse_quoted(r2.trim_start())?;
                pairs.push((name, v));
                rest = r3.trim_start();
            } else {
                // A bare quoted name is the metric name.
                pairs.push(("__name__".into(), name));
                rest = r;
            }
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    } else if name_len == 0 {
        return None;
    }
    Some((Labels::new(pairs), rest))
}

/// Expands series notation. Returns None on a native histogram.
fn parse_values(s: &str) -> Result<Option<Vec<Seq>>, String> {
    if s.contains("{{") {
        return Ok(None);
    }
    let mut out = vec![];
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(Seq::Omitted);
            continue;
        }
        if tok == "stale" {
            out.push(Seq::Val(stale_marker()));
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad token {tok}"))?;
            out.extend(std::iter::repeat_n(Seq::Omitted, n));
            continue;
        }
        let is_rep = tok
            .rfind('x')
            .is_some_and(|xi| xi > 0 && tok[xi + 1..].chars().all(|c| c.is_ascii_digit()) && !tok[xi + 1..].is_empty());
        if !is_rep && let Some(v) = parse_number(tok) {
            out.push(Seq::Val(v));
            continue;
        }
        // a[+-]bxN or axN
        let xi = tok.rfind('x').ok_or_else(|| format!("bad token {tok}"))?;
        let times: usize = tok[xi + 1..].parse().map_err(|_| format!("bad token {tok}"))?;
        let head = &tok[..xi];
        let bytes = head.as_bytes();
        let mut split = None;
        for i in (1..bytes.len()).rev() {
            if (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E') {
                split = Some(i);
                break;
            }
        }
        let (start, inc) = match split {
            Some(i) => (
                parse_number(&head[..i]).ok_or_else(|| format!("bad token {tok}"))?,
                parse_number(&head[i..]).ok_or_else(|| format!("bad token {tok}"))?,
            ),
            None => (parse_number(head).ok_or_else(|| format!("bad token {tok}"))?, 0.0),
        };
        let mut v = start;
        for _ in 0..=times {
            out.push(Seq::Val(v));
            v += inc;
        }
    }
    Ok(Some(out))
}

/// promqltest's tolerance for comparing sample values.
fn almost_equal(a: f64, b: f64) -> bool {
    super::functions::almost_equal(a, b, 1e-6)
}

fn skip_rule(expr: &str, hist_metrics: &[String], nhcb: bool) -> Option<&'static str> {
    static EXPERIMENTAL: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = EXPERIMENTAL.get_or_init(|| {
        regex::Regex::new(
            r"\b(fill|fill_left|fill_right)\s*\(|\b(smoothed|anchored)\b|\blimit_ratio\b|\bdouble_exponential_smoothing\b|\[[^\]:]*[0-9smhdwy)]\s*[-+*/%^]\s*[^\]]*\]|__type__|__unit__|\bstart_timestamp\b|\[[^\]]*\b(step|range|min|max)\(|offset\s*-?\s*\(|\[\s*\(|@\s*\(",
        )
        .unwrap()
    });
    if expr.contains("info(") {
        return Some("info");
    }
    if nhcb {
        return Some("native-histogram");
    }
    if re.is_match(expr) {
        return Some("experimental");
    }
    for m in hist_metrics {
        if let Some(i) = expr.find(m.as_str()) {
            let before_ok = i == 0 || !expr.as_bytes()[i - 1].is_ascii_alphanumeric() && expr.as_bytes()[i - 1] != b'_';
            let after = i + m.len();
            let after_ok = after >= expr.len()
                || !(expr.as_bytes()[after].is_ascii_alphanumeric() || expr.as_bytes()[after] == b'_');
            if before_ok && after_ok {
                return Some("native-histogram");
            }
        }
    }
    None
}

/// Runs one test file. `load` receives `Clear` and samples; `reader` sees them.
pub fn run_file(text: &str, reader: &dyn SeriesReader, load: &mut dyn FnMut(LoadOp)) -> FileReport {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') {
                String::new()
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut rep = FileReport::default();
    let mut hist_metrics: Vec<String> = vec![];
    let mut hist_series: Vec<Labels> = vec![];
    let mut nhcb_loaded = false;
    load(LoadOp::Clear);
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let cmd = l.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        if cmd == "clear" {
            load(LoadOp::Clear);
            hist_metrics.clear();
            hist_series.clear();
            nhcb_loaded = false;
            i += 1;
        } else if cmd.starts_with("load") {
            let nhcb = cmd == "load_with_nhcb";
            nhcb_loaded |= nhcb;
            let gap = duration_ms(l.split_whitespace().nth(1).unwrap_or("")).unwrap_or(0);
            i += 1;
            let mut defs: Vec<(Labels, Vec<Seq>)> = vec![];
            while i < lines.len() && !lines[i].is_empty() {
                let dl = &lines[i];
                i += 1;
                if let Some((name_part, _)) = dl.split_once(char::is_whitespace)
                    && (name_part.ends_with("@st") || name_part.contains("}@st"))
                {
                    continue; // start timestamps: not supported
                }
                let Some((labels, rest)) = parse_metric(dl) else {
                    continue;
                };
                match parse_values(rest) {
                    Ok(Some(vals)) => {
                        defs.retain(|(l, _)| l != &labels);
                        defs.push((labels, vals));
                    }
                    Ok(None) | Err(_) => {
                        if let Some(n) = labels.name() {
                            hist_metrics.push(n.to_string());
                        }
                        hist_series.push(labels.without_name());
                        // Mixed series: load the float samples only.
                    }
                }
            }
            for (labels, vals) in &defs {
                for (k, v) in vals.iter().enumerate() {
                    if let Seq::Val(x) = v {
                        load(LoadOp::Sample(labels, k as i64 * gap, *x));
                    }
                }
            }
        } else if cmd.starts_with("eval") {
            let (ev, next) = parse_eval(&lines, i);
            i = next;
            if let Some(rule) =
                skip_rule(&ev.expr, &hist_metrics, nhcb_loaded).or(ev.has_histogram.then_some("native-histogram"))
            {
                rep.skipped.push((ev.line, rule));
                continue;
            }
            if ev.expr.contains("__name__")
                && ev
                    .expected
                    .iter()
                    .any(|(l, _)| !l.0.is_empty() && hist_series.contains(&l.without_name()))
            {
                rep.skipped.push((ev.line, "native-histogram"));
                continue;
            }
            if let Some(b) = &ev.bad {
                rep.failed.push((ev.line, format!("unparseable case: {b}")));
                continue;
            }
            match run_eval(&ev, reader) {
                Ok(()) => rep.passed.push(ev.line),
                Err(e) => rep.failed.push((ev.line, e)),
            }
        } else {
            i += 1;
        }
    }
    rep
}

fn parse_eval(lines: &[String], start: usize) -> (Eval, usize) {
    static INSTANT: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static RANGE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let ri = INSTANT.get_or_init(|| {
        regex::Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$").unwrap()
    });
    let rr = RANGE.get_or_init(|| {
        regex::Regex::new(r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$")
            .unwrap()
    });
    let l = &lines[start];
    let mut ev = Eval {
        line: start + 1,
        expr: String::new(),
        range: None,
        at: 0,
        fail: false,
        fail_msg: None,
        fail_regex: None,
        ordered: false,
        expect_string: None,
        expect_range_vector: None,
        scalar: None,
        expected: vec![],
        has_histogram: false,
        bad: None,
    };
    let mode;
    if let Some(c) = ri.captures(l) {
        mode = c.get(1).map(|m| m.as_str().to_string());
        ev.at = c.get(2).and_then(|m| duration_ms(m.as_str())).unwrap_or(0);
        ev.expr = c[3].to_string();
    } else if let Some(c) = rr.captures(l) {
        mode = c.get(1).map(|m| m.as_str().to_string());
        let f = duration_ms(&c[2]);
        let t = duration_ms(&c[3]);
        let s = duration_ms(&c[4]);
        match (f, t, s) {
            (Some(f), Some(t), Some(s)) => ev.range = Some((f, t, s)),
            _ => ev.bad = Some("bad range".into()),
        }
        ev.expr = c[5].to_string();
    } else {
        ev.bad = Some(format!("bad eval line {l}"));
        return (ev, start + 1);
    }
    match mode.as_deref() {
        Some("fail") => ev.fail = true,
        Some("ordered") => ev.ordered = true,
        _ => {}
    }
    let mut i = start + 1;
    while i < lines.len() && !lines[i].is_empty() {
        let dl = lines[i].as_str();
        i += 1;
        if ev.fail && dl.starts_with("expected_fail_message") {
            ev.fail_msg = Some(dl["expected_fail_message".len()..].trim().to_string());
            continue;
        }
        if ev.fail && dl.starts_with("expected_fail_regexp") {
            ev.fail_regex = regex::Regex::new(dl["expected_fail_regexp".len()..].trim()).ok();
            continue;
        }
        if let Some(r) = dl.strip_prefix("expect range vector") {
            let parts: Vec<&str> = r.split_whitespace().collect();
            if parts.len() == 6
                && let (Some(f), Some(t), Some(s)) =
                    (duration_ms(parts[1]), duration_ms(parts[3]), duration_ms(parts[5]))
            {
                ev.expect_range_vector = Some((f, t, s));
                ev.at = t;
                continue;
            }
            ev.bad = Some(format!("bad line {dl}"));
            continue;
        }
        if let Some(r) = dl.strip_prefix("expect string") {
            ev.expect_string = parse_quoted(r.trim()).map(|x| x.0);
            continue;
        }
        if dl.split(' ').next() == Some("expect") {
            let rest = dl["expect".len()..].trim();
            let (kind, opt) = match rest.split_once(char::is_whitespace) {
                Some((k, o)) => (k, o.trim()),
                None => (rest, ""),
            };
            match kind {
                "ordered" => ev.ordered = true,
                "fail" => {
                    ev.fail = true;
                    if let Some(m) = opt.strip_prefix("msg:") {
                        ev.fail_msg = Some(m.trim().to_string());
                    } else if let Some(m) = opt.strip_prefix("regex:") {
                        ev.fail_regex = regex::Regex::new(m.trim()).ok();
                    }
                }
                _ => {} // warn/info/no_warn/no_info: annotations are not checked.
            }
            continue;
        }
        if dl.contains("{{") {
            ev.has_histogram = true;
            continue;
        }
        if let Some(f) = parse_number(dl) {
            ev.scalar = Some(f);
            continue;
        }
        match parse_metric(dl).map(|(l, r)| (l, parse_values(r))) {
            Some((l, Ok(Some(v)))) => ev.expected.push((l, v)),
            Some((_, Ok(None))) => ev.has_histogram = true,
            _ => ev.bad = Some(format!("bad expectation line {dl}")),
        }
    }
    (ev, i)
}

fn test_opts() -> EvalOpts {
    EvalOpts {
        deadline: Some(std::time::Instant::now() + Duration::from_secs(30)),
        ..EvalOpts::default()
    }
}

fn run_eval(ev: &Eval, reader: &dyn SeriesReader) -> Result<(), String> {
    let parsed = parse(&ev.expr);
    let result = parsed.clone().and_then(|e| match ev.range {
        Some((f, t, s)) => range_query_expr(reader, &e, f, t, s, &test_opts()),
        None => instant_query_expr(reader, &e, ev.at, &test_opts()),
    });
    if ev.fail {
        return match result {
            Ok(_) => Err("expected error, got none".into()),
            Err(e) => {
                let msg = match &e {
                    QueryError::BadData(m) | QueryError::TooDeep(m) | QueryError::TooLong(m) => m.clone(),
                    QueryError::Eval(x) => x.to_string(),
                };
                if let Some(m) = &ev.fail_msg
                    && m != &msg
                {
                    return Err(format!("expected error {m:?}, got {msg:?}"));
                }
                if let Some(r) = &ev.fail_regex
                    && !r.is_match(&msg)
                {
                    return Err(format!("expected error matching {r}, got {msg:?}"));
                }
                Ok(())
            }
        };
    }
    let result = result.map_err(|e| format!("error: {e}"))?;
    compare(ev, &result)?;
    // Range-mode check of instant queries, as Prometheus's runner does.
    if ev.range.is_none() && ev.expect_range_vector.is_none() && ev.expect_string.is_none() && !ev.ordered {
        static CTXF: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = CTXF.get_or_init(|| regex::Regex::new(r"(start|end|range|step)\(\)").unwrap());
        if !re.is_match(&ev.expr) {
            let e = parsed.map_err(|e| e.to_string())?;
            let r = range_query_expr(reader, &e, ev.at - 60_000, ev.at + 60_000, 60_000, &test_opts())
                .map_err(|e| format!("range mode: error: {e}"))?;
            let QueryResult::Matrix(m) = r else {
                return Err("range mode: not a matrix".into());
            };
            let pick: Vec<(Labels, i64, f64)> = m
                .iter()
                .filter_map(|s| {
                    s.samples
                        .iter()
                        .find(|p| p.0 == ev.at)
                        .map(|p| (s.labels.clone(), p.0, p.1))
                })
                .collect();
            let as_result = if ev.scalar.is_some() {
                QueryResult::Scalar(ev.at, pick.first().map(|p| p.2).unwrap_or(f64::NAN))
            } else {
                QueryResult::Vector(pick)
            };
            compare(ev, &as_result).map_err(|e| format!("range mode: {e}"))?;
        }
    }
    Ok(())
}

fn compare(ev: &Eval, r: &QueryResult) -> Result<(), String> {
    let exp: HashMap<&Labels, (usize, &Vec<Seq>)> =
        ev.expected.iter().enumerate().map(|(i, (l, v))| (l, (i, v))).collect();
    match r {
        QueryResult::String(_, s) => match &ev.expect_string {
            Some(x) if x == s => Ok(()),
            _ => Err(format!("unexpected string {s:?}")),
        },
        QueryResult::Scalar(_, v) => match ev.scalar {
            Some(x) if almost_equal(x, *v) => Ok(()),
            Some(x) => Err(format!("expected scalar {x} but got {v}")),
            None => Err(format!("expected vector or matrix result, but got scalar {v}")),
        },
        QueryResult::Vector(vs) => {
            if ev.scalar.is_some() {
                return Err("expected scalar result, but got vector".into());
            }
            if vs.len() != exp.len() {
                let got: Vec<String> = vs.iter().map(|(l, _, v)| format!("{l} {v}")).collect();
                return Err(format!(
                    "expected {} samples, got {}: {}",
                    exp.len(),
                    vs.len(),
                    got.join("; ")
                ));
            }
            for (pos, (l, _, v)) in vs.iter().enumerate() {
                let Some((epos, ev_vals)) = exp.get(l) else {
                    return Err(format!("unexpected metric {l} in result, value {v}"));
                };
                if ev.ordered && *epos != pos {
                    return Err(format!("expected metric {l} at position {epos} but was at {pos}"));
                }
                match ev_vals.first() {
                    Some(Seq::Val(x)) if almost_equal(*x, *v) => {}
                    other => return Err(format!("expected {other:?} for {l} but got {v}")),
                }
            }
            Ok(())
        }
        QueryResult::Matrix(m) => {
            if ev.ordered {
                return Err("expected ordered result, but query returned a matrix".into());
            }
            if ev.scalar.is_some() {
                return Err("expected scalar result, but got matrix".into());
            }
            let (start, step) = match (ev.range, ev.expect_range_vector) {
                (Some((f, _, s)), _) => (f, s),
                (None, Some((f, _, s))) => (f, s),
                _ => return Err("unexpected range vector result".into()),
            };
            if m.len() != exp.len() {
                let got: Vec<String> = m.iter().map(|s| s.labels.to_string()).collect();
                return Err(format!(
                    "expected {} series, got {}: {}",
                    exp.len(),
                    m.len(),
                    got.join("; ")
                ));
            }
            for s in m {
                let Some((_, vals)) = exp.get(&s.labels) else {
                    return Err(format!("unexpected metric {} in result", s.labels));
                };
                let want: Vec<(i64, f64)> = vals
                    .iter()
                    .enumerate()
                    .filter_map(|(k, v)| match v {
                        Seq::Val(x) => Some((start + k as i64 * step, *x)),
                        Seq::Omitted => None,
                    })
                    .collect();
                if want.len() != s.samples.len() {
                    return Err(format!(
                        "expected {} points for {}, got {:?}",
                        want.len(),
                        s.labels,
                        s.samples
                    ));
                }
                for (w, g) in want.iter().zip(s.samples.iter()) {
                    if w.0 != g.0 || !almost_equal(w.1, g.1) {
                        return Err(format!("for {} expected {:?} got {:?}", s.labels, w, g));
                    }
                }
            }
            Ok(())
        }
    }
}

/// A Prometheus duration in a test script (`1h30m`), in milliseconds.
fn duration_ms(s: &str) -> Option<i64> {
    crate::compat::duration::parse_ms(s.trim())
}
