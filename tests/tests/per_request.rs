//! Per-request RED metrics from the uprobe on nginx's ngx_http_free_request,
//! against nginx's own access log (the oracle): plaintext HTTP/1.0 and 1.1,
//! HTTPS/1.1 and HTTP/2 over TLS from real clients (curl, wrk, h2load).
//!
//! Traffic: 2xx–5xx (return, a missing file, a failing upstream), HEAD,
//! POST, PUT, an unknown method, a rate-limited 206, HTTPS keep-alive and
//! `Connection: close`, curl over HTTP/2, h2load with 100 concurrent
//! streams, h2c, wrk.
//!
//! - Counts per (method, status, protocol version, scheme, port) from the
//!   duration histogram's `_count` equal the access log's exactly at
//!   quiescence; duration, request-size and body-size sums equal the log's
//!   `$request_time`, `$request_length`, `$body_bytes_sent` sums (same clock,
//!   same fields: nginx computes them in the same call).
//! - With the uprobe attached, nginx_http_requests_total equals stub_status
//!   for TLS and HTTP/2 traffic too.
//! - A build the agent has no offsets for is refused, with a log line and a
//!   metric; plaintext counting keeps working.
//! - Label sets beyond the per-instance cap fold into `_OTHER`, counted;
//!   `server_name_label` names the server block that answered.
//! - Without the uprobe (`uprobe: never`, or a build it refuses) the socket
//!   probes make the records of plaintext HTTP/1.x, equal to the log too.
use ngxprobe_e2e::agent::Agent;
use ngxprobe_e2e::nginx::{Nginx, NginxOptions};
use ngxprobe_e2e::prometheus::{Prometheus, PrometheusOptions, api_get, find_tool};
use ngxprobe_e2e::protocol_clients::{curl, h2load, h2load_streams};
use ngxprobe_e2e::red::{
    ATTACHED, DURATION, Key, SOCKET, Sums, agent_sums, counts, log_lines, oracle_sums, quiesce, total, wait_attached,
};
use ngxprobe_e2e::util::{Poll, TempDir, poll, require_tool};
use ngxprobe_e2e::{clients, guard, oracle};
use std::collections::BTreeMap;
use std::time::Duration;

const FOLDED: &str = "ngxprobe_per_request_folded_total";
const REFUSED: &str = "ngxprobe_uprobe_attach_refused_total";
const REQUESTS: &str = "nginx_http_requests_total";

/// `per_request.uprobe: always` added to an agent config: the uprobe on
/// plaintext-only instances too (with the default `auto` they are measured
/// by the socket probes).
fn always(config: Option<&str>) -> String {
    match config {
        Some(yaml) if yaml.contains("per_request:\n") => {
            yaml.replacen("per_request:\n", "per_request:\n  uprobe: always\n", 1)
        }
        Some(yaml) => format!("{yaml}per_request:\n  uprobe: always\n"),
        None => "per_request:\n  uprobe: always\n".to_string(),
    }
}

/// nginx (started first) and the agent (with `config` and `uprobe:
/// always`), once the agent has the uprobe attached to the instance; also
/// the access log lines written before (nginx's readiness check), which the
/// agent cannot have seen.
fn start_attached(opts: NginxOptions, config: Option<&str>) -> (Nginx, Agent, String, usize) {
    let nginx = Nginx::start(opts).expect("nginx");
    let agent = Agent::start_with_config(&always(config)).expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    wait_attached(&agent, &conf, 1.0);
    let skip = log_lines(&nginx);
    (nginx, agent, conf, skip)
}

fn statuses_locations(codes: impl Iterator<Item = u16>) -> String {
    codes
        .map(|c| format!("        location = /s/{c} {{ return {c}; }}\n"))
        .collect()
}

#[test]
fn red_metrics_match_the_access_log() {
    for tool in ["curl", "h2load"] {
        if require_tool(tool, "cargo xtask setup installs it").is_none() {
            return;
        }
    }
    let _g = guard("red_metrics_match_the_access_log");
    let (nginx, agent, conf, skip) = start_attached(
        NginxOptions {
            tls: true,
            h2c: true,
            access_log: true,
            main_locations: statuses_locations([201, 302, 404, 500, 503].into_iter())
                + "        location /slow/ { limit_rate 200k; rewrite ^/slow/(.*)$ /$1 break; }\n"
                // A failing upstream (nothing listens on port 1): 502.
                + "        location = /upstream-down { proxy_pass http://127.0.0.1:1; }\n",
            ..Default::default()
        },
        None,
    );
    let a0 = agent
        .scrape()
        .expect("scrape")
        .value(REQUESTS, &conf)
        .expect("one")
        .unwrap_or(0.0) as i64;
    let o0 = oracle::fetch(nginx.oracle_addr()).expect("stub_status");

    let plain = nginx.main_addr();
    let tls = nginx.tls_addr().expect("TLS listener");
    let base = format!("http://{plain}");
    // Plaintext HTTP/1.1 keep-alive: 2xx, 3xx, 4xx, 5xx, a missing file.
    let urls: Vec<String> = [
        "/",
        "/s/201",
        "/s/302",
        "/s/404",
        "/s/500",
        "/s/503",
        "/missing",
        "/index.html",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    curl(&[], &urls).expect("curl http/1.1");
    // HTTP/1.0, HEAD, POST with a body (to a static file: 405), PUT.
    curl(&["--http1.0"], &urls[..3]).expect("curl http/1.0");
    curl(&["-I"], &urls[..2]).expect("curl HEAD");
    curl(
        &["-d", &"x".repeat(3000)],
        &[format!("{base}/"), format!("{base}/s/201")],
    )
    .expect("curl POST");
    curl(&["-X", "PUT", "-d", "abc"], &[format!("{base}/s/404")]).expect("curl PUT");
    // A method outside the known set (nginx serves it): `_OTHER`.
    curl(&["-X", "FOO"], &[format!("{base}/s/201")]).expect("curl FOO");
    // A failing upstream: 502.
    curl(&[], &[format!("{base}/upstream-down")]).expect("curl upstream down");
    // A slow response (limit_rate: one second at full speed, then 200 kB/s): ~0.5 s, 206.
    curl(&["-r", "0-299999"], &[format!("{base}/slow/big.bin")]).expect("curl slow");
    // HTTPS/1.1 and HTTP/2 over TLS.
    let https: Vec<String> = ["/", "/index.html", "/missing"]
        .iter()
        .map(|p| format!("https://{tls}{p}"))
        .collect();
    for _ in 0..3 {
        curl(&[], &https).expect("curl https");
    }
    // HTTPS with `Connection: close` (a handshake per request), curl over
    // HTTP/2 (ALPN), h2load with 100 concurrent streams on one connection,
    // and h2c (cleartext HTTP/2, prior knowledge).
    curl(&["-H", "Connection: close"], &https).expect("curl https close");
    curl(&["--http2"], &https).expect("curl --http2");
    let h = h2load(&format!("https://{tls}/"), 2, 300).expect("h2load");
    assert_eq!(h.protocol, "h2");
    let h = h2load_streams(&format!("https://{tls}/index.html"), 1, 1000, 100).expect("h2load -m 100");
    assert_eq!(h.protocol, "h2");
    let h2c = nginx.h2c_addr().expect("h2c listener");
    let h = h2load(&format!("http://{h2c}/"), 2, 200).expect("h2load h2c");
    assert_eq!(h.protocol, "h2c");
    // wrk: plaintext keep-alive load, many requests.
    if require_tool("wrk", "cargo xtask setup installs it").is_some() {
        let w = clients::wrk(&["-t1", "-c4", "-d1s", &format!("{base}/")], Duration::from_secs(1)).expect("wrk");
        assert!(w.requests > 0, "wrk made no requests");
    }

    let (log, ours) = quiesce(&agent, &nginx, skip);
    let lost = agent
        .scrape()
        .expect("scrape")
        .sum_by("ngxprobe_per_request_records_lost_total", "reason");
    eprintln!("[e2e] records lost: {lost:?}");
    ngxprobe_e2e::red::assert_red_exact(&log, &ours);
    let slow = log.iter().find(|(k, _)| k.1 == "206").map(|(_, s)| s.duration_ms);
    assert!(
        slow.is_some_and(|ms| ms >= 200),
        "limit_rate responses took {slow:?} ms"
    );
    for (method, status) in [("_OTHER", "201"), ("GET", "502")] {
        assert!(
            log.keys().any(|k| (k.0.as_str(), k.1.as_str()) == (method, status)),
            "no {method} {status} in the log"
        );
    }
    for scheme_version in [
        ("https", "2"),
        ("https", "1.1"),
        ("http", "1.0"),
        ("http", "1.1"),
        ("http", "2"),
    ] {
        assert!(
            log.keys().any(|k| (k.3.as_str(), k.2.as_str()) == scheme_version),
            "no {scheme_version:?} traffic in the log"
        );
    }

    // nginx_http_requests_total now includes TLS and HTTP/2 requests: it
    // equals stub_status (whose O1 fetch counts itself; our O0 fetch is a
    // plaintext request the agent counts).
    let o1 = oracle::fetch(nginx.oracle_addr()).expect("stub_status");
    let nginx_delta = o1.requests - o0.requests;
    let agent_delta = poll(
        "nginx_http_requests_total to match stub_status",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let a1 = agent.scrape()?.value(REQUESTS, &conf)?.unwrap_or(0.0) as i64;
            Ok(if a1 - a0 == nginx_delta + 1 {
                Poll::Ready(a1 - a0)
            } else {
                Poll::Pending(format!("agent Δ{} vs stub_status Δ{nginx_delta} + 1", a1 - a0))
            })
        },
    );
    eprintln!("[e2e] requests: stub_status Δ{nginx_delta} (+1 for O0), agent {agent_delta:?}");
    assert_eq!(agent_delta.expect("requests match"), nginx_delta + 1);
    // The histograms flow through the store and PromQL like any family, and
    // Debian's Prometheus scrapes and queries them the same.
    let q = format!("sum({DURATION}_count{{conf_path=\"{conf}\"}})");
    let prom = find_tool("prometheus").map(|_| {
        Prometheus::start(&PrometheusOptions {
            config: Some(format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ngxprobe\n    static_configs:\n      - targets: ['{}']\n",
                agent.addr()
            )),
            ..Default::default()
        })
        .expect("prometheus")
    });
    let mut apis = vec![("ngxprobe", agent.addr())];
    apis.extend(prom.as_ref().map(|p| ("prometheus", p.addr())));
    for (who, addr) in apis {
        let n = poll(
            &format!("{who}'s PromQL to count every logged request"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let want = (log_lines(&nginx) - skip) as f64;
                let v = api_get(addr, "/api/v1/query", &[("query", q.clone())])?;
                let got = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok());
                Ok(if got == Some(want) {
                    Poll::Ready(want)
                } else {
                    Poll::Pending(format!("{q} = {got:?}, access log {want}"))
                })
            },
        )
        .expect("PromQL count");
        eprintln!("[e2e] {who}: {q} = {n}");
    }
    let p99 = format!("histogram_quantile(0.99, sum by (le) ({DURATION}_bucket{{conf_path=\"{conf}\"}}))");
    let v = agent.query(&p99).expect("histogram_quantile");
    let p99v = v["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
    assert!(p99v.is_some_and(|x| x > 0.0 && x <= 0.0005), "{p99} = {v}");
    let scrape = agent.scrape().expect("scrape");
    assert!(
        scrape.raw.contains(&format!("# TYPE {DURATION} histogram")),
        "histogram TYPE line missing"
    );
    assert!(
        scrape.raw.contains(&format!("{DURATION}_bucket{{")) && scrape.raw.contains("le=\"+Inf\""),
        "bucket samples missing"
    );
}

/// A copy of Debian's nginx with one flag of its NGX_MODULE_SIGNATURE
/// flipped: the same code, but a build the offset table does not list.
fn patched_nginx(dir: &TempDir) -> std::path::PathBuf {
    let mut data = std::fs::read(ngxprobe_e2e::nginx::nginx_bin()).expect("read nginx");
    let at = signature_flags_at(&data).expect("module signature in the binary");
    data[at] = if data[at] == b'0' { b'1' } else { b'0' };
    let path = dir.path().join("nginx");
    std::fs::write(&path, &data).expect("write nginx copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Offset of the first flag digit of NGX_MODULE_SIGNATURE: NUL, three
/// "d," size fields, then 20 or more 0/1 digits and a NUL.
fn signature_flags_at(data: &[u8]) -> Option<usize> {
    (0..data.len().saturating_sub(32)).find_map(|p| {
        let head = &data[p..p + 7];
        let sizes = head[0] == 0
            && [1, 3, 5]
                .iter()
                .all(|&i| head[i].is_ascii_digit() && head[i + 1] == b',');
        if !sizes {
            return None;
        }
        let flags = data[p + 7..].iter().take_while(|b| **b == b'0' || **b == b'1').count();
        (flags >= 20 && data.get(p + 7 + flags) == Some(&0)).then_some(p + 7)
    })
}

#[test]
fn unknown_build_is_refused_and_plaintext_still_counted() {
    let _g = guard("unknown_build_is_refused_and_plaintext_still_counted");
    let bin_dir = TempDir::new("nginx-bin").expect("tempdir");
    let bin = patched_nginx(&bin_dir);
    let nginx = Nginx::start(NginxOptions {
        bin: Some(bin.clone()),
        ..Default::default()
    })
    .expect("patched nginx runs");
    let agent = Agent::start_with_config(&always(None)).expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    wait_attached(&agent, &conf, 0.0);
    let line = poll(
        "the agent to log the refusal",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
            Ok(
                match log
                    .lines()
                    .find(|l| l.contains("unknown nginx build") && l.contains(&format!("pid {}", nginx.master_pid())))
                {
                    Some(l) => Poll::Ready(l.to_string()),
                    None => Poll::Pending("not logged".into()),
                },
            )
        },
    )
    .expect("refusal logged");
    eprintln!("[e2e] {line}");
    assert!(
        line.contains("nginx/1.22.1") && line.contains("module signature"),
        "{line}"
    );
    let scrape = agent.scrape().expect("scrape");
    assert!(
        scrape.sum_where(REFUSED, "reason", "unknown_build") >= 1.0,
        "{REFUSED}{{reason=\"unknown_build\"}} not counted"
    );
    // Plaintext requests are still counted by the socket probes, exactly.
    let a0 = scrape.value(REQUESTS, &conf).expect("one").unwrap_or(0.0) as i64;
    let paths: Vec<String> = (0..7).map(|_| "/".to_string()).collect();
    clients::keepalive_sequence(nginx.main_addr(), &paths).expect("requests");
    poll(
        "7 more requests counted",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let a1 = agent.scrape()?.value(REQUESTS, &conf)?.unwrap_or(0.0) as i64;
            Ok(if a1 - a0 == 7 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("Δ{}", a1 - a0))
            })
        },
    )
    .expect("plaintext requests counted");
    // Without the uprobe, the instance's per-request metrics come from the
    // socket probes (plaintext HTTP/1.x): the same 7 requests.
    let scrape = agent.scrape().expect("scrape");
    assert_eq!(scrape.value(SOCKET, &conf).expect("one"), Some(1.0), "{SOCKET}");
    let n = poll(
        "7 requests in the per-request histograms",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let n = total(&agent_sums(&agent.scrape()?, &conf));
            Ok(if n == 7 {
                Poll::Ready(n)
            } else {
                Poll::Pending(format!("{n}"))
            })
        },
    );
    assert_eq!(n.expect("socket-path records"), 7);
}

/// A build the table does not know but that carries DWARF (as nginx built
/// from source does: its configure compiles with -g): the agent reads the
/// offsets from the executable's .debug_info, attaches, says so, and the
/// per-request metrics equal the access log. The DWARF is gcc's for
/// Debian's headers (nginx-dev), added to the patched copy by objcopy.
#[test]
fn dwarf_in_the_executable_maps_an_unknown_build() {
    let _g = guard("dwarf_in_the_executable_maps_an_unknown_build");
    let Some(dev) = ngxprobe_e2e::nginx_dev::NginxDev::require() else {
        return;
    };
    if require_tool("objcopy", "cargo xtask setup installs binutils").is_none() {
        return;
    }
    let bin_dir = TempDir::new("nginx-bin").expect("tempdir");
    let bin = patched_nginx(&bin_dir);
    let debug = dev.debug_object(5).expect("DWARF of Debian's headers");
    ngxprobe_e2e::nginx_dev::add_debug_sections(&debug, &bin).expect("objcopy");
    let (nginx, agent, conf, skip) = start_attached(
        NginxOptions {
            bin: Some(bin.clone()),
            access_log: true,
            main_locations: statuses_locations([201, 404].into_iter()),
            ..Default::default()
        },
        None,
    );
    let pid = format!("pid {}", nginx.master_pid());
    let line = poll(
        "the agent to log the attachment",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
            Ok(
                match log
                    .lines()
                    .find(|l| l.contains("uprobe on ngx_http_free_request attached") && l.contains(&pid))
                {
                    Some(l) => Poll::Ready(l.to_string()),
                    None => Poll::Pending("not logged".into()),
                },
            )
        },
    )
    .expect("attachment logged");
    eprintln!("[e2e] {line}");
    assert!(line.contains("offsets from DWARF in the executable"), "{line}");
    let urls: Vec<String> = ["/", "/s/201", "/s/404", "/missing"]
        .iter()
        .map(|p| format!("http://{}{p}", nginx.main_addr()))
        .collect();
    curl(&[], &urls).expect("curl");
    curl(&["-H", "Connection: close"], &urls).expect("curl close");
    let (log, ours) = quiesce(&agent, &nginx, skip);
    assert_eq!(total(&log), 2 * urls.len() as u64);
    assert_eq!(counts(&ours), counts(&log), "requests per label set");
    for (k, l) in &log {
        let o = ours[k];
        assert_eq!(
            (o.request_bytes, o.body_bytes, o.duration_ms),
            (l.request_bytes, l.body_bytes, l.duration_ms),
            "{k:?}"
        );
    }
    let scrape = agent.scrape().expect("scrape");
    assert_eq!(scrape.value(SOCKET, &conf).expect("one"), Some(0.0), "{SOCKET}");
}

#[test]
fn label_sets_beyond_the_cap_are_folded() {
    let _g = guard("label_sets_beyond_the_cap_are_folded");
    let codes = 201..=212u16;
    let cap = 3;
    let (nginx, agent, conf, skip) = start_attached(
        NginxOptions {
            access_log: true,
            main_locations: statuses_locations(codes.clone()),
            ..Default::default()
        },
        Some(&format!(
            "per_request:\n  max_series_per_instance: {cap}\n  server_name_label: true\n"
        )),
    );
    let urls: Vec<String> = codes
        .clone()
        .map(|c| format!("http://{}/s/{c}", nginx.main_addr()))
        .collect();
    curl(&[], &urls).expect("curl");
    let (log, ours) = quiesce(&agent, &nginx, skip);
    assert_eq!(total(&log), urls.len() as u64);
    let scrape = agent.scrape().expect("scrape");
    let folded = scrape.value(FOLDED, &conf).expect("one").unwrap_or(-1.0);
    let other: u64 = ours.iter().filter(|(k, _)| k.1 == "_OTHER").map(|(_, s)| s.count).sum();
    let kept = ours.keys().filter(|k| k.1 != "_OTHER").count();
    eprintln!("[e2e] cap {cap}: {kept} label sets kept, {other} requests under _OTHER, {FOLDED} = {folded}");
    assert_eq!(kept, cap);
    assert_eq!(folded as u64, urls.len() as u64 - cap as u64, "folded = the excess");
    assert_eq!(other, folded as u64);
    // server_name_label: the main server block answered every request.
    let names: std::collections::BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.name == format!("{DURATION}_count") && s.label("conf_path") == Some(conf.as_str()))
        .map(|s| s.label("server_name").unwrap_or("(none)"))
        .collect();
    assert_eq!(names, std::collections::BTreeSet::from(["main"]), "server_name labels");
}

/// Workers nginx starts after a reload or a worker crash fire the same
/// uprobe (it is per executable, not per pid) and their requests are
/// attributed to the instance before discovery lists them (by their parent).
#[test]
fn new_workers_after_reload_and_crash_are_counted() {
    let _g = guard("new_workers_after_reload_and_crash_are_counted");
    let (nginx, agent, _conf, skip) = start_attached(
        NginxOptions {
            worker_processes: 2,
            access_log: true,
            ..Default::default()
        },
        None,
    );
    let paths: Vec<String> = (0..20).map(|_| "/".to_string()).collect();
    clients::keepalive_sequence(nginx.main_addr(), &paths).expect("before");
    nginx.reload().expect("reload");
    clients::keepalive_sequence(nginx.main_addr(), &paths).expect("after reload");
    nginx.kill_worker().expect("kill a worker");
    poll(
        "nginx to replace the killed worker",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            Ok(if nginx.worker_pids().len() == 2 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("workers {:?}", nginx.worker_pids()))
            })
        },
    )
    .expect("respawned worker");
    for _ in 0..4 {
        clients::keepalive_sequence(nginx.main_addr(), &paths[..5]).expect("after crash");
    }
    let (log, ours) = quiesce(&agent, &nginx, skip);
    eprintln!(
        "[e2e] reload + crash: access log {} requests, agent {}",
        total(&log),
        total(&ours)
    );
    assert_eq!(counts(&ours), counts(&log));
    let unattributed =
        agent
            .scrape()
            .expect("scrape")
            .sum_where("ngxprobe_per_request_records_lost_total", "reason", "unattributed");
    assert_eq!(unattributed, 0.0, "records of new workers not attributed");
}

const UNLABELLED: &str = "ngxprobe_per_request_socket_unlabelled_total";

/// Moves `n` requests of `from` to `to` in an oracle view (labels the socket
/// probes cannot read, by construction of the traffic).
fn move_count(m: &mut BTreeMap<Key, Sums>, from: &Key, to: Key, n: u64) {
    let f = m
        .get_mut(from)
        .unwrap_or_else(|| panic!("no {from:?} in the access log"));
    assert!(f.count >= n, "{from:?}: {} < {n}", f.count);
    f.count -= n;
    if f.count == 0 {
        m.remove(from);
    }
    m.entry(to).or_default().count += n;
}

/// With `per_request.uprobe: never` the socket probes make the per-request
/// records of plaintext HTTP/1.x: counts per (method, status, protocol
/// version, scheme, port) equal nginx's access log exactly, across methods,
/// statuses, keep-alive and close, HTTP/1.0, a POST body and pipelining. The
/// labels they cannot read are `_OTHER` and counted, never guessed:
/// pipelined requests (their request line was read with the previous one)
/// and a request line longer than the bytes looked at.
#[test]
fn socket_path_red_matches_the_access_log() {
    if require_tool("curl", "cargo xtask setup installs it").is_none() {
        return;
    }
    let _g = guard("socket_path_red_matches_the_access_log");
    let nginx = Nginx::start(NginxOptions {
        access_log: true,
        main_locations: statuses_locations([201, 503].into_iter())
            + "        location = /moved { return 301 /; }\n"
            + "        location /slow/ { limit_rate 200k; rewrite ^/slow/(.*)$ /$1 break; }\n",
        ..Default::default()
    })
    .expect("nginx");
    let agent = Agent::start_with_config("per_request:\n  uprobe: never\n").expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    poll(
        "the socket probes to make the instance's per-request records",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let s = agent.scrape()?;
            let (sock, att) = (s.value(SOCKET, &conf)?, s.value(ATTACHED, &conf)?);
            Ok(if sock == Some(1.0) && att == Some(0.0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{SOCKET} = {sock:?}, {ATTACHED} = {att:?}"))
            })
        },
    )
    .expect("socket path on");
    let skip = log_lines(&nginx);
    let addr = nginx.main_addr();
    let base = format!("http://{addr}");
    let url = |p: &str| format!("{base}{p}");
    // Keep-alive: 200, 404, 301 (return), 201, 503, a static file.
    let paths = ["/", "/missing", "/moved", "/s/201", "/s/503", "/index.html"];
    let urls: Vec<String> = paths.iter().map(|p| url(p)).collect();
    curl(&[], &urls).expect("curl keep-alive");
    // Connection: close on each, HTTP/1.0 (closes), HEAD.
    curl(&["-H", "Connection: close"], &urls[..4]).expect("curl close");
    curl(&["--http1.0"], &urls[..3]).expect("curl http/1.0");
    curl(&["-I"], &urls[..3]).expect("curl HEAD");
    // POST with a body: 201 from `return`, 405 from a static file; PUT, DELETE.
    curl(&["-d", &"x".repeat(3000)], &[url("/s/201"), url("/")]).expect("curl POST");
    curl(&["-X", "PUT", "-d", "abc"], &[url("/s/201")]).expect("curl PUT");
    curl(&["-X", "DELETE"], &[url("/s/201")]).expect("curl DELETE");
    // Pipelined: one write of 5 requests; nginx reads them at once and makes
    // the last 4 from bytes already read.
    let piped = 5;
    let r = clients::pipelined(addr, "/index.html", piped).expect("pipelined");
    assert!(r.iter().all(|x| x.status == 200), "pipelined statuses");
    // A request line longer than the probes look at (128 bytes): 404.
    let long = format!("/{}", "a".repeat(200));
    curl(&[], &[url(&long)]).expect("curl long line");
    // A slow response (limit_rate: one second at full speed, then 200 kB/s):
    // ~0.5 s, 206, many sends.
    curl(&["-r", "0-299999"], &[url("/slow/big.bin")]).expect("curl slow");
    // wrk: many keep-alive requests.
    if require_tool("wrk", "cargo xtask setup installs it").is_some() {
        let w = clients::wrk(&["-t1", "-c4", "-d1s", &url("/")], Duration::from_secs(1)).expect("wrk");
        assert!(w.requests > 0, "wrk made no requests");
    }

    let (log, ours) = quiesce(&agent, &nginx, skip);
    let port = addr.port().to_string();
    let k = |m: &str, s: &str, v: &str| -> Key { (m.into(), s.into(), v.into(), "http".into(), port.clone()) };
    let mut want = log.clone();
    move_count(
        &mut want,
        &k("GET", "200", "1.1"),
        k("_OTHER", "200", "_OTHER"),
        piped as u64 - 1,
    );
    move_count(&mut want, &k("GET", "404", "1.1"), k("GET", "404", "_OTHER"), 1);
    eprintln!("[e2e] access log: {} requests in {} label sets", total(&log), log.len());
    for key in want.keys().chain(ours.keys().filter(|x| !want.contains_key(*x))) {
        let l = want.get(key).copied().unwrap_or_default();
        let o = ours.get(key).copied().unwrap_or_default();
        eprintln!("[e2e]   {key:?}: log {l:?} / agent {o:?}");
    }
    for (m, s, v) in [
        ("GET", "301", "1.1"),
        ("GET", "301", "1.0"),
        ("HEAD", "200", "1.1"),
        ("POST", "405", "1.1"),
        ("POST", "201", "1.1"),
        ("PUT", "201", "1.1"),
        ("DELETE", "201", "1.1"),
        ("GET", "503", "1.1"),
    ] {
        assert!(want.contains_key(&k(m, s, v)), "no {m} {s} HTTP/{v} in the access log");
    }
    assert_eq!(
        counts(&ours),
        counts(&want),
        "requests per label set: agent vs access log"
    );
    // Sizes, where the traffic leaves no doubt which requests a label set
    // holds (not the ones moved above): the request bytes are nginx's
    // $request_length for requests without a body (the probes count a body
    // nginx discards, nginx does not), the response body bytes its
    // $body_bytes_sent; in total the body bytes are equal too.
    let moved = [k("GET", "200", "1.1"), k("GET", "404", "1.1")];
    for (key, l) in &want {
        if key.0 == "_OTHER" || key.2 == "_OTHER" || moved.contains(key) {
            continue;
        }
        if ["GET", "HEAD", "DELETE"].contains(&key.0.as_str()) {
            assert_eq!(ours[key].request_bytes, l.request_bytes, "{key:?}: request bytes");
        }
        assert_eq!(ours[key].body_bytes, l.body_bytes, "{key:?}: response body bytes");
    }
    let body = |m: &BTreeMap<Key, Sums>| m.values().map(|s| s.body_bytes).sum::<u64>();
    assert_eq!(body(&ours), body(&log), "response body bytes in total");
    // Durations: the kernel's time from the request's first read to its
    // last send (microseconds) against nginx's $request_time (its cached
    // millisecond clock): per label set within max(1 ms per request, 5 %)
    // (the label sets requests were moved between above: in total).
    let within = |what: &str, o: Sums, l: Sums| {
        let slack = (l.count as f64).max(0.05 * l.duration_ms as f64);
        assert!(
            (o.duration_ms as f64 - l.duration_ms as f64).abs() <= slack,
            "{what}: duration sum {} ms, access log {} ms (± {slack} ms)",
            o.duration_ms,
            l.duration_ms
        );
    };
    for (key, l) in &want {
        if !(key.0 == "_OTHER" || key.2 == "_OTHER" || moved.contains(key)) {
            within(&format!("{key:?}"), ours[key], *l);
        }
    }
    let sum = |m: &BTreeMap<Key, Sums>| Sums {
        count: total(m),
        duration_ms: m.values().map(|s| s.duration_ms).sum(),
        ..Default::default()
    };
    within("all requests", sum(&ours), sum(&log));
    let slow = ours.get(&k("GET", "206", "1.1")).map(|s| s.duration_ms);
    assert!(slow.is_some_and(|ms| ms >= 200), "limit_rate response took {slow:?} ms");
    let scrape = agent.scrape().expect("scrape");
    let unl = |reason: &str| scrape.value_with(UNLABELLED, &conf, "reason", reason);
    assert_eq!(
        unl("pipelined"),
        (piped - 1) as f64,
        "{UNLABELLED}{{reason=\"pipelined\"}}"
    );
    assert_eq!(unl("no_version"), 1.0, "{UNLABELLED}{{reason=\"no_version\"}}");
    assert_eq!(unl("no_response"), 0.0, "{UNLABELLED}{{reason=\"no_response\"}}");
    let lost = scrape.sum_by("ngxprobe_per_request_records_lost_total", "reason");
    assert!(lost.values().all(|v| *v == 0.0), "records lost: {lost:?}");
}

/// Waits (bounded) until the instance's per-request source is the uprobe
/// (`uprobe` true: probe_attached 1, socket_probes 0) or the socket probes.
fn wait_source(agent: &Agent, conf: &str, uprobe: bool) {
    let (att, sock) = if uprobe { (1.0, 0.0) } else { (0.0, 1.0) };
    poll(
        "the instance's per-request source",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let s = agent.scrape()?;
            let (a, k) = (s.value(ATTACHED, conf)?, s.value(SOCKET, conf)?);
            Ok(if a == Some(att) && k == Some(sock) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{ATTACHED} = {a:?}, {SOCKET} = {k:?}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_tail(20)));
}

/// A copy of the nginx executable in `dir`: the uprobe is attached per
/// file, so instances run from it are not affected by other nginx
/// instances on the host (another test's TLS nginx running the system
/// binary would keep the uprobe on it).
fn private_nginx(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("nginx");
    std::fs::copy(ngxprobe_e2e::nginx::nginx_bin(), &path).expect("copy nginx");
    path
}

/// Plaintext traffic (keep-alive, close, HTTP/1.0, HEAD) on `n`'s main port.
fn plaintext_traffic(n: &Nginx) {
    let base = format!("http://{}", n.main_addr());
    let urls: Vec<String> = ["/", "/missing", "/index.html", "/echo"]
        .iter()
        .map(|p| format!("{base}{p}"))
        .collect();
    curl(&[], &urls).expect("curl keep-alive");
    curl(&["-H", "Connection: close"], &urls[..2]).expect("curl close");
    curl(&["--http1.0"], &urls[..2]).expect("curl http/1.0");
    curl(&["-I"], &urls[..1]).expect("curl HEAD");
}

/// HTTPS/1.1 and HTTP/2 over TLS on `n`'s TLS port.
fn tls_traffic(n: &Nginx) {
    let tls = n.tls_addr().expect("TLS listener");
    let urls: Vec<String> = ["/", "/missing", "/index.html"]
        .iter()
        .map(|p| format!("https://{tls}{p}"))
        .collect();
    curl(&[], &urls).expect("curl https");
    curl(&["--http2"], &urls).expect("curl --http2");
}

/// Where a phase starts: the access log's lines and the agent's counts per
/// label set for `n` (requests nginx served before the agent tracked the
/// instance are in neither the comparison nor the baseline).
struct Mark {
    skip: usize,
    base: BTreeMap<Key, u64>,
}

fn mark(agent: &Agent, n: &Nginx) -> Mark {
    Mark {
        skip: log_lines(n),
        base: counts(&agent_sums(&agent.scrape().expect("scrape"), &n.conf_label())),
    }
}

/// The agent's counts per label set since `m` equal the access log's lines
/// since `m` (polled with a deadline: records reach the agent within
/// 200 ms of the request's end, or when its connection closes).
fn assert_exact(agent: &Agent, n: &Nginx, m: &Mark, what: &str) {
    let conf = n.conf_label();
    let views = || -> anyhow::Result<(BTreeMap<Key, u64>, BTreeMap<Key, u64>)> {
        let log = counts(&oracle_sums(n, m.skip));
        let mut ours = counts(&agent_sums(&agent.scrape()?, &conf));
        for (k, b) in &m.base {
            let e = ours.entry(k.clone()).or_default();
            *e = e.saturating_sub(*b);
        }
        ours.retain(|_, c| *c > 0);
        Ok((log, ours))
    };
    let res = poll(
        "the agent's counts to equal the access log's",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let (log, ours) = views()?;
            Ok(if log == ours && !log.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("agent {ours:?}, access log {log:?}"))
            })
        },
    );
    let (log, ours) = views().expect("scrape");
    eprintln!(
        "[e2e] {what}: access log {} requests, agent {}",
        log.values().sum::<u64>(),
        ours.values().sum::<u64>()
    );
    if let Err(e) = res {
        eprintln!("[e2e] {e:#}");
    }
    assert_eq!(ours, log, "{what}: agent (left) vs access log (right)");
}

/// `uprobe: auto` (the default) on an instance whose config has only
/// plaintext listeners: no uprobe (it would cost every request a trap),
/// per-request records from the socket probes, equal to the access log.
#[test]
fn auto_leaves_a_plaintext_only_instance_to_the_socket_probes() {
    if require_tool("curl", "cargo xtask setup installs it").is_none() {
        return;
    }
    let _g = guard("auto_leaves_a_plaintext_only_instance_to_the_socket_probes");
    let bin_dir = TempDir::new("nginx-bin").expect("tempdir");
    let nginx = Nginx::start(NginxOptions {
        bin: Some(private_nginx(&bin_dir)),
        access_log: true,
        ..Default::default()
    })
    .expect("nginx");
    let agent = Agent::start().expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    wait_source(&agent, &conf, false);
    let m = mark(&agent, &nginx);
    plaintext_traffic(&nginx);
    assert_exact(&agent, &nginx, &m, "plaintext-only, auto");
    // Still no uprobe on the executable (a trap per request would show as
    // an attachment): the source did not change during the traffic.
    wait_source(&agent, &conf, false);
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        log.contains("plaintext HTTP/1.x listeners only"),
        "the instance's config verdict is not logged:\n{}",
        agent.log_tail(20)
    );
}

/// `uprobe: auto` on an instance with a TLS (and HTTP/2) listener: the
/// uprobe is attached and is the only source, exact against the access log
/// for HTTPS, HTTP/2 and plaintext. A reload to a config without TLS
/// listeners (read again because the workers change) detaches it and the
/// socket probes take over, still exact.
#[test]
fn auto_attaches_for_tls_and_follows_a_reload() {
    if require_tool("curl", "cargo xtask setup installs it").is_none() {
        return;
    }
    let _g = guard("auto_attaches_for_tls_and_follows_a_reload");
    let bin_dir = TempDir::new("nginx-bin").expect("tempdir");
    let nginx = Nginx::start(NginxOptions {
        bin: Some(private_nginx(&bin_dir)),
        tls: true,
        access_log: true,
        ..Default::default()
    })
    .expect("nginx");
    let agent = Agent::start().expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    wait_source(&agent, &conf, true);
    let m = mark(&agent, &nginx);
    tls_traffic(&nginx);
    plaintext_traffic(&nginx);
    assert_exact(&agent, &nginx, &m, "TLS listener, auto");

    // The TLS server becomes plaintext: no listener needs the uprobe.
    let text = std::fs::read_to_string(nginx.conf_path()).expect("read nginx.conf");
    assert!(
        text.contains(" ssl http2;"),
        "the harness's TLS listen line changed:\n{text}"
    );
    std::fs::write(nginx.conf_path(), text.replace(" ssl http2;", ";")).expect("write nginx.conf");
    nginx.reload().expect("reload");
    wait_source(&agent, &conf, false);
    let m = mark(&agent, &nginx);
    plaintext_traffic(&nginx);
    assert_exact(&agent, &nginx, &m, "after the reload to plaintext only");
}

/// Two instances running the same executable, one plaintext-only (started
/// first: socket probes) and one with TLS: the executable carries the
/// uprobe (the TLS instance needs it), so both instances take their records
/// from it: a plaintext-only instance that kept the socket probes would
/// count every request twice.
/// When the TLS instance stops, the uprobe is detached and the plaintext
/// one goes back to the socket probes. Every phase exact against each
/// instance's access log.
#[test]
fn auto_instances_sharing_an_executable_are_counted_once() {
    if require_tool("curl", "cargo xtask setup installs it").is_none() {
        return;
    }
    let _g = guard("auto_instances_sharing_an_executable_are_counted_once");
    let bin_dir = TempDir::new("nginx-bin").expect("tempdir");
    let bin = private_nginx(&bin_dir);
    let plain = Nginx::start(NginxOptions {
        bin: Some(bin.clone()),
        tag: "plain".into(),
        access_log: true,
        ..Default::default()
    })
    .expect("plaintext nginx");
    let agent = Agent::start().expect("agent");
    let pc = plain.conf_label();
    agent.wait_instance_up(&pc).expect("plaintext instance up");
    // Alone, the plaintext instance is measured by the socket probes.
    wait_source(&agent, &pc, false);
    let tls = Nginx::start(NginxOptions {
        bin: Some(bin),
        tag: "tls".into(),
        tls: true,
        access_log: true,
        ..Default::default()
    })
    .expect("TLS nginx");
    let tc = tls.conf_label();
    agent.wait_instance_up(&tc).expect("TLS instance up");
    // The TLS instance brings the uprobe to the shared executable: the
    // plaintext instance switches to it.
    wait_source(&agent, &tc, true);
    wait_source(&agent, &pc, true);
    let (pm, tm) = (mark(&agent, &plain), mark(&agent, &tls));
    plaintext_traffic(&plain);
    tls_traffic(&tls);
    plaintext_traffic(&tls);
    assert_exact(
        &agent,
        &plain,
        &pm,
        "plaintext instance sharing the TLS instance's executable",
    );
    assert_exact(&agent, &tls, &tm, "TLS instance");

    drop(tls);
    wait_source(&agent, &pc, false);
    let pm = mark(&agent, &plain);
    plaintext_traffic(&plain);
    assert_exact(&agent, &plain, &pm, "plaintext instance alone again");
}
