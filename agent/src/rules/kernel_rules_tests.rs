//! The default `ngxprobe-kernel` alerts (listener dropping connections,
//! accept queue nearly full): promtool unit tests run by ngxprobe's own
//! `test rules` and by Debian's promtool as the oracle, and the same rules
//! in deploy/prometheusrule.yaml.
use std::path::PathBuf;

use crate::rules::{file, manager::DEFAULT_RULES_YAML, promtool};

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ngxprobe-kernel-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config path with Slack markup in it, and how annotations show it.
const CONF: &str = "/srv/<!channel>&x.conf";
const SHOWN: &str = "/srv/_!channel__x.conf";
const LISTEN: &str = "0.0.0.0:80";

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn unit_test_yaml(rules: &std::path::Path) -> String {
    let series = |name: &str| format!("'{name}{{conf_path=\"{CONF}\", listen_address=\"{LISTEN}\"}}'");
    let drop_desc = format!(
        "The kernel dropped connection attempts on listener {LISTEN} of the nginx instance using {SHOWN} \
         (ngxprobe_listen_drops_total, the socket's sk_drops): a SYN or handshake-completing ACK arrived while its \
         accept queue was full, or the connection could not be created. Clients see connect timeouts and SYN \
         retries; nginx never sees these connections."
    );
    let drop_runbook = "Compare ngxprobe_listen_queue_length with ngxprobe_listen_queue_max for this listener. Queue \
         at its limit: nginx is not accepting fast enough (workers busy, blocked on disk or upstreams, stopped, or too \
         few: check worker CPU and ngxprobe_nginx_workers) or the backlog is too small for bursts (raise \"listen ... \
         backlog=\" and net.core.somaxconn, which caps it). Queue not full: look at memory pressure and \
         ngxprobe_netns_listen_overflows_total / ngxprobe_netns_syncookies_sent_total (SYN flood).";
    let full_desc = format!(
        "For 1 minute the accept queue of listener {LISTEN} of the nginx instance using {SHOWN} has held more than \
         80% of its limit (ngxprobe_listen_queue_length vs ngxprobe_listen_queue_max): connections wait for nginx to \
         accept them, and once the queue is full the kernel drops new ones."
    );
    let full_runbook = "nginx accepts too slowly: check worker CPU, blocking work in workers (disk I/O, slow \
         upstreams, Lua), worker_processes and worker_connections (ngxprobe_nginx_workers). If the load is bursty but \
         short, raise \"listen ... backlog=\" together with net.core.somaxconn.";
    let labels = format!(
        "{{ severity: warning, conf_path: {}, listen_address: {} }}",
        q(CONF),
        q(LISTEN)
    );
    format!(
        r#"rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      # 12 drops at 2m, none after.
      - series: {drops}
        values: '0x7 12x40'
      # 450 of 511 queued from 1m to 4m (88%), then 100.
      - series: {len}
        values: '0x3 450x12 100x4'
      - series: {max}
        values: '511x20'
    alert_rule_test:
      - eval_time: 1m45s
        alertname: NginxListenerDroppingConnections
        exp_alerts: []
      - eval_time: 3m
        alertname: NginxListenerDroppingConnections
        exp_alerts:
          - exp_labels: {labels}
            exp_annotations:
              summary: {drop_summary}
              description: {drop_desc}
              runbook: {drop_runbook}
      - eval_time: 9m
        alertname: NginxListenerDroppingConnections
        exp_alerts: []
      - eval_time: 1m30s
        alertname: NginxListenQueueNearlyFull
        exp_alerts: []
      - eval_time: 2m30s
        alertname: NginxListenQueueNearlyFull
        exp_alerts:
          - exp_labels: {labels}
            exp_annotations:
              summary: {full_summary}
              description: {full_desc}
              runbook: {full_runbook}
      - eval_time: 4m30s
        alertname: NginxListenQueueNearlyFull
        exp_alerts: []
"#,
        rules = rules.display(),
        drops = series("ngxprobe_listen_drops_total"),
        len = series("ngxprobe_listen_queue_length"),
        max = series("ngxprobe_listen_queue_max"),
        drop_summary = q(&format!(
            "nginx listener {LISTEN} dropped 12 connection attempts in the last 5m"
        )),
        drop_desc = q(&drop_desc),
        drop_runbook = q(drop_runbook),
        full_summary = q(&format!(
            "nginx listener {LISTEN} accept queue is over 80% full (450 connections waiting)"
        )),
        full_desc = q(&full_desc),
        full_runbook = q(full_runbook),
    )
}

/// `promtool test rules FILE` by Debian's promtool (the oracle); `None`
/// (skip, or a failure under CI) when it is not installed.
fn debian_promtool_test_rules(file: &std::path::Path) -> Option<std::process::Output> {
    let bin = ngxprobe_e2e::util::require_tool("promtool", "apt-get install prometheus")?;
    Some(
        std::process::Command::new(bin)
            .args(["test", "rules"])
            .arg(file)
            .output()
            .expect("run promtool"),
    )
}

#[test]
fn kernel_default_rules_pass_their_unit_tests_here_and_in_promtool() {
    let rules = write_tmp("default.rules.yml", DEFAULT_RULES_YAML);
    let test = write_tmp("kernel.test.yml", &unit_test_yaml(&rules));
    crate::rules::tests::manager_tests::passes_ours_and_promtool(&test);
}

/// The unit test can fail: a wrong expectation is reported by both.
#[test]
fn kernel_default_rules_unit_test_catches_a_wrong_expectation() {
    let rules = write_tmp("default2.rules.yml", DEFAULT_RULES_YAML);
    let text = unit_test_yaml(&rules).replace("dropped 12 connection", "dropped 13 connection");
    let test = write_tmp("kernel-wrong.test.yml", &text);
    let mut warnings = Vec::new();
    assert!(promtool::run_test_file(&test, &mut warnings).is_err());
    let Some(out) = debian_promtool_test_rules(&test) else {
        return;
    };
    assert!(!out.status.success(), "promtool accepted a wrong expectation");
}

/// deploy/'s PrometheusRule carries the same kernel alerts (expression,
/// `for`, labels) as the agent's built-in group.
#[test]
fn kernel_rules_in_deploy_match_the_defaults() {
    let deploy = include_str!("../../../deploy/prometheusrule.yaml");
    let ours = file::parse_text("default_rules.yml", DEFAULT_RULES_YAML).expect("default rules parse");
    let theirs = file::parse_text("prometheusrule.yaml", deploy).expect("deploy rules parse");
    let group = |gs: &[file::GroupDef], name: &str| {
        gs.iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("group {name}"))
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.expr.clone(), r.for_ms, r.labels.clone()))
            .collect::<Vec<_>>()
    };
    let a = group(&ours, "ngxprobe-kernel");
    assert_eq!(a.len(), 2, "{a:?}");
    // The kernel-event groups are the same rules in deploy/, under their
    // dotted names (the nginx group's thresholds are tuned for a cluster
    // there, and deploy/ adds the agent's self-monitoring).
    for name in ["ngxprobe-kernel", "ngxprobe-nginx-tcp-workers"] {
        let dotted = name.replacen("ngxprobe-", "ngxprobe.", 1);
        let a = group(&ours, name);
        assert!(!a.is_empty(), "group {name} has rules");
        assert_eq!(a, group(&theirs, &dotted), "group {name}");
    }
}
