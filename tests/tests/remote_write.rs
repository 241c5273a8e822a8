//! remote_write against real receivers.
//!
//! 1. Debian's Prometheus with its remote-write receiver: the agent sends
//!    while nginx is under load; the receiver is SIGKILLed for a while and
//!    restarted on the same data dir and port; the agent is SIGKILLed and
//!    restarted on the same store. Once the queue has caught up, the raw
//!    samples of every nginx_* series of our instance over the whole window
//!    are the same, sample by sample, in the agent's store and in Prometheus.
//! 2. External labels, through the same real receiver: `global.external_labels`
//!    (a literal and one from the agent's environment) are on every series
//!    Prometheus stored and on none in the agent's own store; a series' own
//!    label of the same name wins; write_relabel_configs see them (drop a
//!    series by one, drop one, rename one).
//! 3. Local receivers speaking plain HTTP: one answers 400 (the batch fails
//!    for good: samples_failed_total, never retried), one answers 429 with
//!    Retry-After twice before accepting (retried after the time it asked,
//!    then delivered).
//! 4. Credentials from files (basic_auth.password_file,
//!    authorization.credentials_file, bearer_token_file) on the wire, re-read
//!    when the files are replaced, never in the agent's log; a 503 retried.
use ngxprobe_e2e::agent::AgentOptions;
use ngxprobe_e2e::clients::WrkRun;
use ngxprobe_e2e::prometheus::{Prometheus, PrometheusOptions, api_get, secs};
use ngxprobe_e2e::util::{Poll, TempDir, free_port, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn metric(agent: &Agent, name: &str, remote: &str) -> f64 {
    agent
        .scrape()
        .map(|s| s.sum_where(name, "remote_name", remote))
        .unwrap_or(f64::NAN)
}

fn agent_config(url: &str, name: &str) -> String {
    format!(
        r#"remote_write:
  - url: {url}
    name: {name}
    write_relabel_configs:
      - source_labels: [__name__]
        regex: 'nginx_.*|ngxprobe_build_info'
        action: keep
    queue_config:
      max_samples_per_send: 2000
      batch_send_deadline: 1s
      min_backoff: 50ms
      max_backoff: 500ms
"#
    )
}

/// Raw samples per series (labels as a sorted map) of `selector[range]` at
/// `at_ms` through a Prometheus-compatible API.
type Raw = BTreeMap<BTreeMap<String, String>, Vec<(i64, String)>>;

fn raw_samples(addr: SocketAddr, selector: &str, range_s: i64, at_ms: i64) -> anyhow::Result<Raw> {
    let v = api_get(
        addr,
        "/api/v1/query",
        &[("query", format!("{selector}[{range_s}s]")), ("time", secs(at_ms))],
    )?;
    anyhow::ensure!(v["status"] == "success", "{v}");
    let mut out = Raw::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let labels: BTreeMap<String, String> = s["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let samples = s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let t = (p[0].as_f64().unwrap_or(f64::NAN) * 1000.0).round() as i64;
                (t, p[1].as_str().unwrap_or("").to_string())
            })
            .collect();
        out.insert(labels, samples);
    }
    Ok(out)
}

#[test]
fn prometheus_receives_the_same_samples_through_outage_and_sigkill() {
    let _g = guard("remote_write_prometheus");
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let prom_data = TempDir::new("rw-prom-data").unwrap();
    let port = free_port().unwrap();
    let prom_opts = PrometheusOptions {
        data: Some(prom_data.path().to_path_buf()),
        extra_args: vec!["--web.enable-remote-write-receiver".into()],
        port: Some(port),
        ..Default::default()
    };
    let mut prom = Some(Prometheus::start(&prom_opts).expect("start prometheus"));
    let prom_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let store = TempDir::new("rw-agent-store").unwrap();
    let opts = AgentOptions {
        config: Some(agent_config(&format!("http://{prom_addr}/api/v1/write"), "prom")),
        storage_path: Some(store.path().to_path_buf()),
        ..Default::default()
    };
    let mut agent = Agent::start_opts(&opts).expect("start agent");
    agent.wait_instance_up(&conf).expect("instance up");
    let t_start = now_ms();
    let url = nginx.url("/");
    let load = WrkRun::spawn(&["-t1", "-c4", "-d14s", &url], Duration::from_secs(14)).expect("wrk");
    let sel = format!("{{__name__=~\"nginx_.*\",conf_path=\"{conf}\"}}");

    // Delivered while the receiver is up.
    poll(
        "samples in Prometheus",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let r = raw_samples(prom_addr, &sel, 60, now_ms())?;
            Ok(match r.values().map(Vec::len).sum::<usize>() {
                n if n >= 50 => Poll::Ready(()),
                n => Poll::Pending(format!("{n} samples")),
            })
        },
    )
    .unwrap();
    // Receiver outage: SIGKILL by PID (drop), the agent retries meanwhile.
    drop(prom.take());
    let outage = Instant::now();
    poll(
        "retries during the outage",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            Ok(
                match metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "prom") {
                    n if n > 0.0 => Poll::Ready(()),
                    n => Poll::Pending(format!("retried {n}")),
                },
            )
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed()));
    // Agent SIGKILL during the outage, restarted on the same store.
    eprintln!(
        "[e2e] remote_write: outage of {:?}: retried {} samples, {} pending at SIGKILL",
        outage.elapsed(),
        metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "prom"),
        metric(&agent, "ngxprobe_remote_storage_samples_pending", "prom"),
    );
    agent.kill();
    drop(agent);
    let agent = Agent::start_opts(&opts).expect("restart agent");
    prom = Some(Prometheus::start(&prom_opts).expect("restart prometheus"));
    let wrk = load.wait().expect("wrk");
    assert!(wrk.requests > 0);
    // Quiescence: everything up to t_end was delivered (sample times are
    // whole seconds: t_end and the window's start sit between samples).
    let t_end = (now_ms() / 1000) * 1000 + 500;
    poll(
        "queue caught up",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let sent = metric(
                &agent,
                "ngxprobe_remote_storage_queue_highest_sent_timestamp_seconds",
                "prom",
            );
            Ok(if sent * 1000.0 >= (t_end + 1000) as f64 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("highest sent {sent}"))
            })
        },
    )
    .unwrap();
    let range = (t_end - t_start) / 1000 + 60;
    let ours = raw_samples(agent.addr(), &sel, range, t_end).unwrap();
    let theirs = raw_samples(prom_addr, &sel, range, t_end).unwrap();
    let n: usize = ours.values().map(Vec::len).sum();
    eprintln!(
        "[e2e] remote_write: {} series, {n} samples compared; after restart: retried {}, sent {}",
        ours.len(),
        metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "prom"),
        metric(&agent, "ngxprobe_remote_storage_samples_total", "prom"),
    );
    // The eight stub_status families over ~15 s of 1 s samples.
    assert!(
        ours.len() >= 8 && n >= 8 * 10,
        "too little data: {} series, {n} samples",
        ours.len()
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "series differ"
    );
    for (labels, want) in &ours {
        assert_eq!(&theirs[labels], want, "samples of {labels:?}");
    }
    // The counter grew under load and survived both kills, the same on both sides.
    let q = format!("count_over_time(nginx_http_requests_total{{conf_path=\"{conf}\"}}[{range}s])");
    let a = api_get(
        agent.addr(),
        "/api/v1/query",
        &[("query", q.clone()), ("time", secs(t_end))],
    )
    .unwrap();
    let b = api_get(prom_addr, "/api/v1/query", &[("query", q), ("time", secs(t_end))]).unwrap();
    assert_eq!(a["data"]["result"], b["data"]["result"]);
    assert_eq!(
        metric(&agent, "ngxprobe_remote_storage_samples_failed_total", "prom"),
        0.0
    );
    // write_relabel_configs: only what `keep` matched reached Prometheus; the
    // rest was counted as dropped.
    let names = api_get(prom_addr, "/api/v1/label/__name__/values", &[]).unwrap();
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&"ngxprobe_build_info"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("nginx_") || *n == "ngxprobe_build_info"),
        "{names:?}"
    );
    assert!(metric(&agent, "ngxprobe_remote_storage_samples_dropped_total", "prom") > 0.0);
    drop(prom);
}

/// Label sets of `selector`'s series at `at_ms` through a Prometheus-compatible API.
fn series_at(
    addr: SocketAddr,
    selector: &str,
    at_ms: i64,
) -> anyhow::Result<std::collections::BTreeSet<BTreeMap<String, String>>> {
    Ok(raw_samples(addr, selector, 60, at_ms)?.into_keys().collect())
}

#[test]
fn external_labels_reach_prometheus_and_write_relabel_configs_see_them() {
    let _g = guard("remote_write_external_labels");
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let prom = Prometheus::start(&PrometheusOptions {
        extra_args: vec!["--web.enable-remote-write-receiver".into()],
        ..Default::default()
    })
    .expect("start prometheus");
    // A value only the agent's environment knows, different on every run.
    let node = format!("e2e-node-{}-{}", std::process::id(), now_ms());
    let config = format!(
        r#"global:
  external_labels:
    cluster: e2e-literal
    node: ${{E2E_NODE_NAME}}
    conf_path: from-external
    scratch: to-be-dropped
    tier: edge
remote_write:
  - url: {url}
    name: prom
    write_relabel_configs:
      - source_labels: [__name__]
        regex: 'nginx_.*|ngxprobe_build_info'
        action: keep
      # Matches only if the external label is there before relabelling.
      - source_labels: [__name__, cluster]
        regex: 'nginx_connections_waiting;e2e-literal'
        action: drop
      - regex: scratch
        action: labeldrop
      - source_labels: [tier]
        target_label: zone
      - regex: tier
        action: labeldrop
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 50ms
      max_backoff: 500ms
"#,
        url = prom.url("/api/v1/write")
    );
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(config),
        env: vec![("E2E_NODE_NAME".into(), node.clone())],
        ..Default::default()
    })
    .expect("start agent");
    agent.wait_instance_up(&conf).expect("instance up");
    let sel = format!("{{__name__=~\"nginx_.*\",conf_path=\"{conf}\"}}");

    // What the agent stores (the eight stub_status families): its own labels only.
    let ours = poll(
        "the instance's series in the agent's store",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let ours = series_at(agent.addr(), &sel, now_ms())?;
            let names: Vec<&str> = ours.iter().map(|l| l["__name__"].as_str()).collect();
            Ok(if ours.len() >= 8 && names.contains(&"nginx_connections_waiting") {
                Poll::Ready(ours)
            } else {
                Poll::Pending(format!("{names:?}"))
            })
        },
    )
    .unwrap();
    for l in &ours {
        for ext in ["cluster", "node", "scratch", "tier", "zone"] {
            assert!(!l.contains_key(ext), "external label {ext} in the local store: {l:?}");
        }
    }
    // What Prometheus must hold: each of those series plus the external
    // labels as relabelled (own conf_path kept, scratch dropped, tier →
    // zone), except the series dropped by an external label's value.
    let want: std::collections::BTreeSet<BTreeMap<String, String>> = ours
        .iter()
        .filter(|l| l["__name__"] != "nginx_connections_waiting")
        .map(|l| {
            let mut l = l.clone();
            l.insert("cluster".into(), "e2e-literal".into());
            l.insert("node".into(), node.clone());
            l.insert("zone".into(), "edge".into());
            l
        })
        .collect();
    let prom_addr = prom.addr();
    poll(
        "the agent's series in Prometheus with the external labels",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let theirs = series_at(prom_addr, &sel, now_ms())?;
            Ok(if theirs == want {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("Prometheus has {theirs:?}\nwanted {want:?}"))
            })
        },
    )
    .unwrap();
    // Nothing reached Prometheus without them, nor with the dropped or
    // renamed label (other nginx the agent found included).
    let all = series_at(prom_addr, "{__name__=~\".+\"}", now_ms()).unwrap();
    assert!(!all.is_empty());
    for l in &all {
        assert_eq!(l.get("cluster").map(String::as_str), Some("e2e-literal"), "{l:?}");
        assert_eq!(l.get("node"), Some(&node), "{l:?}");
        assert_eq!(l.get("zone").map(String::as_str), Some("edge"), "{l:?}");
        assert!(!l.contains_key("scratch") && !l.contains_key("tier"), "{l:?}");
    }
    // A series without its own conf_path gets the external one.
    let build = series_at(prom_addr, "ngxprobe_build_info", now_ms()).unwrap();
    assert_eq!(build.len(), 1, "{build:?}");
    let build = build.into_iter().next().unwrap();
    assert_eq!(
        build.get("conf_path").map(String::as_str),
        Some("from-external"),
        "{build:?}"
    );
    // The series dropped by its external label was counted as dropped.
    assert!(metric(&agent, "ngxprobe_remote_storage_samples_dropped_total", "prom") > 0.0);
    assert_eq!(
        metric(&agent, "ngxprobe_remote_storage_samples_failed_total", "prom"),
        0.0
    );
}

/// What a local receiver saw: arrival time, request head, body length.
struct Seen {
    at: Instant,
    head: String,
    body_len: usize,
}

/// A plain-HTTP receiver on 127.0.0.1 answering POSTs with `answer(n)` for
/// the n-th request (status line + extra headers). Stopped on drop.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(answer: fn(usize) -> &'static str) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                let (conn, _) = match l.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(conn);
                // Keep-alive: answer requests on this connection until it closes.
                while let Some((head, body_len)) = read_request(&mut r) {
                    let n = {
                        let mut s = s2.lock().unwrap();
                        s.push(Seen {
                            at: Instant::now(),
                            head,
                            body_len,
                        });
                        s.len() - 1
                    };
                    let resp = format!("{}Content-Length: 0\r\n\r\n", answer(n));
                    if r.get_mut().write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        Receiver {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

/// One request: its head (request line + headers) and body length; `None`
/// when the connection closed or sent garbage.
fn read_request(r: &mut BufReader<std::net::TcpStream>) -> Option<(String, usize)> {
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((head, len))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bad_request(_: usize) -> &'static str {
    "HTTP/1.1 400 Bad Request\r\n"
}

fn busy_twice(n: usize) -> &'static str {
    match n {
        0 | 1 => "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n",
        _ => "HTTP/1.1 204 No Content\r\n",
    }
}

#[test]
fn receivers_answering_400_and_429_fail_or_retry_as_prometheus_does() {
    let _g = guard("remote_write_status_codes");
    let bad = Receiver::start(bad_request);
    let busy = Receiver::start(busy_twice);
    let config = format!(
        r#"remote_write:
  - url: http://{}/api/v1/write
    name: bad
    headers: {{ X-Scope-OrgID: tenant-1 }}
    queue_config: {{ batch_send_deadline: 500ms, min_backoff: 30ms, max_backoff: 100ms }}
  - url: http://{}/api/v1/write
    name: busy
    queue_config: {{ batch_send_deadline: 500ms, min_backoff: 30ms, max_backoff: 100ms, retry_on_http_429: true }}
"#,
        bad.addr, busy.addr
    );
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(config),
        ..Default::default()
    })
    .expect("start agent");
    poll(
        "both receivers served",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let failed = metric(&agent, "ngxprobe_remote_storage_samples_failed_total", "bad");
            let sent = metric(&agent, "ngxprobe_remote_storage_samples_total", "busy");
            Ok(if failed > 0.0 && sent > 0.0 && bad.seen.lock().unwrap().len() >= 2 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("bad failed {failed}, busy sent {sent}"))
            })
        },
    )
    .unwrap();
    // 400: failed for good, never retried, nothing delivered.
    assert_eq!(
        metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "bad"),
        0.0
    );
    assert_eq!(metric(&agent, "ngxprobe_remote_storage_samples_total", "bad"), 0.0);
    // 429 + Retry-After: 1 → retried twice, each after at least the second it asked
    // for (the backoff alone would be 30–100 ms), then delivered.
    let busy_seen = busy.seen.lock().unwrap();
    assert!(busy_seen.len() >= 3);
    for w in busy_seen[..3].windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    }
    assert!(metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "busy") > 0.0);
    // The wire: remote-write 1.0 headers on every request, custom headers kept.
    for s in busy_seen.iter().chain(bad.seen.lock().unwrap().iter()) {
        let h = s.head.to_ascii_lowercase();
        assert!(h.starts_with("post /api/v1/write http/1.1"), "{h}");
        for want in [
            "content-encoding: snappy",
            "content-type: application/x-protobuf",
            "x-prometheus-remote-write-version: 0.1.0",
            "user-agent: ngxprobe/",
        ] {
            assert!(h.contains(want), "missing {want:?} in {h}");
        }
        assert!(s.body_len > 0);
    }
    assert!(
        bad.seen.lock().unwrap()[0]
            .head
            .to_ascii_lowercase()
            .contains("x-scope-orgid: tenant-1")
    );
}

fn unavailable_once(n: usize) -> &'static str {
    match n {
        0 => "HTTP/1.1 503 Service Unavailable\r\n",
        _ => "HTTP/1.1 204 No Content\r\n",
    }
}

fn accept(_: usize) -> &'static str {
    "HTTP/1.1 204 No Content\r\n"
}

/// Replaces `path` atomically (as a Secret volume's update does: a rename).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of the `authorization` header of each request `r` saw.
fn authorizations(r: &Receiver) -> Vec<String> {
    r.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            s.head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization").then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn credentials_from_files_are_sent_reread_and_never_logged() {
    use base64::Engine as _;
    let _g = guard("remote_write_credentials_files");
    let dir = TempDir::new("rw-credentials").unwrap();
    let (pw, cred, token) = (
        dir.path().join("password"),
        dir.path().join("credentials"),
        dir.path().join("token"),
    );
    // Trailing newlines, as `kubectl create secret --from-file` usually leaves them.
    replace_file(&pw, "pw-first-7f3a\n");
    replace_file(&cred, "cred-first-91bc\n");
    replace_file(&token, "tok-first-55de\n");
    let (basic, authz, bearer) = (
        Receiver::start(unavailable_once),
        Receiver::start(accept),
        Receiver::start(accept),
    );
    let q = "queue_config: { batch_send_deadline: 300ms, min_backoff: 30ms, max_backoff: 100ms }";
    let config = format!(
        r#"remote_write:
  - url: http://{}/api/v1/write
    name: basic
    basic_auth: {{ username: ngx, password_file: {} }}
    {q}
  - url: http://{}/api/v1/write
    name: authz
    authorization: {{ type: Token, credentials_file: {} }}
    {q}
  - url: http://{}/api/v1/write
    name: bearer
    bearer_token_file: {}
    {q}
"#,
        basic.addr,
        pw.display(),
        authz.addr,
        cred.display(),
        bearer.addr,
        token.display()
    );
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(config),
        ..Default::default()
    })
    .expect("start agent");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let expected = |round: &str| {
        [
            format!("Basic {}", b64(&format!("ngx:pw-{round}-7f3a"))),
            format!("Token cred-{round}-91bc"),
            format!("Bearer tok-{round}-55de"),
        ]
    };
    let receivers = [&basic, &authz, &bearer];
    // Each receiver got a request carrying the file's value (the 503 retried).
    let wait_for = |want: [String; 3], after: [usize; 3]| {
        poll(
            "requests with the files' credentials",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let got: Vec<Vec<String>> = receivers.iter().map(|r| authorizations(r)).collect();
                let done = (0..3).all(|i| got[i].iter().skip(after[i]).any(|a| *a == want[i]));
                Ok(if done {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("saw {got:?}"))
                })
            },
        )
        .unwrap()
    };
    wait_for(expected("first"), [1, 0, 0]);
    assert_eq!(
        authorizations(&basic)[0],
        expected("first")[0],
        "the request answered 503"
    );
    assert!(metric(&agent, "ngxprobe_remote_storage_samples_retried_total", "basic") > 0.0);
    assert_eq!(
        metric(&agent, "ngxprobe_remote_storage_samples_failed_total", "basic"),
        0.0
    );
    for name in ["basic", "authz", "bearer"] {
        assert!(
            metric(&agent, "ngxprobe_remote_storage_samples_total", name) > 0.0,
            "{name}"
        );
    }
    // Rotated files take effect without a restart (read on every request).
    let seen: Vec<usize> = receivers.iter().map(|r| r.seen.lock().unwrap().len()).collect();
    replace_file(&pw, "pw-second-7f3a\n");
    replace_file(&cred, "cred-second-91bc\n");
    replace_file(&token, "tok-second-55de\n");
    wait_for(expected("second"), [seen[0], seen[1], seen[2]]);
    // Secrets never logged.
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    for secret in ["7f3a", "91bc", "55de", &b64("ngx:pw-first-7f3a")] {
        assert!(!log.contains(secret), "{secret:?} in the agent's log");
    }
}
