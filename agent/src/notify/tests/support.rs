//! Test helpers: a recording HTTP receiver with programmable failures, an
//! Alertmanager child process guard, and polling with deadlines.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::alerts::Alert;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Status500,
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// 429 with this `Retry-After` header, verbatim.
    RetryAfterRaw(&'static str),
    /// `status` with a body of `bytes` bytes, streamed (never held in memory).
    Flood {
        status: u16,
        bytes: u64,
    },
    /// 500 with this body.
    Says(&'static str),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: serde_json::Value,
    pub at: Instant,
    pub status: u16,
    /// The Authorization header, if any.
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct Recorder {
    pub mode: Mutex<Option<Mode>>,
    pub log: Mutex<Vec<Received>>,
    /// Body bytes of `Mode::Flood` answers that hyper took to send.
    pub flood_sent: Arc<AtomicU64>,
}

impl Recorder {
    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = Some(m);
    }
    pub fn all(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
    /// Bodies answered 200 for `path`.
    pub fn ok_bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|r| r.path == path && r.status == 200)
            .map(|r| r.body)
            .collect()
    }
}

async fn handle(State(rec): State<Arc<Recorder>>, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    let mode = rec.mode.lock().unwrap().unwrap_or(Mode::Ok);
    let status = match mode {
        Mode::Ok => 200,
        Mode::Status500 | Mode::Says(_) => 500,
        Mode::TooMany(_) | Mode::RetryAfterRaw(_) => 429,
        Mode::Flood { status, .. } => status,
    };
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    rec.log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        body: json,
        at: Instant::now(),
        status,
        authorization: h.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
    });
    match mode {
        Mode::Ok => (StatusCode::OK, "ok").into_response(),
        Mode::Status500 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Mode::TooMany(s) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", s.to_string())],
            "slow down",
        )
            .into_response(),
        Mode::RetryAfterRaw(v) => (StatusCode::TOO_MANY_REQUESTS, [("Retry-After", v)], "slow down").into_response(),
        Mode::Says(text) => (StatusCode::INTERNAL_SERVER_ERROR, text).into_response(),
        Mode::Flood { status, bytes } => {
            let body = Flood {
                left: bytes,
                sent: rec.flood_sent.clone(),
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, axum::body::Body::new(body)).into_response()
        }
    }
}

/// A response body of `left` bytes made on the fly, counting what was sent.
struct Flood {
    left: u64,
    sent: Arc<AtomicU64>,
}

impl hyper::body::Body for Flood {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let chunk = Bytes::from_static(&CHUNK[..n as usize]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

/// A recording HTTP server on 127.0.0.1; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(rec: Arc<Recorder>, addr: SocketAddr) -> Receiver {
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::task::yield_now().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(handle).with_state(rec.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Receiver {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50ms until it returns Some or the deadline passes.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const AM_BIN: &str = "/usr/bin/prometheus-alertmanager";

/// Debian's Alertmanager on a random loopback port; killed on drop.
pub struct AlertmanagerProcess {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl AlertmanagerProcess {
    pub fn available() -> bool {
        Path::new(AM_BIN).exists()
    }

    pub async fn start(config: &str, external_url: &str) -> AlertmanagerProcess {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(&cfg, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("am.log")).unwrap();
        let child = Command::new(AM_BIN)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg(format!("--web.external-url={external_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus-alertmanager");
        crate::http_client::install_crypto_provider();
        let am = AlertmanagerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", am.url);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager did not become ready: {}",
                am.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        am
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("am.log")).unwrap_or_default()
    }

    pub async fn post(&self, alerts: &[Alert]) {
        let body = super::super::forward::alerts_body(alerts);
        let r = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "alertmanager rejected alerts: {}", r.status());
    }

    pub async fn fingerprints(&self) -> BTreeMap<String, String> {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["instance"].as_str().unwrap_or("").to_string(),
                    a["fingerprint"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for AlertmanagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn alert(l: &[(&str, &str)], ann: &[(&str, &str)], starts_at: SystemTime, ends_at: SystemTime) -> Alert {
    Alert {
        labels: labels(l),
        annotations: labels(ann),
        starts_at,
        ends_at,
        generator_url: "http://prometheus:9090/graph?g0.expr=up".into(),
    }
}

/// Runs a Notifier in the background until dropped.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn start(notifier: super::super::Notifier) -> Running {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let n = notifier;
        let task = tokio::spawn(async move {
            n.run(async {
                let _ = rx.await;
            })
            .await;
        });
        Running {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful stop: the run loop saves its state and returns.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
