//! `cargo xtask bench overhead`: what the agent costs nginx and the rest of the node.
//!
//! A private nginx (1 worker, loopback) is driven by wrk in interleaved rounds,
//! A = nothing attached, B = agent running (ABBA order to cancel drift). Per run:
//! nginx worker CPU (utime+stime) per completed request; with the agent, eBPF run
//! time per request (kernel.bpf_stats_enabled on while the agent runs, restored
//! afterwards), agent CPU and RSS, and the agent's request count against
//! stub_status. Also the cost to processes that are not nginx: `dd bs=1` and a
//! loopback TCP ping-pong between two xtask processes (CPU time, B/A).
//! Every process started here is stopped by PID through Drop guards.
use crate::util::{self, ProcGuard, TempDir, check_interrupted, cpu_time_us, http_get, median, rss_kib, sleep};
use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUN_SECONDS_METRIC: &str = "ngxprobe_ebpf_program_run_seconds_total";
const RUNS_METRIC: &str = "ngxprobe_ebpf_program_runs_total";
const REQUESTS_METRIC: &str = "nginx_http_requests_total";
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(clap::Args)]
pub struct OverheadArgs {
    /// Interleaved rounds (each = one run without and one with the agent).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Round trips of the loopback TCP ping-pong (cost to non-nginx sockets).
    #[arg(long, default_value_t = 100_000)]
    ping_pongs: u64,
    /// Bytes written one at a time by `dd bs=1` (cost to non-socket syscalls).
    #[arg(long, default_value_t = 2_000_000)]
    dd_count: u64,
    /// Leave kernel.bpf_stats_enabled alone (no eBPF ns/request column, and
    /// B is not inflated by the stats' own ~20 ns per program run).
    #[arg(long)]
    no_bpf_stats: bool,
    /// Also run F = the agent with empty programs on the same four hooks
    /// (NGXPROBE_EBPF_FLOOR=1): the floor any program there costs, measured
    /// in the same interleaved rounds.
    #[arg(long)]
    floor: bool,
    /// nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Agent binary (default: target/release/ngxprobe).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Skip `setup`.
    #[arg(long)]
    no_setup: bool,
    /// Skip building the agent.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    A,
    B,
    /// Agent with empty programs (`--floor`).
    F,
}

struct Workload {
    name: &'static str,
    path: &'static str,
    close: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "keepalive, sendfile on",
        path: "/index.html",
        close: false,
    },
    Workload {
        name: "keepalive, sendfile off",
        path: "/nosendfile/index.html",
        close: false,
    },
    Workload {
        name: "Connection: close, sendfile on",
        path: "/index.html",
        close: true,
    },
    Workload {
        name: "Connection: close, sendfile off",
        path: "/nosendfile/index.html",
        close: true,
    },
];

/// One wrk run.
#[derive(Default, Clone)]
struct RunResult {
    requests: f64,
    rps: f64,
    errors: u64,
    worker_us_per_req: f64,
    /// B only:
    bpf_ns_per_req: Option<f64>,
    bpf_runs_per_req: Option<f64>,
    bpf_ns_by_program: BTreeMap<String, f64>,
    agent_cpu_pct: Option<f64>,
    agent_rss_kib: Option<u64>,
    /// Agent's nginx_http_requests_total delta / stub_status requests delta.
    agent_vs_stub: Option<f64>,
}

#[derive(Default)]
struct Results {
    /// (workload index, mode) -> one result per round.
    runs: BTreeMap<(usize, Mode), Vec<RunResult>>,
    /// mode -> CPU seconds of `dd bs=1`, per round.
    dd: BTreeMap<Mode, Vec<f64>>,
    /// mode -> CPU µs (client + server) per ping-pong round trip, per round.
    ping_pong: BTreeMap<Mode, Vec<f64>>,
}

pub fn overhead(args: OverheadArgs) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench overhead` must run as root (the agent loads eBPF programs; bpf_stats is a sysctl)");
    }
    if !args.no_setup {
        crate::setup::setup()?;
    }
    if !args.no_build {
        crate::build(true)?;
    }
    if args.rounds < 5 {
        eprintln!(
            "note: {} rounds; medians need >= 5 rounds to mean much on a noisy machine",
            args.rounds
        );
    }
    let agent = args.agent.clone().unwrap_or_else(util::agent_bin);
    for (what, path) in [("agent", agent.as_path()), ("nginx", args.nginx.as_path())] {
        if !path.is_file() {
            bail!("{what} binary {} not found", path.display());
        }
    }
    for tool in ["wrk", "dd"] {
        if util::which(tool).is_none() {
            bail!("`{tool}` not found on PATH (run `cargo xtask setup`)");
        }
    }
    util::catch_interrupts();

    let tmp = TempDir::new("ngxprobe-bench")?;
    let nginx = Nginx::start(&args.nginx, &tmp.0)?;
    println!(
        "== bench overhead: nginx {} (master {}, worker {}) on 127.0.0.1:{}; agent {}; {} rounds x {} workloads x {} s",
        args.nginx.display(),
        nginx.guard.pid(),
        nginx.worker,
        nginx.port,
        agent.display(),
        args.rounds,
        WORKLOADS.len(),
        args.seconds
    );
    // Warm-up (page cache, nginx's allocations, wrk's first run).
    wrk(&tmp.0, nginx.port, &WORKLOADS[0], args.connections, 2, None)?;

    let mut results = Results::default();
    for round in 0..args.rounds {
        let mut order = if args.floor {
            vec![Mode::A, Mode::B, Mode::F]
        } else {
            vec![Mode::A, Mode::B]
        };
        if round % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            check_interrupted()?;
            run_phase(&args, &agent, &tmp.0, &nginx, round, mode, &mut results)?;
        }
    }
    drop(nginx);
    print!("{}", report(&args, &results));
    Ok(())
}

/// All workloads and the non-nginx probes, in one mode.
fn run_phase(
    args: &OverheadArgs,
    agent_bin: &Path,
    dir: &Path,
    nginx: &Nginx,
    round: u32,
    mode: Mode,
    results: &mut Results,
) -> Result<()> {
    // Order matters on the way out: agent stops first, then stats go back.
    let _stats = if mode != Mode::A && !args.no_bpf_stats {
        Some(SysctlGuard::set(STATS_SYSCTL, "1")?)
    } else {
        None
    };
    let agent = if mode != Mode::A {
        Some(Agent::start(agent_bin, dir, &nginx.conf, mode == Mode::F)?)
    } else {
        None
    };
    for (i, w) in WORKLOADS.iter().enumerate() {
        nginx.check_alive()?;
        let r = measure(args, dir, nginx, w, agent.as_ref(), mode == Mode::F)?;
        let mut line = format!(
            "round {}/{} {:?} {:<32} {:>8.0} req ({:>6.0}/s) worker {:>6.2} µs/req",
            round + 1,
            args.rounds,
            mode,
            w.name,
            r.requests,
            r.rps,
            r.worker_us_per_req
        );
        if let Some(ns) = r.bpf_ns_per_req {
            let _ = write!(
                line,
                ", eBPF {ns:.0} ns/req ({:.2} runs/req)",
                r.bpf_runs_per_req.unwrap_or(f64::NAN)
            );
        }
        if let (Some(cpu), Some(rss)) = (r.agent_cpu_pct, r.agent_rss_kib) {
            let _ = write!(line, ", agent {cpu:.1}% CPU {:.1} MiB", rss as f64 / 1024.0);
        }
        if let Some(acc) = r.agent_vs_stub {
            let _ = write!(line, ", agent/stub_status {acc:.4}");
        }
        if r.errors > 0 {
            let _ = write!(line, ", {} wrk errors", r.errors);
        }
        println!("{line}");
        results.runs.entry((i, mode)).or_default().push(r);
    }
    let dd = dd_cpu(args.dd_count)?;
    let pp = ping_pong_cpu(dir, args.ping_pongs)?;
    println!(
        "round {}/{} {:?} dd bs=1 count={}: {:.3} s CPU; TCP ping-pong: {:.2} µs CPU/round trip",
        round + 1,
        args.rounds,
        mode,
        args.dd_count,
        dd,
        pp
    );
    results.dd.entry(mode).or_default().push(dd);
    results.ping_pong.entry(mode).or_default().push(pp);
    if let Some(a) = agent {
        a.stop()?;
    }
    Ok(())
}

/// One wrk run with every measurement around it.
fn measure(
    args: &OverheadArgs,
    dir: &Path,
    nginx: &Nginx,
    w: &Workload,
    agent: Option<&Agent>,
    floor: bool,
) -> Result<RunResult> {
    let stub0 = nginx.stub_requests()?;
    let m0 = agent.map(Agent::scrape).transpose()?;
    let a0 = agent.map(|a| cpu_time_us(a.guard.pid())).transpose()?;
    let w0 = cpu_time_us(nginx.worker)?;
    let started = Instant::now();
    let out = wrk(dir, nginx.port, w, args.connections, args.seconds, agent)?;
    let w1 = cpu_time_us(nginx.worker)?;
    let wall = started.elapsed().as_secs_f64();
    let a1 = agent.map(|a| cpu_time_us(a.guard.pid())).transpose()?;
    if out.requests <= 0.0 {
        bail!("wrk completed no requests on {} (output in {})", w.name, dir.display());
    }
    let mut r = RunResult {
        requests: out.requests,
        rps: out.requests / out.seconds.max(1e-9),
        errors: out.errors,
        worker_us_per_req: (w1 - w0) / out.requests,
        ..RunResult::default()
    };
    if let (Some(agent), Some(m0), Some(a0), Some(a1)) = (agent, m0, a0, a1) {
        r.agent_cpu_pct = Some((a1 - a0) / 1e6 / wall * 100.0);
        r.agent_rss_kib = out.agent_rss_max_kib;
        // Let the agent catch up before comparing its request count.
        sleep(Duration::from_millis(500))?;
        let stub1 = nginx.stub_requests()?;
        let m1 = agent.scrape()?;
        let run_s = m1.delta_by_program(&m0, RUN_SECONDS_METRIC);
        let runs = m1.delta_by_program(&m0, RUNS_METRIC);
        // With bpf_stats off the kernel reports zeros: no figure, not 0 ns.
        if !run_s.is_empty() && !args.no_bpf_stats {
            r.bpf_ns_per_req = Some(run_s.values().sum::<f64>() * 1e9 / out.requests);
            r.bpf_runs_per_req = Some(runs.values().sum::<f64>() / out.requests);
            r.bpf_ns_by_program = run_s.into_iter().map(|(p, s)| (p, s * 1e9 / out.requests)).collect();
        }
        let agent_reqs = m1.sum_for_conf(REQUESTS_METRIC, &nginx.conf) - m0.sum_for_conf(REQUESTS_METRIC, &nginx.conf);
        // stub_status counts its own request: one more on the second read.
        let stub_reqs = stub1 - stub0 - 1.0;
        // (The floor's empty programs count nothing.)
        if !floor && m1.has_conf(&nginx.conf) && stub_reqs > 0.0 {
            r.agent_vs_stub = Some(agent_reqs / stub_reqs);
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------- wrk

struct WrkOut {
    requests: f64,
    seconds: f64,
    errors: u64,
    agent_rss_max_kib: Option<u64>,
}

fn wrk(dir: &Path, port: u16, w: &Workload, connections: u32, seconds: u32, agent: Option<&Agent>) -> Result<WrkOut> {
    let out_path = dir.join("wrk.out");
    let out_file = std::fs::File::create(&out_path)?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    if w.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{}", w.path))
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(Stdio::inherit());
    let mut guard = ProcGuard::spawn("wrk", &mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 30);
    let mut rss_max: Option<u64> = None;
    let status = loop {
        if let Some(st) = guard.try_wait()? {
            break st;
        }
        if let Some(rss) = agent.and_then(|a| rss_kib(a.guard.pid())) {
            rss_max = Some(rss_max.map_or(rss, |m| m.max(rss)));
        }
        if Instant::now() > deadline {
            bail!("wrk did not finish within {} s", seconds + 30);
        }
        sleep(Duration::from_millis(200))?;
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({}):\n{text}", util::describe(status));
    }
    let (requests, secs) = parse_wrk(&text).ok_or_else(|| anyhow!("could not parse wrk's output:\n{text}"))?;
    Ok(WrkOut {
        requests,
        seconds: secs,
        errors: parse_wrk_errors(&text),
        agent_rss_max_kib: rss_max,
    })
}

/// From wrk's "  123456 requests in 10.00s, 80.1MB read" line.
fn parse_wrk(text: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let secs = words.nth(2)?.trim_end_matches(',');
    let secs = parse_duration_secs(secs)?;
    Some((n, secs))
}

fn parse_duration_secs(s: &str) -> Option<f64> {
    for (suffix, mult) in [("ms", 1e-3), ("us", 1e-6), ("m", 60.0), ("h", 3600.0), ("s", 1.0)] {
        if let Some(v) = s.strip_suffix(suffix) {
            return v.parse::<f64>().ok().map(|v| v * mult);
        }
    }
    None
}

/// Socket errors + non-2xx/3xx responses.
fn parse_wrk_errors(text: &str) -> u64 {
    let mut total = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            total += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            total += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}

// ---------------------------------------------------------------- nginx

struct Nginx {
    guard: ProcGuard,
    worker: u32,
    port: u16,
    conf: String,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let port = util::free_port()?;
        let html = dir.join("html");
        std::fs::create_dir_all(&html)?;
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // ~600 bytes, like a small static page.
        let mut page = String::from("<!DOCTYPE html>\n<html><head><title>ngxprobe bench</title></head><body>\n");
        while page.len() < 580 {
            page.push_str("<p>ngxprobe overhead benchmark page.</p>\n");
        }
        page.push_str("</body></html>\n");
        std::fs::write(html.join("index.html"), page)?;
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        let conf_text = format!(
            r#"# written by `cargo xtask bench overhead`
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/html;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
        location / {{ sendfile on; }}
        location /nosendfile/ {{ sendfile off; alias {d}/html/; }}
        location = /stub_status {{ stub_status; }}
    }}
}}
"#
        );
        std::fs::write(&conf, conf_text)?;
        let conf = conf.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?.to_string();
        let log = std::fs::File::create(dir.join("logs/nginx.out"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir)
            .args(["-c", &conf, "-e"])
            .arg(dir.join("logs/error.log"));
        let mut guard = ProcGuard::spawn_logged("nginx", &mut cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let worker = loop {
            if let Some(st) = guard.try_wait()? {
                let log = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
                bail!("nginx exited ({}):\n{log}", util::describe(st));
            }
            let workers: Vec<u32> = util::children_of(guard.pid())
                .into_iter()
                .filter(|p| util::comm_of(*p).as_deref() == Some("nginx"))
                .collect();
            if let [w] = workers[..] {
                guard.extra = vec![w];
                if matches!(http_get(port, "/index.html", Duration::from_secs(2)), Ok((200, _))) {
                    break w;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx on 127.0.0.1:{port} not serving after 15 s (logs in {})",
                    dir.display()
                );
            }
            sleep(Duration::from_millis(50))?;
        };
        Ok(Nginx {
            guard,
            worker,
            port,
            conf,
        })
    }

    fn check_alive(&self) -> Result<()> {
        if !Path::new(&format!("/proc/{}", self.worker)).exists() {
            bail!("the nginx worker {} is gone (crashed?)", self.worker);
        }
        Ok(())
    }

    /// The `requests` counter of stub_status.
    fn stub_requests(&self) -> Result<f64> {
        let (code, body) = http_get(self.port, "/stub_status", Duration::from_secs(5))?;
        if code != 200 {
            bail!("stub_status returned {code}");
        }
        // "Active connections: 1 \nserver accepts handled requests\n 10 10 12 \n..."
        body.lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("malformed stub_status page:\n{body}"))
    }
}

// ---------------------------------------------------------------- agent

struct Agent {
    guard: ProcGuard,
    port: u16,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, conf: &str, floor: bool) -> Result<Self> {
        let port = util::free_port()?;
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--web.listen-address", &format!("127.0.0.1:{port}")]);
        if floor {
            cmd.env("NGXPROBE_EBPF_FLOOR", "1");
        }
        let mut guard = ProcGuard::spawn_logged("ngxprobe", &mut cmd, log)?;
        // Ready: GET /readyz == 200.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = guard.try_wait()? {
                bail!(
                    "the agent exited during startup ({}); last log lines:\n{}",
                    util::describe(st),
                    util::tail(&log_path, 30)
                );
            }
            if matches!(http_get(port, "/readyz", Duration::from_secs(2)), Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent's /readyz not 200 after 60 s; last log lines:\n{}",
                    util::tail(&log_path, 30)
                );
            }
            sleep(Duration::from_millis(100))?;
        }
        let agent = Agent { guard, port };
        // Then wait until it reports the benchmark's nginx (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.scrape()?.has_conf(conf) {
            if Instant::now() > deadline {
                eprintln!("warning: the agent does not report conf_path=\"{conf}\" after 20 s; continuing");
                break;
            }
            sleep(Duration::from_millis(200))?;
        }
        Ok(agent)
    }

    fn scrape(&self) -> Result<Metrics> {
        let (code, body) = http_get(self.port, "/metrics", Duration::from_secs(10)).context("scraping the agent")?;
        if code != 200 {
            bail!("the agent's /metrics returned {code}");
        }
        Ok(Metrics::parse(&body))
    }

    fn stop(self) -> Result<()> {
        let pid = self.guard.pid();
        drop(self.guard);
        if Path::new(&format!("/proc/{pid}")).exists() {
            bail!("the agent (pid {pid}) is still running after stop");
        }
        Ok(())
    }
}

/// One text-format sample: (name, labels, value).
type Sample = (String, Vec<(String, String)>, f64);

/// Prometheus text-format samples.
struct Metrics(Vec<Sample>);

impl Metrics {
    fn parse(text: &str) -> Self {
        Metrics(text.lines().filter_map(parse_sample).collect())
    }

    fn delta_by_program(&self, before: &Metrics, name: &str) -> BTreeMap<String, f64> {
        let by_program = |m: &Metrics| -> BTreeMap<String, f64> {
            let mut out = BTreeMap::new();
            for (n, labels, v) in &m.0 {
                if n == name {
                    let prog = labels
                        .iter()
                        .find(|(k, _)| k == "program")
                        .map_or("?", |(_, v)| v.as_str());
                    *out.entry(prog.to_string()).or_insert(0.0) += v;
                }
            }
            out
        };
        let b = by_program(before);
        by_program(self)
            .into_iter()
            .map(|(p, v)| {
                let d = v - b.get(&p).copied().unwrap_or(0.0);
                (p, d)
            })
            .collect()
    }

    fn sum_for_conf(&self, name: &str, conf: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == "conf_path" && v == conf))
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has_conf(&self, conf: &str) -> bool {
        self.0
            .iter()
            .any(|(n, labels, _)| n.starts_with("nginx_") && labels.iter().any(|(k, v)| k == "conf_path" && v == conf))
    }
}

/// `name{a="b",c="d"} 1.5 [timestamp]` -> (name, labels, value).
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_string(), labels, value))
}

// ---------------------------------------------------------------- sysctl

/// Sets a sysctl for its lifetime; the previous value is written back on drop
/// (also on errors and Ctrl-C, which the benchmark turns into an error).
struct SysctlGuard {
    path: &'static str,
    previous: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> Result<Self> {
        let previous = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_string();
        std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
        Ok(SysctlGuard { path, previous })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.previous) {
            eprintln!(
                "xtask: could not restore {} to {}: {e} — restore it by hand!",
                self.path, self.previous
            );
        }
    }
}

// ---------------------------------------------------------------- non-nginx processes

fn rusage_cpu_s(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of `dd if=/dev/zero of=/dev/null bs=1 count=N` (2N syscalls).
fn dd_cpu(count: u64) -> Result<f64> {
    let mut cmd = Command::new("dd");
    cmd.args([
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1",
        &format!("count={count}"),
        "status=none",
    ])
    .stdin(Stdio::null());
    let (st, ru) = ProcGuard::spawn("dd", &mut cmd)?.wait_rusage()?;
    if !st.success() {
        bail!("dd failed ({})", util::describe(st));
    }
    Ok(rusage_cpu_s(&ru))
}

#[derive(clap::Args)]
pub struct PingPongArgs {
    /// `server` (writes its port to --port-file, echoes one connection) or `client`.
    role: String,
    #[arg(long)]
    port_file: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Pin to this CPU (both sides on one CPU: steadier than cross-CPU wakeups).
    #[arg(long)]
    cpu: Option<usize>,
}

/// CPU µs (client + server) per round trip of a 1-byte loopback TCP ping-pong
/// between two xtask processes.
fn ping_pong_cpu(dir: &Path, count: u64) -> Result<f64> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let port_file = dir.join("ping-pong.port");
    let _ = std::fs::remove_file(&port_file);
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let cpu = (cpus - 1).to_string();
    let spawn = |role: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "ping-pong",
            role,
            "--cpu",
            &cpu,
            "--count",
            &count.to_string(),
            "--port-file",
        ])
        .arg(&port_file)
        .stdin(Stdio::null());
        ProcGuard::spawn(&format!("ping-pong {role}"), &mut cmd)
    };
    let mut server = spawn("server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&port_file).is_ok_and(|s| s.ends_with('\n')) {
        if let Some(st) = server.try_wait()? {
            bail!("ping-pong server exited early ({})", util::describe(st));
        }
        if Instant::now() > deadline {
            bail!("ping-pong server did not start");
        }
        sleep(Duration::from_millis(10))?;
    }
    let (cst, cru) = spawn("client")?.wait_rusage()?;
    let (sst, sru) = server.wait_rusage()?;
    if !cst.success() || !sst.success() {
        bail!(
            "ping-pong failed (client {}, server {})",
            util::describe(cst),
            util::describe(sst)
        );
    }
    Ok((rusage_cpu_s(&cru) + rusage_cpu_s(&sru)) * 1e6 / count as f64)
}

/// Entry point of the hidden `ping-pong` subcommand.
pub fn ping_pong(args: PingPongArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu);
    }
    match args.role.as_str() {
        "server" => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let tmp = args.port_file.with_extension("tmp");
            std::fs::write(&tmp, format!("{port}\n"))?;
            std::fs::rename(&tmp, &args.port_file)?;
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            loop {
                match s.read(&mut b)? {
                    0 => return Ok(()),
                    _ => s.write_all(&b)?,
                }
            }
        }
        "client" => {
            let port: u16 = std::fs::read_to_string(&args.port_file)?.trim().parse()?;
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            let mut b = [7u8; 1];
            for _ in 0..args.count {
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
            }
            Ok(())
        }
        other => bail!("unknown ping-pong role {other:?} (server|client)"),
    }
}

/// Best effort: a cpuset may forbid the CPU, then the process just runs unpinned.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET/sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

// ---------------------------------------------------------------- report

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

/// Median of per-round B/A ratios (round i of B against round i of A).
fn ratio_median(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
    median(&ratios)
}

fn diff_median(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| b - a).collect();
    median(&d)
}

fn report(args: &OverheadArgs, res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "## ngxprobe overhead ({} interleaved rounds, wrk -t1 -c{} -d{}s, nginx 1 worker on loopback, ~600 B static file)",
        args.rounds, args.connections, args.seconds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "A = no agent, B = agent running{}. Medians over rounds; ratios are medians of per-round B/A.",
        if args.no_bpf_stats {
            ""
        } else {
            " with kernel.bpf_stats_enabled=1 (adds ~20 ns per program run to B)"
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| workload | nginx µs/req A | nginx µs/req B | B/A | Δ µs/req (B−A) | eBPF ns/req | eBPF runs/req | req/s A | req/s B | agent CPU % | agent RSS MiB | agent/stub_status requests | wrk errors A/B |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let empty = Vec::new();
    for (i, w) in WORKLOADS.iter().enumerate() {
        let a = res.runs.get(&(i, Mode::A)).unwrap_or(&empty);
        let b = res.runs.get(&(i, Mode::B)).unwrap_or(&empty);
        let col = |runs: &[RunResult], f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            runs.iter().map(|r| f(r).unwrap_or(f64::NAN)).collect()
        };
        let ua = col(a, &|r| Some(r.worker_us_per_req));
        let ub = col(b, &|r| Some(r.worker_us_per_req));
        let errs = |runs: &[RunResult]| runs.iter().map(|r| r.errors).sum::<u64>();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            w.name,
            fmt(median(&ua), 2),
            fmt(median(&ub), 2),
            fmt(ratio_median(&ua, &ub), 3),
            fmt(diff_median(&ua, &ub), 2),
            fmt(median(&col(b, &|r| r.bpf_ns_per_req)), 0),
            fmt(median(&col(b, &|r| r.bpf_runs_per_req)), 2),
            fmt(median(&col(a, &|r| Some(r.rps))), 0),
            fmt(median(&col(b, &|r| Some(r.rps))), 0),
            fmt(median(&col(b, &|r| r.agent_cpu_pct)), 1),
            fmt(median(&col(b, &|r| r.agent_rss_kib.map(|k| k as f64 / 1024.0))), 1),
            fmt(median(&col(b, &|r| r.agent_vs_stub)), 4),
            errs(a),
            errs(b),
        );
    }
    if res.runs.keys().any(|(_, m)| *m == Mode::F) {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "F = the agent with empty programs on the same four hooks: the floor of being attached there at all."
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| workload | eBPF ns/req B | eBPF ns/req F (floor) | runs/req F | B − F ns/req (program bodies) | nginx F/A | nginx B/F |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (i, w) in WORKLOADS.iter().enumerate() {
            let get = |m: Mode| res.runs.get(&(i, m)).map_or(&[][..], Vec::as_slice);
            let (a, b, f) = (get(Mode::A), get(Mode::B), get(Mode::F));
            let col = |runs: &[RunResult], g: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
                runs.iter().map(|r| g(r).unwrap_or(f64::NAN)).collect()
            };
            let (nb, nf) = (col(b, &|r| r.bpf_ns_per_req), col(f, &|r| r.bpf_ns_per_req));
            let (ua, ub, uf) = (
                col(a, &|r| Some(r.worker_us_per_req)),
                col(b, &|r| Some(r.worker_us_per_req)),
                col(f, &|r| Some(r.worker_us_per_req)),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                w.name,
                fmt(median(&nb), 0),
                fmt(median(&nf), 0),
                fmt(median(&col(f, &|r| r.bpf_runs_per_req)), 2),
                fmt(diff_median(&nf, &nb), 0),
                fmt(ratio_median(&ua, &uf), 3),
                fmt(ratio_median(&uf, &ub), 3),
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| other processes (not nginx) | A | B | B/A |");
    let _ = writeln!(s, "|---|---|---|---|");
    for (name, unit, map, digits) in [
        (format!("`dd bs=1 count={}`", args.dd_count), "s CPU", &res.dd, 3),
        (
            format!("loopback TCP ping-pong, {} round trips", args.ping_pongs),
            "µs CPU/round trip",
            &res.ping_pong,
            2,
        ),
    ] {
        let a = map.get(&Mode::A).map_or(&[][..], Vec::as_slice);
        let b = map.get(&Mode::B).map_or(&[][..], Vec::as_slice);
        let f = map.get(&Mode::F).map_or(&[][..], Vec::as_slice);
        let _ = write!(
            s,
            "| {name} | {} {unit} | {} {unit} | {} |",
            fmt(median(a), digits),
            fmt(median(b), digits),
            fmt(ratio_median(a, b), 3)
        );
        if !f.is_empty() {
            let _ = write!(s, " F/A {} |", fmt(ratio_median(a, f), 3));
        }
        let _ = writeln!(s);
    }
    // eBPF time per program, per workload.
    // The agent's real programs (B), not F's empty ones.
    let mut programs: Vec<String> = res
        .runs
        .iter()
        .filter(|((_, m), _)| *m == Mode::B)
        .flat_map(|(_, runs)| runs)
        .flat_map(|r| r.bpf_ns_by_program.keys().cloned())
        .collect();
    programs.sort();
    programs.dedup();
    if !programs.is_empty() {
        let _ = writeln!(s);
        let _ = write!(s, "| eBPF ns/req by program |");
        for w in WORKLOADS {
            let _ = write!(s, " {} |", w.name);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|---|{}", "---|".repeat(WORKLOADS.len()));
        for p in &programs {
            let _ = write!(s, "| {p} |");
            for i in 0..WORKLOADS.len() {
                let b = res.runs.get(&(i, Mode::B)).unwrap_or(&empty);
                let v: Vec<f64> = b
                    .iter()
                    .map(|r| r.bpf_ns_by_program.get(p).copied().unwrap_or(f64::NAN))
                    .collect();
                let _ = write!(s, " {} |", fmt(median(&v), 0));
            }
            let _ = writeln!(s);
        }
    } else if !args.no_bpf_stats {
        let _ = writeln!(
            s,
            "\nNo eBPF run-time figures: the agent's /metrics has no {RUN_SECONDS_METRIC}{{program=...}}."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 50 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.1ms  1.0ms  20ms   90%\n  \
                   812345 requests in 10.00s, 600.12MB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 2\nRequests/sec:  81234.50\n";
        assert_eq!(parse_wrk(out), Some((812345.0, 10.0)));
        assert_eq!(parse_wrk_errors(out), 6);
        assert_eq!(parse_wrk("nothing"), None);
    }

    #[test]
    fn parses_metric_samples() {
        let m = Metrics::parse(
            "# HELP x y\nngxprobe_ebpf_program_runs_total{program=\"recv\"} 10\n\
             ngxprobe_ebpf_program_runs_total{program=\"state\"} 5\n\
             nginx_http_requests_total{conf_path=\"/a b/\\\"n\\\".conf\",container_id=\"\"} 1.5e+03\nnginx_up 1\n",
        );
        let before = Metrics::parse("ngxprobe_ebpf_program_runs_total{program=\"recv\"} 4\n");
        let d = m.delta_by_program(&before, RUNS_METRIC);
        assert_eq!(d.get("recv"), Some(&6.0));
        assert_eq!(d.get("state"), Some(&5.0));
        assert_eq!(m.sum_for_conf(REQUESTS_METRIC, "/a b/\"n\".conf"), 1500.0);
        assert!(m.has_conf("/a b/\"n\".conf"));
        assert!(!m.has_conf("/other"));
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio_median(&[1.0, 2.0, 4.0], &[2.0, 2.0, 4.0]), 1.0);
    }
}
