//! Fuzzing the parse + evaluate entry points (proptest): random token soup
//! and structured random expressions, evaluated as instant and range queries
//! over the real store with a short deadline. Asserts: no panic, and every
//! query returns within a bound (deadline + slack).
//!
//! `fuzz-corpus/*.promql` (one query per file) is always replayed first:
//! keep interesting inputs there, and add every input that ever caused a bug
//! (set NGXPROBE_FUZZ_RECORD=1 to have failing inputs written there).
//! More cases: PROPTEST_CASES=5000 cargo test -p ngxprobe query::fuzz.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::{eval::EvalOpts, instant_query_expr, parse, range_query_expr, testing::TempStore};
use crate::series::{Labels, SeriesWriter, stale_marker};

/// Deadline given to each evaluation.
const DEADLINE: Duration = Duration::from_millis(1500);
/// What one evaluation may take at most: its deadline plus slack for a debug
/// build on a shared 2-core machine (the deadline is checked between steps,
/// so a step in flight finishes first). A query that ignores its deadline
/// blows through this. Each evaluation is bounded on its own: six
/// evaluations that each legitimately run to their deadline take 9 s
/// together, which is not a bug.
const BOUND: Duration = Duration::from_secs(4);

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/query/fuzz-corpus")
}

/// A small store with the shapes queries meet: counters with a reset,
/// gauges, a classic histogram, stale markers, NaN/±Inf values. One per
/// test (dropped at its end, which deletes the temporary directory).
fn store() -> TempStore {
    {
        let s = TempStore::new("fuzz");
        let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for i in 0..240i64 {
            let t = i * 15_000;
            for inst in ["a", "b"] {
                let c = if i < 120 { i as f64 * 3.0 } else { (i - 120) as f64 };
                s.store
                    .append(
                        &l(&[
                            ("__name__", "http_requests_total"),
                            ("instance", inst),
                            ("job", "nginx"),
                        ]),
                        t,
                        c,
                    )
                    .unwrap();
                let g = if i % 50 == 49 {
                    stale_marker()
                } else {
                    ((i * 7) % 23) as f64 - 5.0
                };
                s.store
                    .append(&l(&[("__name__", "conns"), ("instance", inst)]), t, g)
                    .unwrap();
                for (k, le) in ["0.1", "0.5", "1", "+Inf"].iter().enumerate() {
                    s.store
                        .append(
                            &l(&[("__name__", "lat_bucket"), ("instance", inst), ("le", le)]),
                            t,
                            (i * (k as i64 + 1)) as f64,
                        )
                        .unwrap();
                }
            }
            let odd = match i % 5 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                3 => -0.0,
                _ => 1e308,
            };
            s.store.append(&l(&[("__name__", "odd"), ("x", "y")]), t, odd).unwrap();
        }
        s
    }
}

/// Parses and evaluates `q` (instant at several times, and a range query)
/// with a deadline; Err describes a panic or a blown time bound.
fn check(st: &TempStore, q: &str) -> Result<(), String> {
    let reader = &st.store;
    let opts = || EvalOpts {
        deadline: Some(Instant::now() + DEADLINE),
        max_samples: 5_000_000,
        ..EvalOpts::default()
    };
    // The slowest evaluation and what it was.
    let mut slowest = (Duration::ZERO, String::new());
    let mut timed = |what: String, eval: &mut dyn FnMut()| {
        let started = Instant::now();
        eval();
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, what);
        }
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Ok(e) = parse(q) else { return };
        for t in [0, 1_800_000, 3_600_000, -1] {
            timed(format!("instant query at {t}"), &mut || {
                let _ = instant_query_expr(reader, &e, t, &opts());
            });
        }
        timed("range query 0..3600000 step 60000".into(), &mut || {
            let _ = range_query_expr(reader, &e, 0, 3_600_000, 60_000, &opts());
        });
        timed("range query 1000000..1003000 step 1000".into(), &mut || {
            let _ = range_query_expr(reader, &e, 1_000_000, 1_003_000, 1_000, &opts());
        });
    }));
    let (took, what) = slowest;
    let fail = match r {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Some(format!("panic on {q:?}: {msg}"))
        }
        Ok(()) if took > BOUND => Some(format!("{q:?}: the {what} took {took:.1?} (bound {BOUND:?})")),
        Ok(()) => None,
    };
    match fail {
        None => Ok(()),
        Some(f) => {
            if std::env::var("NGXPROBE_FUZZ_RECORD").is_ok() {
                let mut h = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(q, &mut h);
                let name = format!("found-{:016x}.promql", std::hash::Hasher::finish(&h));
                let _ = std::fs::write(corpus_dir().join(name), q);
            }
            Err(f)
        }
    }
}

#[test]
fn fuzz_corpus_replay() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fuzz-corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "promql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty fuzz corpus");
    let mut bad = vec![];
    let st = store();
    for f in &files {
        let q = std::fs::read_to_string(f).unwrap();
        let q = q.strip_suffix('\n').unwrap_or(&q);
        if let Err(e) = check(&st, q) {
            bad.push(format!("{}: {e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    println!("fuzz corpus: {} inputs replayed", files.len());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

const TOKENS: &[&str] = &[
    "http_requests_total",
    "conns",
    "lat_bucket",
    "odd",
    "nonexistent",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "@",
    "=",
    "!=",
    "=~",
    "!~",
    "\"a\"",
    "\"(\"",
    "\".*\"",
    "\"\"",
    "'x'",
    "`y`",
    "instance",
    "le",
    "__name__",
    "job",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    "!=",
    ">",
    "<",
    ">=",
    "<=",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "by",
    "without",
    "offset",
    "start()",
    "end()",
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "stddev",
    "stdvar",
    "group",
    "limitk",
    "limit_ratio",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "resets",
    "changes",
    "histogram_quantile",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "time",
    "timestamp",
    "absent",
    "absent_over_time",
    "sort",
    "sort_desc",
    "sort_by_label",
    "clamp",
    "round",
    "quantile_over_time",
    "sum_over_time",
    "last_over_time",
    "holt_winters",
    "double_exponential_smoothing",
    "day_of_month",
    "days_in_month",
    "0",
    "1",
    "-1",
    "0.5",
    "2",
    "1e308",
    "1e400",
    "-1e400",
    "NaN",
    "Inf",
    "-Inf",
    "0x10",
    "1m",
    "5m",
    "1s",
    "1ms",
    "0s",
    "1y",
    "10000y",
    "1h30m",
    "15s",
    "#",
    "\n",
    "\u{00e9}",
    "\u{1F600}",
    "step()",
    "range()",
    "info",
    "smoothed",
    "anchored",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(TOKENS), prop::bool::ANY), 1..24).prop_map(|ts| {
        ts.into_iter()
            .map(|(t, sp)| if sp { format!("{t} ") } else { t.to_string() })
            .collect()
    })
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("0.5".to_string()),
        Just("NaN".to_string()),
        Just("Inf".to_string()),
        Just("-Inf".to_string()),
        Just("1e308".to_string()),
        Just("1e-308".to_string()),
        Just("1e19".to_string()),
        (-1000i64..1000).prop_map(|n| n.to_string()),
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1ms"),
        Just("1s"),
        Just("15s"),
        Just("1m"),
        Just("5m"),
        Just("1h"),
        Just("1d"),
        Just("1w"),
        Just("1y"),
        Just("100y"),
        Just("1h30m"),
    ]
    .prop_map(str::to_string)
}

fn selector() -> impl Strategy<Value = String> {
    let name = prop::sample::select(&["http_requests_total", "conns", "lat_bucket", "odd", "nonexistent", ""][..]);
    let matcher = (
        prop::sample::select(&["instance", "le", "job", "__name__", "x"][..]),
        prop::sample::select(&["=", "!=", "=~", "!~"][..]),
        prop::sample::select(&["a", "b", "", ".*", ".+", "a|b", "(", "+Inf", "conns", "[a-", "\\\\d"][..]),
    )
        .prop_map(|(l, op, v)| format!("{l}{op}\"{v}\""));
    (name, prop::collection::vec(matcher, 0..3)).prop_map(|(n, ms)| {
        if ms.is_empty() && n.is_empty() {
            "conns".to_string()
        } else if ms.is_empty() {
            n.to_string()
        } else {
            format!("{n}{{{}}}", ms.join(", "))
        }
    })
}

fn modifiers(e: String) -> impl Strategy<Value = String> {
    (
        prop::option::of(
            duration().prop_flat_map(|d| prop::sample::select(vec![format!(" offset {d}"), format!(" offset -{d}")])),
        ),
        prop::option::of(prop_oneof![
            Just(" @ start()".to_string()),
            Just(" @ end()".to_string()),
            (-100_000i64..100_000).prop_map(|t| format!(" @ {t}")),
            Just(" @ 1e12".to_string()),
        ]),
    )
        .prop_map(move |(o, a)| format!("{e}{}{}", o.unwrap_or_default(), a.unwrap_or_default()))
}

/// Structured random expressions (well-formed or nearly so).
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        12 => selector(),
        2 => number(),
        1 => Just("\"str\"".to_string()),
        1 => Just("time()".to_string()),
        2 => Just("vector(1)".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let range = (selector(), duration()).prop_map(|(s, d)| format!("{s}[{d}]"));
        let subq = (inner.clone(), duration(), prop::option::of(duration()))
            .prop_map(|(e, r, s)| format!("({e})[{r}:{}]", s.unwrap_or_default()));
        let rangeish = prop_oneof![range, subq].prop_flat_map(modifiers);
        let range_fn = prop::sample::select(
            &[
                "rate",
                "irate",
                "increase",
                "delta",
                "idelta",
                "deriv",
                "resets",
                "changes",
                "avg_over_time",
                "min_over_time",
                "max_over_time",
                "sum_over_time",
                "count_over_time",
                "last_over_time",
                "stddev_over_time",
                "stdvar_over_time",
                "present_over_time",
                "absent_over_time",
            ][..],
        );
        let inst_fn = prop::sample::select(
            &[
                "abs",
                "ceil",
                "floor",
                "exp",
                "ln",
                "log2",
                "log10",
                "sqrt",
                "sgn",
                "round",
                "timestamp",
                "sort",
                "sort_desc",
                "absent",
                "scalar",
                "vector",
                "day_of_week",
                "hour",
                "month",
                "year",
                "days_in_month",
                "sin",
                "acosh",
                "deg",
                "-",
            ][..],
        );
        let agg = prop::sample::select(&["sum", "avg", "count", "min", "max", "stddev", "stdvar", "group"][..]);
        let agg_param = prop::sample::select(&["topk", "bottomk", "quantile", "limitk"][..]);
        let binop = prop::sample::select(
            &[
                "+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless", "atan2",
            ][..],
        );
        let grouping = prop::option::of((
            prop::sample::select(&["by", "without"][..]),
            prop::sample::select(&["", "instance", "le, instance", "__name__", "job"][..]),
        ))
        .prop_map(|g| g.map(|(k, l)| format!(" {k} ({l})")).unwrap_or_default());
        let matching = prop::option::of((
            prop::sample::select(&["on", "ignoring"][..]),
            prop::sample::select(&["", "instance", "le"][..]),
            prop::sample::select(&["", " group_left", " group_right", " group_left(le)"][..]),
        ))
        .prop_map(|m| m.map(|(k, l, g)| format!(" {k}({l}){g}")).unwrap_or_default());
        prop_oneof![
            (range_fn, rangeish.clone()).prop_map(|(f, r)| format!("{f}({r})")),
            (number(), rangeish.clone()).prop_map(|(q, r)| format!("quantile_over_time({q}, {r})")),
            (rangeish.clone(), number()).prop_map(|(r, n)| format!("predict_linear({r}, {n})")),
            (inst_fn, inner.clone()).prop_map(|(f, e)| if f == "-" {
                format!("-({e})")
            } else {
                format!("{f}({e})")
            }),
            (agg, grouping.clone(), inner.clone()).prop_map(|(a, g, e)| format!("{a}{g} ({e})")),
            (agg_param, grouping.clone(), number(), inner.clone())
                .prop_map(|(a, g, n, e)| format!("{a}{g} ({n}, {e})")),
            (grouping, inner.clone()).prop_map(|(g, e)| format!("count_values{g} (\"le\", {e})")),
            (inner.clone(), binop, prop::bool::ANY, matching, inner.clone())
                .prop_map(|(a, op, b, m, c)| format!("({a}) {op}{}{m} ({c})", if b { " bool" } else { "" })),
            (number(), inner.clone()).prop_map(|(q, e)| format!("histogram_quantile({q}, {e})")),
            (inner.clone(), number(), number()).prop_map(|(e, a, b)| format!("clamp({e}, {a}, {b})")),
            inner
                .clone()
                .prop_map(|e| format!("label_replace({e}, \"dst\", \"$1-$2\", \"instance\", \"(.*)\")")),
            inner
                .clone()
                .prop_map(|e| format!("label_join({e}, \"le\", \",\", \"instance\", \"__name__\")")),
            selector().prop_flat_map(modifiers),
            inner.prop_map(|e| format!("({e})")),
        ]
    })
}

/// Runs `strategy` through `check` (PROPTEST_CASES cases, default 256)
/// over one store; fails with proptest's minimal failing input.
fn run_fuzz(strategy: impl Strategy<Value = String>) {
    let st = store();
    let cfg = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(cfg);
    if let Err(e) = runner.run(&strategy, |q| check(&st, &q).map_err(TestCaseError::fail)) {
        panic!("{e}");
    }
}

#[test]
fn fuzz_token_soup() {
    run_fuzz(token_soup());
}

#[test]
fn fuzz_structured() {
    run_fuzz(expr());
}

/// Arbitrary text: the parser and the error-position code must never
/// panic on it.
#[test]
fn fuzz_arbitrary_text() {
    run_fuzz("\\PC{0,40}");
}

/// Share of generated inputs that parse (the fuzzers should mostly reach
/// the evaluator): at least half of the structured ones must.
#[test]
fn fuzz_generators_reach_the_evaluator() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut ok = (0, 0);
    let verbose = std::env::var("NGXPROBE_FUZZ_VERBOSE").is_ok();
    for _ in 0..300 {
        let s = expr().new_tree(&mut runner).unwrap().current();
        let t = token_soup().new_tree(&mut runner).unwrap().current();
        ok.0 += usize::from(parse(&s).is_ok());
        ok.1 += usize::from(parse(&t).is_ok());
        if verbose {
            println!("{:?} {s}", parse(&s).err());
        }
    }
    println!(
        "fuzz generators: structured {}/300 parse, token soup {}/300 parse",
        ok.0, ok.1
    );
    assert!(
        ok.0 >= 150,
        "structured generator mostly produces unparseable input: {}/300",
        ok.0
    );
}
