//! Hostile neighbours against a real agent watching a real nginx under wrk
//! load: 1,000 idle connections that reconnect as soon as they are closed,
//! 50 slow-header ("slowloris") clients, oversized headers and bodies, and a
//! Slack receiver that answers every delivery with a 1 GiB body and
//! `Retry-After: 18446744073709551615`. Throughout, the agent stays up,
//! /metrics and /healthz answer within 1 s, its file descriptors stay bounded
//! by `web.max_connections`, its peak RSS stays under the DaemonSet's memory
//! limit, nginx's counters stay exact against stub_status, and every refusal
//! is counted.
//!
//! Prints the figures: /metrics latency under attack, the agent's fd count
//! and RSS peak.
use anyhow::{Context, Result, bail};
use ngxprobe_e2e::clients::WrkRun;
use ngxprobe_e2e::clients::{IO_TIMEOUT, read_response};
use ngxprobe_e2e::measure;
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::util::{TempDir, percentile, rss_kib};
use ngxprobe_e2e::{Agent, AgentOptions, Nginx, NginxOptions, guard};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 256;
const IDLE_CLIENTS: usize = 1000;
const SLOW_CLIENTS: usize = 50;
/// API requests in flight at most (`web.max_api_requests`), and clients that
/// hold API requests open by never finishing their bodies: they saturate the
/// API, never the telemetry path.
const MAX_API_REQUESTS: usize = 16;
const API_HOGS: usize = 40;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const ATTACK: Duration = Duration::from_secs(15);
/// Fewer reconnects than that per second: ephemeral ports would run out
/// (the server closes first, its side keeps TIME_WAIT), not the agent.
const RECONNECTS_PER_PASS: usize = 50;
const PASS_EVERY: Duration = Duration::from_millis(50);
/// deploy/daemonset.yaml's `limits.memory`.
const RSS_BUDGET_KIB: u64 = 256 * 1024;

fn config() -> String {
    format!(
        "web:\n  max_connections: {MAX_CONNECTIONS}\n  max_api_requests: {MAX_API_REQUESTS}\n  header_read_timeout: {}s\n  max_request_body_bytes: 65536\n  max_header_bytes: 16384\n",
        HEADER_TIMEOUT.as_secs()
    )
}

/// An alert that fires at once and stays firing, delivered to `hook` every
/// second while delivery fails.
const ALWAYS_FIRING: &str = "groups:\n- name: hostile\n  rules:\n  - alert: AlwaysFiring\n    expr: vector(1)\n";

fn config_with_receiver(rule_file: &std::path::Path, hook: &str) -> String {
    format!(
        "{}rules:\n  rule_files: [\"{}\"]\n  evaluation_interval: 1s\nalertmanager:\n  route:\n    receiver: hostile\n    \
         group_wait: 1s\n    group_interval: 1s\n    repeat_interval: 1s\n  receivers:\n  - name: hostile\n    \
         slack_configs:\n    - api_url: '{hook}'\n      channel: '#x'\n",
        config(),
        rule_file.display()
    )
}

/// A Slack webhook that answers every POST with a 1 GiB body (streamed until
/// the agent stops reading), alternately `429` with the largest
/// `Retry-After` a u64 can spell and `500`.
struct HostileReceiver {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the receiver announces; it stops writing after `HUGE_SENT` bytes
/// (or when the agent hangs up), so a test cannot fill the disk or hang.
const HUGE_ANNOUNCED: u64 = 1 << 30;
const HUGE_SENT: usize = 64 << 20;

impl HostileReceiver {
    fn start() -> Result<HostileReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (req, st) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let n = req.fetch_add(1, Ordering::Relaxed);
                        let _ = Self::answer(s, n.is_multiple_of(2));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(HostileReceiver {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    fn answer(s: TcpStream, retry_after: bool) -> Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut content_length = 0usize;
        for _ in 0..100 {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length.min(1 << 20)];
        r.read_exact(&mut body)?;
        let head = if retry_after {
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 18446744073709551615\r\nContent-Length: {HUGE_ANNOUNCED}\r\n\r\n"
            )
        } else {
            format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {HUGE_ANNOUNCED}\r\n\r\n")
        };
        let mut w = s;
        w.write_all(head.as_bytes())?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..HUGE_SENT / chunk.len() {
            w.write_all(&chunk)?;
        }
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://{}/services/T000/B000/hook", self.addr)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HostileReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test opens more than 1,000 sockets: raise the soft fd limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(16_384);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// (VmRSS, VmHWM) in KiB.
/// GET `path` on a new connection: (status, whole response time, body head).
fn timed_get(addr: SocketAddr, path: &str) -> Result<(u16, Duration, String)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    let took = t0.elapsed();
    Ok((resp.status, took, String::from_utf8_lossy(&resp.body_head).into_owned()))
}

/// A client connection the server may have closed: true while it is open.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.peek(&mut b) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
        // EOF, a reset, or a refusal text: the server is done with it.
        _ => false,
    }
}

fn open_nonblocking(addr: SocketAddr, first_bytes: &[u8]) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    if !first_bytes.is_empty() {
        s.write_all(first_bytes).ok()?;
    }
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Keeps `n` connections open against `addr`, reopening (paced) those the
/// server closed, until `stop`. Slow clients send a partial request head at
/// connect and one more header line per pass. Returns how many connections
/// were opened in all.
fn attacker(addr: SocketAddr, n: usize, slow: bool, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let head: &[u8] = if slow {
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    } else {
        b""
    };
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut pass = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut reopened = 0;
        for c in conns.iter_mut() {
            let open = match c {
                Some(s) => still_open(s),
                None => false,
            };
            if open {
                if slow && pass.is_multiple_of(10) {
                    // A byte now and then, never the end of the head.
                    let _ = c.as_mut().map(|s| s.write_all(b"X-Slow: 1\r\n"));
                }
                continue;
            }
            *c = None;
            if reopened < RECONNECTS_PER_PASS {
                reopened += 1;
                *c = open_nonblocking(addr, head);
                if c.is_some() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        pass += 1;
        std::thread::sleep(PASS_EVERY);
    }
}

/// Opens `n` API requests whose bodies never finish, holds them until
/// `stop`. Returns how many connected.
fn api_hogs(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> usize {
    let head = b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nquery=";
    let held: Vec<TcpStream> = (0..n).filter_map(|_| open_nonblocking(addr, head)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    held.len()
}

/// Latency and resource figures gathered while clients attack.
#[derive(Default)]
struct Watch {
    scrapes: Vec<Duration>,
    health_checks: Vec<Duration>,
    max_fds: usize,
    max_hwm_kib: u64,
}

impl Watch {
    /// Scrapes /metrics and asks /healthz every 100 ms for `how_long`,
    /// failing on the first answer that is not 200 within 1 s, if the agent
    /// dies, or if its peak RSS passes the budget.
    fn run(&mut self, agent: &mut Agent, how_long: Duration) -> Result<()> {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            if let Some(st) = agent.try_wait()? {
                bail!("the agent died under attack: {st}");
            }
            for (path, times) in [("/metrics", &mut self.scrapes), ("/healthz", &mut self.health_checks)] {
                let (status, took, body) =
                    timed_get(agent.addr(), path).with_context(|| format!("{path} under attack"))?;
                if status != 200 || took > Duration::from_secs(1) {
                    bail!("{path} under attack: status {status} after {took:?}: {body:.200}");
                }
                times.push(took);
            }
            self.max_fds = self.max_fds.max(fd_count(agent.pid()));
            self.max_hwm_kib = self.max_hwm_kib.max(rss_kib(agent.pid()).1);
            if self.max_hwm_kib > RSS_BUDGET_KIB {
                bail!("RSS peak {} MiB over the budget", self.max_hwm_kib / 1024);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn metric(scrape: &Scrape, name: &str, reason: Option<&str>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| reason.is_none_or(|r| s.label("reason") == Some(r)))
        .map(|s| s.value)
        .sum()
}

#[test]
fn floods_and_a_hostile_receiver_leave_metrics_answering_and_nginx_counted_exactly() {
    let _g = guard("floods_and_a_hostile_receiver_leave_metrics_answering_and_nginx_counted_exactly");
    raise_fd_limit();
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let conf = nginx.conf_label();
    let receiver = HostileReceiver::start().expect("start the hostile receiver");
    let rules = TempDir::new("rules").expect("rules dir");
    let rule_file = rules.path().join("rules.yml");
    std::fs::write(&rule_file, ALWAYS_FIRING).expect("write rules");
    let mut agent = Agent::start_opts(&AgentOptions {
        config: Some(config_with_receiver(&rule_file, &receiver.url())),
        ..Default::default()
    })
    .expect("start ngxprobe");
    agent.wait_instance_up(&conf).expect("agent sees nginx");
    let addr = agent.addr();
    let pid = agent.pid();
    let fds_before = fd_count(pid);
    let (_, hwm_before) = rss_kib(pid);
    let base = measure::begin_one(&agent, &nginx, 0).expect("baseline");
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let mut watch = Watch::default();
    let load = HEADER_TIMEOUT * 2 + ATTACK;
    let wrk = WrkRun::spawn(
        &["-t1", "-c8", &format!("-d{}s", load.as_secs()), &nginx.url("/")],
        load,
    )
    .expect("start wrk");

    // Phase 1: slow-header clients alone, under the cap: the header timeout cuts them.
    let slow = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || attacker(addr, SLOW_CLIENTS, true, stop, opened))
    };
    watch
        .run(&mut agent, HEADER_TIMEOUT * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after_slow = agent.scrape().expect("scrape");
    let timeouts = metric(
        &after_slow,
        "ngxprobe_http_connections_refused_total",
        Some("header_timeout"),
    );
    assert!(
        timeouts >= SLOW_CLIENTS as f64,
        "slow-header clients not cut off: {timeouts} header timeouts"
    );

    // Phase 2: plus 1,000 idle clients reconnecting whenever closed, and
    // API requests that never finish.
    let idle = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || attacker(addr, IDLE_CLIENTS, false, stop, opened))
    };
    let hogs = {
        let stop = stop.clone();
        std::thread::spawn(move || api_hogs(addr, API_HOGS, stop))
    };
    let attack = watch.run(&mut agent, ATTACK);
    // What the attackers had opened when the server's counters are read
    // (they go on opening until told to stop).
    let opened_at_scrape = opened.load(Ordering::Relaxed) as f64;
    let during = agent.scrape();
    stop.store(true, Ordering::Relaxed);
    let _ = slow.join();
    let _ = idle.join();
    let hogs = hogs.join().unwrap_or(0);
    attack.unwrap_or_else(|e| panic!("{e:#}"));
    let during = during.expect("scrape at the end of the attack");
    let wrk = wrk.wait().expect("wrk");

    let opened = opened_at_scrape;
    let open_now = metric(&during, "ngxprobe_http_connections_open", None);
    let evicted = metric(&during, "ngxprobe_http_connections_refused_total", Some("evicted"));
    let header_timeouts = metric(
        &during,
        "ngxprobe_http_connections_refused_total",
        Some("header_timeout"),
    );
    let api_in_flight = metric(&during, "ngxprobe_http_api_requests_in_flight", None);
    let api_refused = metric(
        &during,
        "ngxprobe_http_requests_refused_total",
        Some("too_many_requests"),
    );
    let failed_deliveries = metric(&during, "ngxprobe_notify_notification_requests_failed_total", None);
    let (rss, hwm) = rss_kib(pid);
    eprintln!(
        "[e2e] FIGURES hostile_server: {} scrapes under attack, /metrics latency p50 {:?} p99 {:?} max {:?}, \
         /healthz max {:?}; agent fds {} before, {} peak (cap {MAX_CONNECTIONS}); RSS {} MiB now, peak {} MiB \
         (before the attack {} MiB, budget {} MiB); attack connections {opened}, evicted {evicted}, header timeouts \
         {header_timeouts}; API hogs {hogs}, {api_in_flight} in flight, {api_refused} refused; hostile receiver: {} requests, {failed_deliveries} failed deliveries counted; wrk {} requests",
        watch.scrapes.len(),
        percentile(&watch.scrapes, 0.5),
        percentile(&watch.scrapes, 0.99),
        percentile(&watch.scrapes, 1.0),
        percentile(&watch.health_checks, 1.0),
        fds_before,
        watch.max_fds,
        rss / 1024,
        hwm / 1024,
        hwm_before / 1024,
        RSS_BUDGET_KIB / 1024,
        receiver.requests(),
        wrk.requests,
    );
    assert!(open_now <= MAX_CONNECTIONS as f64, "{open_now} connections open");
    // An evicted connection is closed by its own task a moment after the
    // accept that evicted it: a burst of reconnects briefly holds up to a
    // burst's worth of closing sockets over the cap, never the 1,050 clients.
    let fd_bound = fds_before + MAX_CONNECTIONS + 2 * RECONNECTS_PER_PASS + 16;
    assert!(
        watch.max_fds <= fd_bound,
        "fds not bounded: {} peak, {fds_before} before, bound {fd_bound}",
        watch.max_fds
    );
    // Every connection past the cap made room by closing an idle or
    // slow one (a new one is refused outright only when all are busy);
    // the last pass's reconnects may still wait in the accept queue.
    let not_yet_accepted = (2 * RECONNECTS_PER_PASS) as f64;
    assert!(
        evicted + header_timeouts >= opened - MAX_CONNECTIONS as f64 - not_yet_accepted,
        "{opened} attack connections, {evicted} evicted, {header_timeouts} header timeouts"
    );
    assert!(hwm < RSS_BUDGET_KIB, "RSS peak {} MiB", hwm / 1024);
    // The API was saturated (the telemetry path answered all along) and each
    // request past the cap was refused and counted.
    assert_eq!(hogs, API_HOGS, "API hogs could not connect");
    assert_eq!(api_in_flight, MAX_API_REQUESTS as f64, "API requests in flight");
    assert!(
        api_refused >= (API_HOGS - MAX_API_REQUESTS) as f64,
        "{api_refused} API requests refused of {API_HOGS} with {MAX_API_REQUESTS} allowed"
    );
    // The receiver's answers failed every delivery; the notifier retried
    // (once per group_interval, not in a loop) and counted each failure.
    let attempts = receiver.requests();
    let seconds = (HEADER_TIMEOUT * 2 + ATTACK).as_secs() + 30;
    assert!(attempts >= 2, "the notifier did not retry: {attempts} deliveries");
    assert!(attempts <= 4 * seconds, "deliveries not paced: {attempts}");
    assert!(
        failed_deliveries >= 2.0,
        "failed deliveries not counted: {failed_deliveries}"
    );
    assert_eq!(wrk.errors(), 0, "wrk errors against nginx:\n{}", wrk.output);

    // nginx's counters over the whole attack, exact against stub_status.
    let report = measure::finish_one(&agent, base, &nginx, 0, "hostile clients").expect("measure");
    report.assert_ok();

    // The attackers gone, their connections close and the fds come back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(pid) > fds_before + 8 {
        assert!(
            Instant::now() < deadline,
            "fds still {} after the attack ({fds_before} before)",
            fd_count(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.try_wait().expect("wait").is_none(), "the agent died");
}

/// Sends `raw` on a new connection and reads the response status.
fn status_of(addr: SocketAddr, raw: &[u8]) -> Result<u16> {
    Ok(answer_to(addr, raw)?.0)
}

/// Sends `raw` on a new connection: (status, body head).
fn answer_to(addr: SocketAddr, raw: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    // The server may answer before reading all of it: a failed write is fine.
    let _ = s.write_all(raw);
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false)?;
    Ok((resp.status, String::from_utf8_lossy(&resp.body_head).into_owned()))
}

#[test]
fn oversized_requests_are_refused_with_clear_statuses_and_counted() {
    let _g = guard("oversized_requests_are_refused_with_clear_statuses_and_counted");
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(config()),
        ..Default::default()
    })
    .expect("start ngxprobe");
    let addr = agent.addr();
    let big = "1".repeat(100_000);
    let post = format!(
        "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nquery={big}",
        big.len() + 6
    );
    let (status, body) = answer_to(addr, post.as_bytes()).expect("POST");
    assert_eq!(status, 413, "{body}");
    // A clear error in Prometheus' shape, naming the setting.
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["errorType"], "bad_data", "{body}");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("web.max_request_body_bytes")),
        "{body}"
    );
    // Chunked: no length announced, cut off while read.
    let chunk = format!("{:x}\r\nquery={big}\r\n0\r\n\r\n", big.len() + 6);
    let chunked = format!(
        "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
    );
    assert_eq!(status_of(addr, chunked.as_bytes()).expect("chunked POST"), 413);
    let long_url = format!("GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n", &big[..20_000]);
    assert_eq!(status_of(addr, long_url.as_bytes()).expect("long URL"), 431);
    let mut garbage = vec![0x16u8, 0x03, 0x01];
    garbage.extend_from_slice(&[0xffu8; 64]);
    garbage.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_of(addr, &garbage).expect("garbage"), 400);
    // A small query still works.
    let (status, _) = ngxprobe_e2e::clients::http_get(addr, "/api/v1/query?query=1").expect("query");
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.scrape().expect("scrape");
        let got = [
            metric(&s, "ngxprobe_http_requests_refused_total", Some("body_too_large")),
            metric(&s, "ngxprobe_http_requests_refused_total", Some("header_too_large")),
            metric(&s, "ngxprobe_http_requests_refused_total", Some("malformed")),
        ];
        if got == [2.0, 1.0, 1.0] {
            break;
        }
        assert!(Instant::now() < deadline, "refusals counted {got:?}, want [2, 1, 1]");
        std::thread::sleep(Duration::from_millis(50));
    }
}
