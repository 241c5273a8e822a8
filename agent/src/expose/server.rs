//! The HTTP server: binding, the accept loop and each connection's task.
//!
//! Not `axum::serve`: it has no header-read or idle timeout and no
//! connection cap, so idle or slow-header clients could hold file
//! descriptors until the agent ran out (and discovery and the store with
//! it). Here every connection has a slot in a bounded table (`conns`), hyper
//! parses each one with a header size limit, and the routes are wrapped in
//! request limits (`limits`).
use axum::Router;
use axum::extract::DefaultBodyLimit;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt as _;

use super::Health;
use super::auth::{Guard, guard};
use super::config::{ListenAddress, WebConfig, validate_telemetry_path};
use super::conns::{ConnTable, SWEEP_EVERY, SlotGuard, TrackedIo};
use super::http_stats::{HttpStats, RequestRefusal};
use super::limits::{RequestLimits, count_answers, limit_api, limit_body};
use super::routes::{AppState, dispatch};
use super::web_config::WebSecurity;
use crate::metrics::MetricsSource;

/// How long requests in flight may finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Pause after a failed accept() (out of file descriptors: retrying at once would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per this long about refused connections or accept errors.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid telemetry path: {0}")]
    TelemetryPath(String),
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: String,
        #[source]
        source: io::Error,
    },
}

fn bind_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::AddrInUse => " (is another exporter or ngxprobe already using that port?)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        _ => "",
    }
}

/// Binds the listen address. `:PORT` binds `[::]` dual-stack (IPv4 and
/// IPv6) and falls back to `0.0.0.0` on hosts with IPv6 disabled.
/// Must be called inside a tokio runtime.
pub fn bind(listen: &ListenAddress) -> Result<tokio::net::TcpListener, ServeError> {
    let bind_error = |source| ServeError::Bind {
        addr: listen.to_string(),
        source,
    };
    match listen {
        ListenAddress::Socket(addr) => bind_socket(*addr, false).map_err(bind_error),
        ListenAddress::AllInterfaces { port } => {
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), *port);
            match bind_socket(v6, true) {
                Ok(listener) => Ok(listener),
                Err(err) if ipv6_unavailable(&err) => {
                    tracing::debug!(error = %err, "IPv6 unavailable, listening on IPv4 only");
                    bind_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port), false).map_err(bind_error)
                }
                Err(err) => Err(bind_error(err)),
            }
        }
    }
}

fn ipv6_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        // Explicit, because net.ipv6.bindv6only=1 would otherwise make ":9113" IPv6-only.
        socket.set_only_v6(false)?;
    }
    // Lets a restarted agent rebind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The HTTP server: `web:` settings, what /metrics shows, health, and the
/// routes of later stages.
///
/// ```ignore
/// Server::new(&cfg.web, source, health).api(router).serve(shutdown).await?;
/// ```
pub struct Server {
    web: WebConfig,
    source: Arc<dyn MetricsSource>,
    health: Arc<Health>,
    api: Router,
    security: Option<Arc<WebSecurity>>,
}

impl Server {
    pub fn new(web: &WebConfig, source: Arc<dyn MetricsSource>, health: Arc<Health>) -> Server {
        Server {
            web: web.clone(),
            source,
            health,
            api: Router::new(),
            security: None,
        }
    }

    /// TLS, basic auth and headers from the web config file (`--web.config.file`).
    pub fn security(mut self, security: Option<Arc<WebSecurity>>) -> Server {
        self.security = security;
        self
    }

    /// The routes of later stages (Prometheus HTTP API, rules and alerts);
    /// everything they do not match falls through to /metrics & co.
    pub fn api(mut self, api: Router) -> Server {
        self.api = api;
        self
    }

    /// Binds `web.listen_address` and serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let listener = bind(&self.web.listen_address)?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on an already bound listener (tests bind 127.0.0.1:0 first)
    /// until `shutdown` completes.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        validate_telemetry_path(&self.web.telemetry_path).map_err(ServeError::TelemetryPath)?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".to_string());
        let tls = self
            .security
            .as_ref()
            .and_then(|s| s.tls.clone())
            .map(tokio_rustls::TlsAcceptor::from);
        tracing::info!(
            address = %addr,
            path = %self.web.telemetry_path,
            tls = tls.is_some(),
            basic_auth = self.security.as_ref().is_some_and(|s| s.basic_auth.is_some()),
            api = self.web.enable_api,
            "serving metrics"
        );
        let stats = Arc::new(HttpStats::default());
        let web = self.web.clone();
        let web = &web;
        let app = self.app(stats.clone());
        let table = Arc::new(ConnTable::new(
            web.max_connections as usize,
            web.header_read_timeout.as_duration(),
            web.idle_timeout.as_duration(),
            stats.clone(),
        ));
        let mut http = hyper::server::conn::http1::Builder::new();
        // Request line and headers are read into this buffer: it is the
        // header size limit (hyper answers 431 beyond it).
        http.max_buf_size(web.max_header_bytes as usize)
            .header_read_timeout(None) // the table's sweep does it, and the idle timeout
            .keep_alive(true);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sweep.tick() => table.sweep(),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match table.admit() {
                            Some(slot) => {
                                let conn = accept_connection(tls.clone(), http.clone(), stream, slot, app.clone(), stats.clone(), stop_rx.clone());
                                tasks.spawn(conn);
                            }
                            None => {
                                refuse(stream);
                                warn_sometimes(&mut warned, || tracing::warn!(max_connections = web.max_connections, "HTTP connection refused: every connection is busy with a request"));
                            }
                        }
                    }
                    Err(e) if is_per_connection_error(&e) => {}
                    Err(e) => {
                        stats.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn_sometimes(&mut warned, || tracing::warn!(error = %e, "cannot accept HTTP connections"));
                        // Out of descriptors: free what timed out, then retry.
                        table.sweep();
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::debug!(
                connections = tasks.len(),
                "closing HTTP connections still busy after the shutdown grace period"
            );
        }
        Ok(())
    }

    /// Routes with their limits: the body limit on everything, the API
    /// limits (in flight, deadline) on the API routes.
    fn app(self, stats: Arc<HttpStats>) -> Router {
        let limits = Arc::new(RequestLimits {
            max_body_bytes: self.web.max_request_body_bytes,
            api_timeout: self.web.api_timeout.as_duration(),
            api_in_flight: Arc::new(tokio::sync::Semaphore::new(self.web.max_api_requests as usize)),
            stats: stats.clone(),
            telemetry_path: self.web.telemetry_path.clone(),
        });
        let state = Arc::new(AppState {
            telemetry_path: self.web.telemetry_path,
            landing_page: self.web.enable_api,
            source: self.source,
            health: self.health,
            stats: stats.clone(),
        });
        let guard_state = Arc::new(Guard {
            basic_auth: self.security.as_ref().and_then(|s| s.basic_auth.clone()),
            headers: self.security.as_ref().map(|s| s.headers.clone()).unwrap_or_default(),
            stats,
        });
        // API off: only the fallback (telemetry, health) is left.
        let api = match self.web.enable_api {
            true => self
                .api
                .layer(axum::middleware::from_fn_with_state(limits.clone(), limit_api)),
            false => Router::new(),
        };
        api.merge(Router::new().fallback(dispatch).with_state(state))
            .layer(axum::middleware::from_fn_with_state(limits.clone(), limit_body))
            // Ours applies on every route; axum's own (2 MiB, in extractors) would differ.
            .layer(DefaultBodyLimit::disable())
            // Credentials before anything else is read or counted as the API's.
            .layer(axum::middleware::from_fn_with_state(guard_state, guard))
            .layer(axum::middleware::from_fn_with_state(limits, count_answers))
    }
}

/// The TLS handshake (when configured), then the connection. The handshake
/// reads bytes, so the slot is in its headers phase: `web.header_read_timeout`
/// bounds handshake and request headers together, and the table may evict a
/// connection stuck in it like any slow-header one.
async fn accept_connection(
    tls: Option<tokio_rustls::TlsAcceptor>,
    http: hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    guard: SlotGuard,
    app: Router,
    stats: Arc<HttpStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let slot = guard.slot.clone();
    let tracked = TrackedIo::new(stream, slot.clone());
    let Some(acceptor) = tls else {
        return serve_connection(http, tracked, guard, app, stats, stop).await;
    };
    let handshake = tokio::select! {
        done = acceptor.accept(tracked) => done,
        _ = slot.closed() => return,
        _ = stop.changed() => return,
    };
    match handshake {
        Ok(stream) => serve_connection(http, stream, guard, app, stats, stop).await,
        Err(e) => {
            stats.conn_refused(super::http_stats::ConnRefusal::TlsHandshake);
            tracing::debug!(error = %e, "TLS handshake failed");
        }
    }
}

/// One connection until it ends, the table closes it, or shutdown (which
/// closes it at once unless a request is in flight).
async fn serve_connection<I>(
    http: hyper::server::conn::http1::Builder,
    stream: I,
    guard: SlotGuard,
    app: Router,
    stats: Arc<HttpStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = guard.slot.clone();
    let io = TokioIo::new(stream);
    let svc_slot = slot.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        svc_slot.request_started();
        let done = RequestDone(svc_slot.clone());
        let response = app.clone().oneshot(req);
        async move {
            let r = response.await;
            drop(done);
            r
        }
    });
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        return;
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    count_connection_error(&e, &stats);
                }
                break;
            }
            _ = slot.closed() => break,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if slot.phase() != super::conns::Phase::Handling {
                    break;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(guard);
}

/// Marks the request done when its response future ends (or is dropped).
struct RequestDone(Arc<super::conns::Slot>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

fn count_connection_error(e: &hyper::Error, stats: &HttpStats) {
    if e.is_parse_too_large() {
        stats.request_refused(RequestRefusal::HeaderTooLarge);
    } else if e.is_parse() {
        stats.request_refused(RequestRefusal::Malformed);
    } else {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Best effort: tells the client why before closing (the socket is fresh
/// and empty, so the write does not block).
fn refuse(stream: tokio::net::TcpStream) {
    const BODY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 26\r\n\r\ntoo many open connections\n";
    let _ = stream.try_write(BODY);
}

/// accept() errors that concern one connection only (it was reset before
/// we took it): nothing to wait for.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn warn_sometimes(last: &mut Option<Instant>, warn: impl FnOnce()) {
    if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
        *last = Some(Instant::now());
        warn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Family, MetricType};
    use std::io::{Read, Write};

    struct FixedSource;

    impl MetricsSource for FixedSource {
        fn families(&self) -> Vec<Family> {
            let mut f = Family::new(
                "nginx_connections_accepted",
                "Accepted client connections",
                MetricType::Counter,
            );
            f.push(&[], 15585.0);
            vec![f]
        }
    }

    /// Writes `request` on a new connection and reads the answer to its end.
    async fn exchange(addr: SocketAddr, request: String) -> String {
        tokio::task::spawn_blocking(move || -> io::Result<String> {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .await
        .expect("client task")
        .expect("HTTP exchange")
    }

    /// One HTTP/1.1 request over a plain socket; returns (status, headers, body).
    async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
            accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default()
        );
        let raw = exchange(addr, request).await;
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let listen: ListenAddress = "127.0.0.1:0".parse().expect("address");
        let listener = bind(&listen).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let health = Arc::new(Health::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::new(&WebConfig::default(), Arc::new(FixedSource), health.clone()).serve_on(listener, async {
                let _ = stopped.await;
            }),
        );

        let (status, head, body) = get(addr, "/metrics", None).await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(body.starts_with("# HELP nginx_connections_accepted Accepted client connections\n# TYPE nginx_connections_accepted counter\nnginx_connections_accepted 15585\n"), "{body}");
        assert!(
            body.contains("\n# TYPE process_resident_memory_bytes gauge\n"),
            "{body}"
        );

        let (status, head, body) = get(
            addr,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4"),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{head}"
        );
        assert!(
            body.contains("# TYPE nginx_connections_accepted unknown\nnginx_connections_accepted 15585.0\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        assert_eq!(get(addr, "/healthz", None).await.0, 200);
        let (status, _, body) = get(addr, "/readyz", None).await;
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        health.set_not_ready("no nginx found yet");
        assert_eq!(get(addr, "/readyz", None).await.2, "not ready: no nginx found yet\n");
        health.set_ready(true);
        let (status, _, body) = get(addr, "/readyz", None).await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));

        let (status, head, body) = get(addr, "/", None).await;
        assert_eq!(status, 200);
        assert!(
            head.contains("text/html") && body.contains("href=\"/metrics\""),
            "{body}"
        );
        assert_eq!(get(addr, "/nope", None).await.0, 404);

        let _ = stop.send(());
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    }

    #[tokio::test]
    async fn port_in_use_names_the_address() {
        let first = bind(&"127.0.0.1:0".parse().expect("address")).expect("bind");
        let port = first.local_addr().expect("local addr").port();
        let taken: ListenAddress = format!("127.0.0.1:{port}").parse().expect("address");
        let err = bind(&taken).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(e) if e.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")) && e.contains("already")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn all_interfaces_accepts_ipv4() {
        let listener = bind(&ListenAddress::AllInterfaces { port: 0 }).expect("bind :0");
        let port = listener.local_addr().expect("local addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::new(&WebConfig::default(), Arc::new(FixedSource), Arc::new(Health::new())).serve_on(
                listener,
                async {
                    let _ = stopped.await;
                },
            ),
        );
        let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        assert_eq!(get(v4, "/healthz", None).await.0, 200);
        let _ = stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    }

    /// One request with an `Authorization: Basic` header (or none).
    async fn get_as(addr: SocketAddr, path: &str, user_pass: Option<&str>) -> (u16, String) {
        use base64::Engine as _;
        let auth = user_pass
            .map(|u| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64::engine::general_purpose::STANDARD.encode(u)
                )
            })
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\r\n");
        let raw = exchange(addr, request).await;
        let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        (status, raw.to_ascii_lowercase())
    }

    #[tokio::test]
    async fn basic_auth_headers_and_api_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.yml");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let text =
            format!("http_server_config:\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  u: {hash}\n");
        let security = super::super::web_config::parse(&file, &text)
            .map_err(|e| e.to_string())
            .expect("web config");
        for enable_api in [true, false] {
            let listener = bind(&"127.0.0.1:0".parse().expect("address")).expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let web = WebConfig {
                enable_api,
                ..WebConfig::default()
            };
            let api = Router::new().route("/api/v1/query", axum::routing::get(|| async { "api" }));
            let health = Arc::new(Health::new());
            health.set_ready(true);
            let server = tokio::spawn(
                Server::new(&web, Arc::new(FixedSource), health)
                    .api(api)
                    .security(Some(Arc::new(super::super::web_config::WebSecurity {
                        file: file.clone(),
                        tls: None,
                        basic_auth: security.basic_auth.clone(),
                        headers: security.headers.clone(),
                    })))
                    .serve_on(listener, async {
                        let _ = stopped.await;
                    }),
            );
            let (status, head) = get_as(addr, "/metrics", None).await;
            assert_eq!(status, 401);
            assert!(
                head.contains("www-authenticate: basic") && head.contains("x-frame-options: deny"),
                "{head}"
            );
            assert_eq!(get_as(addr, "/metrics", Some("u:wrong")).await.0, 401);
            assert_eq!(get_as(addr, "/metrics", Some("x:pw")).await.0, 401);
            let (status, head) = get_as(addr, "/metrics", Some("u:pw")).await;
            assert_eq!(status, 200);
            assert!(head.contains("x-frame-options: deny"), "{head}");
            assert_eq!(get_as(addr, "/healthz", None).await.0, 200, "health is open");
            assert_eq!(get_as(addr, "/readyz", None).await.0, 200);
            let want = if enable_api { 200 } else { 404 };
            assert_eq!(
                get_as(addr, "/api/v1/query", Some("u:pw")).await.0,
                want,
                "api {enable_api}"
            );
            assert_eq!(
                get_as(addr, "/", Some("u:pw")).await.0,
                want,
                "landing page {enable_api}"
            );
            assert_eq!(get_as(addr, "/api/v1/query", None).await.0, 401);
            let _ = stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
        }
    }

    #[tokio::test]
    async fn rejects_a_bad_telemetry_path() {
        let listener = bind(&"127.0.0.1:0".parse().expect("address")).expect("bind");
        let web = WebConfig {
            telemetry_path: "/healthz".to_string(),
            ..WebConfig::default()
        };
        let result = Server::new(&web, Arc::new(FixedSource), Arc::new(Health::new()))
            .serve_on(listener, async {})
            .await;
        assert!(matches!(result, Err(ServeError::TelemetryPath(_))), "{result:?}");
    }
}
