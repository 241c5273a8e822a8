//! Runs every file of shared/conformance/promtool-rules through promtool (the
//! oracle) and through ngxprobe's `check rules` / `test rules`, and asserts the
//! same verdict and the same kind of error. Prints a per-file table.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    file::ErrorKind,
    promtool::{CheckOutcome, TestErrorKind, check_rules_file, run_test_file},
};

/// Kinds of verdict, comparable between promtool's text and ngxprobe's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pass,
    /// Valid, but the duplicate-rules lint fired.
    PassLint,
    /// The file's YAML (or a field in it) is not Prometheus's format.
    Format,
    Promql,
    Template,
    Invalid,
    InputSeries,
    RuleEval,
    ExprEval,
    Mismatch,
}

/// Where ngxprobe deliberately differs from Debian's promtool 2.42, because the
/// test data comes from a newer Prometheus whose behaviour ngxprobe follows.
const DIVERGENCES: &[(&str, &str)] = &[
    (
        "no-test-group-interval.yml",
        "a test group without `interval` uses evaluation_interval (Prometheus >= 2.4x; 2.42 used 0 and fails)",
    ),
    (
        "start-time-test.yml",
        "`start_timestamp` is supported (newer promtool); 2.42 rejects it as an unknown field",
    ),
    (
        "rules_run_fuzzy.yml",
        "`fuzzy_compare` is supported (newer promtool): fails on the 'wrong fuzzy match' test; 2.42 fails on the unknown field",
    ),
    (
        "rules_run_no_fuzzy.yml",
        "`fuzzy_compare` is supported (newer promtool): fails on the mismatch; 2.42 fails on the unknown field",
    ),
    (
        "unittest.yml",
        "native-histogram samples are not supported (ngxprobe has no histograms); 2.42 rejects `histogram:` as an unknown field",
    ),
];

pub fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NGXPROBE_SHARED") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn promtool() -> PathBuf {
    for p in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("promtool"))
        .chain([PathBuf::from("/usr/bin/promtool")])
    {
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "promtool not found: run `cargo xtask setup` (it installs Debian's prometheus package, which ships /usr/bin/promtool)"
    );
}

fn is_unit_test_file(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("tests:"))
}

fn promtool_kinds(ok: bool, out: &str, test: bool) -> BTreeSet<Kind> {
    let mut k = BTreeSet::new();
    if ok {
        k.insert(if out.contains("lint error") {
            Kind::PassLint
        } else {
            Kind::Pass
        });
        return k;
    }
    if out.contains("lint error") && !test {
        k.insert(Kind::PassLint);
    }
    if out.contains("yaml: ") || out.contains("not found in type") {
        k.insert(Kind::Format);
    }
    if out.contains("could not parse expression") {
        k.insert(Kind::Promql);
    }
    if out.contains("template: ") {
        k.insert(Kind::Template);
    }
    if out.contains("invalid recording rule name") || out.contains("must be set") || out.contains("is repeated") {
        k.insert(Kind::Invalid);
    }
    if out.contains("    rule: ") && out.contains(", err: ") {
        k.insert(Kind::RuleEval);
    }
    if out.contains("    expr: ") && out.contains(", err: ") {
        k.insert(Kind::ExprEval);
    }
    if out.contains("exp:") && out.contains("got:") {
        k.insert(Kind::Mismatch);
    }
    if test && k.is_empty() && out.contains("parse error") {
        k.insert(Kind::InputSeries);
    }
    k
}

fn rule_kind(k: &ErrorKind) -> Kind {
    match k {
        ErrorKind::Io | ErrorKind::Yaml | ErrorKind::UnknownField => Kind::Format,
        ErrorKind::Promql => Kind::Promql,
        ErrorKind::Template => Kind::Template,
        ErrorKind::Invalid => Kind::Invalid,
    }
}

fn ngxprobe_kinds(path: &Path, test: bool) -> (bool, BTreeSet<Kind>, String) {
    let mut k = BTreeSet::new();
    if test {
        let mut w = Vec::new();
        match run_test_file(path, &mut w) {
            Ok(()) => {
                k.insert(Kind::Pass);
                (true, k, String::new())
            }
            Err(errs) => {
                for e in &errs {
                    k.insert(match &e.kind {
                        TestErrorKind::Input => {
                            if e.message.contains("unknown field") {
                                Kind::Format
                            } else {
                                Kind::InputSeries
                            }
                        }
                        TestErrorKind::RuleFile(rk) => rule_kind(rk),
                        TestErrorKind::RuleEval => Kind::RuleEval,
                        TestErrorKind::ExprEval => Kind::ExprEval,
                        TestErrorKind::Mismatch => Kind::Mismatch,
                    });
                }
                let first = errs
                    .first()
                    .map(|e| e.message.lines().next().unwrap_or("").to_string())
                    .unwrap_or_default();
                (false, k, first)
            }
        }
    } else {
        match check_rules_file(path) {
            CheckOutcome::Ok { lint, .. } => {
                k.insert(if lint.is_some() { Kind::PassLint } else { Kind::Pass });
                (true, k, String::new())
            }
            CheckOutcome::Failed(errs) => {
                k.extend(errs.iter().map(|e| rule_kind(&e.kind)));
                let first = errs.first().map(|e| e.to_string()).unwrap_or_default();
                (false, k, first)
            }
        }
    }
}

#[test]
fn rules_promtool_conformance() {
    let dir = shared_dir().join("conformance/promtool-rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set NGXPROBE_SHARED to the shared/ directory)", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let promtool = promtool();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let test = is_unit_test_file(&text);
        let mode = if test { "test" } else { "check" };
        let out = Command::new(&promtool)
            .arg(mode)
            .arg("rules")
            .arg(&name)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running promtool: {e}"));
        let ptext = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let p_ok = out.status.success();
        let p_kinds = promtool_kinds(p_ok, &ptext, test);
        let (n_ok, n_kinds, first) = ngxprobe_kinds(f, test);
        let divergence = DIVERGENCES.iter().find(|(n, _)| *n == name).map(|(_, why)| *why);
        let same_verdict = p_ok == n_ok;
        let same_kind = p_kinds.is_empty() || !p_kinds.is_disjoint(&n_kinds);
        let status = match (same_verdict && same_kind, divergence) {
            (true, None) => "match",
            (true, Some(_)) => "match (see note)",
            (false, Some(_)) => "known divergence",
            (false, None) => {
                failures.push(format!(
                    "{name}: promtool {} {:?}, ngxprobe {} {:?}: {first}",
                    if p_ok { "PASS" } else { "FAIL" },
                    p_kinds,
                    if n_ok { "PASS" } else { "FAIL" },
                    n_kinds
                ));
                "MISMATCH"
            }
        };
        rows.push((name, mode, p_ok, p_kinds, n_ok, n_kinds, status, divergence));
    }
    println!(
        "{:<36} {:<5} {:<26} {:<26} RESULT",
        "FILE", "MODE", "PROMTOOL 2.42", "NGXPROBE"
    );
    let verdict = |ok: bool, k: &BTreeSet<Kind>| {
        format!(
            "{} {:?}",
            if ok { "PASS" } else { "FAIL" },
            k.iter().collect::<Vec<_>>()
        )
    };
    for (name, mode, p_ok, pk, n_ok, nk, status, why) in &rows {
        println!(
            "{name:<36} {mode:<5} {:<26} {:<26} {status}",
            verdict(*p_ok, pk),
            verdict(*n_ok, nk)
        );
        if let Some(w) = why {
            println!("{:<36}   note: {w}", "");
        }
    }
    let matched = rows.iter().filter(|r| r.6.starts_with("match")).count();
    println!(
        "{matched}/{} files match promtool; {} known divergences",
        rows.len(),
        rows.iter().filter(|r| r.6 == "known divergence").count()
    );
    assert!(
        failures.is_empty(),
        "ngxprobe disagrees with promtool:\n{}",
        failures.join("\n")
    );
}
