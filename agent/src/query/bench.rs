//! `cargo xtask bench query`: query latency of ngxprobe vs Prometheus on the
//! same data, side by side in one run (an ignored test, run in release by
//! xtask/src/bench_query.rs).
//!
//! Data: `bench_requests_total` for 100 series (10 `group`s), one sample
//! every 15 s ± 2 s, QUERY_BENCH_HOURS (default 25) hours ending about an
//! hour ago, imported into Prometheus with promtool and appended to an
//! ngxprobe store. Both are queried over HTTP (`/api/v1/query_range`):
//! Prometheus as a process, ngxprobe's `api_router` in-process over the
//! store (a hyper server on 127.0.0.1, same request path as the agent).
//! Each query runs once per engine to warm up, then QUERY_BENCH_RUNS
//! (default 7, at least 5) interleaved rounds (engine order alternating);
//! the table shows medians and the ratio ngxprobe / Prometheus.
use std::time::{Duration, Instant};

use super::{
    cli::http_get,
    promharness::{Pair, api_get, bench_dataset, secs},
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// (series, points) of a matrix answer; panics on an error answer.
fn shape(who: &str, q: &str, v: &serde_json::Value) -> (usize, usize) {
    assert_eq!(v["status"], "success", "{who}: {q}: {v}");
    let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
    (
        r.len(),
        r.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum(),
    )
}

#[test]
#[ignore = "benchmark: cargo xtask bench query"]
fn bench_query_vs_prometheus() {
    let env = |k: &str, d: i64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let runs = env("QUERY_BENCH_RUNS", 7).max(5) as usize;
    let hours = env("QUERY_BENCH_HOURS", 25).max(2);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start_s = (now_s / 3600 - hours - 1) * 3600;
    let fams = bench_dataset(start_s, hours, 100);
    let t = Instant::now();
    let pair = Pair::new("bench", &fams);
    eprintln!(
        "setup ({} series, {} samples): {:.1?}",
        pair.series,
        pair.samples,
        t.elapsed()
    );

    // Query windows end 30 min before the data does.
    let end = (start_s + hours * 3600 - 1800) * 1000;
    let h24 = (24 * 3600 * 1000).min(end - start_s * 1000 - 600_000);
    let one = r#"rate(bench_requests_total{instance="i000"}[1m])"#;
    let all = "rate(bench_requests_total[1m])";
    let sum = "sum by (group) (rate(bench_requests_total[1m]))";
    let cases: Vec<(String, &str, i64)> = vec![
        ("rate(x[1m]), 1 series, 1 h".into(), one, 3_600_000),
        (format!("rate(x[1m]), 1 series, {} h", h24 / 3_600_000), one, h24),
        ("rate(x[1m]), 100 series, 1 h".into(), all, 3_600_000),
        (format!("rate(x[1m]), 100 series, {} h", h24 / 3_600_000), all, h24),
        ("sum by (group) (rate(x[1m])), 100 series, 1 h".into(), sum, 3_600_000),
        (
            format!("sum by (group) (rate(x[1m])), 100 series, {} h", h24 / 3_600_000),
            sum,
            h24,
        ),
    ];
    let engines = [
        ("ngxprobe", pair.ours.addr.clone()),
        ("prometheus", pair.prom.addr.clone()),
    ];
    let params = |q: &str, span: i64| {
        vec![
            ("query", q.to_string()),
            ("start", secs(end - span)),
            ("end", secs(end)),
            ("step", "15".to_string()),
        ]
    };
    // Warm-up, and both engines must give the same shape of answer.
    for (name, q, span) in &cases {
        let shapes: Vec<(usize, usize)> = engines
            .iter()
            .map(|(who, addr)| {
                shape(
                    who,
                    q,
                    &api_get(addr, "/api/v1/query_range", &params(q, *span)).unwrap(),
                )
            })
            .collect();
        assert_eq!(shapes[0], shapes[1], "{name}: ngxprobe vs prometheus (series, points)");
    }
    let mut times: Vec<[Vec<Duration>; 2]> = cases.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..runs {
        for (ci, (_, q, span)) in cases.iter().enumerate() {
            let path = format!(
                "/api/v1/query_range?{}",
                serde_urlencoded::to_string(params(q, *span)).unwrap()
            );
            for k in 0..2 {
                let e = (k + round) % 2; // alternate who goes first
                // Timed: request to last byte of the answer. Parsing the
                // (same-sized) JSON on the client is left out of the timing.
                let t = Instant::now();
                let body = http_get(&engines[e].1, &path).unwrap();
                times[ci][e].push(t.elapsed());
                assert!(
                    body.starts_with(r#"{"status":"success""#),
                    "{}: {}",
                    engines[e].0,
                    &body[..body.len().min(300)]
                );
            }
        }
    }
    println!();
    println!(
        "Query latency, median of {runs} interleaved runs (HTTP, step 15 s, {} series, {} samples):",
        pair.series, pair.samples
    );
    println!();
    println!("| query | ngxprobe ms | Prometheus 2.42 ms | ngxprobe / Prometheus |");
    println!("|---|---:|---:|---:|");
    let mut lost = vec![];
    for (ci, (name, _, _)) in cases.iter().enumerate() {
        let (o, p) = (median(times[ci][0].clone()), median(times[ci][1].clone()));
        let ratio = o.as_secs_f64() / p.as_secs_f64();
        println!("| {name} | {} | {} | {ratio:.2} |", ms(o), ms(p));
        if ratio > 1.0 {
            lost.push(name.clone());
        }
    }
    println!();
    if lost.is_empty() {
        println!("ngxprobe <= Prometheus on every query.");
    } else {
        println!("ngxprobe slower than Prometheus on: {}", lost.join("; "));
    }
}

/// Where ngxprobe's time goes for the benchmark queries (no Prometheus
/// needed): store select, evaluation, JSON, in-process. Run with
/// `cargo test --release -p ngxprobe query::bench::bench_query_breakdown -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: breakdown of ngxprobe's query time"]
fn bench_query_breakdown() {
    use super::{
        QueryOptions,
        api::result_body,
        promharness::{TempStore, load_store},
        range_query,
    };
    use crate::series::{MatchOp, Matcher, SeriesReader};
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let hours = 25;
    let start_s = (now_s / 3600 - hours - 1) * 3600;
    let fams = bench_dataset(start_s, hours, 100);
    let store = TempStore::new("bench-breakdown");
    load_store(&store.store, &fams);
    let end = (start_s + hours * 3600 - 1800) * 1000;
    let runs = 7;
    let med = |f: &mut dyn FnMut()| {
        let v: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        median(v)
    };
    println!("| part | 1 h | 24 h |");
    println!("|---|---:|---:|");
    for (what, q) in [
        ("100 series", "rate(bench_requests_total[1m])"),
        ("1 series", r#"rate(bench_requests_total{instance="i000"}[1m])"#),
    ] {
        let m = if what == "1 series" {
            vec![
                Matcher::new(MatchOp::Equal, "__name__", "bench_requests_total").unwrap(),
                Matcher::new(MatchOp::Equal, "instance", "i000").unwrap(),
            ]
        } else {
            vec![Matcher::new(MatchOp::Equal, "__name__", "bench_requests_total").unwrap()]
        };
        let st = &store.store;
        let row = |part: &str, f: &dyn Fn(i64)| {
            let a = med(&mut || f(3_600_000));
            let b = med(&mut || f(24 * 3_600_000));
            println!("| {what}: {part} | {} | {} |", ms(a), ms(b));
        };
        row("store select", &|span| {
            std::hint::black_box(st.select(&m, end - span - 60_000 + 1, end).unwrap());
        });
        row("select + evaluate", &|span| {
            std::hint::black_box(range_query(st, q, end - span, end, 15_000, &QueryOptions::default()).unwrap());
        });
        row("select + evaluate + JSON", &|span| {
            let r = range_query(st, q, end - span, end, 15_000, &QueryOptions::default()).unwrap();
            std::hint::black_box(result_body(&r, 0));
        });
    }
}
