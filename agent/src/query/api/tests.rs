//! Hostile clients against the real router (served over TCP on a one-worker
//! runtime, as in the agent) over the real store: deep nesting, oversized
//! queries, malformed parameters, sample and time limits, 100 concurrent
//! expensive queries while /healthz and /metrics must keep answering, and a
//! property test over every parameter.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use ngxprobe_e2e::clients::{http_get, post_whole};
use serde_json::Value as J;

use super::api;
use crate::query::admission::{Admission, Refusal};
use crate::query::promharness::ApiServer;
use crate::query::testing::TempStore;
use crate::query::{QueryConfig, QueryOptions};
use crate::series::{Labels, SeriesWriter};

/// 20 series of `req_total` every 10 s for 6 h (persisted blocks + head)
/// and one gauge; times in ms from 0.
const STEP: i64 = 10_000;
const HOURS: i64 = 6;

fn store() -> Arc<TempStore> {
    let s = TempStore::new("api-hostile");
    for k in 1..=HOURS * 360 {
        let t = k * STEP;
        for w in 0..20 {
            let l = Labels::new([
                ("__name__".to_string(), "req_total".to_string()),
                ("worker".to_string(), w.to_string()),
            ]);
            s.store.append(&l, t, (k * (w + 1)) as f64).unwrap();
        }
    }
    s.store.flush();
    Arc::new(s)
}

struct Server {
    api: ApiServer,
    admission: Arc<Admission>,
}

/// The API plus /healthz and /metrics (the admission counters) on one
/// router and one async worker, like the agent's.
fn serve(store: Arc<TempStore>, opts: QueryOptions) -> Server {
    let (router, admission) = api(store, opts);
    let a2 = admission.clone();
    let router = router.route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let a = a2.clone();
            async move { crate::expose::render_text(&crate::metrics::MetricsSource::families(a.as_ref())) }
        }),
    );
    Server {
        api: ApiServer::serve(router, 1),
        admission,
    }
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.api.addr
    }
}

fn json(status: u16, body: &[u8]) -> J {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, J) {
    let (status, body) = http_get(addr, path).unwrap();
    (status, json(status, &body))
}

/// The whole answer: the formatted query of a deeply nested expression is
/// more than the 64 KiB head `clients::post` keeps.
fn post_form(addr: SocketAddr, path: &str, body: &str) -> (u16, J) {
    let (status, body) = post_whole(addr, path, body.as_bytes()).unwrap();
    (status, json(status, &body))
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap()[1..].to_string()
}

fn opts() -> QueryOptions {
    QueryOptions::default()
}

#[test]
fn deep_nesting_get_and_post_is_bad_data_and_the_server_survives() {
    let st = store();
    let srv = serve(st, opts());
    let deep = format!("{}1{}", "(".repeat(60_000), ")".repeat(60_000));
    // The 120 KB GET of the report never reaches the API: hyper refuses URIs
    // over 64 KiB. Half of it does (parentheses are legal in a query string).
    let (status, _) = http_get(srv.addr(), &format!("/api/v1/query?query={deep}")).unwrap();
    assert_eq!(status, 414);
    let half = format!("{}1{}", "(".repeat(30_000), ")".repeat(30_000));
    let (status, v) = get_json(srv.addr(), &format!("/api/v1/query?query={half}"));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errorType"], "bad_data");
    assert!(v["error"].as_str().unwrap().contains("query.max_depth"), "{v}");
    // The 120 KB POST of the report.
    let (status, v) = post_form(srv.addr(), "/api/v1/query", &format!("query={deep}"));
    assert_eq!((status, v["errorType"].as_str()), (400, Some("bad_data")), "{v}");
    // Chains of operators are as deep as they are long.
    let chain = format!("1{}", "%2B1".repeat(12_000));
    let (status, v) = get_json(srv.addr(), &format!("/api/v1/query?query={chain}"));
    assert_eq!(status, 400, "{v}");
    // match[] selectors, format_query and query_range go through the same check.
    for path in [
        format!("/api/v1/series?match%5B%5D={half}"),
        format!("/api/v1/format_query?query={half}"),
        format!("/api/v1/query_range?query={half}&start=0&end=60&step=15"),
    ] {
        let (status, v) = get_json(srv.addr(), &path);
        assert_eq!(status, 400, "{path:.40}: {v}");
    }
    assert_eq!(srv.admission.refused(Refusal::Depth), 6);
    // Just inside the limit: parsed, evaluated and formatted on the query
    // thread's stack.
    let max = opts().max_depth;
    let ok = format!("{}1{}", "(".repeat(max - 1), ")".repeat(max - 1));
    let (status, v) = get_json(srv.addr(), &format!("/api/v1/query?query={ok}&time=60"));
    assert_eq!((status, &v["data"]["result"][1]), (200, &J::from("1")), "{v}");
    let nested = format!("{}req_total{}", "abs(".repeat(max - 1), ")".repeat(max - 1));
    let (status, v) = get_json(srv.addr(), &format!("/api/v1/query?query={nested}&time=3600"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 20);
    let (status, _) = get_json(srv.addr(), &format!("/api/v1/format_query?query={nested}"));
    assert_eq!(status, 200);
}

#[test]
fn oversized_queries_and_bodies_are_refused_as_size() {
    let st = store();
    let o = QueryOptions {
        max_query_length: 1000,
        ..opts()
    };
    let srv = serve(st, o);
    let long = format!("req_total{{worker=\"{}\"}}", "x".repeat(1000));
    let (status, v) = post_form(srv.addr(), "/api/v1/query", &format!("query={}", enc(&long)));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("query.max_query_length"), "{v}");
    let body = format!("query=up&pad={}", "x".repeat(5000));
    let (status, v) = post_form(srv.addr(), "/api/v1/query", &body);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("request too large"), "{v}");
    assert_eq!(srv.admission.refused(Refusal::Size), 2);
}

#[test]
fn malformed_times_durations_and_limits_are_bad_data() {
    let st = store();
    let srv = serve(st, opts());
    let cases = [
        // A non-ASCII UTC offset used to panic a request.
        "/api/v1/query?query=1&time=2024-01-16T12:26:20%2B0%C3%A9:00".to_string(),
        "/api/v1/query?query=1&time=2024-01-16T12:26:2%C3%A9".to_string(),
        "/api/v1/query?query=1&time=NaN".to_string(),
        "/api/v1/query?query=1&time=1e400".to_string(),
        "/api/v1/query?query=1&timeout=soon".to_string(),
        "/api/v1/query?query=1&limit=-1".to_string(),
        "/api/v1/query?query=1&limit=many".to_string(),
        // (end - start) overflows i64 milliseconds.
        "/api/v1/query_range?query=1&start=-9e15&end=9e15&step=1".to_string(),
        "/api/v1/query_range?query=1&start=-9.2e15&end=9.2e15&step=1e-3".to_string(),
        "/api/v1/query_range?query=1&start=0&end=60&step=1e400".to_string(),
        "/api/v1/query_range?query=1&start=0&end=60&step=abc".to_string(),
        "/api/v1/query_range?query=1&start=0&end=60&step=-1".to_string(),
        "/api/v1/query_range?query=1&start=60&end=0&step=1".to_string(),
        "/api/v1/series?match%5B%5D=up&start=%F0%9F%92%A5".to_string(),
        "/api/v1/labels?end=2024-13-01T00:00:00Z".to_string(),
        "/api/v1/label/worker/values?start=x".to_string(),
    ];
    for path in &cases {
        let (status, v) = get_json(srv.addr(), path);
        assert_eq!(
            (status, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "{path}: {v}"
        );
    }
    let (status, v) = get_json(srv.addr(), "/api/v1/query?query=1&time=60");
    assert_eq!(status, 200, "{v}");
}

#[test]
fn sample_limit_is_hit_while_decoding_and_series_decode_nothing() {
    let st = store();
    let decoded = |st: &TempStore| {
        st.store
            .self_families()
            .into_iter()
            .find(|f| f.name == "ngxprobe_store_chunks_decoded_total")
            .unwrap()
            .samples[0]
            .value
    };
    let o = QueryOptions {
        max_samples: 5_000,
        ..opts()
    };
    let srv = serve(st.clone(), o);
    // Listing series, label names and values over the whole retention reads
    // only the index.
    let before = decoded(&st);
    let (status, v) = get_json(srv.addr(), "/api/v1/series?match%5B%5D=req_total");
    assert_eq!((status, v["data"].as_array().map(Vec::len)), (200, Some(20)), "{v}");
    let (status, v) = get_json(srv.addr(), "/api/v1/label/worker/values");
    assert_eq!((status, v["data"].as_array().map(Vec::len)), (200, Some(20)), "{v}");
    let (status, v) = get_json(srv.addr(), "/api/v1/labels?match%5B%5D=req_total");
    assert_eq!((status, &v["data"]), (200, &serde_json::json!(["__name__", "worker"])));
    assert_eq!(decoded(&st), before, "series/labels decoded chunks");
    // 43,200 samples in 6 h; 5,000 allowed: refused with Prometheus's error,
    // after a fraction of the chunks.
    let (status, v) = get_json(
        srv.addr(),
        &format!("/api/v1/query?query={}&time=21600", enc("req_total[6h]")),
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errorType"], "execution");
    assert_eq!(
        v["error"],
        "query processing would load too many samples into memory in query execution"
    );
    let partial = decoded(&st) - before;
    let before = decoded(&st);
    let unlimited = serve(st.clone(), opts());
    let (status, _) = get_json(
        unlimited.addr(),
        &format!("/api/v1/query?query={}&time=21600", enc("req_total[6h]")),
    );
    assert_eq!(status, 200);
    let all = decoded(&st) - before;
    assert!(partial < all / 2.0, "decoded {partial} chunks of {all} before refusing");
    assert_eq!(srv.admission.refused(Refusal::Samples), 1);
}

#[test]
fn timeout_parameter_bounds_a_query() {
    let st = store();
    let srv = serve(st, opts());
    let q = enc("max_over_time(rate(req_total[5m])[6h:10s])");
    let (status, v) = get_json(srv.addr(), &format!("/api/v1/query?query={q}&time=21600&timeout=0.001"));
    assert_eq!((status, v["errorType"].as_str()), (503, Some("timeout")), "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("query timed out in "), "{v}");
    assert_eq!(
        srv.admission.refused(Refusal::Timeout) + srv.admission.refused(Refusal::Concurrency),
        1
    );
}

/// Value of an unlabelled sample in a /metrics text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn hundred_concurrent_expensive_queries_are_bounded_and_health_answers() {
    let st = store();
    let o = QueryOptions {
        max_concurrency: 2,
        max_queued: 200,
        timeout: Duration::from_secs(5),
        ..opts()
    };
    let srv = serve(st, o);
    let addr = srv.addr();
    let q = enc("sum by (worker) (max_over_time(rate(req_total[5m])[1h:10s]))");
    let path = format!("/api/v1/query_range?query={q}&start=3600&end=21600&step=60");
    let (status, v) = get_json(addr, &path);
    assert_eq!(status, 200, "{v}");
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || http_get(addr, &path))
        })
        .collect();
    // While they run: /healthz and /metrics answer, and no more than two
    // queries are ever in flight.
    let (mut worst, mut max_inflight, mut max_queued) = (Duration::ZERO, 0.0f64, 0.0f64);
    let end = Instant::now() + Duration::from_secs(60);
    while clients.iter().any(|c| !c.is_finished()) && Instant::now() < end {
        let t = Instant::now();
        let (hs, _) = http_get(addr, "/healthz").unwrap();
        let (ms, text) = http_get(addr, "/metrics").unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!((hs, ms), (200, 200));
        let text = String::from_utf8_lossy(&text);
        max_inflight = max_inflight.max(metric_value(&text, "ngxprobe_query_inflight"));
        max_queued = max_queued.max(metric_value(&text, "ngxprobe_query_queued"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (status, body) = c.join().unwrap().unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(json(status, &body)["errorType"], "timeout");
                refused += 1
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&body)),
        }
    }
    eprintln!(
        "100 queries: {ok} answered, {refused} timed out; worst /healthz+/metrics {worst:?}; \
         inflight <= {max_inflight}, queued <= {max_queued}"
    );
    assert!(ok > 0, "no query answered");
    assert!(max_inflight <= 2.0, "{max_inflight} queries in flight");
    assert!(max_queued > 0.0, "the queries never queued: not a test of the limit");
    assert!(worst < Duration::from_secs(1), "/healthz + /metrics took {worst:?}");
    let refusals = srv.admission.refused(Refusal::Concurrency) + srv.admission.refused(Refusal::Timeout);
    assert_eq!(refusals, refused as u64);
    // Then everything is released.
    let (status, _) = get_json(addr, &path);
    assert_eq!(status, 200);
}

/// Polls /metrics until `ngxprobe_query_inflight` is `want` (bounded).
fn wait_inflight(addr: SocketAddr, want: f64) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http_get(addr, "/metrics").unwrap();
        let now = metric_value(&String::from_utf8_lossy(&text), "ngxprobe_query_inflight");
        if now == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "ngxprobe_query_inflight stayed {now}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_slow_reader_holds_its_slot_and_a_full_queue_is_refused_at_once() {
    let st = store();
    let o = QueryOptions {
        max_concurrency: 1,
        max_queued: 0,
        ..opts()
    };
    let srv = serve(st, o);
    let addr = srv.addr();
    // ~7 MB of answer; the client reads 100 KB and stops: more than the
    // kernel's socket buffers can absorb, so the answer is still being sent
    // and its slot (the only one) is held.
    let big = format!(
        "/api/v1/query_range?query={}&start=0&end=21600&step=2",
        enc("req_total / 3")
    );
    let slow = ngxprobe_e2e::clients::SlowReader::start(addr, &big, 100_000).unwrap();
    wait_inflight(addr, 1.0);
    let t = Instant::now();
    let (status, v) = get_json(addr, "/api/v1/query?query=1");
    assert_eq!((status, v["errorType"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("query.max_concurrency"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(2), "refusal took {:?}", t.elapsed());
    assert_eq!(srv.admission.refused(Refusal::Concurrency), 1);
    // The client goes away: its answer is dropped and the slot freed.
    drop(slow);
    wait_inflight(addr, 0.0);
    let (status, v) = get_json(addr, "/api/v1/query?query=1");
    assert_eq!(status, 200, "{v}");
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Values for every parameter: well-formed, extreme, malformed, non-ASCII.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("0".to_string()),
            Just("-9.2e15".to_string()),
            Just("9.2e15".to_string()),
            Just("1e400".to_string()),
            Just("NaN".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551616".to_string()),
            Just("2024-01-16T12:26:20+0é:00".to_string()),
            Just("2024-01-16T12:26:20Z".to_string()),
            Just("1ms".to_string()),
            Just("5m".to_string()),
            Just("292y".to_string()),
            Just("0.001".to_string()),
            "[0-9]{1,12}(\\.[0-9]{1,4})?",
            "\\PC{0,12}",
        ]
    }

    fn promql() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("req_total".to_string()),
            Just("req_total{worker=~\"1.*\"}".to_string()),
            Just("req_total[5m]".to_string()),
            Just("1".to_string()),
            Just("-Inf".to_string()),
            Just("\"s\"".to_string()),
            Just("x{a=~\"(\"}".to_string()),
            "\\PC{0,8}",
        ];
        atom.prop_recursive(6, 40, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| format!("rate({e})")),
                inner.clone().prop_map(|e| format!("sum by (worker) ({e})")),
                inner.clone().prop_map(|e| format!("({e})[1h:1ms]")),
                inner.clone().prop_map(|e| format!("{e} offset -292y")),
                inner.clone().prop_map(|e| format!("{e} @ 1e15")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} / on() group_left {b}")),
                (inner.clone(), 1usize..3000).prop_map(|(e, n)| format!("{}{e}{}", "(".repeat(n), ")".repeat(n))),
                inner.prop_map(|e| format!("topk(1e300, {e})")),
            ]
        })
    }

    fn endpoint() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("/api/v1/query"),
            Just("/api/v1/query_range"),
            Just("/api/v1/series"),
            Just("/api/v1/labels"),
            Just("/api/v1/label/worker/values"),
            Just("/api/v1/format_query"),
        ]
    }

    const NAMES: [&str; 9] = [
        "query", "time", "start", "end", "step", "timeout", "match[]", "limit", "match[]",
    ];

    /// Any parameters: a JSON answer with the right shape, never a panic
    /// (500), never another 5xx than 503 (timeout, no slot), within the
    /// query timeout plus slack.
    #[test]
    fn api_parameters_never_panic_or_5xx() {
        let timeout = Duration::from_secs(3);
        let srv = serve(
            store(),
            QueryOptions {
                timeout,
                ..QueryConfig::default().options()
            },
        );
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let input = (
            endpoint(),
            promql(),
            proptest::collection::vec((0usize..NAMES.len(), value()), 0..6),
            any::<bool>(),
        );
        let result = runner.run(&input, |(ep, q, vals, post_it)| {
            let mut pairs: Vec<(&str, String)> = vec![("query", q.clone())];
            if ep.contains("series") {
                pairs.push(("match[]", q));
            }
            for (i, v) in vals {
                pairs.push((NAMES[i], v));
            }
            let form = serde_urlencoded::to_string(&pairs).unwrap();
            let t = Instant::now();
            // The label values endpoint is GET only, as Prometheus's.
            let (status, v) = if post_it && !ep.starts_with("/api/v1/label/") {
                post_form(srv.addr(), ep, &form)
            } else {
                let uri = format!("{ep}?{form}");
                let (status, body) = http_get(srv.addr(), &uri).unwrap();
                if status == 414 {
                    // hyper refuses a URI over 64 KiB before the API sees it
                    // (an encoded query of many non-ASCII characters).
                    prop_assert!(uri.len() > 65_000, "414 for a {} byte URI", uri.len());
                    return Ok(());
                }
                (status, json(status, &body))
            };
            prop_assert!(
                t.elapsed() < timeout + Duration::from_secs(10),
                "took {:?}",
                t.elapsed()
            );
            match status {
                200 => prop_assert_eq!(&v["status"], "success"),
                400 | 422 => prop_assert!(v["errorType"] == "bad_data" || v["errorType"] == "execution", "{v}"),
                503 => prop_assert!(v["errorType"] == "timeout" || v["errorType"] == "unavailable", "{v}"),
                s => prop_assert!(false, "status {s}: {v}"),
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

/// A body cut off by a limit around the router (the server's, on every
/// route) is a 413 like on every other route; our own limit stays a 400.
#[test]
fn a_body_cut_off_by_the_servers_limit_is_413_not_bad_data() {
    use axum::body::Body;
    use tower::ServiceExt;
    let (router, admission) = api(store(), opts());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = format!("query={}", "1".repeat(10_000));
    let outer = http_body_util::Limited::new(Body::from(body), 1000);
    let req = axum::http::Request::post("/api/v1/query")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::new(outer))
        .unwrap();
    let resp = rt.block_on(router.oneshot(req)).unwrap();
    assert_eq!(resp.status(), 413);
    let bytes = rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap();
    let v = json(413, &bytes);
    assert_eq!(v["errorType"], "bad_data", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("web.max_request_body_bytes"),
        "{v}"
    );
    assert_eq!(admission.refused(Refusal::Size), 0, "not the query's own size limit");
}
