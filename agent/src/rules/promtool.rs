//! `ngxprobe check rules FILE…` and `ngxprobe test rules FILE…`, with
//! promtool's output and exit codes (cmd/promtool: CheckRules, RulesUnitTest).
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use super::{
    eval::{EvalEnv, Group, labels_of},
    file::{self, Dur, ErrorKind, GroupDef, RuleError, YStr},
};
use crate::{
    compat::{PromDuration, float::format_e_upper, quote::go_quote, yaml},
    query::{QueryOptions, QueryResult, instant_query},
    series::MemStore,
    series::{Labels, labels_string, stale_marker},
};

/// promtool's exit codes.
pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;

/// What `check rules` found in one file.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// Valid; number of rules; duplicate-rule lint text if any (a warning).
    Ok {
        rules: usize,
        lint: Option<String>,
    },
    Failed(Vec<RuleError>),
}

/// Checks one rule file like `promtool check rules`.
pub fn check_rules_file(path: &Path) -> CheckOutcome {
    match file::load_file(path) {
        Err(e) => CheckOutcome::Failed(e),
        Ok(groups) => CheckOutcome::Ok {
            rules: file::count_rules(&groups),
            lint: duplicate_lint(&groups),
        },
    }
}

/// promtool's duplicate-rules lint: rules with the same name and labels.
pub fn duplicate_lint(groups: &[GroupDef]) -> Option<String> {
    let mut rules: Vec<(String, Vec<(String, String)>)> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .map(|r| {
            (
                r.name.clone(),
                r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            )
        })
        .collect();
    rules.sort();
    let mut dups: Vec<&(String, Vec<(String, String)>)> = Vec::new();
    for w in rules.windows(2) {
        if w[0] == w[1] && dups.last().is_none_or(|d| **d != w[0]) {
            dups.push(&w[1]);
        }
    }
    if dups.is_empty() {
        return None;
    }
    let mut msg = format!("lint error {} duplicate rule(s) found.\n", dups.len());
    for (name, labels) in dups {
        msg.push_str(&format!("Metric: {name}\nLabel(s):\n"));
        for (k, v) in labels {
            msg.push_str(&format!("\t{k}: {v}\n"));
        }
    }
    msg.push_str("Might cause inconsistency while recording expressions");
    Some(msg)
}

/// `ngxprobe check rules FILE…`: prints promtool's report; returns the exit
/// code (0 valid, duplicates are only a warning; 1 when any file is invalid).
pub fn check_rules_cli(files: &[PathBuf], out: &mut dyn Write) -> u8 {
    let mut failed = false;
    for f in files {
        let _ = writeln!(out, "Checking {}", f.display());
        match check_rules_file(f) {
            CheckOutcome::Ok { rules, lint: None } => {
                let _ = writeln!(out, "  SUCCESS: {rules} rules found");
            }
            CheckOutcome::Ok { rules, lint: Some(l) } => {
                let _ = writeln!(out, "  WARNING: {l}");
                let _ = writeln!(out, "  SUCCESS: {rules} rules found");
            }
            CheckOutcome::Failed(errs) => {
                failed = true;
                let _ = writeln!(out, "  FAILED:");
                for e in errs {
                    let _ = writeln!(out, "{e}");
                }
            }
        }
        let _ = writeln!(out);
    }
    if failed { FAILURE } else { SUCCESS }
}

// ---------- unit tests (promtool test rules) ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitTestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Dur>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
    #[serde(default)]
    fuzzy_compare: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<Dur>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTestCase>,
    #[serde(default)]
    promql_expr_test: Vec<PromqlTestCase>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    start_timestamp: Option<YStr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: YStr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTestCase {
    #[serde(default)]
    eval_time: Dur,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, YStr>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, YStr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromqlTestCase {
    expr: String,
    #[serde(default)]
    eval_time: Dur,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    #[serde(default)]
    value: f64,
    #[serde(default)]
    histogram: Option<String>,
}

/// Why a unit-test file failed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TestErrorKind {
    /// The test file itself is bad (YAML, unknown fields, input series syntax).
    Input,
    /// A rule file failed to load.
    RuleFile(ErrorKind),
    /// A rule failed to evaluate.
    RuleEval,
    /// A promql_expr_test expression failed.
    ExprEval,
    /// Expected and got differ.
    Mismatch,
}

#[derive(Clone, Debug)]
pub struct TestError {
    pub kind: TestErrorKind,
    pub message: String,
}

/// Runs one unit-test file; Ok or every error (promtool's texts).
pub fn run_test_file(path: &Path, warnings: &mut Vec<String>) -> Result<(), Vec<TestError>> {
    let input = |m: String| {
        vec![TestError {
            kind: TestErrorKind::Input,
            message: m,
        }]
    };
    let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
    let utf: UnitTestFile =
        yaml::from_str(&text, None).map_err(|e| input(e.in_file(path.to_path_buf(), &text).to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rule_files = Vec::new();
    for rf in &utf.rule_files {
        let p = if Path::new(rf).is_absolute() {
            PathBuf::from(rf)
        } else {
            base.join(rf)
        };
        let pat = p.to_string_lossy().to_string();
        let matched: Vec<PathBuf> = glob::glob(&pat).map_err(|e| input(e.to_string()))?.flatten().collect();
        if matched.is_empty() {
            warnings.push(format!("  WARNING: no file match pattern {pat}"));
        }
        rule_files.extend(matched);
    }
    let eval_interval = utf
        .evaluation_interval
        .map(|d| d.ms())
        .filter(|v| *v > 0)
        .unwrap_or(60_000);
    let mut order: HashMap<&str, usize> = HashMap::new();
    for (i, g) in utf.group_eval_order.iter().enumerate() {
        if order.insert(g.as_str(), i).is_some() {
            return Err(input(format!("group name repeated in evaluation order: {g}")));
        }
    }
    let mut errs = Vec::new();
    for tg in &utf.tests {
        if let Err(e) = run_test_group(tg, eval_interval, &order, &rule_files, utf.fuzzy_compare) {
            errs.extend(e);
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// `ngxprobe test rules FILE…`: promtool's report; exit code 0 when all pass.
pub fn test_rules_cli(files: &[PathBuf], out: &mut dyn Write) -> u8 {
    let mut failed = false;
    for f in files {
        let _ = writeln!(out, "Unit Testing:  {}", f.display());
        let mut warnings = Vec::new();
        let r = run_test_file(f, &mut warnings);
        for w in warnings {
            let _ = writeln!(out, "{w}");
        }
        match r {
            Ok(()) => {
                let _ = writeln!(out, "  SUCCESS");
            }
            Err(errs) => {
                failed = true;
                let _ = writeln!(out, "  FAILED:");
                for e in errs {
                    let _ = writeln!(out, "{}", e.message);
                    let _ = writeln!(out);
                }
            }
        }
        let _ = writeln!(out);
    }
    if failed { FAILURE } else { SUCCESS }
}

/// Go's `model.Duration.String()` for a millisecond count.
fn dur_str(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", PromDuration::from_millis(ms.unsigned_abs()));
    }
    PromDuration::from_millis(ms as u64).to_string()
}

/// Parses a series selector of input/expected samples (`up{job="a"}`, `{a="b"}`, ``).
pub fn parse_metric(s: &str) -> Result<BTreeMap<String, String>, String> {
    if s.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let e = crate::query::parse(s).map_err(|e| e.to_string())?;
    let promql_parser::parser::Expr::VectorSelector(vs) = e else {
        return Err(format!("1:1: parse error: not a series selector: {s}"));
    };
    let mut m = BTreeMap::new();
    if let Some(n) = vs.name {
        m.insert("__name__".to_string(), n);
    }
    for x in vs.matchers.matchers {
        if !matches!(x.op, promql_parser::label::MatchOp::Equal) {
            return Err(format!(
                "1:1: parse error: only = matchers are allowed in a series: {s}"
            ));
        }
        if !x.value.is_empty() {
            m.insert(x.name, x.value);
        }
    }
    Ok(m)
}

fn parse_num(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Expands promtool's value notation (`1+2x3`, `0x10`, `_`, `_x3`, `stale`)
/// into values (None: no sample at that step).
pub fn expand_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(stale_marker()));
            continue;
        }
        if tok.starts_with("{{") {
            return Err(format!("native histogram samples are not supported: {tok}"));
        }
        if let Some((head, times)) = tok
            .rsplit_once('x')
            .filter(|(_, t)| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        {
            let n: usize = times.parse().map_err(|_| format!("invalid repetition in {tok:?}"))?;
            if head == "_" {
                out.extend(std::iter::repeat_n(None, n));
                continue;
            }
            if head == "stale" {
                out.extend(std::iter::repeat_n(Some(stale_marker()), n));
                continue;
            }
            // start[+-]step, the sign not at 0 nor after an exponent mark.
            let b = head.as_bytes();
            let split = (1..b.len())
                .rev()
                .find(|&i| (b[i] == b'+' || b[i] == b'-') && !matches!(b[i - 1], b'e' | b'E'));
            let (start, step) = match split {
                Some(i) => {
                    let start = parse_num(&head[..i]).ok_or_else(|| format!("invalid value {tok:?}"))?;
                    let step = parse_num(&head[i + 1..]).ok_or_else(|| format!("invalid value {tok:?}"))?;
                    (start, if b[i] == b'-' { -step } else { step })
                }
                None => (parse_num(head).ok_or_else(|| format!("invalid value {tok:?}"))?, 0.0),
            };
            let mut v = start;
            out.push(Some(v));
            for _ in 0..n {
                v += step;
                out.push(Some(v));
            }
            continue;
        }
        out.push(Some(parse_num(tok).ok_or_else(|| format!("invalid value {tok:?}"))?));
    }
    Ok(out)
}

fn parse_start(s: &str) -> Result<i64, String> {
    if let Ok(v) = s.parse::<f64>() {
        return Ok((v * 1000.0).round() as i64);
    }
    crate::compat::time::parse_api_time(s)
}

fn run_test_group(
    tg: &TestGroup,
    eval_interval: i64,
    order: &HashMap<&str, usize>,
    rule_files: &[PathBuf],
    fuzzy: bool,
) -> Result<(), Vec<TestError>> {
    let err = |kind: TestErrorKind, m: String| vec![TestError { kind, message: m }];
    let interval = tg.interval.map(|d| d.ms()).filter(|v| *v > 0).unwrap_or(eval_interval);
    let mint = match &tg.start_timestamp {
        Some(s) if !s.0.is_empty() => parse_start(&s.0).map_err(|e| err(TestErrorKind::Input, e))?,
        _ => 0,
    };
    let store = Arc::new(MemStore::new());
    for is in &tg.input_series {
        let labels = parse_metric(&is.series).map_err(|e| err(TestErrorKind::Input, e))?;
        let values = expand_values(&is.values.0).map_err(|e| err(TestErrorKind::Input, e))?;
        let l = labels_of(&labels);
        for (i, v) in values.into_iter().enumerate() {
            if let Some(v) = v {
                store.insert(&l, mint + i as i64 * interval, v);
            }
        }
    }
    // Load rule groups (group default interval: the test interval).
    let mut defs = Vec::new();
    let mut load_errs = Vec::new();
    for f in rule_files {
        match file::load_file(f) {
            Ok(g) => defs.extend(g),
            Err(e) => load_errs.extend(e.into_iter().map(|e| TestError {
                kind: TestErrorKind::RuleFile(e.kind.clone()),
                message: e.to_string(),
            })),
        }
    }
    if !load_errs.is_empty() {
        return Err(load_errs);
    }
    let mut groups: Vec<Group> = defs.into_iter().map(|d| Group::new(d, interval)).collect();
    groups.sort_by_key(|g| order.get(g.def.name.as_str()).copied().unwrap_or(0));
    for g in &mut groups {
        for r in &mut g.rules {
            r.restored = true;
        }
    }
    let reader: Arc<dyn crate::series::SeriesReader> = store.clone();
    let env = EvalEnv {
        reader: reader.clone(),
        writer: store.as_ref(),
        external_labels: &tg.external_labels,
        external_url: &tg.external_url,
        resend_delay_ms: 60_000,
        lookback_ms: 300_000,
        query_timeout: Duration::from_secs(120),
        outage_tolerance_ms: 3_600_000,
        grace_period_ms: 600_000,
    };
    // Alert tests by eval time.
    let mut alert_times: Vec<i64> = Vec::new();
    for a in &tg.alert_rule_test {
        if a.alertname.is_empty() {
            let in_group = if tg.name.is_empty() {
                String::new()
            } else {
                format!(" (in TestGroup {})", tg.name)
            };
            return Err(err(
                TestErrorKind::Input,
                format!(
                    "an item under alert_rule_test misses required attribute alertname at eval_time {}{in_group}",
                    a.eval_time.0
                ),
            ));
        }
        alert_times.push(a.eval_time.ms());
    }
    alert_times.sort();
    alert_times.dedup();
    let max_eval = tg
        .alert_rule_test
        .iter()
        .map(|a| a.eval_time.ms())
        .chain(tg.promql_expr_test.iter().map(|p| p.eval_time.ms()))
        .max()
        .unwrap_or(0);
    let maxt = mint + max_eval;
    let mut errs: Vec<TestError> = Vec::new();
    let mut curr = 0;
    let eq = |a: f64, b: f64| {
        a == b || (fuzzy && (next_after(a, f64::NEG_INFINITY) == b || next_after(a, f64::INFINITY) == b))
    };
    let mut ts = mint;
    while ts <= maxt {
        let mut eval_errs = Vec::new();
        for g in &mut groups {
            g.eval(ts, &env);
            for r in &g.rules {
                if let Some(e) = &r.last_error {
                    eval_errs.push(TestError {
                        kind: TestErrorKind::RuleEval,
                        message: format!("    rule: {}, time: {}, err: {e}", r.def.name, dur_str(ts - mint)),
                    });
                }
            }
        }
        if !eval_errs.is_empty() {
            errs.extend(eval_errs);
            return Err(errs);
        }
        while curr < alert_times.len()
            && ts - mint <= alert_times[curr]
            && alert_times[curr] < ts + eval_interval - mint
        {
            let t = alert_times[curr];
            for tc in tg.alert_rule_test.iter().filter(|a| a.eval_time.ms() == t) {
                let mut got: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)> = Vec::new();
                for g in &groups {
                    for r in g.rules.iter().filter(|r| r.def.alerting && r.def.name == tc.alertname) {
                        for a in r.active_alerts().filter(|a| a.state == super::eval::AlertState::Firing) {
                            got.push((a.labels.clone(), a.annotations.clone()));
                        }
                    }
                }
                let mut exp: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)> = tc
                    .exp_alerts
                    .iter()
                    .map(|e| {
                        let mut l: BTreeMap<String, String> = e
                            .exp_labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.0.clone()))
                            .filter(|(_, v)| !v.is_empty())
                            .collect();
                        l.insert("alertname".into(), tc.alertname.clone());
                        let a = e
                            .exp_annotations
                            .iter()
                            .map(|(k, v)| (k.clone(), v.0.clone()))
                            .filter(|(_, v)| !v.is_empty())
                            .collect();
                        (l, a)
                    })
                    .collect();
                got.sort();
                exp.sort();
                if got != exp {
                    let name = if tg.name.is_empty() {
                        String::new()
                    } else {
                        format!("    name: {},\n", tg.name)
                    };
                    errs.push(TestError {
                        kind: TestErrorKind::Mismatch,
                        message: format!(
                            "{name}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                            tc.alertname,
                            tc.eval_time.0,
                            indent_lines(&alerts_string(&exp), "            "),
                            indent_lines(&alerts_string(&got), "            ")
                        ),
                    });
                }
            }
            curr += 1;
        }
        ts += eval_interval;
    }
    let opts = QueryOptions {
        subquery_step: Duration::from_millis(eval_interval as u64),
        ..QueryOptions::default()
    };
    'outer: for tc in &tg.promql_expr_test {
        let at = mint + tc.eval_time.ms();
        let got = match instant_query(store.as_ref(), &tc.expr, at, &opts) {
            Ok(QueryResult::Vector(v)) => v
                .into_iter()
                .map(|(l, _, x)| (l.0.into_iter().collect::<BTreeMap<_, _>>(), x))
                .collect::<Vec<_>>(),
            Ok(QueryResult::Scalar(_, x)) => vec![(BTreeMap::new(), x)],
            Ok(_) => {
                errs.push(TestError {
                    kind: TestErrorKind::ExprEval,
                    message: format!(
                        "    expr: {}, time: {}, err: rule result is not a vector or scalar",
                        go_quote(&tc.expr),
                        tc.eval_time.0
                    ),
                });
                continue;
            }
            Err(e) => {
                errs.push(TestError {
                    kind: TestErrorKind::ExprEval,
                    message: format!("    expr: {}, time: {}, err: {e}", go_quote(&tc.expr), tc.eval_time.0),
                });
                continue;
            }
        };
        let mut exp = Vec::new();
        for s in &tc.exp_samples {
            if s.histogram.is_some() {
                errs.push(TestError {
                    kind: TestErrorKind::Input,
                    message: format!(
                        "    expr: {}, time: {}, err: native histogram samples are not supported",
                        go_quote(&tc.expr),
                        tc.eval_time.0
                    ),
                });
                continue 'outer;
            }
            match parse_metric(&s.labels) {
                Ok(l) => exp.push((l, s.value)),
                Err(e) => {
                    errs.push(TestError {
                        kind: TestErrorKind::Input,
                        message: format!(
                            "    expr: {}, time: {}, err: labels {}: {e}",
                            go_quote(&tc.expr),
                            tc.eval_time.0,
                            go_quote(&s.labels)
                        ),
                    });
                    continue 'outer;
                }
            }
        }
        let mut got = got;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        let same = got.len() == exp.len() && got.iter().zip(&exp).all(|(g, e)| g.0 == e.0 && eq(g.1, e.1));
        if !same {
            errs.push(TestError {
                kind: TestErrorKind::Mismatch,
                message: format!(
                    "    expr: {}, time: {},\n        exp: {}\n        got: {}",
                    go_quote(&tc.expr),
                    tc.eval_time.0,
                    samples_string(&exp),
                    samples_string(&got)
                ),
            });
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn next_after(x: f64, toward: f64) -> f64 {
    if x.is_nan() || toward.is_nan() {
        return f64::NAN;
    }
    if x == toward {
        return toward;
    }
    if x == 0.0 {
        let tiny = f64::from_bits(1);
        return if toward > 0.0 { tiny } else { -tiny };
    }
    let bits = x.to_bits();
    let up = (toward > x) == (x > 0.0);
    f64::from_bits(if up { bits + 1 } else { bits - 1 })
}

fn samples_string(s: &[(BTreeMap<String, String>, f64)]) -> String {
    if s.is_empty() {
        return "nil".into();
    }
    s.iter()
        .map(|(l, v)| format!("{} {}", labels_string(l), format_e_upper(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

type LabelsAndAnnotations = (BTreeMap<String, String>, BTreeMap<String, String>);

fn alerts_string(a: &[LabelsAndAnnotations]) -> String {
    if a.is_empty() {
        return "[]".into();
    }
    let one =
        |(l, an): &LabelsAndAnnotations| format!("Labels:{}\nAnnotations:{}", labels_string(l), labels_string(an));
    let mut s = format!("[\n0:{}", indent_lines(&format!("\n{}", one(&a[0])), "  "));
    for (i, x) in a[1..].iter().enumerate() {
        s.push_str(&format!(
            ",\n{}:{}",
            i + 1,
            indent_lines(&format!("\n{}", one(x)), "  ")
        ));
    }
    s.push_str("\n]");
    s
}

fn indent_lines(lines: &str, indent: &str) -> String {
    let parts: Vec<&str> = lines.split('\n').collect();
    let mut out = String::new();
    for (i, l) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(indent);
        }
        out.push_str(l);
        if i != parts.len() - 1 {
            out.push('\n');
        }
    }
    out
}

/// Labels as a [`Labels`] (test helper).
pub fn labels_from(s: &str) -> Result<Labels, String> {
    parse_metric(s).map(|m| labels_of(&m))
}
