//! Hostile queries against a real agent watching a real nginx under wrk load:
//! 60,000 nested parentheses (POST and GET), malformed times and durations,
//! `/api/v1/series` over the whole retention, and 100 concurrent expensive
//! queries. Throughout, the agent stays up, /metrics answers within 1 s, its
//! peak RSS stays under the DaemonSet's memory limit, nginx's counters stay
//! exact against stub_status, and every refusal is a clear error (JSON with
//! an `errorType`) and a counter.
//!
//! Prints the figures: /metrics latency under attack, RSS peak, how the 100
//! concurrent queries were answered.
use anyhow::{Context, Result, bail};
use ngxprobe_e2e::agent::url_encode;
use ngxprobe_e2e::clients::{WrkRun, connect, read_response_keeping};
use ngxprobe_e2e::measure;
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::util::{Poll, percentile, poll, rss_kib};
use ngxprobe_e2e::{Agent, AgentOptions, Nginx, NginxOptions, guard};
use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// deploy/daemonset.yaml's `limits.memory`.
const RSS_BUDGET_KIB: u64 = 256 * 1024;
/// Per query, queue wait included (`query.timeout`; the default is 30 s).
const QUERY_TIMEOUT: Duration = Duration::from_secs(8);
const CONCURRENT: usize = 100;
const DEEP: usize = 60_000;
/// Expensive queries, sent in turn: a subquery of a subquery (a day of 1 s
/// points per outer step), a series at 1 s over 30 days (millions of
/// samples), and every stored sample of every series over 30 days.
const EXPENSIVE: [&str; 3] = [
    "sum_over_time(count_over_time(vector(1)[1d:1s])[1d:1s])",
    "count_over_time(nginx_http_requests_total[30d:1s])",
    "sort_desc(last_over_time({__name__=~\".+\"}[30d]))",
];
/// Rounds of CONCURRENT queries are sent until the attack lasted that long.
const ATTACK: Duration = Duration::from_secs(10);

fn config() -> String {
    format!("query:\n  timeout: {}s\n", QUERY_TIMEOUT.as_secs())
}

/// Status, JSON body (or `Null` when not JSON) and time to answer of one
/// request sent raw on a new connection.
fn send(addr: SocketAddr, method: &str, target: &str, body: &str) -> Result<(u16, serde_json::Value, Duration)> {
    let start = Instant::now();
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(QUERY_TIMEOUT + Duration::from_secs(20)))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let resp = read_response_keeping(&mut BufReader::new(s), false, 1 << 20)
        .with_context(|| format!("{method} {:.80}", target))?;
    let json = serde_json::from_slice(&resp.body_head).unwrap_or(serde_json::Value::Null);
    Ok((resp.status, json, start.elapsed()))
}

/// A refusal as Prometheus's API gives it: the status, `"status":"error"`
/// and the expected `errorType`.
fn assert_refused(what: &str, got: (u16, serde_json::Value, Duration), status: &[u16], error_type: &str) {
    let (code, json, _) = got;
    assert!(
        status.contains(&code) && json["status"] == "error" && json["errorType"] == error_type,
        "{what}: expected {status:?} {error_type}, got {code} {json}"
    );
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error message: {json}"
    );
}

fn total(scrape: &Scrape, name: &str) -> f64 {
    scrape.samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

/// Every refusal counted so far, by the query API and by the server.
fn refusals(scrape: &Scrape) -> f64 {
    total(scrape, "ngxprobe_query_refused_total") + total(scrape, "ngxprobe_http_requests_refused_total")
}

/// Scrapes /metrics every 100 ms until `stop`, failing on an answer that
/// is not 200 within 1 s, a dead agent or an RSS peak over the budget.
/// Returns the scrape times and the RSS peak (KiB).
fn watch(addr: SocketAddr, pid: i32, stop: Arc<AtomicBool>) -> Result<(Vec<Duration>, u64)> {
    let mut times = Vec::new();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let start = Instant::now();
        let got = ngxprobe_e2e::agent::scrape(addr).context("/metrics under attack")?;
        let took = start.elapsed();
        if took > Duration::from_secs(1) {
            bail!("/metrics took {took:?} under attack");
        }
        if got.samples.is_empty() {
            bail!("/metrics answered no samples under attack");
        }
        times.push(took);
        peak = peak.max(rss_kib(pid).1);
        if peak == 0 {
            bail!("the agent (pid {pid}) is gone");
        }
        if peak > RSS_BUDGET_KIB {
            bail!("RSS peak {} MiB over the budget", peak / 1024);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((times, peak))
}

#[test]
fn hostile_queries_are_refused_clearly_while_metrics_and_nginx_counters_hold() {
    let _g = guard("hostile_queries_are_refused_clearly_while_metrics_and_nginx_counters_hold");
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let mut agent = Agent::start_opts(&AgentOptions {
        config: Some(config()),
        ..Default::default()
    })
    .expect("start ngxprobe");
    agent.wait_instance_up(&conf).expect("agent sees nginx");
    let (addr, pid) = (agent.addr(), agent.pid());
    let base = measure::begin_one(&agent, &nginx, 0).expect("baseline");
    let load = Duration::from_secs(20);
    let wrk = WrkRun::spawn(
        &["-t1", "-c4", &format!("-d{}s", load.as_secs()), &nginx.url("/")],
        load,
    )
    .expect("start wrk");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || watch(addr, pid, stop))
    };

    // Deep nesting: refused before parsing, by the depth limit (POST) or by
    // the server's header limit (a 120 KB URL), never a stack overflow.
    let deep = format!("{}1{}", "(".repeat(DEEP), ")".repeat(DEEP));
    let post = send(addr, "POST", "/api/v1/query", &format!("query={deep}")).expect("deep POST");
    assert_refused("60k parentheses, POST", post, &[400], "bad_data");
    let get = send(addr, "GET", &format!("/api/v1/query?query={deep}"), "").expect("deep GET");
    assert!(matches!(get.0, 414 | 431), "60k parentheses, GET: {} {}", get.0, get.1);
    // Deep but short enough for the URL limit: the depth limit answers.
    let nested = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let get = send(addr, "GET", &format!("/api/v1/query?query={nested}"), "").expect("nested GET");
    assert_refused("5k parentheses, GET", get, &[400], "bad_data");

    // Malformed times, durations and steps: 400 bad_data naming the parameter.
    let up = url_encode("up");
    for (what, target) in [
        (
            "time with a non-ASCII offset",
            format!("/api/v1/query?query={up}&time=2026-01-01T00:00:00%2B0%C3%A4:00"),
        ),
        (
            "time far past float range",
            format!("/api/v1/query?query={up}&time=1e400"),
        ),
        ("NaN time", format!("/api/v1/query?query={up}&time=NaN")),
        (
            "duration with an unknown unit",
            format!("/api/v1/query?query={}", url_encode("rate(up[1x])")),
        ),
        (
            "negative step",
            format!("/api/v1/query_range?query={up}&start=0&end=10&step=-1"),
        ),
        (
            "step in bytes",
            format!("/api/v1/query_range?query={up}&start=0&end=10&step=1%FF"),
        ),
        (
            "(end - start) overflowing",
            format!("/api/v1/query_range?query={up}&start=-9.2e18&end=9.2e18&step=1"),
        ),
        (
            "too many points",
            format!("/api/v1/query_range?query={up}&start=0&end=100000&step=1"),
        ),
        ("timeout in years", format!("/api/v1/query?query={up}&timeout=1y1")),
    ] {
        let got = send(addr, "GET", &target, "").unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_refused(what, got, &[400], "bad_data");
    }

    // Series and label names over the whole retention: from the index.
    let everything = url_encode("{__name__=~\".+\"}");
    // The store samples the probes periodically: wait for its first series.
    let target = format!("/api/v1/series?match[]={everything}&start=0&end=9999999999");
    let (n, took) = poll(
        "series in the store",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let (code, series, took) = send(addr, "GET", &target, "")?;
            match series["data"].as_array().map(|a| a.len()) {
                Some(n) if code == 200 && n > 0 => Ok(Poll::Ready((n, took))),
                _ => Ok(Poll::Pending(format!("{code} {series:.300}"))),
            }
        },
    )
    .expect("series over the whole retention");
    let (code, names, _) = send(addr, "GET", "/api/v1/labels?start=0&end=9999999999", "").expect("labels");
    assert!(
        code == 200 && names["data"].as_array().is_some_and(|a| !a.is_empty()),
        "labels: {code} {names}"
    );
    eprintln!("[e2e] series over the whole retention: {n} series in {took:?}");

    // 100 concurrent expensive queries: each answered within its deadline,
    // with a result or a counted refusal (samples, timeout, concurrency).
    let before = agent.scrape().expect("scrape before the expensive queries");
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let (mut not_ok, mut rounds) = (0, 0);
    while rounds < 200 && (rounds == 0 || started.elapsed() < ATTACK) {
        let clients: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let body = format!("query={}", url_encode(EXPENSIVE[i % EXPENSIVE.len()]));
                std::thread::spawn(move || send(addr, "POST", "/api/v1/query", &body))
            })
            .collect();
        for c in clients {
            let (code, json, took) = c.join().expect("client thread").expect("expensive query answered");
            slowest = slowest.max(took);
            if code != 200 {
                not_ok += 1;
                assert!(
                    json["status"] == "error" && json["errorType"].is_string(),
                    "refusal without a clear error: {code} {json}"
                );
            }
            let kind = json["errorType"].as_str().unwrap_or("success");
            let why: String = json["error"].as_str().unwrap_or("").chars().take(30).collect();
            *outcomes.entry(format!("{code} {kind} {why}")).or_default() += 1;
        }
        rounds += 1;
    }
    assert!(
        slowest < QUERY_TIMEOUT + Duration::from_secs(5),
        "an expensive query took {slowest:?} (query.timeout {QUERY_TIMEOUT:?})"
    );
    let after = agent.scrape().expect("scrape after the expensive queries");
    assert_eq!(
        refusals(&after) - refusals(&before),
        not_ok as f64,
        "refusals counted vs refused answers: {outcomes:?}"
    );
    assert!(
        not_ok > 0,
        "every concurrent expensive query was answered: {outcomes:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let (scrapes, peak) = watcher.join().expect("watcher").unwrap_or_else(|e| panic!("{e:#}"));
    let wrk = wrk.wait().expect("wrk");
    assert_eq!(wrk.errors(), 0, "wrk errors against nginx:\n{}", wrk.output);
    assert!(agent.try_wait().expect("wait").is_none(), "the agent died");
    eprintln!(
        "[e2e] FIGURES hostile_queries: {} scrapes under attack, /metrics latency p50 {:?} p99 {:?} max {:?}; \
         RSS peak {} MiB (budget {} MiB); {rounds} rounds of {CONCURRENT} concurrent expensive queries: {outcomes:?}, slowest {slowest:?}; \
         wrk {} requests",
        scrapes.len(),
        percentile(&scrapes, 0.5),
        percentile(&scrapes, 0.99),
        percentile(&scrapes, 1.0),
        peak / 1024,
        RSS_BUDGET_KIB / 1024,
        wrk.requests,
    );
    assert!(scrapes.len() >= 10, "only {} scrapes under attack", scrapes.len());

    // nginx's counters over the whole attack, exact against stub_status.
    let report = measure::finish_one(&agent, base, &nginx, 0, "hostile queries").expect("measure");
    report.assert_ok();
}
