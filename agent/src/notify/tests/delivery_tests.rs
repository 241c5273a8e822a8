//! Delivery under failures and across restarts, against a local receiver.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::support::*;
use crate::alerts::AlertSink;
use crate::notify::{Notifier, config};

fn cfg(url: &str) -> config::NotifyConfig {
    let yaml = format!(
        r#"route:
  receiver: team
  group_wait: 200ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: team
    slack_configs:
      - api_url: '{url}'
        channel: '#ops'
        send_resolved: true
        title: '{{{{ .Status }}}} {{{{ .CommonLabels.alertname }}}}'
"#
    );
    config::parse(std::path::Path::new("am.yml"), &yaml).unwrap()
}

fn a(ends: SystemTime) -> crate::alerts::Alert {
    alert(
        &[("alertname", "Down"), ("instance", "web-1")],
        &[("summary", "web-1 down")],
        SystemTime::now() - Duration::from_secs(600),
        ends,
    )
}

fn titles(rec: &Recorder) -> Vec<String> {
    rec.ok_bodies("/hook")
        .iter()
        .map(|b| b["attachments"][0]["title"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_loses_nothing() {
    crate::http_client::install_crypto_provider();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rec = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let notifier = Notifier::new(cfg(&format!("http://{addr}/hook")), dir.path()).unwrap();
    let running = Running::start(notifier.clone());

    // Phase 1: nothing listens (connection refused) while the alert fires.
    notifier.send(vec![a(UNIX_EPOCH)]);
    wait_for("a failed attempt", Duration::from_secs(10), || {
        let f = notifier.self_families();
        let failed = f
            .iter()
            .find(|f| f.name == "ngxprobe_notify_notification_requests_failed_total")?
            .samples
            .iter()
            .find(|s| s.labels[0].1 == "slack")?
            .value;
        (failed >= 1.0).then_some(())
    })
    .await;
    // Phase 2: 500s, then 429 with Retry-After, then OK.
    rec.set_mode(Mode::Status500);
    let server = Receiver::start(rec.clone(), addr).await;
    wait_for("a 500", Duration::from_secs(15), || {
        rec.all().iter().any(|r| r.status == 500).then_some(())
    })
    .await;
    rec.set_mode(Mode::TooMany(1));
    wait_for("a 429", Duration::from_secs(15), || {
        rec.all().iter().any(|r| r.status == 429).then_some(())
    })
    .await;
    rec.set_mode(Mode::Ok);
    wait_for("the firing message", Duration::from_secs(30), || {
        (!titles(&rec).is_empty()).then_some(())
    })
    .await;
    assert_eq!(titles(&rec), ["firing Down"]);
    // Retry-After was honoured: the request after a 429 came ≥ 1s later.
    let log = rec.all();
    for w in log.windows(2) {
        if w[0].status == 429 {
            assert!(
                w[1].at.duration_since(w[0].at) >= Duration::from_millis(950),
                "retry came too soon after 429"
            );
        }
    }

    // Resolve while the receiver fails again; then recover.
    rec.set_mode(Mode::Status500);
    let before = rec.all().len();
    notifier.send(vec![a(SystemTime::now())]);
    wait_for("a failed resolved attempt", Duration::from_secs(15), || {
        (rec.all()[before..].iter().any(|r| r.status == 500)).then_some(())
    })
    .await;
    rec.set_mode(Mode::Ok);
    wait_for("the resolved message", Duration::from_secs(30), || {
        (titles(&rec).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(titles(&rec), ["firing Down", "resolved Down"]);
    let body = &rec.ok_bodies("/hook")[1];
    assert_eq!(body["attachments"][0]["color"], "good");
    running.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_neither_resends_nor_forgets_resolved() {
    crate::http_client::install_crypto_provider();
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}/hook", server.addr);
    let dir = tempfile::tempdir().unwrap();

    // First life: the firing message goes out; then the receiver fails and
    // the alert resolves; we stop before the resolved message is delivered.
    let n1 = Notifier::new(cfg(&url), dir.path()).unwrap();
    let r1 = Running::start(n1.clone());
    n1.send(vec![a(SystemTime::now() + Duration::from_secs(3600))]);
    wait_for("firing message", Duration::from_secs(15), || {
        (!titles(&rec).is_empty()).then_some(())
    })
    .await;
    rec.set_mode(Mode::Status500);
    let before = rec.all().len();
    n1.send(vec![a(SystemTime::now())]);
    wait_for("failed resolved attempt", Duration::from_secs(15), || {
        rec.all()[before..].iter().any(|r| r.status == 500).then_some(())
    })
    .await;
    r1.stop().await;
    assert!(dir.path().join("nflog.json").exists());

    // Second life with the receiver up: the resolved message, no repeat of firing.
    rec.set_mode(Mode::Ok);
    let n2 = Notifier::new(cfg(&url), dir.path()).unwrap();
    let r2 = Running::start(n2.clone());
    wait_for("resolved message after restart", Duration::from_secs(20), || {
        (titles(&rec).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(titles(&rec), ["firing Down", "resolved Down"]);
    r2.stop().await;

    // Third life: everything was delivered; nothing is sent again.
    let n3 = Notifier::new(cfg(&url), dir.path()).unwrap();
    let r3 = Running::start(n3.clone());
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(titles(&rec).len(), 2, "nothing may be re-sent after a restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r3.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_posts_prometheus_shaped_alerts() {
    crate::http_client::install_crypto_provider();
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let cfg: crate::notify::AlertingConfig = serde_saphyr::from_str(&format!(
        "alertmanagers:\n  - static_configs:\n      - targets: ['{}']\n    path_prefix: /am1\n",
        server.addr
    ))
    .unwrap();
    let sink = crate::notify::ForwardingSink::new(&cfg).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s2 = sink.clone();
    let task = tokio::spawn(async move {
        s2.run(async {
            let _ = rx.await;
        })
        .await
    });
    let start = UNIX_EPOCH + Duration::from_millis(1_705_407_980_526);
    sink.send(
        (0..70)
            .map(|i| {
                alert(
                    &[("alertname", "X"), ("i", &i.to_string())],
                    &[("summary", "s")],
                    start,
                    start + Duration::from_secs(60),
                )
            })
            .collect(),
    );
    wait_for("two batches", Duration::from_secs(10), || {
        (rec.ok_bodies("/am1/api/v2/alerts").len() == 2).then_some(())
    })
    .await;
    let bodies = rec.ok_bodies("/am1/api/v2/alerts");
    assert_eq!(bodies[0].as_array().map(Vec::len), Some(64));
    assert_eq!(bodies[1].as_array().map(Vec::len), Some(6));
    let first = &bodies[0][0];
    assert_eq!(first["startsAt"], "2024-01-16T12:26:20.526Z");
    assert_eq!(first["endsAt"], "2024-01-16T12:27:20.526Z");
    assert_eq!(first["labels"]["alertname"], "X");
    assert_eq!(first["annotations"]["summary"], "s");
    assert!(first["generatorURL"].is_string());
    let _ = tx.send(());
    let _ = task.await;
    server.stop().await;
}
