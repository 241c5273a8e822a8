//! The HTTP server: telemetry path, /healthz, /readyz and a landing page.
//!
//! Routing is a single fallback handler matching the path, so no telemetry
//! path from a config file can make axum's router panic.
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::config::{ListenAddress, validate_telemetry_path};
use super::negotiate::{Format, negotiate};
use super::render::{render_openmetrics, render_text};
use super::{Health, process_families};
use crate::metrics::MetricsSource;

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

/// Binds `listen` and serves until `shutdown` completes.
///
/// `api` carries the routes of later stages (Prometheus HTTP API, rules and
/// alerts); everything it does not match falls through to /metrics & co.
pub async fn serve(
    listen: ListenAddress,
    telemetry_path: String,
    source: Arc<dyn MetricsSource>,
    health: Arc<Health>,
    api: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = bind(&listen)?;
    serve_listener_with(listener, telemetry_path, source, health, api, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0 first).
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    telemetry_path: String,
    source: Arc<dyn MetricsSource>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_listener_with(listener, telemetry_path, source, health, Router::new(), shutdown).await
}

/// As [`serve_listener`], with the routes of later stages in front.
pub async fn serve_listener_with(
    listener: tokio::net::TcpListener,
    telemetry_path: String,
    source: Arc<dyn MetricsSource>,
    health: Arc<Health>,
    api: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    validate_telemetry_path(&telemetry_path).map_err(ServeError::TelemetryPath)?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_string());
    tracing::info!(address = %addr, path = %telemetry_path, "serving metrics");
    let state = Arc::new(AppState {
        telemetry_path,
        source,
        health,
    });
    let app = api.merge(Router::new().fallback(dispatch).with_state(state));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}

struct AppState {
    telemetry_path: String,
    source: Arc<dyn MetricsSource>,
    health: Arc<Health>,
}

async fn dispatch(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut response = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = uri.path();
    if path == state.telemetry_path {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        return metrics_response(&state, negotiate(accept));
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => match state.health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
        "/" => landing_page(&state.telemetry_path),
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n".to_string()),
    }
}

fn metrics_response(state: &AppState, format: Format) -> Response {
    let mut families = state.source.families();
    families.extend(process_families());
    let body = match format {
        Format::Text => render_text(&families),
        Format::OpenMetrics => render_openmetrics(&families),
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn landing_page(telemetry_path: &str) -> Response {
    // The path is validated to [A-Za-z0-9/_.~-], so it is safe inside HTML.
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>ngxprobe</title></head><body>\n\
         <h1>ngxprobe</h1>\n<p>nginx metrics from eBPF.</p>\n\
         <ul><li><a href=\"{telemetry_path}\">Metrics</a></li>\n\
         <li><a href=\"/healthz\">Health</a></li>\n<li><a href=\"/readyz\">Readiness</a></li></ul>\n\
         </body></html>\n"
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
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

    /// One HTTP/1.1 request over a plain socket; returns (status, headers, body).
    async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
            accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default()
        );
        let raw = tokio::task::spawn_blocking(move || -> io::Result<String> {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .await
        .expect("client task")
        .expect("HTTP exchange");
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
        let server = tokio::spawn(serve_listener(
            listener,
            "/metrics".to_string(),
            Arc::new(FixedSource),
            health.clone(),
            async {
                let _ = stopped.await;
            },
        ));

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
        let server = tokio::spawn(serve_listener(
            listener,
            "/metrics".to_string(),
            Arc::new(FixedSource),
            Arc::new(Health::new()),
            async {
                let _ = stopped.await;
            },
        ));
        let v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        assert_eq!(get(v4, "/healthz", None).await.0, 200);
        let _ = stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    }

    #[tokio::test]
    async fn rejects_a_bad_telemetry_path() {
        let listener = bind(&"127.0.0.1:0".parse().expect("address")).expect("bind");
        let result = serve_listener(
            listener,
            "/healthz".to_string(),
            Arc::new(FixedSource),
            Arc::new(Health::new()),
            async {},
        )
        .await;
        assert!(matches!(result, Err(ServeError::TelemetryPath(_))), "{result:?}");
    }
}
