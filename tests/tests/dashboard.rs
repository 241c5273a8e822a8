//! deploy/grafana-dashboard.json against a live agent: real nginx under wrk,
//! the agent's own PromQL API standing in for the Prometheus the dashboard
//! reads (the same families reach a cluster Prometheus by scrape or
//! remote_write).
//!
//! Grafana's steps are done here as Grafana does them: the template
//! variables' own queries (`label_values(nginx_up, conf_path)` → the label
//! values API with `match[]`), then every panel's every target with the
//! variables replaced (`$conf_path` as a multi-value regex variable: the
//! chosen value regex-escaped, or `.*` for "All"; `$__rate_interval` and
//! friends as concrete durations), run as an instant query and as the range
//! query a time-series panel sends. Each must parse (status success) and
//! return data for our nginx: every family the dashboard shows (nginx_up,
//! nginx_http_requests_total, nginx_connections_*) exists for every nginx
//! the agent sees, with no special condition (no uprobe, no drops). A
//! dashboard target with a variable this test does not know fails it.
use ngxprobe_e2e::clients::WrkRun;
use ngxprobe_e2e::prometheus::{api_get, secs};
use ngxprobe_e2e::util::{Poll, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Every (panel title, target expr) of the dashboard, nested rows included.
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's regex escaping of a multi-value / include-all variable's value
/// for the Prometheus data source (`prometheusRegularEscape`): backslashes
/// and regex metacharacters get a backslash that survives PromQL's string
/// unescaping, i.e. two in the query text.
fn grafana_regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if c == '\\' {
            out.push_str("\\\\\\\\");
        } else if "$^*{}[]'+?.()|".contains(c) {
            out.push_str("\\\\");
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

/// `expr` with Grafana's variables replaced: `conf_path` → `conf_value`
/// (already escaped), the built-in intervals by what Grafana sends for a 15 s
/// scrape interval. Panics on a variable it does not know.
fn substitute(expr: &str, conf_value: &str) -> String {
    let vars: [(&str, &str); 5] = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("conf_path", conf_value),
    ];
    let mut out = expr.to_string();
    for (name, value) in vars {
        for form in [format!("${{{name}}}"), format!("[[{name}]]"), format!("${name}")] {
            // `$__range` must not eat `$__range_s`: longer names come first
            // only where they share a prefix; check the next character.
            let mut rest = out.as_str();
            let mut next = String::new();
            while let Some(i) = rest.find(&form) {
                let after = &rest[i + form.len()..];
                let continues = form.starts_with("$_") || form == format!("${name}");
                if continues && after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    next.push_str(&rest[..i + form.len()]);
                } else {
                    next.push_str(&rest[..i]);
                    next.push_str(value);
                }
                rest = after;
            }
            next.push_str(rest);
            out = next;
        }
    }
    assert!(
        !out.contains('$') && !out.contains("[["),
        "unknown Grafana variable in {expr:?} → {out:?}"
    );
    out
}

#[test]
fn every_dashboard_query_parses_and_returns_data_under_load() {
    let _g = guard("dashboard");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("deploy/grafana-dashboard.json is JSON");
    let targets = targets(&dashboard);
    assert!(targets.len() >= 8, "panel targets found: {targets:?}");
    // The variables this test knows how to fill in.
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        assert!(
            ["datasource", "conf_path"].contains(&name),
            "dashboard variable {name} is not handled by this test"
        );
    }

    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let agent = Agent::start().expect("start agent");
    agent.wait_instance_up(&conf).expect("instance up");
    let url = nginx.url("/");
    let load = WrkRun::spawn(&["-t1", "-c4", "-d12s", &url], Duration::from_secs(12)).expect("wrk");
    let addr = agent.addr();

    // The conf_path variable's own query, as Grafana sends label_values(m, l)
    // (the store has our instance from its first sample on: poll, bounded).
    poll(
        "label_values(nginx_up, conf_path)",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let values = api_get(
                addr,
                "/api/v1/label/conf_path/values",
                &[
                    ("match[]", "nginx_up".to_string()),
                    ("start", secs(now_ms() - 3_600_000)),
                    ("end", secs(now_ms())),
                ],
            )?;
            anyhow::ensure!(values["status"] == "success", "{values}");
            let found = values["data"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == conf.as_str());
            Ok(if found {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{values}"))
            })
        },
    )
    .unwrap();

    // Our instance chosen, and "All".
    let ours = grafana_regex_escape(&conf);
    let mut results: Vec<(String, String, usize)> = Vec::new();
    for (title, expr) in &targets {
        for (choice, value) in [("ours", ours.as_str()), ("All", ".*")] {
            let q = substitute(expr, value);
            // rate(…[1m]) needs two stored samples: poll (bounded).
            let n = poll(
                &format!("{title}: {q}"),
                Duration::from_secs(20),
                Duration::from_millis(250),
                || {
                    let v = api_get(addr, "/api/v1/query", &[("query", q.clone()), ("time", secs(now_ms()))])?;
                    anyhow::ensure!(v["status"] == "success", "query {q:?} failed: {v}");
                    let series: Vec<&Value> = v["data"]["result"].as_array().into_iter().flatten().collect();
                    let mine = series
                        .iter()
                        .filter(|s| s["metric"]["conf_path"] == conf.as_str())
                        .count();
                    Ok(if mine > 0 {
                        Poll::Ready(series.len())
                    } else {
                        Poll::Pending(format!("{v}"))
                    })
                },
            )
            .unwrap();
            if choice == "ours" {
                assert_eq!(n, 1, "{title}: {q} returned series of other instances too");
            }
            // What a time-series panel sends: the last 30 s, 5 s steps.
            let end = now_ms();
            let r = api_get(
                addr,
                "/api/v1/query_range",
                &[
                    ("query", q.clone()),
                    ("start", secs(end - 30_000)),
                    ("end", secs(end)),
                    ("step", "5".to_string()),
                ],
            )
            .unwrap();
            assert_eq!(r["status"], "success", "range {q}: {r}");
            assert!(
                r["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["metric"]["conf_path"] == conf.as_str()
                        && s["values"].as_array().is_some_and(|v| !v.is_empty())),
                "range {q}: no points for {conf}: {r}"
            );
            results.push((title.clone(), choice.to_string(), n));
        }
    }

    // Under load the request rate panel shows traffic, and nginx is up.
    let rate = substitute(
        &targets
            .iter()
            .find(|(t, _)| t == "Request rate")
            .expect("Request rate panel")
            .1,
        &ours,
    );
    let v = api_get(
        addr,
        "/api/v1/query",
        &[("query", rate.clone()), ("time", secs(now_ms()))],
    )
    .unwrap();
    let value: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("nan")
        .parse()
        .unwrap_or(f64::NAN);
    let wrk = load.wait().expect("wrk");
    assert!(wrk.requests > 0);
    assert!(value > 0.0, "Request rate during wrk load: {rate} = {v}");
    eprintln!(
        "dashboard: {} queries × 2 choices checked; request rate under load {value:.1}/s; {results:?}",
        targets.len()
    );
}

#[test]
fn substitution_is_grafanas() {
    assert_eq!(grafana_regex_escape("/tmp/a.conf"), "/tmp/a\\\\.conf");
    assert_eq!(
        substitute(
            "rate(x{conf_path=~\"$conf_path\"}[$__rate_interval]) [[conf_path]] ${conf_path}",
            "v"
        ),
        "rate(x{conf_path=~\"v\"}[1m]) v v"
    );
    assert_eq!(substitute("$__range_s $__range", "v"), "300 5m");
    assert!(std::panic::catch_unwind(|| substitute("x{job=\"$job\"}", "v")).is_err());
}
