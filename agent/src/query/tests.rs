//! Conformance: runs every promqltest file, prints per-file counts and fails
//! if a case listed in conformance-baseline.txt no longer passes.
use std::path::PathBuf;

use super::{promqltest, testing::MemSeries};

fn shared_dir() -> Option<PathBuf> {
    let mut cands = vec![];
    if let Ok(p) = std::env::var("NGXPROBE_SHARED") {
        cands.push(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    cands.push(manifest.join("../../shared"));
    cands.push(manifest.join("../shared"));
    cands.push(PathBuf::from("/work/shared"));
    cands.into_iter().map(|p| p.join("conformance/promqltest")).find(|p| p.is_dir())
}

const BASELINE: &str = include_str!("conformance-baseline.txt");

#[test]
fn promql_conformance() {
    let Some(dir) = shared_dir() else {
        eprintln!("promqltest: conformance data not found (set NGXPROBE_SHARED); skipping");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "test")).collect();
    files.sort();
    let mut passing = std::collections::BTreeSet::new();
    let mut total = (0, 0, 0);
    let verbose = std::env::var("NGXPROBE_CONFORMANCE_VERBOSE").is_ok();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let store = MemSeries::new();
        let rep = promqltest::run_file(&text, &store, &mut |op| match op {
            promqltest::LoadOp::Clear => store.clear(),
            promqltest::LoadOp::Sample(l, t, v) => store.add(l, t, v),
        });
        let mut by_rule = std::collections::BTreeMap::new();
        for (_, r) in &rep.skipped {
            *by_rule.entry(*r).or_insert(0) += 1;
        }
        println!(
            "promqltest {name}: {} passed, {} failed, {} skipped {:?}",
            rep.passed.len(),
            rep.failed.len(),
            rep.skipped.len(),
            by_rule
        );
        if verbose {
            for (l, e) in &rep.failed {
                println!("  FAIL {name}:{l}: {e}");
            }
        }
        total.0 += rep.passed.len();
        total.1 += rep.failed.len();
        total.2 += rep.skipped.len();
        for l in rep.passed {
            passing.insert(format!("{name}:{l}"));
        }
    }
    println!("promqltest total: {} passed, {} failed, {} skipped", total.0, total.1, total.2);
    if std::env::var("NGXPROBE_UPDATE_BASELINE").is_ok() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/query/conformance-baseline.txt");
        let body: String = passing.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(path, format!("# promqltest cases that pass; regenerate with NGXPROBE_UPDATE_BASELINE=1\n{body}")).unwrap();
        return;
    }
    let regressed: Vec<&str> =
        BASELINE.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).filter(|l| !passing.contains(*l)).collect();
    assert!(regressed.is_empty(), "conformance regressions: {regressed:?}");
}
