use std::collections::BTreeMap;

use super::template::{self, AlertData};
use crate::compat::float::format_g as go_fmt_g;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn exp(text: &str, value: f64) -> String {
    let l = labels(&[("instance", "web-1.example.com:9113"), ("job", "nginx")]);
    let e = labels(&[("cluster", "prod")]);
    let d = AlertData {
        labels: &l,
        external_labels: &e,
        external_url: "http://prom.example:9090/prefix",
        value,
        ts_ms: 1_700_000_000_123,
        query: None,
    };
    template::expand("__alert_T", text, &d).unwrap_or_else(|e| format!("ERR {e}"))
}

#[test]
fn rules_go_float_formatting() {
    for (v, want) in [
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (0.1 + 0.2, "0.30000000000000004"),
        (3.0, "3"),
        (-2.5, "-2.5"),
        (f64::INFINITY, "+Inf"),
        (f64::NAN, "NaN"),
        (0.0, "0"),
        (1e21, "1e+21"),
    ] {
        assert_eq!(go_fmt_g(v, None), want, "{v}");
    }
    for (v, p, want) in [
        (1234.5678, 4, "1235"),
        (12345.0, 4, "1.234e+04"),
        (1.5, 4, "1.5"),
        (0.000012345, 4, "1.234e-05"),
        (999.99, 4, "1000"),
        (100.0, 4, "100"),
    ] {
        assert_eq!(go_fmt_g(v, Some(p)), want, "{v} {p}");
    }
}

#[test]
fn rules_templates_like_prometheus() {
    let cases: &[(&str, f64, &str)] = &[
        (
            "{{ $labels.instance }} of {{ $labels.job }}",
            1.0,
            "web-1.example.com:9113 of nginx",
        ),
        ("[{{ $labels.missing }}]", 1.0, "[]"),
        ("[{{ index $labels \"missing\" }}]", 1.0, "[]"),
        ("{{ $value }}", 1e6, "1e+06"),
        ("{{ $value }}", 0.25, "0.25"),
        ("{{ .Value }}", 42.0, "42"),
        ("{{ $externalLabels.cluster }}", 1.0, "prod"),
        ("{{ humanize $value }}", 1234567.0, "1.235M"),
        ("{{ humanize $value }}", 0.0012, "1.2m"),
        ("{{ humanize 0 }}", 0.0, "0"),
        ("{{ humanize1024 $value }}", 1048576.0, "1Mi"),
        ("{{ humanize1024 $value }}", 0.5, "0.5"),
        ("{{ humanizeDuration $value }}", 90061.0, "1d 1h 1m 1s"),
        ("{{ humanizeDuration $value }}", 3.5, "3.5s"),
        ("{{ humanizeDuration $value }}", 0.0012, "1.2ms"),
        ("{{ humanizeDuration $value }}", 0.0, "0s"),
        ("{{ humanizePercentage $value }}", 0.1234, "12.34%"),
        (
            "{{ humanizeTimestamp $value }}",
            1435065584.128,
            "2015-06-23 13:19:44.128 +0000 UTC",
        ),
        ("{{ printf \"%.2f\" $value }}", 1.23456, "1.23"),
        ("{{ $labels.job | toUpper }}", 1.0, "NGINX"),
        (
            "{{ \"HeLLo\" | toLower }} {{ title \"hello world\" }}",
            1.0,
            "hello Hello World",
        ),
        ("{{ $labels.instance | stripPort }}", 1.0, "web-1.example.com"),
        ("{{ stripDomain $labels.instance }}", 1.0, "web-1:9113"),
        ("{{ if match \"^web-\" $labels.instance }}yes{{ end }}", 1.0, "yes"),
        (
            "{{ reReplaceAll \"(\\\\w+)-(\\\\d)\" \"$2-$1\" \"web-1\" }}",
            1.0,
            "1-web",
        ),
        ("{{ safeHtml \"<b>\" }}", 1.0, "<b>"),
        ("{{ urlQueryEscape \"a b&c\" }}", 1.0, "a+b%26c"),
        ("{{ parseDuration \"1m30s\" }}", 1.0, "90"),
        ("{{ toDuration 90.5 }}", 1.0, "1m30.5s"),
        ("{{ now }}", 1.0, "1.700000000123e+09"),
        (
            "{{ externalURL }} {{ pathPrefix }}",
            1.0,
            "http://prom.example:9090/prefix /prefix",
        ),
        (
            "{{ graphLink \"up == 0\" }}",
            1.0,
            "/graph?g0.expr=up+%3D%3D+0&g0.tab=0",
        ),
        (
            "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
            1.0,
            "instance=web-1.example.com:9113;job=nginx;",
        ),
        ("{{ with $labels.job }}job={{ . }}{{ end }}", 1.0, "job=nginx"),
        ("{{ if gt $value 10.0 }}big{{ else }}small{{ end }}", 11.0, "big"),
        ("{{ $x := 5.5 }}{{ $x }}", 1.0, "5.5"),
        ("plain text", 1.0, "plain text"),
    ];
    let mut bad = vec![];
    for (t, v, want) in cases {
        let got = exp(t, *v);
        if got != *want {
            bad.push(format!("{t:?} value {v}: got {got:?}, want {want:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn rules_template_errors_like_prometheus() {
    assert_eq!(
        template::parse_test("__alert_InstanceDown", "Instance {{ $label.foo }} down").unwrap_err(),
        "template: __alert_InstanceDown:1: undefined variable \"$label\""
    );
    assert!(
        template::parse_test("__alert_X", "{{ nosuchfunc 1 }}")
            .unwrap_err()
            .contains("function \"nosuchfunc\" not defined")
    );
    assert!(template::parse_test("__alert_X", "{{ humanize $value ").is_err());
    assert!(template::parse_test("__alert_X", "{{ query \"up\" | first | value }}").is_ok());
    assert!(exp("{{ humanize \"abc\" }}", 1.0).starts_with("ERR error executing template __alert_T"));
}
/// `NGXPROBE_RULES_CLI="test FILE…"` (or `check FILE…`) prints the CLI's report.
#[test]
fn rules_cli_from_env() {
    let Ok(args) = std::env::var("NGXPROBE_RULES_CLI") else {
        return;
    };
    let mut it = args.split_whitespace();
    let mode = it.next().unwrap_or("");
    let files: Vec<std::path::PathBuf> = it.map(Into::into).collect();
    let mut out = Vec::new();
    let code = if mode == "test" {
        super::test_rules_cli(&files, &mut out)
    } else {
        super::check_rules_cli(&files, &mut out)
    };
    println!("{}exit {code}", String::from_utf8_lossy(&out));
}

pub(super) mod manager_tests {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
        time::{Duration, UNIX_EPOCH},
    };

    use crate::{
        alerts::{Alert, AlertSink},
        compat::PromDuration,
        rules::{RuleManager, RulesConfig, eval::AlertState, file, promtool},
        series::MemStore,
        series::{Labels, MatchOp, Matcher, ReadBudget, Selection, SeriesReader, SeriesWriter, is_stale_marker},
    };

    #[derive(Default)]
    struct Sink(Mutex<Vec<Vec<Alert>>>);
    impl AlertSink for Sink {
        fn send(&self, alerts: Vec<Alert>) {
            self.0.lock().unwrap().push(alerts);
        }
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn write_tmp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ngxprobe-rules-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ms(t: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(t)
    }

    const RULES: &str = r#"
groups:
  - name: nginx
    interval: 10s
    rules:
      - alert: NginxDown
        expr: nginx_up == 0
        for: 30s
        labels: { severity: critical }
        annotations: { summary: "down: {{ $labels.conf_path }} value {{ $value }}" }
      - record: nginx:up:sum
        expr: sum by (conf_path) (nginx_up)
"#;

    fn manager(store: &Arc<MemStore>, sink: &Arc<Sink>) -> RuleManager {
        let cfg = RulesConfig {
            default_rules: false,
            external_labels: [("cluster".to_string(), "prod".to_string())].into(),
            external_url: "http://agent:9113".into(),
            resend_delay: PromDuration::from_secs(60),
            ..RulesConfig::default()
        };
        RuleManager::new(store.clone(), store.clone(), sink.clone(), cfg)
    }

    #[test]
    fn rules_alert_lifecycle_and_notifications() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = manager(&store, &sink);
        let f = write_tmp("lifecycle.yml", RULES);
        assert_eq!(m.load(&[f]).unwrap(), 2);
        let up = l(&[("__name__", "nginx_up"), ("conf_path", "/etc/nginx/nginx.conf")]);
        // nginx down from t=0 to t=60s, then up again.
        for t in (0..=200_000).step_by(10_000) {
            store.append(&up, t, if t <= 60_000 { 0.0 } else { 1.0 }).unwrap();
        }
        for t in (0..=200_000).step_by(10_000) {
            m.eval_at(t);
            let g = &m.groups()[0];
            let r = &g.rules[0];
            let want = match t {
                0..=20_000 => AlertState::Pending,
                30_000..=60_000 => AlertState::Firing,
                _ => AlertState::Inactive,
            };
            assert_eq!(r.state(), want, "t={t}");
        }
        let sent = sink.0.lock().unwrap().clone();
        // First send when firing at 30s; resolved at 70s sent at once; the
        // resolved alert is re-sent every resend delay (kept 15m): at 140s.
        let flat: Vec<&Alert> = sent.iter().flatten().collect();
        assert_eq!(flat.len(), 3, "{flat:#?}");
        assert_eq!(flat[2].ends_at, ms(70_000));
        let firing = flat[0];
        assert_eq!(firing.labels.get("alertname").unwrap(), "NginxDown");
        assert_eq!(firing.labels.get("cluster").unwrap(), "prod", "external labels added");
        assert_eq!(firing.labels.get("severity").unwrap(), "critical");
        assert_eq!(
            firing.annotations.get("summary").unwrap(),
            "down: /etc/nginx/nginx.conf value 0"
        );
        assert_eq!(firing.starts_at, ms(30_000));
        // EndsAt = now + 4 × max(resend_delay 1m, interval 10s).
        assert_eq!(firing.ends_at, ms(30_000 + 240_000));
        assert_eq!(
            firing.generator_url,
            "http://agent:9113/graph?g0.expr=nginx_up+%3D%3D+0&g0.tab=1"
        );
        let resolved = flat[1];
        assert_eq!(resolved.ends_at, ms(70_000));
        assert_eq!(resolved.starts_at, ms(30_000));
        // ALERTS: pending then firing, then a staleness marker once resolved.
        let alerts = store
            .select(&Selection::new(
                &[Matcher::new(MatchOp::Equal, "__name__", "ALERTS").unwrap()],
                0,
                300_000,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        let pending = alerts
            .iter()
            .find(|s| s.labels.get("alertstate") == Some("pending"))
            .unwrap();
        // Written only once `for` state was restored: after the 2nd evaluation of a
        // group loaded at startup (Prometheus does the same).
        assert_eq!(pending.samples.first().unwrap(), &(20_000, 1.0));
        assert!(
            is_stale_marker(pending.samples.last().unwrap().1),
            "pending series goes stale at 30s"
        );
        assert_eq!(pending.samples.last().unwrap().0, 30_000);
        let firing_s = alerts
            .iter()
            .find(|s| s.labels.get("alertstate") == Some("firing"))
            .unwrap();
        assert_eq!(firing_s.samples.last().unwrap().0, 70_000);
        assert!(is_stale_marker(firing_s.samples.last().unwrap().1));
        let for_state = store
            .select(&Selection::new(
                &[Matcher::new(MatchOp::Equal, "__name__", "ALERTS_FOR_STATE").unwrap()],
                0,
                300_000,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        assert_eq!(for_state[0].samples[0], (20_000, 0.0), "ActiveAt in seconds");
        // Recording rule output.
        let rec = store
            .select(&Selection::new(
                &[Matcher::new(MatchOp::Equal, "__name__", "nginx:up:sum").unwrap()],
                0,
                300_000,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].samples.last().unwrap(), &(200_000, 1.0));
    }

    #[test]
    fn rules_firing_alerts_are_resent_every_resend_delay() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = manager(&store, &sink);
        m.load(&[write_tmp(
            "resend.yml",
            "groups:\n- name: g\n  rules:\n  - alert: Always\n    expr: vector(1)\n",
        )])
        .unwrap();
        for t in (0..=180_000).step_by(1_000) {
            m.eval_at(t);
        }
        let times: Vec<std::time::SystemTime> = sink.0.lock().unwrap().iter().flatten().map(|a| a.ends_at).collect();
        // Sent at 0, then when last_sent + 1m < now: 61s, 122s.
        assert_eq!(times, vec![ms(240_000), ms(61_000 + 240_000), ms(122_000 + 240_000)]);
    }

    #[test]
    fn rules_recording_rule_staleness() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = manager(&store, &sink);
        m.load(&[write_tmp(
            "stale.yml",
            "groups:\n- name: g\n  rules:\n  - record: x:sum\n    expr: sum by (a) (x)\n",
        )])
        .unwrap();
        store.append(&l(&[("__name__", "x"), ("a", "1")]), 0, 5.0).unwrap();
        store.append(&l(&[("__name__", "x"), ("a", "2")]), 0, 7.0).unwrap();
        store
            .append(
                &l(&[("__name__", "x"), ("a", "1")]),
                1000,
                crate::series::stale_marker(),
            )
            .unwrap();
        m.eval_at(0);
        m.eval_at(2000);
        let s = store
            .select(&Selection::new(
                &[
                    Matcher::new(MatchOp::Equal, "__name__", "x:sum").unwrap(),
                    Matcher::new(MatchOp::Equal, "a", "1").unwrap(),
                ],
                0,
                5000,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        assert_eq!(s[0].samples[0], (0, 5.0));
        assert_eq!(s[0].samples[1].0, 2000);
        assert!(is_stale_marker(s[0].samples[1].1));
    }

    #[test]
    fn rules_reload_keeps_old_groups_on_error_and_state_on_success() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = manager(&store, &sink);
        let good = write_tmp(
            "reload.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: vector(1)\n    for: 1m\n",
        );
        m.load(std::slice::from_ref(&good)).unwrap();
        m.eval_at(0);
        let bad = write_tmp(
            "reload-bad.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: vector(1) +\n",
        );
        let err = m.load(&[good.clone(), bad]).unwrap_err().to_string();
        assert!(
            err.contains("reload-bad.yml: 5:11: group \"g\", rule 1, \"A\": could not parse expression"),
            "{err}"
        );
        assert_eq!(m.groups().len(), 1);
        // Reload with the same file keeps ActiveAt.
        m.load(&[good]).unwrap();
        m.eval_at(60_000);
        let g = &m.groups()[0];
        assert_eq!(g.rules[0].state(), AlertState::Firing);
        assert_eq!(g.rules[0].active.values().next().unwrap().active_at, 0);
        let fams = m.families();
        let ok = fams
            .iter()
            .find(|f| f.name == "ngxprobe_rule_config_last_reload_successful")
            .unwrap();
        assert_eq!(ok.samples[0].value, 1.0);
    }

    #[test]
    fn rules_for_state_restored_after_restart() {
        let store = Arc::new(MemStore::new());
        let rules = "groups:\n- name: g\n  rules:\n  - alert: Slow\n    expr: vector(1)\n    for: 30m\n";
        let f = write_tmp("restore.yml", rules);
        let t0 = 1_000_000_000;
        {
            let m = manager(&store, &Arc::new(Sink::default()));
            m.load(std::slice::from_ref(&f)).unwrap();
            for i in 0..=20 {
                m.eval_at(t0 + i * 60_000); // restored after 2nd eval; active for 20m
            }
        }
        // Down for 5 minutes; the new process restores ActiveAt shifted by the downtime.
        let m = manager(&store, &Arc::new(Sink::default()));
        m.load(&[f]).unwrap();
        let t1 = t0 + 25 * 60_000;
        m.eval_at(t1);
        m.eval_at(t1 + 60_000);
        let a = m.groups()[0].rules[0].active.values().next().unwrap().clone();
        // spent 20m pending before going down at t0+20m; 10m remain (< grace 10m? no: = 10m, so shifted by downtime).
        assert_eq!(a.active_at, t0 + (t1 + 60_000 - (t0 + 20 * 60_000)));
        assert_eq!(a.state, AlertState::Pending);
    }

    #[test]
    fn rules_api_shapes() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = manager(&store, &sink);
        m.load(&[write_tmp("api.yml", RULES)]).unwrap();
        store
            .append(&l(&[("__name__", "nginx_up"), ("conf_path", "/c")]), 0, 0.0)
            .unwrap();
        m.eval_at(0);
        let r = m.rules_api(None);
        let g = &r["groups"][0];
        assert_eq!(g["name"], "nginx");
        assert_eq!(g["interval"], 10.0);
        assert_eq!(g["rules"][0]["type"], "alerting");
        assert_eq!(g["rules"][0]["state"], "pending");
        assert_eq!(g["rules"][0]["duration"], 30);
        assert_eq!(g["rules"][0]["health"], "ok");
        assert_eq!(g["rules"][0]["alerts"][0]["value"], "0e+00");
        assert_eq!(g["rules"][0]["alerts"][0]["activeAt"], "1970-01-01T00:00:00Z");
        assert_eq!(g["rules"][1]["type"], "recording");
        assert_eq!(
            m.rules_api(Some("record"))["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let a = m.alerts_api();
        assert_eq!(a["alerts"][0]["labels"]["alertname"], "NginxDown");
        assert_eq!(a["alerts"][0]["state"], "pending");
    }

    #[test]
    fn rules_default_rules_load_and_are_switchable() {
        let store = Arc::new(MemStore::new());
        let sink = Arc::new(Sink::default());
        let m = RuleManager::new(store.clone(), store.clone(), sink.clone(), RulesConfig::default());
        // ngxprobe-nginx's two, ngxprobe-nginx-tcp-workers' two and
        // ngxprobe-kernel's two (kernel_rules_tests).
        assert_eq!(m.load(&[]).unwrap(), 6);
        let names: Vec<String> = m.groups()[0].rules.iter().map(|r| r.def.name.clone()).collect();
        assert_eq!(names, ["NginxDown", "NginxHighActiveConnections"]);
        let names: Vec<String> = m.groups()[1].rules.iter().map(|r| r.def.name.clone()).collect();
        assert_eq!(names, ["NginxWorkerCrashed", "NginxTCPRetransmitRatioHigh"]);
        let names: Vec<String> = m.groups()[2].rules.iter().map(|r| r.def.name.clone()).collect();
        assert_eq!(
            names,
            ["NginxListenerDroppingConnections", "NginxListenQueueNearlyFull"]
        );
        let off = RuleManager::new(
            store.clone(),
            store.clone(),
            sink,
            RulesConfig {
                default_rules: false,
                ..RulesConfig::default()
            },
        );
        assert_eq!(off.load(&[]).unwrap(), 0);
        // The default rule fires after 1m of nginx_up == 0.
        store
            .append(&l(&[("__name__", "nginx_up"), ("conf_path", "/c")]), 0, 0.0)
            .unwrap();
        for t in (0..=60_000).step_by(1_000) {
            store
                .append(&l(&[("__name__", "nginx_up"), ("conf_path", "/c")]), t, 0.0)
                .ok();
            m.eval_at(t);
        }
        let st = m.groups()[0].rules[0].state();
        assert_eq!(st, AlertState::Firing);
    }

    /// A conf_path is chosen by whoever starts the process; the default
    /// rules' annotations (which Slack templates put in mrkdwn text) must not
    /// carry its `<...>` markup. Prometheus's own promtool is the oracle for
    /// what the templates render.
    #[test]
    fn rules_default_annotations_cannot_inject_slack_markup() {
        let conf = "/srv/<!channel>&<http://evil|x>.conf";
        let shown = "/srv/_!channel___http://evil|x_.conf";
        let rules = write_tmp("nginx.rules.yml", crate::rules::manager::DEFAULT_RULES_YAML);
        let test = format!(
            r#"rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'nginx_up{{conf_path="{conf}"}}'
        values: '0x10'
      - series: 'nginx_connections_active{{conf_path="{conf}"}}'
        values: '500x40'
    alert_rule_test:
      - eval_time: 2m
        alertname: NginxDown
        exp_alerts:
          - exp_labels: {{ severity: critical, conf_path: "{conf}" }}
            exp_annotations:
              summary: "nginx ({shown}) is down"
              description: "nginx_up has been 0 for more than 1 minute for the nginx instance using {shown}: it stopped or its probes failed."
      - eval_time: 10m
        alertname: NginxHighActiveConnections
        exp_alerts:
          - exp_labels: {{ severity: warning, conf_path: "{conf}" }}
            exp_annotations:
              summary: "nginx has 500 active connections"
              description: "nginx_connections_active has been above 400 for 5 minutes for the nginx instance using {shown}."
"#,
            rules = rules.display()
        );
        assert!(!shown.contains(['<', '>', '&']));
        let test_file = write_tmp("slack-markup.test.yml", &test);
        passes_ours_and_promtool(&test_file);
    }

    /// A promtool rule test file passes in our runner and in Debian's promtool.
    pub(in crate::rules) fn passes_ours_and_promtool(test_file: &std::path::Path) {
        let mut warnings = Vec::new();
        let ours = promtool::run_test_file(test_file, &mut warnings);
        assert!(
            ours.is_ok(),
            "ngxprobe: {:?}",
            ours.err()
                .map(|e| e.iter().map(|e| e.message.clone()).collect::<Vec<_>>())
        );
        let Some(promtool_bin) = ngxprobe_e2e::util::require_tool("promtool", "apt-get install prometheus") else {
            return;
        };
        let out = std::process::Command::new(promtool_bin)
            .args(["test", "rules"])
            .arg(test_file)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool disagrees:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The TCP/worker group: a worker killed by SIGSEGV alerts, workers
    /// replaced at a reload (cause="exit") do not; a listener retransmitting
    /// 10% of its segments alerts after 10m, one at 1% does not. Our promtool
    /// and Debian's agree.
    #[test]
    fn rules_default_worker_crash_and_retransmit_ratio() {
        let rules = write_tmp("nginx-tcp.rules.yml", crate::rules::manager::DEFAULT_RULES_YAML);
        let test = format!(
            r#"rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'ngxprobe_nginx_worker_exits_total{{conf_path="/c",cause="signal",signal="SIGSEGV"}}'
        values: '0x4 1x20'
      - series: 'ngxprobe_nginx_worker_exits_total{{conf_path="/c",cause="signal",signal="SIGKILL"}}'
        values: '0x24'
      - series: 'ngxprobe_nginx_worker_exits_total{{conf_path="/c",cause="exit",signal=""}}'
        values: '0x2 4x22'
      - series: 'ngxprobe_tcp_retransmitted_segments_total{{conf_path="/c",listen_address="0.0.0.0:80"}}'
        values: '0+10x80'
      - series: 'ngxprobe_tcp_segments_sent_total{{conf_path="/c",listen_address="0.0.0.0:80"}}'
        values: '0+100x80'
      - series: 'ngxprobe_tcp_retransmitted_segments_total{{conf_path="/c",listen_address="0.0.0.0:443"}}'
        values: '0+1x80'
      - series: 'ngxprobe_tcp_segments_sent_total{{conf_path="/c",listen_address="0.0.0.0:443"}}'
        values: '0+100x80'
    alert_rule_test:
      - eval_time: 30s
        alertname: NginxWorkerCrashed
        exp_alerts: []
      - eval_time: 2m
        alertname: NginxWorkerCrashed
        exp_alerts:
          - exp_labels: {{ severity: critical, conf_path: /c, cause: signal, signal: SIGSEGV }}
            exp_annotations:
              summary: "nginx (/c) lost a worker (signal SIGSEGV)"
              description: "A worker process of the nginx instance using /c was killed (signal SIGSEGV) in the last 5 minutes; the master respawns it, but its connections were dropped."
              runbook: '{runbook_crash}'
      - eval_time: 8m
        alertname: NginxWorkerCrashed
        exp_alerts: []
      - eval_time: 9m
        alertname: NginxTCPRetransmitRatioHigh
        exp_alerts: []
      - eval_time: 16m
        alertname: NginxTCPRetransmitRatioHigh
        exp_alerts:
          - exp_labels: {{ severity: warning, conf_path: /c, listen_address: "0.0.0.0:80" }}
            exp_annotations:
              summary: "nginx (/c) retransmits 10% of its segments on 0.0.0.0:80"
              description: "More than 5% of the TCP segments sent on client connections of listener 0.0.0.0:80 of the nginx instance using /c were retransmissions for 10 minutes: packet loss or congestion between nginx and its clients."
              runbook: '{runbook_retrans}'
"#,
            rules = rules.display(),
            runbook_crash = default_annotation("NginxWorkerCrashed", "runbook"),
            runbook_retrans = default_annotation("NginxTCPRetransmitRatioHigh", "runbook"),
        );
        let test_file = write_tmp("tcp-workers.test.yml", &test);
        passes_ours_and_promtool(&test_file);
    }

    /// An annotation of a default rule, verbatim (no template in it).
    fn default_annotation(alert: &str, key: &str) -> String {
        let v: serde_json::Value = serde_saphyr::from_str(crate::rules::manager::DEFAULT_RULES_YAML).unwrap();
        let rule = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .find(|r| r["alert"] == alert)
            .unwrap();
        let text = rule["annotations"][key].as_str().unwrap().to_string();
        assert!(!text.contains("{{") && !text.contains('\''), "{text}");
        text
    }

    #[test]
    fn rules_config_defaults_and_unknown_fields() {
        let c: RulesConfig = serde_saphyr::from_str("default_rules: false\nevaluation_interval: 5s\n").unwrap();
        assert!(!c.default_rules);
        assert_eq!(c.evaluation_interval, PromDuration::from_secs(5));
        assert_eq!(
            RulesConfig::default().evaluation_interval,
            PromDuration::from_millis(250)
        );
        assert!(serde_saphyr::from_str::<RulesConfig>("rule_file: []\n").is_err());
    }

    #[test]
    fn rules_file_errors_name_file_line_and_field() {
        let e = file::parse_text("r.yml", "groups:\n  - name: g\n    intervall: 1m\n    rules: []\n").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "r.yml: 3:5: groups[0].intervall: field intervall not found in rule file format, expected one of name, interval, query_offset, limit, labels, rules"
        );
        let e = file::parse_text(
            "r.yml",
            "groups:\n  - name: g\n    rules:\n      - record: a-b\n        expr: up\n        for: 5m\n",
        )
        .unwrap_err();
        let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.contains(
                &"r.yml: 4:17: group \"g\", rule 1, \"a-b\": invalid field 'for' in recording rule".to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"r.yml: 4:17: group \"g\", rule 1, \"a-b\": invalid recording rule name: a-b".to_string()),
            "{msgs:?}"
        );
        let e = file::parse_text(
            "r.yml",
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: 5x\n",
        )
        .unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("r.yml: 6:14: groups[0].rules[0].for: invalid duration"),
            "{}",
            e[0]
        );
        let e = file::parse_text("r.yml", "groups:\n- name: g\n  rules: []\n- name: g\n  rules: []\n").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "r.yml: 4:3: groupname: \"g\" is repeated in the same file"
        );
    }

    #[test]
    fn rules_kubernetes_prometheusrule_manifest() {
        let text = "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: nginx\n  labels: { release: kube-prometheus-stack }\nspec:\n  groups:\n  - name: nginx\n    rules:\n    - alert: NginxDown\n      expr: nginx_up == 0\n      for: 1m\n";
        let g = file::parse_text("k8s.yml", text).unwrap();
        assert_eq!(g[0].rules[0].name, "NginxDown");
        let bad = text.replace("for: 1m", "forr: 1m");
        let e = file::parse_text("k8s.yml", &bad).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("k8s.yml: 12:7: spec.groups[0].rules[0].forr: field forr not found"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn rules_check_cli_output() {
        let good = write_tmp("good.yml", RULES);
        let bad = write_tmp(
            "bad.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    annotations:\n      s: '{{ $label.x }}'\n",
        );
        let mut out = Vec::new();
        let code = promtool::check_rules_cli(&[good.clone(), bad.clone()], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, 1);
        assert!(
            text.contains(&format!("Checking {}\n  SUCCESS: 2 rules found\n\n", good.display())),
            "{text}"
        );
        assert!(text.contains(&format!("  FAILED:\n{}: group \"g\", rule 1, \"A\": annotation \"s\": template: __alert_A:1: undefined variable \"$label\"", bad.display())), "{text}");
    }

    #[test]
    fn rules_expanding_notation() {
        let v = promtool::expand_values("1+2x3 _ 5x2 _x2 stale -1-1x1 1e3").unwrap();
        let f: Vec<String> = v
            .iter()
            .map(|x| {
                x.map(|x| {
                    if is_stale_marker(x) {
                        "stale".into()
                    } else {
                        x.to_string()
                    }
                })
                .unwrap_or("_".into())
            })
            .collect();
        assert_eq!(
            f,
            [
                "1", "3", "5", "7", "_", "5", "5", "5", "_", "_", "stale", "-1", "-2", "1000"
            ]
        );
    }
}

#[test]
fn rules_run_loop_evaluates_on_schedule_and_stops() {
    use crate::{
        alerts::{Alert, AlertSink},
        compat::PromDuration,
        rules::{RuleManager, RulesConfig},
        series::MemStore,
    };
    use std::sync::Arc;
    struct Null;
    impl AlertSink for Null {
        fn send(&self, _: Vec<Alert>) {}
    }
    let store = Arc::new(MemStore::new());
    let cfg = RulesConfig {
        evaluation_interval: PromDuration::from_millis(100),
        ..RulesConfig::default()
    };
    let m = Arc::new(RuleManager::new(store.clone(), store, Arc::new(Null), cfg));
    m.load(&[]).unwrap();
    let worker = m.spawn().unwrap();
    // Wait (bounded) until the scheduler has run the group three times.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.groups()[0].evals_done < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    worker.stop();
    let g = &m.groups()[0];
    assert!(g.evals_done >= 3, "{} evaluations", g.evals_done);
    let last = g.last_eval_ms.unwrap();
    assert_eq!((last - g.offset_ms()).rem_euclid(100), 0, "evaluations are slotted");
}
