//! The agent's page (`/`) in a real browser: Debian's headless Chromium,
//! driven over the DevTools protocol ([`Browser`]), against the real agent
//! watching a real nginx under wrk load, with rules that fire and a Slack
//! receiver that takes the notifications.
//!
//! Each page is loaded, the test waits (bounded, polling the DOM) until its
//! data is drawn, asserts on what a person would read, and leaves a
//! screenshot in `target/web-screenshots/`. Every request the browser made
//! is checked to go to the agent's own origin, and the assets' size on the
//! wire is measured. A second test runs the agent without its store (no
//! /api/v1 at all) and then stops it: the page must show those errors.
//!
//! Without Chromium the tests are skipped, except under CI where that is a
//! failure (`util::skip_or_fail`).
use ngxprobe_e2e::agent::url_encode;
use ngxprobe_e2e::browser::{Browser, chromium_bin, screenshot_dir};
use ngxprobe_e2e::clients::{WrkRun, http_get};
use ngxprobe_e2e::slack_receiver::SlackReceiver;
use ngxprobe_e2e::util::{Poll, TempDir, poll, require_tool};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How long a page may take to show its data.
const PAGE_WAIT: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    require_tool(
        &chromium_bin(),
        "Debian package chromium; `cargo xtask setup` installs it",
    )
}

/// `s` as a JavaScript (JSON) string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A JS expression: the element matching `selector`, or null.
fn q(selector: &str) -> String {
    format!("document.querySelector({})", js(selector))
}

/// `[attr="value"]` with the value quoted for CSS.
fn attr(name: &str, value: &str) -> String {
    format!("[{name}={}]", js(value))
}

/// Waits until the current page has finished loading its data.
fn wait_loaded(b: &mut Browser, page: &str) {
    let cond = format!(
        "{} ? true : false",
        q(&format!("main[data-page={page}][data-state=loaded]"))
    );
    b.wait_for(&format!("page {page} loaded"), &cond, PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\nchromium log:\n{}", b.log_tail(20)));
}

/// The visible text of `selector`, waiting (bounded) until it contains `want`.
fn wait_text(b: &mut Browser, selector: &str, want: &str) -> String {
    let cond = format!(
        "(() => {{ const e = {}; return e && e.innerText.includes({}) ? e.innerText : false; }})()",
        q(selector),
        js(want)
    );
    let v = b
        .wait_for(&format!("{selector} to show {want:?}"), &cond, PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    v.as_str().unwrap_or_default().to_string()
}

/// Waits until the graph in `selector` has at least `min` points drawn on a
/// canvas; returns (points, series).
fn wait_graph(b: &mut Browser, selector: &str, min: u64) -> (u64, u64) {
    let cond = format!(
        "(() => {{ const e = {}; if (!e || !e.querySelector('canvas')) return false; \
           const n = Number(e.dataset.points || 0); \
           return n >= {min} ? [n, Number(e.dataset.series || 0)] : false; }})()",
        q(selector)
    );
    let v = b
        .wait_for(&format!("graph {selector} with >= {min} points"), &cond, PAGE_WAIT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
}

fn shot(b: &mut Browser, name: &str) {
    b.screenshot(&screenshot_dir().join(name))
        .unwrap_or_else(|e| panic!("screenshot {name}: {e:#}"));
}

/// Waits (bounded) until an instant query returns at least one series.
fn wait_query(agent: &Agent, what: &str, promql: &str, timeout: Duration) {
    poll(what, timeout, Duration::from_millis(250), || {
        let v = agent.query(promql)?;
        Ok(match v["result"].as_array().is_some_and(|r| !r.is_empty()) {
            true => Poll::Ready(()),
            false => Poll::Pending(v.to_string()),
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(20)));
}

/// The alerts, and recording rules that stand in for families the agent
/// may export (an OTel request-duration histogram with status codes, a
/// per-listener accept-queue drop counter): series of that shape, made by
/// the real rule engine from real nginx counters, so that the page's
/// optional panels are shown and queried for real.
fn rules_yaml(conf: &str, listener: &str) -> String {
    let requests = format!("sum by (conf_path) (nginx_http_requests_total{{conf_path={conf:?}}})");
    let accepted = format!("sum by (conf_path) (nginx_connections_accepted{{conf_path={conf:?}}})");
    format!(
        r#"groups:
- name: web-page
  rules:
  - alert: WebPageAlwaysFiring
    expr: vector(1)
    labels:
      severity: info
    annotations:
      summary: Fires always, for the page test
  - alert: WebPageNginxBusy
    expr: sum by (conf_path) (rate(nginx_http_requests_total{{conf_path={conf:?}}}[5s])) > 10
    for: 2s
    labels:
      severity: warning
    annotations:
      summary: nginx is busy
- name: web-page-stand-ins
  rules:
  - record: http_server_request_duration_seconds_bucket
    expr: label_replace({requests} * 0.5, "le", "0.001", "", "")
  - record: http_server_request_duration_seconds_bucket
    expr: label_replace({requests} * 0.9, "le", "0.01", "", "")
  - record: http_server_request_duration_seconds_bucket
    expr: label_replace({requests}, "le", "+Inf", "", "")
  - record: http_server_request_duration_seconds_count
    expr: label_replace({requests}, "http_response_status_code", "200", "", "")
  - record: ngxprobe_nginx_listen_drops_total
    expr: label_replace({accepted}, "listen_address", "{listener}", "", "")
"#
    )
}

fn agent_config(rule_file: &std::path::Path, hook: &str) -> String {
    format!(
        r##"rules:
  rule_files: ["{rules}"]
  evaluation_interval: 1s
alertmanager:
  route:
    receiver: page-test
    group_by: [alertname]
    group_wait: 1s
    group_interval: 1s
    repeat_interval: 1h
  receivers:
  - name: page-test
    slack_configs:
    - api_url: "{hook}"
      channel: "#page-test"
      send_resolved: true
"##,
        rules = rule_file.display()
    )
}

/// Every page with real data: the instance and its graphs, alerts, rules and
/// deliveries, a query as table and graph, a parse error with its position,
/// the agent's status; keyboard navigation; light and dark mode; nothing
/// fetched from another origin; the size on the wire.
#[test]
fn page_shows_nginx_alerts_queries_and_status() {
    let _g = guard("page_shows_nginx_alerts_queries_and_status");
    let Some(chromium) = chromium() else { return };
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let rx = SlackReceiver::start().expect("start the Slack receiver");
    let rules = TempDir::new("web-rules").expect("temp dir");
    let rule_file = rules.path().join("rules.yml");
    let listener = nginx.main_addr().to_string();
    std::fs::write(&rule_file, rules_yaml(&conf, &listener)).expect("write rules");
    let agent = Agent::start_with_config(&agent_config(&rule_file, &rx.url("/hook"))).expect("start ngxprobe");
    agent.wait_instance_up(&conf).expect("agent sees nginx");
    let url = nginx.url("/");
    let mut load = WrkRun::spawn(&["-t1", "-c2", "-d150s", &url], Duration::from_secs(150)).expect("start wrk");

    // Something to draw: 15 s of history with requests flowing, both alerts
    // firing, and one notification delivered.
    wait_query(
        &agent,
        "15 s of request history",
        &format!(
            "count_over_time(nginx_http_requests_total{{conf_path={conf:?}}}[1m]) >= 15 \
             and rate(nginx_http_requests_total{{conf_path={conf:?}}}[5s]) > 10"
        ),
        Duration::from_secs(40),
    );
    wait_query(
        &agent,
        "both alerts firing",
        r#"count(ALERTS{alertname=~"WebPage.*", alertstate="firing"}) == 2"#,
        Duration::from_secs(20),
    );
    rx.wait_for("a notification", 0, Duration::from_secs(20), |r| r.method == "POST")
        .expect("the receiver gets a notification");
    assert!(load.is_running(), "wrk stopped early");

    let mut b = Browser::start(&chromium).expect("start chromium");
    let origin = format!("http://{}", agent.addr());

    // ---- Overview: our instance, up, with a requests/s graph.
    b.navigate(&format!("{origin}/")).expect("open /");
    wait_loaded(&mut b, "overview");
    let card = format!("article{}", attr("data-instance", &conf));
    let (points, series) = wait_graph(&mut b, &format!("{card} [data-panel=requests] .plot"), 3);
    assert_eq!(series, 1, "one requests/s line per instance");
    eprintln!("[e2e] overview requests/s sparkline: {points} points");
    wait_graph(&mut b, &format!("{card} [data-panel=connections] .plot"), 3);
    // Optional panels: shown for the families the store has (the stand-ins
    // and the kernel counters), never assumed.
    wait_graph(&mut b, &format!("{card} [data-panel=status] .plot"), 3);
    let (_, quantiles) = wait_graph(&mut b, &format!("{card} [data-panel=latency] .plot"), 3);
    assert_eq!(quantiles, 2, "p50 and p99");
    wait_graph(&mut b, &format!("{card} [data-panel=accept_drops] .plot"), 3);
    // The kernel's TCP counters are real families now (every listener shows
    // from 0): their panels appear with one line per counter family the page
    // found by name (two each: data and SYN-ACK retransmits, resets sent and
    // received) — on the overview, summed per instance.
    for present in ["retransmits", "resets"] {
        let (_, lines) = wait_graph(&mut b, &format!("{card} [data-panel={present}] .plot"), 3);
        assert_eq!(lines, 2, "panel {present}: one line per counter family");
    }
    let text = wait_text(&mut b, &card, &conf);
    assert!(text.contains("up"), "card text: {text}");
    assert_eq!(b.eval(&format!("{}.dataset.up", q(&card))).unwrap(), "1");
    // A young agent opens on the shortest range (no graph squeezed to the right edge).
    assert_eq!(b.eval(&format!("{}.value", q("#range"))).unwrap(), "300");
    let summary = wait_text(&mut b, "#summary", "up");
    assert!(summary.contains("/s in total"), "summary: {summary}");
    shot(&mut b, "overview.png");

    // Dark mode: the page follows prefers-color-scheme and redraws its graphs.
    b.set_dark_mode(true).unwrap();
    let bg = b
        .wait_for(
            "a dark background",
            "(() => { const c = getComputedStyle(document.documentElement).backgroundColor; \
               return c === 'rgb(18, 21, 26)' ? c : false; })()",
            PAGE_WAIT,
        )
        .unwrap();
    assert_eq!(bg, "rgb(18, 21, 26)");
    let requests_plot = format!("{card} [data-panel=requests] .plot");
    b.wait_for(
        "the requests/s graph redrawn in dark colours",
        &format!(
            "(() => {{ const e = {}; return e && e.dataset.fg === '#a6afbd' && e.querySelector('canvas'); }})()",
            q(&requests_plot)
        ),
        PAGE_WAIT,
    )
    .unwrap();
    wait_graph(&mut b, &requests_plot, 3);
    shot(&mut b, "overview-dark.png");
    b.set_dark_mode(false).unwrap();

    // ---- Keyboard: Tab from the top reaches the navigation; Enter follows it.
    b.eval("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
        .unwrap();
    let mut reached = Value::Null;
    for _ in 0..8 {
        b.press("Tab").unwrap();
        reached = b.eval("document.activeElement.textContent").unwrap();
        if reached == "Alerts & rules" {
            break;
        }
    }
    assert_eq!(reached, "Alerts & rules", "Tab did not reach the navigation");
    b.press("Enter").unwrap();
    b.wait_for("#/alerts after Enter", "location.hash === '#/alerts'", PAGE_WAIT)
        .unwrap();

    // ---- Alerts & rules: both alerts firing, the rule group, the delivery.
    wait_loaded(&mut b, "alerts");
    for name in ["WebPageAlwaysFiring", "WebPageNginxBusy"] {
        let row = format!("#alerts-table tr{}", attr("data-alertname", name));
        let text = wait_text(&mut b, &row, "firing");
        assert!(text.contains("ago"), "active since: {text}");
    }
    let text = wait_text(
        &mut b,
        &format!("#alerts-table tr{}", attr("data-alertname", "WebPageAlwaysFiring")),
        "Fires always",
    );
    assert!(text.contains("severity=\"info\""), "labels: {text}");
    let group = wait_text(&mut b, &attr("data-group", "web-page"), "WebPageNginxBusy");
    assert!(group.contains("last evaluation") && group.contains("rule"), "{group}");
    // The notification went out: a last success within the range, no failure.
    let mut attempt = 0;
    let delivery = poll(
        "a successful slack delivery on the page",
        PAGE_WAIT,
        Duration::from_millis(500),
        || {
            // Reload the page's data now and then (a reload cancels the one before).
            attempt += 1;
            if attempt % 6 == 0 {
                b.eval(&format!("{}.click()", q("#refresh-now")))?;
            }
            let t = b.eval(&format!(
                "(() => {{ const r = {}; return r ? r.innerText : ''; }})()",
                q("#delivery-table tr[data-integration=slack]")
            ))?;
            let t = t.as_str().unwrap_or_default().to_string();
            Ok(match t.contains("ago") || t.contains("just now") {
                true => Poll::Ready(t),
                false => Poll::Pending(t),
            })
        },
    )
    .unwrap();
    assert!(!delivery.contains("error"), "{delivery}");
    shot(&mut b, "alerts.png");

    // ---- Instance page: full-size graphs.
    b.navigate(&format!("{origin}/#/instance?conf_path={}", url_encode(&conf)))
        .unwrap();
    wait_loaded(&mut b, "instance");
    wait_graph(&mut b, "[data-panel=requests] .plot", 3);
    let (_, states) = wait_graph(&mut b, "[data-panel=connections] .plot", 3);
    assert_eq!(states, 3, "reading, writing, waiting");
    wait_graph(&mut b, "[data-panel=accepted] .plot", 1);
    // Per listener where the family has a listen_address label.
    wait_graph(&mut b, "[data-panel=accept_drops] .plot", 3);
    wait_text(&mut b, "[data-panel=accept_drops]", &listener);
    let latency = wait_text(&mut b, "[data-panel=latency]", "p99");
    assert!(latency.contains("p50"), "{latency}");
    wait_text(&mut b, "[data-panel=status]", "2xx");
    shot(&mut b, "instance.png");

    // ---- Query, typed: a table with our series.
    b.navigate(&format!("{origin}/#/query")).unwrap();
    wait_loaded(&mut b, "query");
    b.eval(&format!("{}.focus()", q("#expr"))).unwrap();
    b.type_text(&format!("nginx_http_requests_total{{conf_path={conf:?}}}"))
        .unwrap();
    b.press("Enter").unwrap();
    let row = format!("#query-result tr[data-series*={}]", js(&conf));
    let text = wait_text(&mut b, &row, "nginx_http_requests_total");
    let value: f64 = text
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(value > 100.0, "requests so far: {text}");

    // As a graph.
    let expr = format!("rate(nginx_http_requests_total{{conf_path={conf:?}}}[5s])");
    b.navigate(&format!("{origin}/#/query?tab=graph&expr={}", url_encode(&expr)))
        .unwrap();
    wait_graph(&mut b, "#query-graph", 3);
    shot(&mut b, "query-graph.png");

    // A parse error: the API's message and a caret under its position.
    let bad = "sum(rate(nginx_http_requests_total[5m])";
    b.navigate(&format!("{origin}/#/query?tab=table&expr={}", url_encode(bad)))
        .unwrap();
    let text = wait_text(&mut b, "#query-error", "parse error");
    let api = agent
        .get_json(&format!("/api/v1/query?query={}", url_encode(bad)))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(api.contains("parse error"), "the API's own answer: {api}");
    let pre = b.eval(&format!("{}.innerText", q("#query-error pre"))).unwrap();
    let pre = pre.as_str().unwrap_or_default();
    assert!(
        pre.starts_with(bad) && pre.contains('^'),
        "caret block {pre:?} in {text}"
    );
    shot(&mut b, "query-error.png");

    // ---- Agent status: programs loaded, the store, rules.
    b.navigate(&format!("{origin}/#/status")).unwrap();
    wait_loaded(&mut b, "status");
    let ebpf = wait_text(&mut b, "#ebpf-table", "programs loaded");
    let loaded: f64 = ebpf
        .lines()
        .find(|l| l.starts_with("programs loaded"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(loaded >= 1.0, "{ebpf}");
    wait_text(&mut b, "#programs-table tbody tr[data-program]", "");
    let store = wait_text(&mut b, "#store-table", "retention");
    assert!(store.contains("15d") && store.contains("series"), "{store}");
    wait_text(&mut b, "#rules-table", &rule_file.display().to_string());
    wait_text(&mut b, "#build-table", env!("CARGO_PKG_VERSION"));
    shot(&mut b, "status.png");

    // ---- Nothing from elsewhere, nothing broken, not heavy.
    let requests = b.requests();
    assert!(requests.len() > 10, "{requests:?}");
    for r in &requests {
        assert!(
            r.url.starts_with(&format!("{origin}/")),
            "a request left the agent's origin: {r:?}"
        );
    }
    let errors = b.script_errors();
    assert!(errors.is_empty(), "script errors: {errors:#?}");
    let assets: Vec<_> = requests
        .iter()
        .filter(|r| r.url == format!("{origin}/") || (r.url.contains("/ui/") && !r.url.contains("/ui/api/")))
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    for r in &assets {
        let bytes = seen.entry(r.url.clone()).or_insert(0u64);
        *bytes = (*bytes).max(r.transferred.unwrap_or(0));
    }
    assert!(seen.len() >= 5, "page, 2 scripts, 2 stylesheets: {seen:?}");
    let wire: u64 = seen.values().sum();
    let mut plain = 0usize;
    for u in seen.keys() {
        let path = u.trim_start_matches(&origin);
        let (status, body) = http_get(agent.addr(), path).expect("GET asset");
        assert_eq!(status, 200, "{path}");
        plain += body.len();
    }
    eprintln!(
        "[e2e] page + {} assets: {wire} bytes on the wire (gzip), {plain} bytes uncompressed",
        seen.len() - 1
    );
    assert!(wire < 100 * 1024, "{wire} bytes on the wire");
    assert!(plain < 300 * 1024, "{plain} bytes uncompressed");
}

/// The store disabled: no /api/v1 at all. The page says so, shows the API's
/// 404 where it needed it, still lists nginx from /metrics; then the agent
/// stops and the page says it no longer answers.
#[test]
fn page_shows_api_errors_instead_of_a_blank() {
    let _g = guard("page_shows_api_errors_instead_of_a_blank");
    let Some(chromium) = chromium() else { return };
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let agent = Agent::start_with_config("storage:\n  enabled: false\n").expect("start ngxprobe");
    agent.wait_instance_up(&conf).expect("agent sees nginx");
    assert_eq!(http_get(agent.addr(), "/api/v1/query?query=up").unwrap().0, 404);
    let mut b = Browser::start(&chromium).expect("start chromium");
    let origin = format!("http://{}", agent.addr());

    b.navigate(&format!("{origin}/")).unwrap();
    wait_loaded(&mut b, "overview");
    wait_text(&mut b, "#banner", "store disabled");
    let err = wait_text(&mut b, "#overview-errors .error", "404");
    assert!(err.contains("/api/v1/query"), "{err}");
    let card = format!("article{}", attr("data-instance", &conf));
    wait_text(&mut b, &card, &conf);
    assert_eq!(b.eval(&format!("{}.dataset.up", q(&card))).unwrap(), "1");
    shot(&mut b, "no-store-overview.png");

    b.navigate(&format!("{origin}/#/query?expr=up")).unwrap();
    wait_text(&mut b, "#query-error", "HTTP 404");
    b.navigate(&format!("{origin}/#/alerts")).unwrap();
    wait_text(&mut b, "#alerts .error", "404");
    b.navigate(&format!("{origin}/#/status")).unwrap();
    wait_loaded(&mut b, "status");
    let ebpf = wait_text(&mut b, "#ebpf-table", "programs loaded");
    assert!(!ebpf.contains("programs loaded\t–"), "{ebpf}");
    wait_text(&mut b, "#status-store", "Storage is disabled");
    shot(&mut b, "no-store-status.png");

    // The agent goes away: a refresh shows that, not a blank page.
    agent.stop();
    b.eval(&format!("{}.click()", q("#refresh-now"))).unwrap();
    wait_text(&mut b, "main .error", "did not answer");
    shot(&mut b, "agent-gone.png");
    let errors = b.script_errors();
    assert!(errors.is_empty(), "script errors: {errors:#?}");
}
