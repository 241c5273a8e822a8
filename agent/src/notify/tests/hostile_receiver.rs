//! Receivers that misbehave on purpose, over real HTTP: absurd
//! `Retry-After` values, answers of a gigabyte, text meant to forge log
//! lines; and credentials in URLs, which must reach the receiver but never
//! a metric label, a log line or the config dump.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::support::*;
use crate::alerts::AlertSink as _;
use crate::notify::compile::UrlSource;
use crate::notify::config::HttpConfig;
use crate::notify::deliver::{self, Delivered};
use crate::secret::Secret;

async fn deliver_once(url: &str, deadline: Duration) -> (Delivered, Duration) {
    crate::http_client::install_crypto_provider();
    let http = HttpConfig::default();
    let client = deliver::build_client(&http).expect("client");
    let url = UrlSource::Inline(Secret::new(url));
    let t0 = Instant::now();
    let r = deliver::deliver(&client, &url, &http, b"{}", t0 + deadline, &|_| {}).await;
    (r, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_ends_the_flush_instead_of_panicking() {
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = format!("http://{}/hook", server.addr);
    for value in [
        "18446744073709551615",
        "99999999999999999999999999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        rec.set_mode(Mode::RetryAfterRaw(value));
        let (r, took) = deliver_once(&url, Duration::from_secs(5)).await;
        // Waiting that long is past the flush deadline: give up now, one attempt.
        assert!(!r.ok, "{value}: {r:?}");
        assert_eq!(r.attempts, 1, "{value}: {r:?}");
        assert!(r.last_error.as_deref().is_some_and(|e| e.contains("429")), "{r:?}");
        assert!(took < Duration::from_secs(3), "{value}: took {took:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_answers_are_read_only_up_to_the_limit() {
    const GIB: u64 = 1 << 30;
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let url = format!("http://{}/hook", server.addr);

    // A failing receiver answering 1 GiB per attempt: retried until the deadline.
    rec.set_mode(Mode::Flood {
        status: 500,
        bytes: GIB,
    });
    let (r, took) = deliver_once(&url, Duration::from_secs(2)).await;
    assert!(!r.ok && r.attempts >= 2, "{r:?}");
    let error = r.last_error.unwrap_or_default();
    assert!(
        error.starts_with("unexpected status code 500: xxxx") && error.len() < 300,
        "{error}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    let sent = rec.flood_sent.swap(0, Ordering::Relaxed);
    // What the socket buffers took before the client hung up: megabytes, not
    // the gigabyte per attempt that reading the whole answer would pull.
    assert!(
        sent < u64::from(r.attempts) * 64 * 1024 * 1024,
        "{sent} bytes sent for {} attempts",
        r.attempts
    );

    // A successful one: delivered at once, without reading the rest.
    rec.set_mode(Mode::Flood {
        status: 200,
        bytes: GIB,
    });
    let (r, took) = deliver_once(&url, Duration::from_secs(5)).await;
    assert!(r.ok && r.attempts == 1, "{r:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(rec.flood_sent.load(Ordering::Relaxed) < 64 * 1024 * 1024);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_text_cannot_forge_log_lines() {
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    rec.set_mode(Mode::Says("boom\nlevel=ERROR msg=\"forged\"\r\n\u{1b}[2Jcleared"));
    let url = format!("http://{}/hook", server.addr);
    let (r, _) = deliver_once(&url, Duration::from_millis(300)).await;
    let error = r.last_error.unwrap_or_default();
    assert!(
        !error.contains('\n') && !error.contains('\r') && !error.contains('\u{1b}'),
        "{error:?}"
    );
    assert!(error.contains(r"boom\nlevel=ERROR"), "{error:?}");
    server.stop().await;
}

/// Log lines written while `f` runs on this thread.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

// current_thread: the forwarder's tasks log on this thread, into `logs`.
#[tokio::test]
async fn forwarder_credentials_never_reach_labels_logs_or_config_dumps() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    crate::http_client::install_crypto_provider();

    let rec = Arc::new(Recorder::default());
    rec.set_mode(Mode::Status500);
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let yaml = format!(
        "alertmanagers:\n  - static_configs:\n      - targets: ['scott:tiger@{}']\n",
        server.addr
    );
    let cfg: crate::notify::AlertingConfig = serde_saphyr::from_str(&yaml).expect("config");
    let sink = crate::notify::ForwardingSink::new(&cfg).expect("sink");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = sink.clone();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let now = SystemTime::now();
    sink.send(vec![alert(&[("alertname", "X")], &[], now, now)]);
    let got = wait_for("the forwarded alert", Duration::from_secs(10), || {
        rec.all().into_iter().next()
    })
    .await;
    // The credentials were used: basic auth "scott:tiger".
    assert_eq!(got.authorization.as_deref(), Some("Basic c2NvdHQ6dGlnZXI="));
    wait_for("the error log line", Duration::from_secs(10), || {
        logs.text().contains("error sending alerts").then_some(())
    })
    .await;
    let _ = stop.send(());
    let _ = task.await;
    server.stop().await;

    let label = format!("http://<secret>@{}/api/v2/alerts", server_addr_of(&yaml));
    let families = sink.self_families();
    let labels: Vec<String> = families
        .iter()
        .flat_map(|f| f.samples.iter())
        .flat_map(|s| s.labels.iter().map(|(_, v)| v.clone()))
        .collect();
    assert!(labels.contains(&label), "{labels:?}");
    let dump = serde_saphyr::to_string(&cfg).unwrap_or_default();
    let mut log_text = logs.text();
    log_text.push_str(&dump);
    for leak in ["tiger", "scott"] {
        assert!(!labels.iter().any(|l| l.contains(leak)), "{leak} in labels {labels:?}");
        assert!(!log_text.contains(leak), "{leak} in logs or config dump:\n{log_text}");
    }
    assert!(dump.contains("<secret>@127.0.0.1:"), "{dump}");
}

/// The `host:port` in the test's target line.
fn server_addr_of(yaml: &str) -> String {
    yaml.split('@')
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_url_tokens_stay_out_of_delivery_errors() {
    // Nothing listens on this port: the error is the client's own.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/services/T000/B000/SECRETTOKEN");
    let (r, _) = deliver_once(&url, Duration::from_millis(300)).await;
    let error = r.last_error.unwrap_or_default();
    assert!(error.starts_with("request failed"), "{error}");
    assert!(
        !error.contains("SECRETTOKEN") && !error.contains(&port.to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn notification_log_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    };
    let cfg = || {
        let yaml = "route: {receiver: team}\nreceivers:\n  - name: team\n";
        crate::notify::config::parse(std::path::Path::new("am.yml"), yaml).expect("config")
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data/notify");
    let n = crate::notify::Notifier::new(cfg(), &dir).expect("notifier");
    n.save();
    let state = dir.join("nflog.json");
    assert_eq!((mode(&dir), mode(&state)), (0o700, 0o600));

    // Left open by an older version: tightened on the next start.
    drop(n);
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&dir, open.clone()).expect("chmod");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let n = crate::notify::Notifier::new(cfg(), &dir).expect("notifier");
    n.save();
    assert_eq!((mode(&dir), mode(&state)), (0o700, 0o600));
}
