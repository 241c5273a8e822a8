//! Hostile clients against a real server on a loopback socket: slow
//! headers, idle connections, a full connection table, oversized headers
//! and bodies, a saturated API. Each limit must hold and be counted.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Health, Server, WebConfig, bind};
use crate::compat::PromDuration;
use crate::metrics::{Family, MetricsSource};

struct NoMetrics;

impl MetricsSource for NoMetrics {
    fn families(&self) -> Vec<Family> {
        Vec::new()
    }
}

/// A running server; stops when dropped.
struct TestServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), super::ServeError>>,
    /// Released once per request to /api/v1/block.
    gate: Arc<tokio::sync::Semaphore>,
    /// One permit per request that reached /api/v1/block's handler.
    entered: Arc<tokio::sync::Semaphore>,
}

impl TestServer {
    fn start(web: WebConfig) -> TestServer {
        let listener = bind(&"127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let entered = Arc::new(tokio::sync::Semaphore::new(0));
        let (g, e) = (gate.clone(), entered.clone());
        let api = Router::new()
            .route(
                "/api/v1/block",
                get(move || {
                    let g = g.clone();
                    e.add_permits(1);
                    async move {
                        let _ = g.acquire().await.map(|p| p.forget());
                        "released"
                    }
                }),
            )
            .route(
                "/api/v1/echo",
                post(|body: Bytes| async move { body.len().to_string() }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::new(&web, Arc::new(NoMetrics), Arc::new(Health::new())).api(api);
        let task = tokio::spawn(server.serve_on(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
            gate,
            entered,
        }
    }

    /// The value of `name{reason}` (or `name` alone) on /metrics.
    async fn metric(&self, name: &str, reason: Option<&str>) -> f64 {
        let (status, body) = request(
            self.addr,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let want = match reason {
            Some(r) => format!("{name}{{reason=\"{r}\"}} "),
            None => format!("{name} "),
        };
        body.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{want} not in /metrics:\n{body}"))
    }

    async fn stop(mut self) -> Duration {
        let t0 = Instant::now();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "server did not stop cleanly: {r:?}");
        t0.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn web(f: impl FnOnce(&mut WebConfig)) -> WebConfig {
    let mut w = WebConfig::default();
    f(&mut w);
    w
}

fn ms(n: u64) -> PromDuration {
    PromDuration::from_millis(n)
}

/// Reads one response (head + Content-Length body) from `s`.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(deadline, s.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a new connection.
async fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    read_response(&mut s).await
}

/// Waits (bounded) until the server closes `s`; returns how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_counted() {
    let srv = TestServer::start(web(|w| w.header_read_timeout = ms(300)));
    let mut slow = TcpStream::connect(srv.addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Keeps trickling, as slowloris does: a byte every 50 ms does not extend the deadline.
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("bounded");
    let took = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(3));
    assert_eq!(
        srv.metric("ngxprobe_http_connections_refused_total", Some("header_timeout"))
            .await,
        1.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let srv = TestServer::start(web(|w| w.idle_timeout = ms(300)));
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut s).await.0, 200);
    let t0 = Instant::now();
    closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(t0.elapsed() >= Duration::from_millis(250), "{:?}", t0.elapsed());
    assert_eq!(
        srv.metric("ngxprobe_http_connections_idle_closed_total", None).await,
        1.0
    );
    srv.stop().await;
}

/// Polls `name` on /metrics until it is `want` (bounded).
async fn wait_metric(srv: &TestServer, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = srv.metric(name, None).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v}, want {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_full_table_makes_room_for_metrics_by_closing_idle_connections() {
    let srv = TestServer::start(web(|w| {
        w.max_connections = 4;
        w.max_api_requests = 1;
    }));
    // Accepted in this order, so they are the oldest.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(srv.addr).await.expect("connect"));
    }
    // Scrapes on keep-alive connections left open: each new one needs room.
    let mut scrapers = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_response(&mut s).await.0, 200);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        scrapers.push(s);
    }
    for s in &mut idle {
        closed_within(s, Duration::from_secs(5)).await;
    }
    assert!(
        srv.metric("ngxprobe_http_connections_refused_total", Some("evicted"))
            .await
            >= 10.0
    );
    assert!(srv.metric("ngxprobe_http_connections_open", None).await <= 4.0);
    srv.stop().await;
}

#[tokio::test]
async fn a_new_connection_is_refused_only_when_every_one_is_busy() {
    // max_api_requests == max_connections is refused by config validation;
    // built directly here to fill every slot with a request in flight.
    let srv = TestServer::start(web(|w| {
        w.max_connections = 3;
        w.max_api_requests = 3;
    }));
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(b"GET /api/v1/block HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        busy.push(s);
    }
    let entered = tokio::time::timeout(Duration::from_secs(5), srv.entered.acquire_many(3)).await;
    assert!(
        matches!(entered, Ok(Ok(_))),
        "the three requests never reached their handler"
    );
    drop(entered);
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let mut response = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut response)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    assert!(
        response.starts_with("HTTP/1.1 503") && response.ends_with("too many open connections\n"),
        "{response}"
    );
    srv.gate.add_permits(3);
    for s in &mut busy {
        let (status, body) = read_response(s).await;
        assert_eq!((status, body.as_str()), (200, "released"));
    }
    drop(busy);
    assert!(
        srv.metric("ngxprobe_http_connections_refused_total", Some("max_connections"))
            .await
            >= 1.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn api_requests_in_flight_are_capped_and_timed_out() {
    let srv = TestServer::start(web(|w| {
        w.max_api_requests = 1;
        w.api_timeout = ms(1000);
    }));
    let mut first = TcpStream::connect(srv.addr).await.expect("connect");
    first
        .write_all(b"GET /api/v1/block HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let entered = tokio::time::timeout(Duration::from_secs(5), srv.entered.acquire()).await;
    assert!(
        matches!(entered, Ok(Ok(_))),
        "the first request never reached its handler"
    );
    drop(entered);
    let (status, body) = request(srv.addr, "GET /api/v1/block HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""errorType":"unavailable""#) && body.contains("max_api_requests"),
        "{body}"
    );
    assert_eq!(
        srv.metric("ngxprobe_http_requests_refused_total", Some("too_many_requests"))
            .await,
        1.0
    );
    let (status, body) = read_response(&mut first).await;
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""errorType":"timeout""#) && body.contains("web.api_timeout"),
        "{body}"
    );
    assert_eq!(
        srv.metric("ngxprobe_http_requests_refused_total", Some("timeout"))
            .await,
        1.0
    );
    wait_metric(&srv, "ngxprobe_http_api_requests_in_flight", 0.0).await;
    srv.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_on_every_route() {
    let srv = TestServer::start(web(|w| w.max_request_body_bytes = 1000));
    let post = |path: &str, len: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{}",
            "a".repeat(len)
        )
    };
    assert_eq!(
        request(srv.addr, &post("/api/v1/echo", 1000)).await,
        (200, "1000".into())
    );
    let (status, body) = request(srv.addr, &post("/api/v1/echo", 1001)).await;
    assert_eq!(status, 413);
    assert!(body.contains("web.max_request_body_bytes"), "{body}");
    // Announced small (chunked), turns out large while read.
    let chunk = "a".repeat(600);
    let chunked = format!(
        "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(request(srv.addr, &chunked).await.0, 413);
    // Not only the API: the telemetry path too.
    assert_eq!(request(srv.addr, &post("/metrics", 5000)).await.0, 413);
    assert_eq!(
        srv.metric("ngxprobe_http_requests_refused_total", Some("body_too_large"))
            .await,
        3.0
    );
    srv.stop().await;
}

#[tokio::test]
async fn oversized_headers_and_urls_get_431() {
    let srv = TestServer::start(web(|w| w.max_header_bytes = 8192));
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(10_000)
    );
    assert_eq!(request(srv.addr, &big_header).await.0, 431);
    let long_url = format!(
        "GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "1".repeat(10_000)
    );
    assert_eq!(request(srv.addr, &long_url).await.0, 431);
    let garbage = "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03 not http\r\n\r\n";
    let (status, _) = request(srv.addr, garbage).await;
    assert_eq!(status, 400);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The counters move when the connection task ends, just after the answer.
    while srv
        .metric("ngxprobe_http_requests_refused_total", Some("header_too_large"))
        .await
        < 2.0
        || srv
            .metric("ngxprobe_http_requests_refused_total", Some("malformed"))
            .await
            < 1.0
    {
        assert!(Instant::now() < deadline, "refusals not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_or_slow_clients() {
    let srv = TestServer::start(WebConfig::default());
    let _idle = TcpStream::connect(srv.addr).await.expect("connect");
    let mut slow = TcpStream::connect(srv.addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    assert_eq!(srv.metric("ngxprobe_http_connections_open", None).await, 3.0);
    let took = srv.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn answers_are_counted_by_route_template_and_code_without_client_chosen_labels() {
    let srv = TestServer::start(web(|_| {}));
    for path in ["/api/v1/echo", "/healthz", "/no/such/page", "/another/unknown?x=1"] {
        let verb = if path == "/api/v1/echo" { "POST" } else { "GET" };
        let req = format!("{verb} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        request(srv.addr, &req).await;
    }
    let (_, body) = request(
        srv.addr,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answered: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("ngxprobe_http_requests_total{"))
        .collect();
    assert_eq!(
        answered,
        [
            r#"ngxprobe_http_requests_total{handler="/api/v1/echo",code="200"} 1"#,
            r#"ngxprobe_http_requests_total{handler="/healthz",code="200"} 1"#,
            r#"ngxprobe_http_requests_total{handler="other",code="404"} 2"#,
        ],
        "{body}"
    );
}
