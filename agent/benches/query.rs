//! Query benchmark (`cargo xtask bench query`, or
//! `AYA_BUILD_SKIP=1 cargo bench -p ngxprobe --bench query`): query latency
//! of ngxprobe vs Prometheus on the same data, side by side in one run.
//!
//! Data: `bench_requests_total` for 100 series (10 `group`s), one sample
//! every 15 s ± 2 s, QUERY_BENCH_HOURS (default 25) hours ending about an
//! hour ago, imported into Debian's Prometheus 2.42 with promtool and
//! appended to an ngxprobe store. Both are queried over HTTP
//! (`/api/v1/query_range`): Prometheus as a process (the e2e harness's
//! [`ngxprobe_e2e::prometheus`]), ngxprobe's `api_router` in-process over the
//! store (a hyper server on 127.0.0.1, same request path as the agent). Each
//! query runs once per engine to warm up (both must give the same shape of
//! answer), then QUERY_BENCH_RUNS (default 7, at least 5) interleaved rounds
//! (engine order alternating); the table shows medians and the ratio
//! ngxprobe / Prometheus.
//!
//! QUERY_BENCH_BREAKDOWN=1 instead shows where ngxprobe's time goes for the
//! same queries (store select, evaluation, JSON), in-process, without
//! Prometheus.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ngxprobe::{
    compat::PromDuration,
    query::{
        QueryOptions,
        api::{api_router, result_body},
        range_query,
    },
    series::{Labels, MatchOp, Matcher, ReadBudget, Selection, SeriesReader, SeriesWriter},
    store::{StorageConfig, Store, WalFsync},
};
use ngxprobe_e2e::{
    clients::http_get,
    prometheus::{
        OmFamily, OmSeries, Prometheus, Rng, api_get, api_path, om_time, promtool_import, require_tools, scrape_times,
        secs, write_openmetrics,
    },
    util::TempDir,
};

fn main() -> Result<()> {
    let env = |k: &str, d: i64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let hours = env("QUERY_BENCH_HOURS", 25).max(2);
    if std::env::var_os("QUERY_BENCH_BREAKDOWN").is_some_and(|v| !v.is_empty() && v != "0") {
        breakdown(hours)
    } else {
        vs_prometheus(hours, env("QUERY_BENCH_RUNS", 7).max(5) as usize)
    }
}

/// `n_series` counters `bench_requests_total{instance="iNNN", group="gN"}`
/// (10 groups), one sample every 15 s ± 2 s for `hours`.
fn bench_dataset(start_s: i64, hours: i64, n_series: usize) -> Vec<OmFamily> {
    let mut rng = Rng::new(0xbe9c_4a11);
    let n = (hours * 3600 / 15) as usize;
    let series = (0..n_series)
        .map(|i| {
            let times = scrape_times(&mut rng, start_s, n, 13, 17);
            let mut v = 0.0;
            let samples = times
                .into_iter()
                .map(|s| {
                    v += rng.below(100) as f64;
                    (om_time(s).1, v)
                })
                .collect();
            let labels = [
                ("__name__", "bench_requests_total".to_string()),
                ("instance", format!("i{i:03}")),
                ("group", format!("g{}", i % 10)),
                ("job", "bench".to_string()),
            ];
            OmSeries {
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                samples,
            }
        })
        .collect();
    vec![OmFamily {
        name: "bench_requests_total".into(),
        kind: "counter",
        series,
    }]
}

/// ngxprobe's store in `dir`: no fsync, retention long enough for any test data.
fn open_store(dir: &std::path::Path) -> Result<Arc<Store>> {
    let cfg = StorageConfig {
        path: dir.to_path_buf(),
        retention: PromDuration::from_secs(100 * 365 * 86_400),
        wal_fsync: WalFsync::Never,
        ..StorageConfig::default()
    };
    Ok(Arc::new(Store::open(&cfg).context("opening the store")?))
}

/// Appends every sample (in time order per series); returns how many.
fn load(store: &Store, fams: &[OmFamily]) -> Result<usize> {
    let mut n = 0;
    for s in fams.iter().flat_map(|f| &f.series) {
        let labels = Labels::new(s.labels.iter().cloned());
        for &(t, v) in &s.samples {
            store
                .append(&labels, t, v)
                .with_context(|| format!("the store refused {labels} @{t}"))?;
        }
        n += s.samples.len();
    }
    store.flush();
    Ok(n)
}

/// ngxprobe's API served on 127.0.0.1 by a 2-thread tokio runtime (the
/// agent's request path: hyper → axum → `api_router`); stopped on drop.
struct ApiServer {
    addr: SocketAddr,
    // Drop order: the shutdown signal, then the runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
    _rt: tokio::runtime::Runtime,
}

impl ApiServer {
    fn start(reader: Arc<dyn SeriesReader>) -> Result<ApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = api_router(reader, prometheus_limits());
        rt.spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                eprintln!("ngxprobe API server: {e}");
            }
        });
        Ok(ApiServer {
            addr,
            _stop: stop,
            _rt: rt,
        })
    }
}

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

/// The engine with Prometheus's default limits (50 M samples, 2 m), as the
/// Prometheus it is compared with: the benchmark measures speed, and the
/// 100-series 24 h queries load more than the agent's default
/// `query.max_samples` allows.
fn prometheus_limits() -> QueryOptions {
    QueryOptions {
        max_samples: 50_000_000,
        timeout: Duration::from_secs(120),
        ..QueryOptions::default()
    }
}

/// (series, points) of a matrix answer; an error answer is an error.
fn shape(who: &str, q: &str, v: &serde_json::Value) -> Result<(usize, usize)> {
    ensure!(v["status"] == "success", "{who}: {q}: {v}");
    let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok((
        r.len(),
        r.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum(),
    ))
}

/// Start of the data: whole hours, ending about an hour ago.
fn data_start(hours: i64) -> i64 {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    (now_s / 3600 - hours - 1) * 3600
}

fn vs_prometheus(hours: i64, runs: usize) -> Result<()> {
    let (prometheus, promtool) = require_tools()?;
    let start_s = data_start(hours);
    let fams = bench_dataset(start_s, hours, 100);
    let t = Instant::now();
    let work = TempDir::new("query-bench")?;
    let om = work.path().join("data.om.txt");
    write_openmetrics(&fams, &om)?;
    let data = work.path().join("prom-data");
    std::fs::create_dir_all(&data)?;
    promtool_import(&promtool, &om, &data)?;
    eprintln!("promtool import: {:.1?}", t.elapsed());
    let store_dir = work.path().join("ngxprobe-data");
    let store = open_store(&store_dir)?;
    let t2 = Instant::now();
    let samples = load(&store, &fams)?;
    eprintln!("ngxprobe store load: {samples} samples in {:.1?}", t2.elapsed());
    let prom = Prometheus::serve_blocks(&prometheus, &data)?;
    let ours = ApiServer::start(store.clone())?;
    let series: usize = fams.iter().map(|f| f.series.len()).sum();
    eprintln!("setup ({series} series, {samples} samples): {:.1?}", t.elapsed());

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
    let engines = [("ngxprobe", ours.addr), ("prometheus", prom.addr())];
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
        let mut shapes = vec![];
        for (who, addr) in engines {
            shapes.push(shape(
                who,
                q,
                &api_get(addr, "/api/v1/query_range", &params(q, *span))?,
            )?);
        }
        ensure!(
            shapes[0] == shapes[1],
            "{name}: ngxprobe vs prometheus (series, points): {shapes:?}"
        );
    }
    let mut times: Vec<[Vec<Duration>; 2]> = cases.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..runs {
        for (ci, (_, q, span)) in cases.iter().enumerate() {
            let path = api_path("/api/v1/query_range", &params(q, *span));
            for k in 0..2 {
                let e = (k + round) % 2; // alternate who goes first
                // Timed: request to last byte of the answer. Parsing the
                // (same-sized) JSON on the client is left out of the timing.
                let t = Instant::now();
                let (status, body) = http_get(engines[e].1, &path)?;
                times[ci][e].push(t.elapsed());
                if status != 200 || !body.starts_with(br#"{"status":"success""#) {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    bail!("{}: status {status}: {text}", engines[e].0);
                }
            }
        }
    }
    println!();
    println!("Query latency, median of {runs} interleaved runs (HTTP, step 15 s, {series} series, {samples} samples):");
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
    Ok(())
}

/// Where ngxprobe's time goes for the benchmark queries: store select,
/// evaluation, JSON, in-process (median of 7 runs each).
fn breakdown(hours: i64) -> Result<()> {
    let start_s = data_start(hours);
    let fams = bench_dataset(start_s, hours, 100);
    let dir = TempDir::new("query-bench-breakdown")?;
    let store = open_store(dir.path())?;
    load(&store, &fams)?;
    let st: &Store = &store;
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
    let opts = prometheus_limits();
    println!("| part | 1 h | 24 h |");
    println!("|---|---:|---:|");
    for (what, q) in [
        ("100 series", "rate(bench_requests_total[1m])"),
        ("1 series", r#"rate(bench_requests_total{instance="i000"}[1m])"#),
    ] {
        let mut m = vec![Matcher::new(MatchOp::Equal, "__name__", "bench_requests_total")?];
        if what == "1 series" {
            m.push(Matcher::new(MatchOp::Equal, "instance", "i000")?);
        }
        let row = |part: &str, f: &dyn Fn(i64)| {
            let a = med(&mut || f(3_600_000));
            let b = med(&mut || f(24 * 3_600_000));
            println!("| {what}: {part} | {} | {} |", ms(a), ms(b));
        };
        row("store select", &|span| {
            std::hint::black_box(
                st.select(&Selection::new(
                    &m,
                    end - span - 60_000 + 1,
                    end,
                    &ReadBudget::unlimited(),
                ))
                .expect("select"),
            );
        });
        row("select + evaluate", &|span| {
            std::hint::black_box(range_query(st, q, end - span, end, 15_000, &opts).expect("query"));
        });
        row("select + evaluate + JSON", &|span| {
            let r = range_query(st, q, end - span, end, 15_000, &opts).expect("query");
            std::hint::black_box(result_body(&r, 0));
        });
    }
    Ok(())
}
