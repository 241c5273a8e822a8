//! Connections ngxprobe does not parse as HTTP/1.x (TLS, HTTP/2, not HTTP at
//! all) against nginx's own stub_status.
//!
//! Same protocol as the accuracy suite (`ngxprobe_e2e::measure`: A0, O0,
//! scenario with the invariant monitor, quiesce, O1, A1). Connection counters
//! and gauges must match nginx exactly. Requests made on unparsed connections
//! are counted by nginx and must not be by ngxprobe: its Δrequests is
//! expected lower by exactly the requests the clients report having made
//! there, and never above nginx's. Each unparsed connection must show in
//! `ngxprobe_unparsed_connections_total` under its reason, once.
//!
//! Most scenarios run the agent with `per_request.enabled: false`: what it
//! does without the nginx uprobe (unknown builds, or switched off). With it
//! (the default), the requests on those connections are counted and every
//! counter equals stub_status: `tls_counters_are_exact_with_the_uprobe`
//! (HTTPS keep-alive and close, handshakes only, session resumption, 100
//! HTTP/2 streams) and `hostile_bytes_on_every_port_never_become_requests`.
use ngxprobe_e2e::Session;
use ngxprobe_e2e::clients;
use ngxprobe_e2e::measure::{self, Monitor, MonitorResult, Report, Target, assert_all};
use ngxprobe_e2e::nginx::NginxOptions;
use ngxprobe_e2e::protocol_clients::{
    curl, curl_https, h2load, h2load_streams, proxy_v2_get, send_garbage, tls_handshake_only, tls_resumed_handshakes,
};
use ngxprobe_e2e::util::{Poll, poll, require_tool};
use std::time::Duration;

const UNPARSED: &str = "ngxprobe_unparsed_connections_total";
const REASONS: [&str; 3] = ["tls", "http2", "other"];
/// The agent without the per-request uprobe.
const NO_UPROBE: Option<&str> = Some("per_request:\n  enabled: false\n");

/// What a scenario did on connections ngxprobe is not meant to parse.
#[derive(Clone, Copy, Debug, Default)]
struct Unparsed {
    /// Connections opened, by reason (REASONS order).
    connections: [i64; 3],
    /// Requests nginx answered on them (it counts each; ngxprobe must not).
    requests: i64,
}

fn unparsed_counts(s: &Session) -> [i64; 3] {
    let scrape = s.agent.scrape().expect("scrape");
    let conf = s.nginx.conf_label();
    REASONS.map(|r| scrape.value_with(UNPARSED, &conf, "reason", r) as i64)
}

/// Measures `scenario` (no connection held before or after) and checks the
/// unparsed counters' deltas against what it reports.
fn measure_unparsed(
    s: &Session,
    name: &str,
    scenario: impl FnOnce() -> anyhow::Result<Unparsed>,
) -> (Report, MonitorResult, Unparsed, [i64; 3]) {
    measure_connections(s, name, true, scenario)
}

/// [`measure_unparsed`]; with `exclude_requests` false, every request must
/// be counted (the uprobe counts those on TLS and HTTP/2 connections).
fn measure_connections(
    s: &Session,
    name: &str,
    exclude_requests: bool,
    scenario: impl FnOnce() -> anyhow::Result<Unparsed>,
) -> (Report, MonitorResult, Unparsed, [i64; 3]) {
    let conf = s.nginx.conf_label();
    let u0 = unparsed_counts(s);
    let base = measure::begin_one(&s.agent, &s.nginx, 0).expect("A0/O0");
    let mon = Monitor::start(s.agent.addr(), vec![conf]);
    let out = scenario();
    let mres = mon.stop();
    let made = out.unwrap_or_else(|e| panic!("scenario {name}: {e:#}"));
    let target = Target {
        nginx: &s.nginx,
        held: 0,
    };
    let excluded = if exclude_requests { made.requests } else { 0 };
    let rep = measure::finish_excluding(&s.agent, base, &[target], name, excluded).expect("O1/A1");
    let u1 = unparsed_counts(s);
    let delta = [u1[0] - u0[0], u1[1] - u0[1], u1[2] - u0[2]];
    (rep, mres, made, delta)
}

/// The checks every scenario here shares: exact connection counters and
/// gauges, requests excluded exactly and never above nginx's, and each
/// unparsed connection counted once under its reason.
fn assert_unparsed(rep: &Report, mon: &MonitorResult, made: &Unparsed, delta: [i64; 3]) {
    let i = &rep.instances[0];
    let (a0, o0) = (i.a0.expect("A0"), i.o0.expect("O0"));
    let agent_requests = i.a1.requests - a0.requests;
    let nginx_requests = i.o1.requests - o0.requests + 1;
    eprintln!(
        "[e2e] {}: unparsed connections opened {:?} (tls, http2, other), ngxprobe counted {delta:?}; \
         requests: ngxprobe {agent_requests}, stub_status {nginx_requests} (+1 protocol offset), \
         made on unparsed connections {}; accepted: ngxprobe {}, stub_status {}",
        rep.scenario,
        made.connections,
        made.requests,
        i.a1.accepted - a0.accepted,
        i.o1.accepted - o0.accepted + 1,
    );
    assert!(
        agent_requests <= nginx_requests,
        "ngxprobe counted more requests ({agent_requests}) than nginx ({nginx_requests}): it guessed"
    );
    assert_eq!(
        delta, made.connections,
        "ngxprobe_unparsed_connections_total deltas (tls, http2, other)"
    );
    assert_all(rep, mon);
}

#[test]
fn tls_connections_are_not_parsed() {
    for tool in ["curl", "openssl", "h2load"] {
        if require_tool(tool, "cargo xtask setup installs it").is_none() {
            return;
        }
    }
    let s = Session::start_with_config(
        "tls_connections_are_not_parsed",
        NginxOptions {
            tls: true,
            ..Default::default()
        },
        NO_UPROBE,
    );
    let tls = s.nginx.tls_addr().expect("TLS listener");
    let plain = s.nginx.main_addr();
    let (rep, mon, made, delta) = measure_unparsed(
        &s,
        "TLS: curl --http1.1 ×4 (3 GETs each), s_client handshakes ×5, h2load over TLS (2 conns, 200 streams), 10 plaintext GETs",
        || {
            let mut made = Unparsed::default();
            for _ in 0..4 {
                let r = curl_https(tls, &["/", "/index.html", "/"])?;
                anyhow::ensure!(r.ok == 3, "curl: {r:?}");
                made.connections[0] += r.connections as i64;
                made.requests += r.ok as i64;
            }
            for _ in 0..5 {
                tls_handshake_only(tls)?;
                made.connections[0] += 1;
            }
            let h = h2load(&format!("https://{tls}/"), 2, 200)?;
            anyhow::ensure!(h.protocol == "h2", "h2load over TLS negotiated {:?}", h.protocol);
            made.connections[0] += 2;
            made.requests += h.done as i64;
            // Plaintext HTTP/1.1 on the same instance is still counted exactly.
            let paths: Vec<String> = (0..10).map(|_| "/".to_string()).collect();
            let rs = clients::keepalive_sequence(plain, &paths)?;
            anyhow::ensure!(rs.iter().all(|(st, _)| *st == 200), "plaintext: {rs:?}");
            Ok(made)
        },
    );
    assert!(made.connections[0] >= 11, "too few TLS connections: {made:?}");
    assert_unparsed(&rep, &mon, &made, delta);
    let raw = s.agent.scrape().expect("scrape").raw;
    assert!(
        raw.contains(&format!(
            "# HELP {UNPARSED} Client connections whose bytes ngxprobe cannot parse"
        )),
        "HELP of {UNPARSED} missing"
    );
    assert!(
        raw.contains(&format!("# TYPE {UNPARSED} counter")),
        "TYPE of {UNPARSED} missing"
    );
    assert_logged_once(&s, "reason=\"tls\"", || tls_handshake_only(tls));
}

/// With the uprobe (the default config), every counter equals stub_status
/// exactly over TLS: HTTPS keep-alive and `Connection: close`, handshakes
/// with no request, TLS session resumption, HTTP/2 with 100 concurrent
/// streams, next to plaintext. The connections are still reported as
/// unparsed by the socket probes (their requests come from the uprobe).
#[test]
fn tls_counters_are_exact_with_the_uprobe() {
    for tool in ["curl", "openssl", "h2load"] {
        if require_tool(tool, "cargo xtask setup installs it").is_none() {
            return;
        }
    }
    let s = Session::start_with_config(
        "tls_counters_are_exact_with_the_uprobe",
        NginxOptions {
            tls: true,
            ..Default::default()
        },
        None,
    );
    let conf = s.nginx.conf_label();
    poll(
        "the per-request uprobe attached",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let v = s.agent.scrape()?.value("ngxprobe_per_request_probe_attached", &conf)?;
            Ok(if v == Some(1.0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{v:?}"))
            })
        },
    )
    .expect("uprobe attached");
    let tls = s.nginx.tls_addr().expect("TLS listener");
    let plain = s.nginx.main_addr();
    let (rep, mon, made, delta) = measure_connections(
        &s,
        "TLS with the uprobe: curl keep-alive ×3 and Connection: close, s_client handshakes, \
         s_client -reconnect (session resumption), h2load 100 streams, plaintext",
        false,
        || {
            let mut made = Unparsed::default();
            for _ in 0..3 {
                let r = curl_https(tls, &["/", "/index.html", "/missing"])?;
                made.connections[0] += r.connections as i64;
                made.requests += 3;
            }
            let urls: Vec<String> = (0..3).map(|_| format!("https://{tls}/")).collect();
            let r = curl(&["-H", "Connection: close"], &urls)?;
            anyhow::ensure!(r.ok == 3 && r.connections == 3, "curl close: {r:?}");
            made.connections[0] += 3;
            made.requests += 3;
            for _ in 0..3 {
                tls_handshake_only(tls)?;
                made.connections[0] += 1;
            }
            let (conns, reused) = tls_resumed_handshakes(tls)?;
            anyhow::ensure!(reused >= 1, "no session was resumed");
            made.connections[0] += conns as i64;
            let h = h2load_streams(&format!("https://{tls}/"), 1, 1000, 100)?;
            anyhow::ensure!(h.protocol == "h2", "h2load negotiated {:?}", h.protocol);
            made.connections[0] += 1;
            made.requests += h.done as i64;
            let paths: Vec<String> = (0..10).map(|_| "/".to_string()).collect();
            let rs = clients::keepalive_sequence(plain, &paths)?;
            anyhow::ensure!(rs.iter().all(|(st, _)| *st == 200), "plaintext: {rs:?}");
            Ok(made)
        },
    );
    let i = &rep.instances[0];
    let (a0, o0) = (i.a0.expect("A0"), i.o0.expect("O0"));
    eprintln!(
        "[e2e] {}: TLS connections {}, requests on them {}; ngxprobe requests +{}, stub_status +{} (+1 protocol offset), \
         unparsed {delta:?}",
        rep.scenario,
        made.connections[0],
        made.requests,
        i.a1.requests - a0.requests,
        i.o1.requests - o0.requests + 1
    );
    assert_eq!(delta, made.connections, "unparsed connections (tls, http2, other)");
    assert_all(&rep, &mon);
}

/// Hostile bytes with the uprobe on (the default config): malformed and
/// truncated TLS records and plain HTTP on the TLS port, a truncated HTTP/2
/// frame and garbage on the h2c port, HTTP/0.9, a 20 KiB header and a
/// truncated request line on the plaintext port. The agent keeps running
/// and every counter equals stub_status after each: it never makes a
/// request out of bytes nginx did not count as one.
#[test]
fn hostile_bytes_on_every_port_never_become_requests() {
    let s = hostile_session("hostile_bytes_on_every_port_never_become_requests");
    let (tls, h2c, plain) = hostile_addrs(&s);
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let mut truncated_record = b"\x16\x03\x01\xff\xff".to_vec();
    truncated_record.extend([0x01u8; 100]);
    let cases: Vec<(&str, std::net::SocketAddr, Vec<u8>)> = vec![
        (
            "TLS: a record too short for its handshake",
            tls,
            b"\x16\x03\x01\x00\x05hello".to_vec(),
        ),
        ("TLS: a truncated record", tls, truncated_record),
        (
            "TLS port: plain HTTP",
            tls,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "h2c: preface then a truncated frame",
            h2c,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00".to_vec(),
        ),
        ("h2c: garbage", h2c, b"\x00\x01\x02 garbage\r\n\r\n".to_vec()),
        ("plain: HTTP/0.9", plain, b"GET /\r\n".to_vec()),
        ("plain: a 20 KiB header", plain, huge.into_bytes()),
        ("plain: a truncated request line", plain, b"GET / HT".to_vec()),
    ];
    assert_each_exact(&s, &cases);
    // Plaintext after the hostile bytes is still counted exactly.
    let (rep, mres, ()) = measure::measure(&s.agent, &s.nginx, 0, 0, "plaintext after the hostile bytes", || {
        let paths: Vec<String> = (0..10).map(|_| "/".to_string()).collect();
        let rs = clients::keepalive_sequence(plain, &paths)?;
        anyhow::ensure!(rs.iter().all(|(st, _)| *st == 200), "plaintext: {rs:?}");
        Ok(())
    })
    .expect("plaintext after");
    assert_all(&rep, &mres);
}

/// HTTP/1.1 sent to a listener that speaks only cleartext HTTP/2 (nginx
/// before 1.25.1, `listen ... http2` without ssl; Debian's 1.22 here):
/// nginx rejects the preface and counts no request. The agent knows the
/// port is h2c-only from the instance's config and version, so the socket
/// probes set the connection aside (reason http2) instead of counting the
/// HTTP/1.1 request line they read; the connection itself is counted.
#[test]
fn http1_on_an_h2c_only_listener_is_not_a_request() {
    let s = hostile_session("http1_on_an_h2c_only_listener_is_not_a_request");
    let (_, h2c, _) = hostile_addrs(&s);
    assert_each_exact(
        &s,
        &[("h2c: HTTP/1.1", h2c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())],
    );
    // The agent said which port it took for h2c-only, and why.
    let log = std::fs::read_to_string(s.agent.log_path()).unwrap_or_default();
    let port = format!("{{{}}}", h2c.port());
    assert!(
        log.lines()
            .any(|l| l.contains("speak only cleartext HTTP/2") && l.contains(&port) && l.contains("nginx/")),
        "no h2c-only log line for port {port}:\n{}",
        s.agent.log_tail(20)
    );
}

/// The same on a connection opened before the agent started: it is handed
/// to the programs (seeded) with its listener's h2c-only flag, so its first
/// read is not taken for a request either.
#[test]
fn http1_on_an_h2c_only_connection_open_before_the_agent_is_not_a_request() {
    let mut s = hostile_session("http1_on_an_h2c_only_connection_open_before_the_agent_is_not_a_request");
    let (_, h2c, _) = hostile_addrs(&s);
    let mut conn = clients::idle_connection(h2c).expect("connect to the h2c port");
    measure::quiesce(&s.nginx, 1).expect("one connection open");
    s.agent.restart().expect("agent restart");
    s.agent.wait_instance_up(&s.nginx.conf_label()).expect("instance up");
    let what = "h2c: HTTP/1.1 on a connection open before the agent";
    let base = measure::begin_one(&s.agent, &s.nginx, 1).expect("A0/O0");
    std::io::Write::write_all(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    clients::close_gracefully(conn).expect("nginx closes it");
    let target = Target {
        nginx: &s.nginx,
        held: 0,
    };
    let rep = measure::finish_excluding(&s.agent, base, &[target], what, 0).expect("O1/A1");
    assert!(rep.ok(), "{what}:\n{}", rep.table());
}

/// nginx with plaintext, TLS and h2c listeners and the agent with its
/// default config (the uprobe on).
fn hostile_session(name: &str) -> Session {
    Session::start_with_config(
        name,
        NginxOptions {
            tls: true,
            h2c: true,
            ..Default::default()
        },
        None,
    )
}

/// (TLS, h2c, plaintext) listeners of [`hostile_session`]'s nginx.
fn hostile_addrs(s: &Session) -> (std::net::SocketAddr, std::net::SocketAddr, std::net::SocketAddr) {
    (
        s.nginx.tls_addr().expect("TLS listener"),
        s.nginx.h2c_addr().expect("h2c listener"),
        s.nginx.main_addr(),
    )
}

/// Sends each case's bytes on a new connection, one measurement each (so a
/// failure names the bytes): every counter must equal stub_status's.
fn assert_each_exact(s: &Session, cases: &[(&str, std::net::SocketAddr, Vec<u8>)]) {
    let mut failed = Vec::new();
    for (what, addr, bytes) in cases {
        let base = measure::begin_one(&s.agent, &s.nginx, 0).expect("A0/O0");
        let mon = Monitor::start(s.agent.addr(), vec![s.nginx.conf_label()]);
        send_garbage(*addr, bytes).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let mres = mon.stop();
        let target = Target {
            nginx: &s.nginx,
            held: 0,
        };
        let rep = measure::finish_excluding(&s.agent, base, &[target], what, 0).expect("O1/A1");
        if !rep.ok() || !mres.violations.is_empty() {
            eprintln!("[e2e] {what}: FAIL\n{}", rep.table());
            failed.push(*what);
        }
    }
    assert!(failed.is_empty(), "counters differ from stub_status after: {failed:?}");
}

/// The agent's warning about unparsed connections of a reason appears once
/// (within a few discovery scans), and not again after more such
/// connections and two more scans.
fn assert_logged_once(s: &Session, reason: &str, more: impl FnOnce() -> anyhow::Result<()>) {
    let conf = s.nginx.conf_label();
    let count = || {
        std::fs::read_to_string(s.agent.log_path())
            .unwrap_or_default()
            .lines()
            // This test's instance only: other nginx instances on the
            // machine (a benchmark running alongside) log their own.
            .filter(|l| l.contains(UNPARSED) && l.contains(reason) && l.contains(&conf))
            .count()
    };
    poll(
        &format!("the agent to log unparsed connections ({reason})"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok(match count() {
                0 => Poll::Pending("not logged yet".into()),
                n => Poll::Ready(n),
            })
        },
    )
    .expect("unparsed connections logged");
    more().expect("more unparsed connections");
    let scans = || s.agent.scrape().map(|m| m.sum("ngxprobe_discovery_scans_total") as i64);
    let s0 = scans().expect("scrape");
    poll(
        "two more discovery scans",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let n = scans()?;
            Ok(if n >= s0 + 2 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{n} scans"))
            })
        },
    )
    .expect("discovery scans");
    assert_eq!(
        count(),
        1,
        "warning about {reason} not logged exactly once:\n{}",
        s.agent.log_tail(20)
    );
}

#[test]
fn h2c_and_non_http_connections_are_not_parsed() {
    if require_tool("h2load", "apt-get install nghttp2-client").is_none() {
        return;
    }
    let s = Session::start_with_config(
        "h2c_and_non_http_connections_are_not_parsed",
        NginxOptions {
            h2c: true,
            ..Default::default()
        },
        NO_UPROBE,
    );
    let h2c = s.nginx.h2c_addr().expect("h2c listener");
    let (rep, mon, made, delta) = measure_unparsed(&s, "h2c prior knowledge: h2load (3 conns, 300 streams)", || {
        let h = h2load(&format!("http://{h2c}/"), 3, 300)?;
        anyhow::ensure!(h.protocol == "h2c", "h2load negotiated {:?}", h.protocol);
        Ok(Unparsed {
            connections: [0, 3, 0],
            requests: h.done as i64,
        })
    });
    assert_unparsed(&rep, &mon, &made, delta);

    // Bytes that are no HTTP/1.x request line: nginx answers 400 (and counts
    // a request for each); ngxprobe sets the connection aside as "other".
    let plain = s.nginx.main_addr();
    let garbage: [&[u8]; 3] = [
        b"SSH-2.0-OpenSSH_9.2p1\r\n",
        b"\x00\x01\x02\x03\xff binary\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let (rep, mon, made, delta) = measure_unparsed(&s, "not HTTP: 3 connections of garbage", || {
        for g in garbage {
            send_garbage(plain, g)?;
        }
        Ok(Unparsed {
            connections: [0, 0, 3],
            requests: 3,
        })
    });
    assert_unparsed(&rep, &mon, &made, delta);
}

/// Behind a load balancer that speaks the PROXY protocol: TLS after a v1
/// header is still TLS (nginx reads the header alone, the ClientHello
/// decides); plain HTTP after a v1 or v2 header is still HTTP/1.x and
/// counted exactly (a v2 header is binary, but it is not "other").
#[test]
fn proxy_protocol_then_tls_or_http() {
    for tool in ["curl", "openssl"] {
        if require_tool(tool, "cargo xtask setup installs it").is_none() {
            return;
        }
    }
    let s = Session::start_with_config(
        "proxy_protocol_then_tls_or_http",
        NginxOptions {
            proxy_protocol: true,
            ..Default::default()
        },
        NO_UPROBE,
    );
    let (tls, plain) = s.nginx.proxy_addrs().expect("PROXY protocol listeners");
    let (rep, mon, made, delta) = measure_unparsed(
        &s,
        "PROXY v1 + TLS: curl --haproxy-protocol ×3 (2 GETs each); PROXY v1 + HTTP ×3; PROXY v2 + HTTP ×3",
        || {
            let mut made = Unparsed::default();
            let https: Vec<String> = ["/", "/index.html"]
                .iter()
                .map(|p| format!("https://{tls}{p}"))
                .collect();
            for _ in 0..3 {
                let r = curl(&["--haproxy-protocol"], &https)?;
                anyhow::ensure!(r.ok == 2, "curl over TLS: {r:?}");
                made.connections[0] += r.connections as i64;
                made.requests += r.ok as i64;
            }
            let http = vec![format!("http://{plain}/")];
            for _ in 0..3 {
                let r = curl(&["--haproxy-protocol"], &http)?;
                anyhow::ensure!(r.ok == 1, "curl over plain HTTP: {r:?}");
                let v2 = proxy_v2_get(plain, "/")?;
                anyhow::ensure!(v2.status == 200, "PROXY v2 GET: status {}", v2.status);
            }
            Ok(made)
        },
    );
    assert!(made.connections[0] >= 3, "too few TLS connections: {made:?}");
    assert_unparsed(&rep, &mon, &made, delta);
}
