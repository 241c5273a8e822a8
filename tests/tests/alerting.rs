//! The whole alerting pipeline with real parts: real nginx under wrk load →
//! ngxprobe's eBPF counters → /metrics → embedded store → rule evaluation →
//! built-in notifier → a Slack webhook POST to a real local HTTP server
//! ([`SlackReceiver`]), and the resolved POST once the condition is gone.
//!
//! The receiver is the seed's (`/work/shared/seeds/000_bf0a491ec61e482c.txt`)
//! `slack-notifications` receiver, verbatim apart from `api_url`. Two rules:
//!
//! * (a) the seed's rule verbatim: `nginx_http_requests_total{instance=
//!   "192.168.49.10:9113",job="nginx"} > 100`, `for: 1m`. ngxprobe's series
//!   have no `instance`/`job` (there is no scrape), so the agent is configured
//!   with the constant labels `labels: {instance: "192.168.49.10:9113", job:
//!   nginx}` — the documented way to make such rules match. A counter only
//!   grows, so `> 100` never resolves while nginx runs: the alert is resolved
//!   by stopping nginx (its series go away → stale → no result → resolved).
//! * (b) a rate variant: `rate(nginx_http_requests_total[5s]) > 100`,
//!   `for: 2s`: fires under load, resolves when the load stops.
//!
//! Route: `group_wait 1s, group_interval 1s, repeat_interval 1h`, plus
//! `group_by: [conf_path]`. The agent watches every nginx on the host, and
//! the rules (like the seed's) do not name an instance; grouping by
//! `conf_path` puts our instance's alert in a group of its own, so another
//! nginx on the machine (a developer's, another test binary's) cannot change
//! what our group sends. Our group's POSTs are recognised by `conf_path` in
//! the default `fallback` text (`[FIRING:1] <conf_path> (...)`).
//! `discovery.stopped_instance_retention` is 1s (default 5m: a stopped
//! instance's series stay exported for 5 minutes, which would hold (a)'s
//! alert firing for that long after nginx stops).
//!
//! (c) Forwarding (`alerting.alertmanagers`) to Debian's real Alertmanager,
//! as to a cluster's: the alert arrives with `global.external_labels` (a
//! literal and one from the environment) added, the rule's own label of the
//! same name kept, and `$externalLabels` expanded in its annotation.
use ngxprobe_e2e::AgentOptions;
use ngxprobe_e2e::clients::WrkRun;
use ngxprobe_e2e::seed::{self, CHANNEL, SEED_RULE, SUMMARY, TITLE};
use ngxprobe_e2e::slack_receiver::{Received, SlackReceiver};
use ngxprobe_e2e::util::{ChildGuard, Poll, TempDir, free_port, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use std::time::{Duration, Instant};

fn agent_config(rule_file: &std::path::Path, hook: &str, constant_labels: bool) -> String {
    let receivers = seed::receivers(hook);
    assert_ne!(receivers, seed::SEED_RECEIVERS, "api_url not replaced");
    let receivers_indented = seed::indent(&receivers, "  ");
    format!(
        r#"labels: {labels}
discovery:
  stopped_instance_retention: 1s
rules:
  rule_files: ["{rules}"]
  evaluation_interval: 1s
alertmanager:
  route:
    receiver: slack-notifications
    group_by: [conf_path]
    group_wait: 1s
    group_interval: 1s
    repeat_interval: 1h
{receivers_indented}"#,
        labels = if constant_labels {
            r#"{ instance: "192.168.49.10:9113", job: "nginx" }"#
        } else {
            "{}"
        },
        rules = rule_file.display(),
    )
}

/// Is this POST about our nginx (its group) and our alert?
fn ours(r: &Received, conf: &str) -> bool {
    r.att_str("title") == TITLE && r.att_str("fallback").contains(conf)
}

/// Checks a Slack body field by field. `others` are the label values after
/// the group label in the default subject (sorted by label name).
fn check_body(r: &Received, conf: &str, firing: bool, others: &str) {
    assert_eq!(r.method, "POST", "{r:?}");
    assert_eq!(r.path, "/hook", "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type: {r:?}"
    );
    let v = r.json().unwrap();
    assert_eq!(v["channel"], CHANNEL, "{}", r.body);
    let a = r.attachment().unwrap();
    assert_eq!(a["title"], TITLE, "{}", r.body);
    assert_eq!(a["text"], SUMMARY, "{}", r.body);
    assert_eq!(a["color"], if firing { "danger" } else { "good" }, "{}", r.body);
    let subject = if firing {
        format!("[FIRING:1] {conf} ({others})")
    } else {
        format!("[RESOLVED] {conf} ({others})")
    };
    let fallback = a["fallback"].as_str().unwrap_or_default();
    assert!(
        fallback.starts_with(&format!("{subject} | ")),
        "fallback {fallback:?}, want {subject:?} | <link>\n{}",
        r.body
    );
}

struct Setup {
    // Drop order: agent, nginx, receiver, rules dir.
    agent: Agent,
    nginx: Option<Nginx>,
    rx: SlackReceiver,
    _rules: TempDir,
    conf: String,
}

fn setup(rule: &str, constant_labels: bool) -> Setup {
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let rx = SlackReceiver::start().expect("start slack receiver");
    let rules = TempDir::new("rules").unwrap();
    let rule_file = rules.path().join("alerting_rules.yml");
    std::fs::write(&rule_file, rule).unwrap();
    let cfg = agent_config(&rule_file, &rx.url("/hook"), constant_labels);
    let agent = Agent::start_with_config(&cfg).expect("start ngxprobe with the alerting config");
    agent
        .wait_instance_up(&conf)
        .expect("agent reports the nginx instance up");
    // The rule file is loaded: one group, one rule.
    let groups = agent.get_json("/api/v1/rules").unwrap();
    let names: Vec<String> = groups["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.iter().any(|n| n == "WebServerConnectivity"),
        "rule not loaded: {groups}"
    );
    Setup {
        agent,
        nginx: Some(nginx),
        rx,
        _rules: rules,
        conf,
    }
}

/// Our alert's state in /api/v1/alerts ("pending"/"firing"), if any.
fn alert_state(agent: &Agent, conf: &str) -> anyhow::Result<Option<(String, serde_json::Value)>> {
    let v = agent.get_json("/api/v1/alerts")?;
    Ok(v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "WebServerConnectivity" && a["labels"]["conf_path"] == conf)
        .map(|a| (a["state"].as_str().unwrap_or("").to_string(), a.clone())))
}

fn ours_between(rx: &SlackReceiver, conf: &str, from: usize) -> Vec<Received> {
    rx.all().into_iter().skip(from).filter(|r| ours(r, conf)).collect()
}

/// (a) The seed's rule verbatim, `for: 1m`.
#[test]
fn seed_rule_fires_and_resolves() {
    let _g = guard("seed_rule_fires_and_resolves");
    let mut s = setup(SEED_RULE, true);
    let conf = s.conf.clone();
    let url = s.nginx.as_ref().unwrap().url("/");

    // The constant labels make the seed's selector match our series.
    let sel = r#"nginx_http_requests_total{instance="192.168.49.10:9113",job="nginx"}"#;
    // (The store takes its first sample within one storage interval.)
    poll(
        "the seed's selector to match our instance in the store",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let v = s.agent.query(sel)?;
            let hit = v["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["metric"]["conf_path"] == conf.as_str()));
            Ok(if hit {
                Poll::Ready(())
            } else {
                Poll::Pending(v.to_string())
            })
        },
    )
    .unwrap();
    assert_eq!(
        alert_state(&s.agent, &conf).unwrap(),
        None,
        "alert active before any load"
    );

    // A short burst takes the counter past 100 for good.
    let t_load = Instant::now();
    let w = WrkRun::spawn(&["-t1", "-c10", "-d2s", &url], Duration::from_secs(2))
        .unwrap()
        .wait()
        .unwrap();
    assert!(w.requests > 200, "{}", w.output);

    // Pending within seconds, with the seed's labels.
    let (_, pending) = poll(
        "the seed's alert to be pending",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            Ok(match alert_state(&s.agent, &conf)? {
                Some((st, a)) => Poll::Ready((st, a)),
                None => Poll::Pending("no alert".into()),
            })
        },
    )
    .unwrap();
    eprintln!(
        "[e2e] alert active {:.1?} after load start: {pending}",
        t_load.elapsed()
    );
    for (k, v) in [
        ("instance", "192.168.49.10:9113"),
        ("job", "nginx"),
        ("severity", "critical"),
    ] {
        assert_eq!(pending["labels"][k], v, "{pending}");
    }

    let n0 = 0;
    let fire =
        s.rx.wait_for("the firing POST (for: 1m)", n0, Duration::from_secs(80), |r| {
            ours(r, &conf) && r.is_firing()
        })
        .unwrap();
    let fire_after = fire.at.duration_since(t_load);
    eprintln!("[e2e] firing POST {fire_after:.2?} after load start:\n{}", fire.body);
    check_body(
        &fire,
        &conf,
        true,
        "WebServerConnectivity 192.168.49.10:9113 nginx critical",
    );
    assert!(
        fire_after >= Duration::from_secs(60),
        "fired before for: 1m had elapsed ({fire_after:?})"
    );
    assert!(
        fire_after <= Duration::from_secs(70),
        "firing POST took {fire_after:?} (for: 1m + group_wait 1s + a few s expected)"
    );

    // Stop nginx: its series disappear, the alert resolves.
    let t_stop = Instant::now();
    drop(s.nginx.take());
    let res =
        s.rx.wait_for(
            "the resolved POST after nginx stopped",
            fire.seq + 1,
            Duration::from_secs(20),
            |r| ours(r, &conf) && r.is_resolved(),
        )
        .unwrap();
    let res_after = res.at.duration_since(t_stop);
    eprintln!("[e2e] resolved POST {res_after:.2?} after nginx stopped:\n{}", res.body);
    check_body(
        &res,
        &conf,
        false,
        "WebServerConnectivity 192.168.49.10:9113 nginx critical",
    );
    // Exactly one firing and one resolved notification for our group.
    let all = ours_between(&s.rx, &conf, 0);
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![fire.seq, res.seq],
        "unexpected extra POSTs: {:#?}",
        all.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert!(s.rx.errors().is_empty(), "{:?}", s.rx.errors());
}

/// (b) The rate variant: fires under load, resolves when the load stops.
#[test]
fn rate_rule_fires_and_resolves() {
    let _g = guard("rate_rule_fires_and_resolves");
    let s = setup(&seed::rate_rule(), false);
    let conf = s.conf.clone();
    let url = s.nginx.as_ref().unwrap().url("/");
    assert_eq!(
        alert_state(&s.agent, &conf).unwrap(),
        None,
        "alert active before any load"
    );

    const LOAD: Duration = Duration::from_secs(10);
    let t_load = Instant::now();
    let mut wrk = WrkRun::spawn(&["-t1", "-c10", "-d10s", &url], LOAD).unwrap();
    let fire =
        s.rx.wait_for("the firing POST", 0, Duration::from_secs(10), |r| {
            ours(r, &conf) && r.is_firing()
        })
        .unwrap();
    let fire_after = fire.at.duration_since(t_load);
    eprintln!("[e2e] firing POST {fire_after:.2?} after load start:\n{}", fire.body);
    check_body(&fire, &conf, true, "WebServerConnectivity critical");
    assert!(wrk.is_running(), "load ended before the alert fired");
    // for: 2s + group_wait 1s at least; the rate needs 2 samples (1 s apart)
    // and the evaluation runs every 1 s, so a few seconds at most.
    assert!(fire_after >= Duration::from_secs(3), "fired too early: {fire_after:?}");
    assert!(fire_after <= Duration::from_secs(8), "firing POST took {fire_after:?}");

    let w = wrk.wait().unwrap();
    let t_end = Instant::now();
    let rate = w.requests as f64 / LOAD.as_secs_f64();
    eprintln!(
        "[e2e] load: {} requests ({rate:.0}/s), ended {:.2?} after the firing POST",
        w.requests,
        t_end.duration_since(fire.at)
    );
    assert!(rate > 500.0, "load too light for the rule: {}", w.output);

    let res =
        s.rx.wait_for("the resolved POST", fire.seq + 1, Duration::from_secs(20), |r| {
            ours(r, &conf) && r.is_resolved()
        })
        .unwrap();
    let res_after = res.at.duration_since(t_end);
    eprintln!("[e2e] resolved POST {res_after:.2?} after load end:\n{}", res.body);
    check_body(&res, &conf, false, "WebServerConnectivity critical");
    // rate over [5s] falls below 100/s within ~5 s of the last request, then
    // the next evaluation and group_interval 1s.
    assert!(res_after <= Duration::from_secs(10), "resolved POST took {res_after:?}");

    // Nothing changed between firing and resolved (the alert stayed firing
    // for ~{LOAD - fire_after} s with group_interval 1s): no repeat, since
    // repeat_interval is 1h.
    let between: Vec<Received> = ours_between(&s.rx, &conf, 0);
    assert_eq!(
        between.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![fire.seq, res.seq],
        "duplicate notifications: {:#?}",
        between.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    // And nothing more after the resolution (3 group intervals).
    let after =
        s.rx.wait_for("", res.seq + 1, Duration::from_secs(3), |r| ours(r, &conf));
    assert!(after.is_err(), "POST after the resolved one: {after:?}");
    assert!(s.rx.errors().is_empty(), "{:?}", s.rx.errors());
}

/// (c) A cluster Alertmanager (Debian's, on 127.0.0.1, clustering off)
/// receives the agent's alert with the external labels.
#[test]
fn forwarded_alerts_reach_alertmanager_with_the_external_labels() {
    let _g = guard("forwarded_alerts_external_labels");
    let Some(am_bin) = ngxprobe_e2e::util::require_tool(
        "/usr/bin/prometheus-alertmanager",
        "apt-get install prometheus-alertmanager (cargo xtask setup)",
    ) else {
        return;
    };
    let dir = TempDir::new("am-external-labels").unwrap();
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        "route:\n  receiver: none\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let port = free_port().unwrap();
    let am_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let am_log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
    let _am = ChildGuard::spawn(
        std::process::Command::new(&am_bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.path().join("am-data").display()))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .stdin(std::process::Stdio::null())
            .stdout(am_log.try_clone().unwrap())
            .stderr(am_log),
        "prometheus-alertmanager",
    )
    .unwrap();
    poll(
        "Alertmanager ready",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(match ngxprobe_e2e::clients::http_get(am_addr, "/-/ready") {
                Ok((200, _)) => Poll::Ready(()),
                other => Poll::Pending(format!("{:?}", other.map(|(s, _)| s))),
            })
        },
    )
    .unwrap();

    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"groups:
  - name: e2e-external-labels
    interval: 1s
    rules:
      - alert: E2EExternalLabels
        expr: vector(1)
        labels:
          severity: info
          node: rule-node
        annotations:
          summary: 'from cluster {{ $externalLabels.cluster }} in {{ $externalLabels.region }}'
"#,
    )
    .unwrap();
    let region = format!("e2e-region-{}", std::process::id());
    let config = format!(
        r#"global:
  external_labels:
    cluster: e2e-literal
    region: ${{E2E_REGION}}
    node: external-node
rules:
  rule_files: ["{}"]
  default_rules: false
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{am_addr}"]
"#,
        rules.display()
    );
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(config),
        env: vec![("E2E_REGION".into(), region.clone())],
        ..Default::default()
    })
    .expect("start agent");
    let alert = poll(
        "the alert in Alertmanager",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let v = ngxprobe_e2e::prometheus::api_get(am_addr, "/api/v2/alerts", &[])?;
            Ok(
                match v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["labels"]["alertname"] == "E2EExternalLabels")
                {
                    Some(a) => Poll::Ready(a.clone()),
                    None => Poll::Pending(format!("{v}")),
                },
            )
        },
    )
    .unwrap();
    assert_eq!(
        alert["labels"],
        serde_json::json!({
            "alertname": "E2EExternalLabels",
            "severity": "info",
            "node": "rule-node",
            "cluster": "e2e-literal",
            "region": region,
        }),
        "{alert}"
    );
    assert_eq!(
        alert["annotations"]["summary"],
        format!("from cluster e2e-literal in {region}"),
        "{alert}"
    );
    // The agent's own view of the alert has no external labels (as Prometheus's).
    let own = agent.get_json("/api/v1/alerts").unwrap();
    let own = own["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "E2EExternalLabels")
        .cloned()
        .unwrap_or_else(|| panic!("no E2EExternalLabels in {own}"));
    assert!(own["labels"].get("cluster").is_none(), "{own}");
}
