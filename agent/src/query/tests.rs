//! Conformance: runs every promqltest file, prints per-file counts and fails
//! if a case listed in conformance-baseline.txt no longer passes.
use std::path::PathBuf;

use ngxprobe_e2e::util::{in_ci, skip_or_fail};

use super::{promqltest, testing::SwapStore};

fn shared_dir() -> Option<PathBuf> {
    let mut cands = vec![];
    if let Ok(p) = std::env::var("NGXPROBE_SHARED") {
        cands.push(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    cands.push(manifest.join("../../shared"));
    cands.push(manifest.join("../shared"));
    cands.push(PathBuf::from("/work/shared"));
    cands
        .into_iter()
        .map(|p| p.join("conformance/promqltest"))
        .find(|p| p.is_dir())
}

const BASELINE: &str = include_str!("conformance-baseline.txt");

/// Runs every promqltest file over the real store (a fresh temporary data
/// directory per file and per `clear`), loading samples through
/// `SeriesWriter::append`.
#[test]
fn promql_conformance() {
    let Some(dir) = shared_dir() else {
        skip_or_fail(
            "promqltest: conformance data (shared/conformance/promqltest) not found: run from a checkout with \
             ../shared beside it, or set NGXPROBE_SHARED=/path/to/shared",
        );
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty() || !in_ci(),
        "promqltest: no .test files in {}",
        dir.display()
    );
    let mut passing = std::collections::BTreeSet::new();
    let mut total = (0, 0, 0);
    let mut refused_total = 0;
    let verbose = std::env::var("NGXPROBE_CONFORMANCE_VERBOSE").is_ok();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let store = SwapStore::new("promqltest");
        let rep = promqltest::run_file(&text, &store, &mut |op| match op {
            promqltest::LoadOp::Clear => store.clear(),
            promqltest::LoadOp::Sample(l, t, v) => store.add(l, t, v),
        });
        let refused = store.take_refused();
        let mut by_rule = std::collections::BTreeMap::new();
        for (_, r) in &rep.skipped {
            *by_rule.entry(*r).or_insert(0) += 1;
        }
        println!(
            "promqltest {name}: {} passed, {} failed, {} skipped {:?}{}",
            rep.passed.len(),
            rep.failed.len(),
            rep.skipped.len(),
            by_rule,
            if refused.is_empty() {
                String::new()
            } else {
                format!(", {} samples refused by the store", refused.len())
            }
        );
        for r in refused.iter().take(if verbose { usize::MAX } else { 3 }) {
            println!("  REFUSED {name}: {} @{}: {}", r.labels, r.t, r.err);
        }
        refused_total += refused.len();
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
    println!(
        "promqltest total (real store): {} passed, {} failed, {} skipped; {} samples refused by the store",
        total.0, total.1, total.2, refused_total
    );
    if let Ok(target) = std::env::var("NGXPROBE_UPDATE_BASELINE") {
        assert!(
            !in_ci(),
            "NGXPROBE_UPDATE_BASELINE is set under CI: rewriting conformance-baseline.txt there would make the \
             regression check pass whatever regressed; regenerate the baseline locally and commit it"
        );
        let path = if target.ends_with(".txt") {
            PathBuf::from(target)
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/query/conformance-baseline.txt")
        };
        let body: String = passing.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(
            path,
            format!("# promqltest cases that pass; regenerate with NGXPROBE_UPDATE_BASELINE=1\n{body}"),
        )
        .unwrap();
        return;
    }
    let regressed: Vec<&str> = BASELINE
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !passing.contains(*l))
        .collect();
    assert!(regressed.is_empty(), "conformance regressions: {regressed:?}");
}

mod api_tests {
    use std::sync::Arc;

    use crate::{
        query::{QueryOptions, api::api_router, cli::http_get},
        series::Labels,
    };

    fn serve() -> String {
        let store = Arc::new(crate::series::MemStore::new());
        let l = Labels::new([
            ("__name__".into(), "nginx_http_requests_total".into()),
            ("instance".into(), "a".into()),
        ]);
        for i in 0..100 {
            store.insert(&l, i * 15_000, i as f64 * 10.0);
        }
        let app = api_router(store, QueryOptions::default());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(lis.local_addr().unwrap().to_string()).unwrap();
                axum::serve(lis, app).await.unwrap();
            });
        });
        rx.recv().unwrap()
    }

    #[test]
    fn a_dead_agent_is_an_error_naming_it_not_a_hang() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let t = std::time::Instant::now();
        let e = http_get(&addr, "/api/v1/query?query=up").unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            e.starts_with(&format!("connect {addr}: ")) && e.contains("refused"),
            "{e}"
        );
    }

    #[test]
    fn query_api_shapes_and_errors() {
        let a = serve();
        let r: serde_json::Value = serde_json::from_str(
            &http_get(
                &a,
                "/api/v1/query?query=sum%20by%20(instance)%20(rate(nginx_http_requests_total%5B1m%5D))&time=600",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["data"]["resultType"], "vector");
        assert_eq!(r["data"]["result"][0]["metric"]["instance"], "a");
        assert_eq!(r["data"]["result"][0]["value"][1], "0.6666666666666666");
        let r: serde_json::Value =
            serde_json::from_str(&http_get(&a, "/api/v1/query_range?query=1&start=0&end=60&step=15").unwrap()).unwrap();
        assert_eq!(r["data"]["resultType"], "matrix", "{r}");
        assert_eq!(r["data"]["result"][0]["values"].as_array().unwrap().len(), 5);
        let r: serde_json::Value = serde_json::from_str(&http_get(&a, "/api/v1/query?query=sum(").unwrap()).unwrap();
        assert_eq!(r["errorType"], "bad_data", "{r}");
        let r: serde_json::Value =
            serde_json::from_str(&http_get(&a, "/api/v1/query_range?query=1&start=0&end=100000&step=1").unwrap())
                .unwrap();
        assert!(r["error"].as_str().unwrap().contains("11,000 points"), "{r}");
        let r: serde_json::Value =
            serde_json::from_str(&http_get(&a, "/api/v1/label/instance/values").unwrap()).unwrap();
        assert_eq!(r["data"][0], "a", "{r}");
        let r: serde_json::Value =
            serde_json::from_str(&http_get(&a, "/api/v1/series?match%5B%5D=nginx_http_requests_total").unwrap())
                .unwrap();
        assert_eq!(r["data"][0]["instance"], "a", "{r}");
    }
}

/// Every prefix of a set of hostile queries must parse-or-fail and evaluate
/// without panicking (a cheap deterministic stand-in for fuzzing).
#[test]
fn no_panic_on_truncated_and_hostile_queries() {
    use crate::series::Labels;
    let store = crate::series::MemStore::new();
    let l = Labels::new([("__name__".into(), "m".into()), ("le".into(), "+Inf".into())]);
    for i in 0..20 {
        store.insert(&l, i * 15_000, i as f64);
    }
    let qs = [
        r#"sum by (le) (rate(m{le=~"(.*"}[1m:15s] offset -1m @ end()))"#,
        r#"histogram_quantile(0.9, sum by (le) (rate(m[5m]))) / on() group_left vector(0)"#,
        r#"topk(-1e400, m) or bottomk(NaN, m) unless limitk(1e30, m)"#,
        r#"label_replace(m, "x", "$1$2${9}", "le", "(.*)") ^ quantile_over_time(2, m[1h])"#,
        r#"count_values("le", m) * on(le) group_right(__name__) m"#,
        r#"predict_linear(m[1d:1s], 1e308) + deriv(m[0s]) - timestamp(-m)"#,
        r#"absent_over_time(nonexistent{a!~".*"}[1y]) @ -1e15"#,
        r#"day_of_week(vector(1e300)) + year(vector(-Inf)) + month(vector(NaN))"#,
    ];
    for q in qs {
        for (i, _) in q.char_indices().chain(std::iter::once((q.len(), ' '))) {
            let sub = &q[..i];
            let r = std::panic::catch_unwind(|| {
                let _ = super::instant_query(&store, sub, 300_000, &super::QueryOptions::default());
                let _ = super::range_query(&store, sub, 0, 300_000, 15_000, &super::QueryOptions::default());
            });
            assert!(r.is_ok(), "panic on {sub:?}");
        }
    }
}

/// Positions and texts as Prometheus 2.42 answers these (checked by hand
/// against `prometheus` on 127.0.0.1); the rest of the message may differ.
#[test]
fn parse_error_positions_like_prometheus() {
    let cases = [
        ("sum(", "1:5: parse error: unclosed left parenthesis"),
        ("sum(rate(x[5m])", "1:16: parse error: unclosed left parenthesis"),
        ("x{a=\"b\"", "1:8: parse error: unexpected end of input inside braces"),
        ("x{a=}", "1:5: parse error: unexpected \"}\""),
        ("x{=~\"b\"}", "1:3: parse error: unexpected <op:=~>"),
        ("1 +", "1:4: parse error: unexpected end of input"),
        ("foo bar", "1:5: parse error: unexpected identifier \"bar\""),
        ("x[5m", "1:5: parse error: unclosed left bracket"),
        (
            "x offset",
            "1:9: parse error: unexpected end of input in offset, expected duration",
        ),
        ("sum by a (x)", "1:8: parse error: unexpected identifier \"a\""),
        (
            "topk(x)",
            "1:1: parse error: wrong number of arguments for aggregate expression provided, expected 2, got 1",
        ),
        ("foo(x)", "1:1: parse error: unknown function with name \"foo\""),
        (
            "rate(x)",
            "1:6: parse error: expected type range vector in call to function \"rate\", got instant vector",
        ),
        ("1 == bool 2 3", "1:13: parse error: unexpected number \"3\""),
        ("x ^^ 2", "1:4: parse error: unexpected <op:^>"),
        (
            "label_replace(x, \"a\")",
            "1:1: parse error: expected 5 argument(s) in call to \"label_replace\", got 2",
        ),
        (" sum(x) by", "1:11: parse error: unexpected end of input"),
        ("sum(x)\n  by", "2:5: parse error: unexpected end of input"),
    ];
    let mut bad = vec![];
    for (q, want) in cases {
        match super::parse(q) {
            Err(super::QueryError::BadData(m)) if m.starts_with(want) => {}
            other => bad.push(format!("{q:?}: want {want:?}, got {other:?}")),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The hand-written JSON of query answers: valid, escaped, Prometheus's formats.
#[test]
fn result_body_json_shapes_and_escapes() {
    use super::{QueryResult, RangeSeries, api::result_body};
    use crate::series::Labels;
    let l = Labels::new([("__name__".into(), "m".into()), ("a".into(), "q\"\\\n\u{1}é".into())]);
    let r = QueryResult::Matrix(vec![RangeSeries {
        labels: l.clone(),
        samples: vec![
            (-1500, f64::NAN),
            (1500, 1.5),
            (2000, f64::INFINITY),
            (3010, -0.0),
            (4100, 1e300),
            (5000, f64::NEG_INFINITY),
        ],
    }]);
    let v: serde_json::Value = serde_json::from_str(&result_body(&r, 0)).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "matrix");
    let s = &v["data"]["result"][0];
    assert_eq!(s["metric"]["a"], "q\"\\\n\u{1}é");
    let pts: Vec<(f64, String)> = s["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect();
    let want = [
        (-1.5, "NaN"),
        (1.5, "1.5"),
        (2.0, "+Inf"),
        (3.01, "-0"),
        (4.1, &format!("1{}", "0".repeat(300))[..]),
        (5.0, "-Inf"),
    ];
    assert_eq!(pts.len(), want.len());
    for ((t, v), (wt, wv)) in pts.iter().zip(want) {
        assert_eq!((*t, v.as_str()), (wt, wv));
    }
    let body = result_body(&QueryResult::Vector(vec![(l, 1_700_000_000_000, 2.0)]), 0);
    assert!(body.contains(r#""value":[1700000000,"2"]"#), "{body}");
    let body = result_body(&QueryResult::Scalar(1_700_000_000_250, 0.1), 0);
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.25,"0.1"]}}"#
    );
    let body = result_body(&QueryResult::String(1000, "x\"y".into()), 0);
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"string","result":[1,"x\"y"]}}"#
    );
}

proptest::proptest! {
    /// Floats are spelled like Go's FormatFloat(v, 'f', -1, 64): plain
    /// decimal, shortest digits that round-trip.
    #[test]
    fn format_value_round_trips_without_exponent(bits in proptest::prelude::any::<u64>(), small in -1e7f64..1e7, k in 0u32..40) {
        for v in [f64::from_bits(bits), small, small / 10f64.powi(k as i32), (small * 1000.0).round(), 10f64.powi(k as i32 - 20)] {
            let s = crate::compat::float::format_f(v);
            if v.is_nan() {
                proptest::prop_assert_eq!(s.as_str(), "NaN");
                continue;
            }
            proptest::prop_assert!(!s.contains('e') && !s.ends_with(".0"), "{:?} -> {}", v, s);
            let back: f64 = s.replace("+Inf", "inf").replace("-Inf", "-inf").parse().unwrap();
            proptest::prop_assert_eq!(back.to_bits(), v.to_bits(), "{:?} -> {}", v, s);
            // Never more significant digits than Rust's shortest Display.
            let sig = |x: &str| x.trim_start_matches('-').replace('.', "").trim_matches('0').len();
            proptest::prop_assert!(sig(&s) <= sig(&format!("{v}")), "{:?} -> {}", v, s);
        }
    }
}

/// Spellings checked against Prometheus 2.42's API.
#[test]
fn format_value_like_prometheus() {
    use crate::compat::float::format_f as f;
    assert_eq!(f(-1_519_218_211_223_713.3), "-1519218211223713.2");
    assert_eq!(f(2.5e-7), "0.00000025");
    assert_eq!(f(123456789012345678.0), "123456789012345680");
    assert_eq!(f(0.3), "0.3");
    assert_eq!(f(2.0), "2");
    assert_eq!(f(-0.0), "-0");
    assert_eq!(f(1e300), format!("1{}", "0".repeat(300)));
    assert_eq!(f(5e-324), format!("0.{}5", "0".repeat(323)));
    assert_eq!(f(f64::INFINITY), "+Inf");
}
