//! Feature crossings under load, against nginx's own oracles: stub_status
//! for the counters (measurement protocol of `ngxprobe_e2e::measure`, with
//! the monitor scraping every 100 ms: counters never go back) and the access
//! log for the per-request (RED) histograms, per (method, status, protocol
//! version, scheme, port).
//!
//! - `reload_under_tls_and_h2_load`: wrk over HTTPS and plaintext keep-alive
//!   and h2load (TLS, 100 concurrent streams) at once, two `nginx -s reload`
//!   during the load: counters exact, RED exact.
//! - `worker_sigkill_under_tls_and_h2_load`: the same TLS load, a worker
//!   SIGKILLed twice: nothing double counted; requests exact against the
//!   access log, below stub_status by what nginx counted and never finished.
//! - `large_and_slow_responses_over_tls_and_h2`: files of several MiB over
//!   HTTPS/1.1 and HTTP/2 (sendfile on and off, `limit_rate`, a client reading
//!   slowly, 16 concurrent streams), plaintext with sendfile: RED sizes and
//!   durations against the log.
//! - `socket_path_red_with_sendfile`: the socket probes' records
//!   (`uprobe: never`) for 2 MiB files sent with sendfile over keep-alive
//!   connections (5 requests each): RED against the log, counters exact.
//! - `last_requests_of_killed_workers_are_counted` (uprobe) and
//!   `..._by_the_socket_probes`: requests on a worker SIGKILLed right after
//!   them, eight times in a row: every one the log has, the agent has.
use ngxprobe_e2e::clients::{WrkRun, wait_wrk_running};
use ngxprobe_e2e::measure::{self, Monitor, MonitorResult, Report, assert_all};
use ngxprobe_e2e::protocol_clients::{H2loadResult, curl, h2load_streams, parse_h2load};
use ngxprobe_e2e::red::{self, Key, Sums, counts, total};
use ngxprobe_e2e::util::{ChildGuard, Poll, TempDir, free_port, poll, require_tool};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, Session};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOAD: Duration = Duration::from_secs(5);
const MIB: usize = 1024 * 1024;

fn tools(names: &[&str]) -> bool {
    names
        .iter()
        .all(|t| require_tool(t, "cargo xtask setup installs it").is_some())
}

/// An h2load run in the background for a fixed time (`-D`). Its exit
/// status is not judged (connections cut by a reload or a killed worker end
/// a client); the summary says what it did.
struct H2loadRun {
    guard: ChildGuard,
    out: std::path::PathBuf,
    _dir: TempDir,
}

impl H2loadRun {
    fn spawn(url: &str, clients: u32, streams: u32, duration: Duration) -> H2loadRun {
        let dir = TempDir::new("h2load").expect("tempdir");
        let out = dir.path().join("out.txt");
        let mut cmd = Command::new("h2load");
        cmd.args([
            "-D",
            &duration.as_secs().to_string(),
            "-c",
            &clients.to_string(),
            "-m",
            &streams.to_string(),
            url,
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("h2load output"))
        .stderr(Stdio::null());
        H2loadRun {
            guard: ChildGuard::spawn(&mut cmd, "h2load").expect("h2load"),
            out,
            _dir: dir,
        }
    }

    fn wait(mut self, limit: Duration) -> H2loadResult {
        self.guard.wait_timeout(limit).expect("h2load to finish");
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        parse_h2load(&text).expect("h2load summary")
    }
}

/// Session with the per-request uprobe attached; returns it with the access
/// log's line count at that point (requests the agent may have missed).
fn attached_session(name: &str, opts: NginxOptions, config: Option<&str>) -> (Session, String, usize) {
    let s = Session::start_with_config(name, opts, config);
    let conf = s.nginx.conf_label();
    red::wait_attached(&s.agent, &conf, 1.0);
    let skip = red::log_lines(&s.nginx);
    (s, conf, skip)
}

/// Printed, not asserted: the counter is the node's (every nginx on the
/// machine, also other tests' processes the agent does not track); the
/// per-label-set comparison says whether this instance lost any.
fn print_lost(agent: &Agent) {
    let lost = agent.scrape().expect("scrape").sum_by(red::LOST, "reason");
    eprintln!("[e2e] records lost (node-wide): {lost:?}");
}

/// Every scheme/version pair in `want` appears in the log.
fn assert_traffic(log: &BTreeMap<Key, Sums>, want: &[(&str, &str)]) {
    for (scheme, version) in want {
        assert!(
            log.keys().any(|k| (k.3.as_str(), k.2.as_str()) == (*scheme, *version)),
            "no {scheme} HTTP/{version} traffic in the access log"
        );
    }
}

/// The TLS load of the lifecycle tests: wrk over HTTPS keep-alive and
/// h2load with 100 concurrent streams (TLS, ALPN h2), for [`LOAD`]; with
/// `plain`, wrk over plaintext keep-alive too. `during` runs once wrk has
/// run for a second (and must finish while the load still runs).
fn tls_load(nginx: &Nginx, plain: bool, during: impl FnOnce()) -> (u64, H2loadResult) {
    let tls = nginx.tls_addr().expect("TLS listener");
    let https = format!("https://{tls}/index.html");
    let d = format!("-d{}s", LOAD.as_secs());
    let mut w_tls = WrkRun::spawn(&["-t1", "-c8", &d, &https], LOAD).expect("wrk https");
    let w_plain = plain.then(|| WrkRun::spawn(&["-t1", "-c4", &d, &nginx.url("/")], LOAD).expect("wrk http"));
    let h2 = H2loadRun::spawn(&format!("https://{tls}/"), 2, 100, LOAD);
    wait_wrk_running(&mut w_tls, Duration::from_secs(1)).expect("wrk running");
    let t0 = Instant::now();
    during();
    eprintln!("[e2e] lifecycle events took {:.1?} under load", t0.elapsed());
    assert!(
        w_tls.is_running(),
        "the load ended before the lifecycle events did: lengthen LOAD"
    );
    let limit = LOAD + Duration::from_secs(20);
    let wt = w_tls.wait().expect("wrk https");
    let wp = w_plain.map(|w| w.wait().expect("wrk http"));
    let h = h2.wait(limit);
    eprintln!(
        "[e2e] wrk https {} requests ({} socket errors), wrk http {:?}, h2load: {} done, {} succeeded, protocol {:?}",
        wt.requests,
        wt.socket_errors(),
        wp.as_ref().map(|w| w.requests),
        h.done,
        h.succeeded,
        h.protocol
    );
    assert!(wt.requests >= 200, "wrk https: {}", wt.output);
    if let Some(wp) = &wp {
        assert!(wp.requests >= 200, "wrk http: {}", wp.output);
    }
    assert_eq!(h.protocol, "h2", "h2load did not negotiate h2:\n{}", h.output);
    assert!(h.succeeded >= 200, "h2load:\n{}", h.output);
    (wt.requests + wp.map_or(0, |w| w.requests), h)
}

/// Discovery scans every 100 ms (default 1 s): a scan then often falls
/// between a worker's exit (reload, SIGKILL) and the moment the agent takes
/// in that worker's last request records, which must still count for the
/// instance.
const FAST_SCANS: Option<&str> = Some("discovery:\n  interval: 100ms\n");

/// Nginx with plaintext, TLS (HTTP/1.1 and h2) and h2c listeners, two
/// workers, an access log.
fn lifecycle_opts() -> NginxOptions {
    NginxOptions {
        worker_processes: 2,
        tls: true,
        h2c: true,
        access_log: true,
        big_file: false,
        ..Default::default()
    }
}

#[test]
fn reload_under_tls_and_h2_load() {
    if !tools(&["wrk", "h2load"]) {
        return;
    }
    let name = "reload_under_tls_and_h2_load";
    let (s, conf, skip) = attached_session(name, lifecycle_opts(), FAST_SCANS);
    let base = measure::begin_one(&s.agent, &s.nginx, 0).expect("A0/O0");
    let mon = Monitor::start(s.agent.addr(), vec![conf.clone()]);
    let mut generations = vec![s.nginx.worker_pids()];
    let (made, _) = tls_load(&s.nginx, true, || {
        for _ in 0..2 {
            generations.push(s.nginx.reload().expect("reload under load"));
        }
    });
    let mres = mon.stop();
    eprintln!("[e2e] worker generations {generations:?}; clients made {made} HTTP/1.1 requests");
    let rep = measure::finish_one(
        &s.agent,
        base,
        &s.nginx,
        0,
        "two reloads under TLS, h2 and plaintext load",
    )
    .expect("O1/A1");
    let (log, ours) = red::quiesce(&s.agent, &s.nginx, skip);
    assert_all(&rep, &mres);
    assert!(mres.scrapes >= 20, "monitor scraped {} times", mres.scrapes);
    assert_traffic(&log, &[("https", "1.1"), ("https", "2"), ("http", "1.1")]);
    red::assert_red_exact(&log, &ours);
    print_lost(&s.agent);
}

/// Checks of a run with SIGKILLed workers. nginx counts a request in
/// stub_status when it creates it and logs it at the end of
/// ngx_http_free_request; the uprobe fires at its start. A request in
/// flight on a killed worker is in stub_status only: nginx never logs it
/// and the agent must not count it. A request the worker had begun to free
/// when the kill came (between the uprobe and the log write: a few
/// microseconds of log formatting) is counted by the agent and missing from
/// the log; a worker frees one request at a time, so that is at most one
/// per kill. (A kill already pending at the uprobe's trap is seen there:
/// that record is dropped.) With only TLS and HTTP/2 on the workers during
/// the kills (the oracle's plaintext requests run before and after), the
/// tightest true statement is:
///   access log ≤ agent ≤ stub_status, and agent − access log ≤ kills.
/// (Plaintext requests are counted by the socket probes when nginx reads
/// them, like stub_status: lifecycle.rs's `worker_killed_during_load`.)
fn assert_killed_run(rep: &Report, mres: &MonitorResult, logged: i64, kills: i64) {
    let i = &rep.instances[0];
    let (a0, o0) = (i.a0.expect("A0"), i.o0.expect("O0"));
    let agent = i.a1.requests - a0.requests;
    let nginx = i.o1.requests - o0.requests + 1;
    eprintln!("{}", rep.table());
    eprintln!(
        "[e2e] requests: agent Δ{agent}, access log {logged} lines, stub_status Δ{nginx} (+1 protocol offset): \
         {} counted by nginx and never logged, {} of them counted by the agent",
        nginx - logged,
        agent - logged
    );
    let others_ok = i.checks.iter().filter(|c| c.name != "Δrequests").all(|c| c.ok());
    assert!(others_ok, "counters or gauges differ:\n{}", rep.table());
    mres.assert_ok();
    assert!(
        logged <= agent && agent - logged <= kills,
        "agent's requests {agent} vs the access log's {logged}: want log ≤ agent ≤ log + {kills} kills"
    );
    assert!(agent <= nginx, "the agent counted more requests than stub_status");
}

/// RED after kills: per label set the agent has at least the log's
/// requests, at most `kills` more in all; sizes equal where counts are.
fn assert_red_after_kills(log: &BTreeMap<Key, Sums>, ours: &BTreeMap<Key, Sums>, kills: u64) {
    red::print_views(log, ours);
    for (k, o) in ours {
        let l = log.get(k).copied().unwrap_or_default();
        assert!(o.count >= l.count, "{k:?}: agent {} < access log {}", o.count, l.count);
        if o.count == l.count {
            assert_eq!(
                (o.request_bytes, o.body_bytes),
                (l.request_bytes, l.body_bytes),
                "{k:?}: sizes"
            );
        }
    }
    assert!(
        log.keys().all(|k| ours.contains_key(k)),
        "label sets missing from the agent"
    );
    let extra = total(ours) - total(log);
    assert!(
        extra <= kills,
        "{extra} requests more than the access log after {kills} kills"
    );
}

#[test]
fn worker_sigkill_under_tls_and_h2_load() {
    if !tools(&["wrk", "h2load"]) {
        return;
    }
    let name = "worker_sigkill_under_tls_and_h2_load";
    let (s, conf, skip) = attached_session(name, lifecycle_opts(), FAST_SCANS);
    let base = measure::begin_one(&s.agent, &s.nginx, 0).expect("A0/O0");
    // O0's line is in the log; the agent counts O0 too (after A0).
    let l0 = red::log_lines(&s.nginx) - 1;
    let mon = Monitor::start(s.agent.addr(), vec![conf.clone()]);
    let mut killed = Vec::new();
    tls_load(&s.nginx, false, || {
        for _ in 0..2 {
            killed.push(s.nginx.kill_worker().expect("kill a worker under load"));
        }
    });
    let mres = mon.stop();
    eprintln!("[e2e] killed workers {killed:?}");
    let rep = measure::finish_kernel_truth(&s.agent, base, &s.nginx, 0, "two worker SIGKILLs under TLS and h2 load")
        .expect("O1/A1");
    let logged = (red::log_lines(&s.nginx) - l0) as i64;
    let (log, ours) = red::quiesce_until(&s.agent, &s.nginx, skip, |ours, log| ours >= log);
    let kills = killed.len() as u64;
    assert_killed_run(&rep, &mres, logged, kills as i64);
    assert_traffic(&log, &[("https", "1.1"), ("https", "2")]);
    assert_red_after_kills(&log, &ours, kills);
    print_lost(&s.agent);
}

/// Writes `name` (`size` bytes, deterministic) into the instance's html/.
fn write_file(nginx: &Nginx, name: &str, size: usize) {
    let mut data = Vec::with_capacity(size + 4);
    let mut x: u32 = 0x9e37_79b9 ^ size as u32;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    let path = nginx.dir().join("html").join(name);
    std::fs::write(&path, &data).expect("write file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// A TLS server (HTTP/1.1 and h2) for large responses: sendfile on at `/`
/// (nginx does not use it over TLS), off under `/nosendfile/`, and
/// `limit_rate` under `/slow/` (many writes spaced in time). Paths are
/// relative to the instance's prefix, where its certificate is.
fn large_server(port: u16) -> String {
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name large;
        ssl_certificate tls/cert.pem;
        ssl_certificate_key tls/key.pem;
        root html;
        sendfile on;
        location /nosendfile/ {{ sendfile off; alias html/; }}
        location /slow/ {{ limit_rate 4m; limit_rate_after 512k; alias html/; }}
    }}
"#
    )
}

/// Durations within max(1 ms per request, 5 %) of the log's.
fn close_enough(ours_ms: u64, log_ms: u64, count: u64) -> bool {
    let tol = count.max(log_ms / 20);
    ours_ms.abs_diff(log_ms) <= tol
}

#[test]
fn large_and_slow_responses_over_tls_and_h2() {
    if !tools(&["curl", "h2load"]) {
        return;
    }
    let name = "large_and_slow_responses_over_tls_and_h2";
    let port = free_port().expect("port");
    let (s, _conf, skip) = attached_session(
        name,
        NginxOptions {
            tls: true,
            access_log: true,
            big_file: false,
            extra_http: large_server(port),
            ..Default::default()
        },
        None,
    );
    let files = [("f3.bin", 3 * MIB + 7), ("f5.bin", 5 * MIB + 1234)];
    for (f, size) in files {
        write_file(&s.nginx, f, size);
    }
    let large = format!("https://127.0.0.1:{port}");
    let urls: Vec<String> = [
        "/f3.bin",
        "/f5.bin",
        "/nosendfile/f3.bin",
        "/nosendfile/f5.bin",
        "/slow/f3.bin",
    ]
    .iter()
    .map(|p| format!("{large}{p}"))
    .collect();
    let t0 = Instant::now();
    let (rep, mres, ()) = measure::measure(&s.agent, &s.nginx, 0, 0, name, || {
        // HTTPS/1.1 keep-alive and HTTP/2 (one connection each).
        curl(&[], &urls)?;
        curl(&["--http2"], &urls)?;
        // A client reading slowly (2 MiB/s): what nginx writes waits in
        // the socket's buffer and, over HTTP/2, the stream's window.
        curl(&["--limit-rate", "2M"], &urls[..1])?;
        curl(&["--http2", "--limit-rate", "2M"], &urls[2..3])?;
        // 16 concurrent streams of 3 MiB on one connection.
        let h = h2load_streams(&format!("{large}/f3.bin"), 1, 16, 16)?;
        anyhow::ensure!(h.protocol == "h2", "h2load: {:?}", h.protocol);
        // Plaintext with and without sendfile (the uprobe's records too).
        let plain: Vec<String> = ["/f5.bin", "/nosendfile/f5.bin"]
            .iter()
            .map(|p| s.nginx.url(p))
            .collect();
        curl(&[], &plain)?;
        Ok(())
    })
    .expect("traffic");
    eprintln!("[e2e] traffic took {:.1?}", t0.elapsed());
    let (log, ours) = red::quiesce(&s.agent, &s.nginx, skip);
    assert_all(&rep, &mres);
    red::assert_red_exact(&log, &ours);
    print_lost(&s.agent);
    // Premises: the large responses are there, in full, and took time.
    let p = port.to_string();
    let large_keys: Vec<&Key> = log.keys().filter(|k| k.4 == p && k.1 == "200").collect();
    let body: u64 = large_keys.iter().map(|k| log[*k].body_bytes).sum();
    let want = (2 * (3 * (3 * MIB + 7) + 2 * (5 * MIB + 1234)) + 2 * (3 * MIB + 7) + 16 * (3 * MIB + 7)) as u64;
    assert_eq!(body, want, "body bytes of the large responses in the log");
    assert_traffic(&log, &[("https", "1.1"), ("https", "2"), ("http", "1.1")]);
    // limit_rate alone holds the two /slow/ responses 0.6 s each.
    let ms: u64 = large_keys.iter().map(|k| log[*k].duration_ms).sum();
    assert!(
        ms >= 1_000,
        "the large responses took {ms} ms in all: too fast to span many writes"
    );
    // The header/body split: the histogram holds the body; the log's
    // $bytes_sent adds the status line and headers (under 1 KiB a
    // response) and, over HTTP/2, 9 bytes of frame header per DATA frame
    // (nginx's frames carry up to 8 KiB: about 0.1 % of the body).
    for k in &large_keys {
        let (l, o) = (log[*k], ours[*k]);
        let overhead = l.bytes_sent - l.body_bytes;
        let framing = if k.2 == "2" { l.body_bytes / 500 } else { 0 };
        assert!(
            o.body_bytes == l.body_bytes && overhead > 0 && overhead < 1024 * l.count + framing,
            "{k:?}: body {} (log {}), headers and framing {overhead} for {} requests",
            o.body_bytes,
            l.body_bytes,
            l.count
        );
    }
}

/// Waits (bounded) until the socket probes make the instance's records.
fn wait_socket_path(agent: &Agent, conf: &str) {
    poll(
        "the socket probes to make the instance's per-request records",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let m = agent.scrape()?;
            let (sock, att) = (m.value(red::SOCKET, conf)?, m.value(red::ATTACHED, conf)?);
            Ok(if sock == Some(1.0) && att == Some(0.0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} = {sock:?}, {} = {att:?}", red::SOCKET, red::ATTACHED))
            })
        },
    )
    .expect("socket path on");
}

#[test]
fn socket_path_red_with_sendfile() {
    if !tools(&["curl"]) {
        return;
    }
    let name = "socket_path_red_with_sendfile";
    let s = Session::start_with_config(
        name,
        NginxOptions {
            access_log: true,
            big_file: false,
            ..Default::default()
        },
        Some("per_request:\n  uprobe: never\n"),
    );
    let conf = s.nginx.conf_label();
    wait_socket_path(&s.agent, &conf);
    let skip = red::log_lines(&s.nginx);
    let files = [("a.bin", 2 * MIB), ("b.bin", 2 * MIB + 333), ("c.bin", 2 * MIB - 77)];
    for (f, size) in files {
        write_file(&s.nginx, f, size);
    }
    // Keep-alive connections of 5 requests each: 4 with sendfile on, one off.
    let run = |prefix: &str, shift: usize| -> Vec<String> {
        (0..5)
            .map(|i| s.nginx.url(&format!("{prefix}{}", files[(i + shift) % files.len()].0)))
            .collect()
    };
    let (rep, mres, made) = measure::measure(&s.agent, &s.nginx, 0, 0, name, || {
        let mut made = 0;
        for shift in 0..4 {
            let r = curl(&[], &run("/", shift))?;
            anyhow::ensure!(r.connections == 1 && r.ok == 5, "curl: {r:?}");
            made += r.ok;
        }
        let r = curl(&[], &run("/nosendfile/", 0))?;
        anyhow::ensure!(r.connections == 1 && r.ok == 5, "curl: {r:?}");
        Ok(made + r.ok)
    })
    .expect("traffic");
    let (log, ours) = red::quiesce(&s.agent, &s.nginx, skip);
    red::print_views(&log, &ours);
    assert_all(&rep, &mres);
    assert_eq!(
        counts(&ours),
        counts(&log),
        "requests per label set: agent vs access log"
    );
    let port = s.nginx.main_port().to_string();
    let k200: Key = ("GET".into(), "200".into(), "1.1".into(), "http".into(), port);
    assert_eq!(
        log.get(&k200).map(|l| l.count),
        Some(made),
        "the 2 MiB downloads in the log"
    );
    let body_want: u64 = (0..4)
        .chain([0])
        .flat_map(|shift| (0..5).map(move |i| files[(i + shift) % files.len()].1 as u64))
        .sum();
    assert_eq!(log[&k200].body_bytes, body_want, "body bytes in the log");
    // What the socket probes measure: the request's bytes read (each request
    // comes in its own reads here: $request_length), the bytes sent after
    // the header (sendfile's included: $body_bytes_sent), and the kernel's
    // time from the read to the last send (nginx's $request_time is its
    // millisecond clock: within 1 ms per request or 5 %).
    for (k, l) in &log {
        let o = ours[k];
        assert_eq!(o.request_bytes, l.request_bytes, "{k:?}: request bytes");
        assert_eq!(o.body_bytes, l.body_bytes, "{k:?}: response body bytes");
        assert!(
            close_enough(o.duration_ms, l.duration_ms, l.count),
            "{k:?}: duration sum {} ms vs the log's {} ms ({} requests)",
            o.duration_ms,
            l.duration_ms,
            l.count
        );
    }
    assert_eq!(total(&ours), total(&log));
    print_lost(&s.agent);
}

/// Requests on a worker that is killed right after them (each round kills
/// the worker the master started after the previous round's kill). Their
/// records reach the agent after the worker is gone (it drains the ring
/// every 200 ms or at a scrape), often before any scan listed the worker,
/// or after a scan that no longer lists it: they must still count for the
/// instance. `tls` adds HTTPS requests (uprobe); without the uprobe the
/// socket probes make the records of the plaintext ones.
fn last_requests_of_killed_workers(name: &str, tls: bool, config: Option<&str>) {
    let opts = NginxOptions {
        tls,
        access_log: true,
        big_file: false,
        ..Default::default()
    };
    let s = Session::start_with_config(name, opts, config);
    let conf = s.nginx.conf_label();
    if tls {
        red::wait_attached(&s.agent, &conf, 1.0);
    } else {
        wait_socket_path(&s.agent, &conf);
    }
    let skip = red::log_lines(&s.nginx);
    let plain: Vec<String> = (0..3).map(|_| s.nginx.url("/")).collect();
    for _ in 0..8 {
        if let Some(tls) = s.nginx.tls_addr() {
            let urls: Vec<String> = (0..3).map(|_| format!("https://{tls}/index.html")).collect();
            curl(&[], &urls).expect("curl https");
        }
        curl(&[], &plain).expect("curl http");
        s.nginx.kill_worker().expect("kill the worker");
    }
    let (log, ours) = red::quiesce(&s.agent, &s.nginx, skip);
    red::print_views(&log, &ours);
    print_lost(&s.agent);
    assert!(red::total(&log) >= 24, "the requests are not in the access log");
    assert_eq!(
        counts(&ours),
        counts(&log),
        "requests per label set: agent vs access log"
    );
}

#[test]
fn last_requests_of_killed_workers_are_counted() {
    if !tools(&["curl"]) {
        return;
    }
    let name = "last_requests_of_killed_workers_are_counted";
    let uprobe = format!("{}per_request:\n  uprobe: auto\n", FAST_SCANS.unwrap_or_default());
    last_requests_of_killed_workers(name, true, Some(&uprobe));
}

#[test]
fn last_requests_of_killed_workers_are_counted_by_the_socket_probes() {
    if !tools(&["curl"]) {
        return;
    }
    let name = "last_requests_of_killed_workers_are_counted_by_the_socket_probes";
    let never = format!("{}per_request:\n  uprobe: never\n", FAST_SCANS.unwrap_or_default());
    last_requests_of_killed_workers(name, false, Some(&never));
}
