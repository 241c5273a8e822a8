//! The server's own counters (`ngxprobe_http_*`): what it refused and why,
//! so an attack or a misbehaving client shows on /metrics, not only in logs.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::{Family, MetricType};

/// Why a connection was refused or closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRefusal {
    /// A new connection while every open one was busy with a request.
    MaxConnections,
    /// An idle or still-incomplete connection closed to admit a new one.
    Evicted,
    /// Request headers incomplete after `web.header_read_timeout`.
    HeaderTimeout,
    /// The TLS handshake failed (no common version or suite, a client
    /// certificate missing or refused, not TLS at all).
    TlsHandshake,
}

impl ConnRefusal {
    const ALL: [ConnRefusal; 4] = [
        ConnRefusal::MaxConnections,
        ConnRefusal::Evicted,
        ConnRefusal::HeaderTimeout,
        ConnRefusal::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnRefusal::MaxConnections => "max_connections",
            ConnRefusal::Evicted => "evicted",
            ConnRefusal::HeaderTimeout => "header_timeout",
            ConnRefusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why a request was refused by the server (before or instead of its handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestRefusal {
    /// Body over `web.max_request_body_bytes` (413).
    BodyTooLarge,
    /// Request line and headers over `web.max_header_bytes` (431).
    HeaderTooLarge,
    /// Not HTTP/1.x hyper can parse (400).
    Malformed,
    /// `web.max_api_requests` already in flight (503).
    TooManyRequests,
    /// Not answered within `web.api_timeout` (503).
    Timeout,
    /// Credentials to check with bcrypt while too many checks already
    /// wait (503): a flood of wrong passwords.
    AuthBusy,
}

impl RequestRefusal {
    const ALL: [RequestRefusal; 6] = [
        RequestRefusal::BodyTooLarge,
        RequestRefusal::HeaderTooLarge,
        RequestRefusal::Malformed,
        RequestRefusal::TooManyRequests,
        RequestRefusal::Timeout,
        RequestRefusal::AuthBusy,
    ];

    fn label(self) -> &'static str {
        match self {
            RequestRefusal::BodyTooLarge => "body_too_large",
            RequestRefusal::HeaderTooLarge => "header_too_large",
            RequestRefusal::Malformed => "malformed",
            RequestRefusal::TooManyRequests => "too_many_requests",
            RequestRefusal::Timeout => "timeout",
            RequestRefusal::AuthBusy => "auth_busy",
        }
    }
}

#[derive(Default)]
pub struct HttpStats {
    pub(super) accepted: AtomicU64,
    pub(super) accept_errors: AtomicU64,
    pub(super) idle_closed: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) api_in_flight: AtomicU64,
    conn_refused: [AtomicU64; ConnRefusal::ALL.len()],
    req_refused: [AtomicU64; RequestRefusal::ALL.len()],
    /// Answers by (route, status code). Routes are the router's templates
    /// and codes HTTP's, so the label sets are bounded by construction.
    answered: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpStats {
    pub fn conn_refused(&self, why: ConnRefusal) {
        self.conn_refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn request_refused(&self, why: RequestRefusal) {
        self.req_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// One answer on `handler` (a route template or a fixed name) with `code`.
    pub fn answered(&self, handler: &str, code: u16) {
        let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        match answered.get_mut(&(handler.to_string(), code)) {
            Some(n) => *n += 1,
            None => {
                answered.insert((handler.to_string(), code), 1);
            }
        }
    }

    pub fn families(&self) -> Vec<Family> {
        let counter = |name: &str, help: &str, v: &AtomicU64| {
            let mut f = Family::new(name, help, MetricType::Counter);
            f.push(&[], v.load(Relaxed) as f64);
            f
        };
        let mut open = Family::new(
            "ngxprobe_http_connections_open",
            "HTTP connections open now.",
            MetricType::Gauge,
        );
        open.push(&[], self.open.load(Relaxed) as f64);
        let mut in_flight = Family::new(
            "ngxprobe_http_api_requests_in_flight",
            "API requests being handled now (at most web.max_api_requests).",
            MetricType::Gauge,
        );
        in_flight.push(&[], self.api_in_flight.load(Relaxed) as f64);
        let mut conn_refused = Family::new(
            "ngxprobe_http_connections_refused_total",
            "HTTP connections the server refused or closed: max_connections (new connection while every \
             open one was busy), evicted (idle or incomplete connection closed to admit a new one), \
             header_timeout (headers incomplete after web.header_read_timeout), tls_handshake (TLS \
             handshake failed).",
            MetricType::Counter,
        );
        for why in ConnRefusal::ALL {
            let v = self.conn_refused[why as usize].load(Relaxed);
            conn_refused.push(&[("reason", why.label())], v as f64);
        }
        let mut req_refused = Family::new(
            "ngxprobe_http_requests_refused_total",
            "HTTP requests the server refused before or instead of answering them, by reason.",
            MetricType::Counter,
        );
        for why in RequestRefusal::ALL {
            let v = self.req_refused[why as usize].load(Relaxed);
            req_refused.push(&[("reason", why.label())], v as f64);
        }
        vec![
            counter(
                "ngxprobe_http_connections_accepted_total",
                "HTTP connections accepted.",
                &self.accepted,
            ),
            open,
            in_flight,
            conn_refused,
            counter(
                "ngxprobe_http_connections_idle_closed_total",
                "HTTP connections closed after web.idle_timeout without a request.",
                &self.idle_closed,
            ),
            counter(
                "ngxprobe_http_accept_errors_total",
                "Failed accept() calls (e.g. EMFILE: out of file descriptors).",
                &self.accept_errors,
            ),
            req_refused,
            self.answered_family(),
        ]
    }

    fn answered_family(&self) -> Family {
        let mut f = Family::new(
            "ngxprobe_http_requests_total",
            "HTTP requests answered, by route (handler) and status code, like Prometheus's \
             prometheus_http_requests_total: a client's bad parameters show as code 400.",
            MetricType::Counter,
        );
        let answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        for ((handler, code), n) in answered.iter() {
            f.push(&[("handler", handler), ("code", &code.to_string())], *n as f64);
        }
        f
    }
}
