//! Config errors name file, line and field; the seed config loads.
use std::path::Path;

use crate::notify::config::{Origin, parse};
use crate::notify::{Notifier, NotifyError};

fn err(yaml: &str) -> String {
    match parse(Path::new("/etc/am/alertmanager.yml"), yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(yaml: &str, want: &[&str]) {
    let e = err(yaml);
    for w in want {
        assert!(e.contains(w), "error {e:?} should contain {w:?}");
    }
    assert!(e.starts_with("/etc/am/alertmanager.yml:"), "{e}");
}

const OK_RECEIVERS: &str = "receivers:\n  - name: r\n";

#[test]
fn unknown_fields() {
    assert_err(
        "route:\n  receiver: r\n  group_wiat: 10s\nreceivers:\n  - name: r\n",
        &[":3:3", "route.group_wiat", "unknown field"],
    );
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n    email_configs: []\n",
        &[":4:5", "receivers[0].email_configs", "not supported"],
    );
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n    slack_configs:\n      - channel: '#x'\n        api_url: http://x/\n        titel: x\n",
        &[":7:9", "receivers[0].slack_configs[0].titel"],
    );
}

#[test]
fn bad_durations_and_matchers() {
    assert_err(
        &format!("route:\n  receiver: r\n  group_wait: 10 seconds\n{OK_RECEIVERS}"),
        &[":3:15", "route.group_wait", "invalid duration"],
    );
    assert_err(
        &format!(
            "route:\n  receiver: r\n  routes:\n    - receiver: r\n      matchers: ['sev==\"crit']\n{OK_RECEIVERS}"
        ),
        &[":5:", "route.routes[0].matchers[0]", "bad matcher"],
    );
    assert_err(
        &format!(
            "route:\n  receiver: r\n  routes:\n    - receiver: r\n      match_re:\n        team: '(a'\n{OK_RECEIVERS}"
        ),
        &[":6:15", "route.routes[0].match_re.team", "invalid regular expression"],
    );
    assert_err(
        &format!("route:\n  receiver: r\n  repeat_interval: 0s\n{OK_RECEIVERS}"),
        &[":3:20", "route.repeat_interval", "cannot be zero"],
    );
}

#[test]
fn missing_and_undefined_receivers() {
    assert_err(
        &format!("route:\n  group_wait: 1s\n{OK_RECEIVERS}"),
        &["route.receiver", "default receiver"],
    );
    assert_err(
        &format!("route:\n  receiver: r\n  routes:\n    - receiver: nope\n{OK_RECEIVERS}"),
        &[":4:17", "route.routes[0].receiver", "undefined receiver \"nope\""],
    );
    assert_err("receivers:\n  - name: r\n", &["route", "no route"]);
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n  - name: r\n",
        &[":4:11", "receivers[1].name", "not unique"],
    );
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n    slack_configs:\n      - channel: '#x'\n",
        &["receivers[0].slack_configs[0]", "no global Slack API URL"],
    );
}

#[test]
fn bad_templates() {
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n    slack_configs:\n      - api_url: http://x/\n        title: '{{ .Status | nosuch }}'\n",
        &[":6:16", "receivers[0].slack_configs[0].title", "bad template", "nosuch"],
    );
    assert_err(
        "route: { receiver: r }\nreceivers:\n  - name: r\n    slack_configs:\n      - api_url: http://x/\n        text: '{{ if .Status }}'\n",
        &["receivers[0].slack_configs[0].text", "bad template"],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.tmpl"),
        "{{ define \"x\" }}\nline two {{ .Oops \n{{ end }}\n",
    )
    .unwrap();
    let cfg_path = dir.path().join("alertmanager.yml");
    let e = parse(
        &cfg_path,
        "templates:\n  - '*.tmpl'\nroute: { receiver: r }\nreceivers: [{ name: r }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alertmanager.yml:2:") && e.contains("templates[0]") && e.contains("bad.tmpl:"),
        "{e}"
    );
}

#[test]
fn seed_receiver_loads_and_secrets_stay_hidden() {
    let yaml = r#"
global:
  slack_api_url: 'https://hooks.slack.com/services/T000/B000/XXXXSECRET'
receivers:
  - name: 'slack'
  - name: 'KongSangUk'
    slack_configs:
      - channel: '#ksu'
        send_resolved: true
        title: '[{{.Status | toUpper}}] {{.CommonLabels.alertname }}'
        text: >-
          | *Description:* {{.CommonAnnotations.description }}
route:
  group_wait: 10s
  group_interval: 10s
  repeat_interval: 10s
  receiver: 'slack'
  routes:
    - receiver: 'KongSangUk'
"#;
    let cfg = parse(Path::new("am.yml"), yaml).unwrap();
    let shown = format!("{cfg:?}") + &serde_json::to_string(&cfg).unwrap();
    assert!(!shown.contains("XXXXSECRET") && shown.contains("<secret>"), "{shown}");
    let dir = tempfile::tempdir().unwrap();
    assert!(Notifier::new(cfg, dir.path()).is_ok());
}

#[test]
fn secrets_from_files_and_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("url"), "https://hooks.example/abc\n").unwrap();
    let p = dir.path().join("am.yml");
    let ok = parse(
        &p,
        "route: { receiver: r }\nreceivers:\n  - name: r\n    slack_configs:\n      - api_url_file: url\n",
    )
    .unwrap();
    match &crate::notify::compile::compile(&ok).unwrap().receivers["r"].integrations[0].url {
        crate::notify::compile::UrlSource::File(f) => assert_eq!(f, &dir.path().join("url")),
        other => panic!("{other:?}"),
    }
    let e = parse(&p, "route: { receiver: r }\nreceivers:\n  - name: r\n    webhook_configs:\n      - url: '${NGXPROBE_TEST_UNSET_VAR}'\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NGXPROBE_TEST_UNSET_VAR") && e.contains("webhook_configs[0].url"),
        "{e}"
    );
}

#[test]
fn embedded_block_errors_carry_the_prefix() {
    // The lead embeds NotifyConfig under `alertmanager:` in the agent config.
    let text = "web: {}\nalertmanager:\n  route:\n    receiver: nope\n  receivers:\n    - name: r\n";
    let block: crate::notify::NotifyConfig = serde_saphyr::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::from_value(v["alertmanager"].clone()).ok())
        .unwrap();
    let mut block = block;
    block.origin = Origin::embedded(Path::new("ngxprobe.yml"), text, &["alertmanager"]);
    let dir = tempfile::tempdir().unwrap();
    let e = match Notifier::new(block, dir.path()) {
        Err(NotifyError::Config(f)) => f.to_string(),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("should fail"),
    };
    assert_eq!(
        e,
        "ngxprobe.yml:4:15: alertmanager.route.receiver: undefined receiver \"nope\" used in route"
    );
}
