//! Parity with Alertmanager 0.25: the same alerts go to Debian's
//! prometheus-alertmanager and to the Notifier, both configured from the
//! same YAML (only the Slack URL differs), and the Slack bodies must match.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::support::*;
use crate::alerts::AlertSink;
use crate::notify::{Notifier, config};

const EXTERNAL_URL: &str = "http://am.example:9093";

/// The users' receiver and route block from the seed, verbatim but for the URL.
fn seed_config(url: &str) -> String {
    format!(
        r#"global:
  slack_api_url: '{url}'

receivers:
  - name: 'slack'
  - name: 'KongSangUk'
    slack_configs:
      - channel: '#ksu'
        send_resolved: true
        title: '[{{{{.Status | toUpper}}}}] {{{{.CommonLabels.alertname }}}}'
        text: >-
          | *Description:* {{{{.CommonAnnotations.description }}}}

route:
  group_wait: 10s
  group_interval: 10s
  repeat_interval: 10s
  receiver: 'slack'
  routes:
    - receiver: 'KongSangUk'
"#
    )
}

/// Default templates (no title/text), grouping by alertname, plus fields,
/// footer, emoji and link_names.
fn defaults_config(url: &str) -> String {
    format!(
        r#"route:
  receiver: defaults
  group_by: ['alertname', 'job']
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: defaults
    slack_configs:
      - api_url: '{url}'
        channel: '#alerts'
        send_resolved: true
        icon_emoji: ':fire:'
        link_names: true
        footer: 'from {{{{ .Receiver }}}}'
        short_fields: true
        fields:
          - title: Instances
            value: '{{{{ range .Alerts }}}}{{{{ .Labels.instance }}}} {{{{ end }}}}'
          - title: Summary
            value: '{{{{ .CommonAnnotations.summary }}}}'
            short: false
          - title: Resolved
            value: '{{{{ len .Alerts.Resolved }}}} of {{{{ len .Alerts }}}}: {{{{ range .Alerts.Resolved }}}}{{{{ .Labels.instance }}}}{{{{ end }}}}'
"#
    )
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Runs both sides through: two alerts firing, one resolved, both resolved.
/// Returns the distinct Slack bodies each side received, in arrival order.
async fn run_scenario(make_config: fn(&str) -> String) -> Option<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    if !AlertmanagerProcess::available() {
        // A skip locally, a failure under CI.
        ngxprobe_e2e::util::skip_or_fail(&format!(
            "{AM_BIN} not installed (apt-get install prometheus-alertmanager)"
        ));
        return None;
    }
    let rec = Arc::new(Recorder::default());
    let server = Receiver::start(rec.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let base = format!("http://{}", server.addr);
    let am = AlertmanagerProcess::start(&make_config(&format!("{base}/am")), EXTERNAL_URL).await;

    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "alertmanager.yml", &make_config(&format!("{base}/ngx")));
    let cfg = config::load_file(&path).expect("seed config must load");
    let notifier = Notifier::new(cfg, &dir.path().join("data")).unwrap();
    notifier.set_external_url(EXTERNAL_URL);
    let running = Running::start(notifier.clone());

    let started = now() - Duration::from_secs(3600);
    let a1 = |ends| {
        alert(
            &[
                ("alertname", "WebServerConnectivity"),
                ("instance", "192.168.49.10:9113"),
                ("job", "nginx"),
                ("severity", "critical"),
            ],
            &[
                (
                    "description",
                    "The rate of HTTP requests is higher than 100 per minute.",
                ),
                ("summary", "High request rate on nginx"),
            ],
            started,
            ends,
        )
    };
    let a2 = |ends| {
        alert(
            &[
                ("alertname", "WebServerConnectivity"),
                ("instance", "192.168.49.11:9113"),
                ("job", "nginx"),
                ("severity", "critical"),
            ],
            &[
                ("description", "Another description."),
                ("summary", "High request rate on nginx"),
            ],
            started,
            ends,
        )
    };
    let distinct = |path: &str| -> Vec<serde_json::Value> {
        let mut seen = BTreeSet::new();
        rec.ok_bodies(path)
            .into_iter()
            .filter(|b| seen.insert(b.to_string()))
            .collect()
    };
    // Both sides answered 200 to a message that arrived after `since`.
    let both_since = |since: std::time::Instant, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let all = rec.all();
        let has = |p: &str| {
            all.iter()
                .any(|r| r.path == p && r.status == 200 && r.at > since && pred(&r.body))
        };
        (has("/am") && has("/ngx")).then_some(())
    };
    let text = |b: &serde_json::Value| b.to_string();

    // 1. Both firing (no EndsAt: resolve_timeout applies).
    let firing = vec![a1(std::time::UNIX_EPOCH), a2(std::time::UNIX_EPOCH)];
    let t0 = std::time::Instant::now();
    am.post(&firing).await;
    notifier.send(firing);
    wait_for("firing message on both sides", Duration::from_secs(40), || {
        both_since(t0, &|b| text(b).contains("FIRING"))
    })
    .await;

    // Fingerprints agree with Alertmanager's.
    let fps = am.fingerprints().await;
    let ours = crate::notify::dispatch::fingerprint(&a1(std::time::UNIX_EPOCH).labels);
    assert_eq!(fps.get("192.168.49.10:9113").cloned(), Some(format!("{ours:016x}")));

    // 2. One resolved.
    let t = now();
    let t1 = std::time::Instant::now();
    am.post(&[a1(t)]).await;
    notifier.send(vec![a1(t)]);
    wait_for(
        "message after the first resolution on both sides",
        Duration::from_secs(40),
        || both_since(t1, &|_| true),
    )
    .await;

    // 3. All resolved.
    let t = now();
    let t2 = std::time::Instant::now();
    am.post(&[a1(t), a2(t)]).await;
    notifier.send(vec![a1(t), a2(t)]);
    wait_for("resolved message on both sides", Duration::from_secs(40), || {
        both_since(t2, &|b| b["attachments"][0]["color"] == "good")
    })
    .await;
    running.stop().await;
    drop(am);
    server.stop().await;
    Some((distinct("/am"), distinct("/ngx")))
}

fn assert_same(am: &[serde_json::Value], ngx: &[serde_json::Value]) {
    let a: BTreeSet<String> = am.iter().map(|v| v.to_string()).collect();
    let n: BTreeSet<String> = ngx.iter().map(|v| v.to_string()).collect();
    assert_eq!(
        a,
        n,
        "Slack bodies differ\nalertmanager:\n{}\nngxprobe:\n{}",
        a.iter().cloned().collect::<Vec<_>>().join("\n"),
        n.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_receiver_bodies_match_alertmanager() {
    let Some((am, ngx)) = run_scenario(seed_config).await else {
        return;
    };
    eprintln!("seed scenario: {} distinct bodies", am.len());
    for b in &am {
        eprintln!("  {b}");
    }
    assert!(am.len() >= 2, "expected firing and resolved bodies: {am:?}");
    assert_same(&am, &ngx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_templates_match_alertmanager() {
    let Some((am, ngx)) = run_scenario(defaults_config).await else {
        return;
    };
    eprintln!("defaults scenario: {} distinct bodies", am.len());
    for b in &am {
        eprintln!("  {b}");
    }
    assert!(
        am.len() >= 3,
        "expected firing, partly and fully resolved bodies: {am:?}"
    );
    assert_same(&am, &ngx);
}
