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
//!
//! nginx, the agent, wrk and the /metrics parser are the end-to-end harness's
//! (`ngxprobe_e2e`); this file is the benchmark's own logic.
use crate::util::{self, check_interrupted, cpu_time_us, median, rss_kib, sleep};
use anyhow::{Context as _, Result, bail};
use ngxprobe_e2e::clients::{WrkResult, WrkRun, wrk_bin};
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::util::{ChildGuard, TempDir, is_alive};
use ngxprobe_e2e::{Agent, AgentOptions, Nginx, NginxOptions};
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
    crate::bench_prelude(
        "overhead",
        "the agent loads eBPF programs; bpf_stats is a sysctl",
        args.no_setup,
        args.no_build,
    )?;
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
    if !Path::new(&wrk_bin()).is_file() {
        bail!("wrk ({}) not found (run `cargo xtask setup`)", wrk_bin());
    }
    if util::which("dd").is_none() {
        bail!("`dd` not found on PATH (run `cargo xtask setup`)");
    }
    util::catch_interrupts();

    let tmp = TempDir::new("bench-overhead")?;
    let nginx = BenchNginx::start(&args.nginx)?;
    println!(
        "== bench overhead: nginx {} (master {}, worker {}) on 127.0.0.1:{}; agent {}; {} rounds x {} workloads x {} s",
        args.nginx.display(),
        nginx.nginx.master_pid(),
        nginx.worker,
        nginx.nginx.main_port(),
        agent.display(),
        args.rounds,
        WORKLOADS.len(),
        args.seconds
    );
    // Warm-up (page cache, nginx's allocations, wrk's first run).
    wrk(&nginx, &WORKLOADS[0], args.connections, 2, None)?;

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
            run_phase(&args, &agent, tmp.path(), &nginx, round, mode, &mut results)?;
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
    nginx: &BenchNginx,
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
        Some(start_agent(agent_bin, &nginx.conf, mode == Mode::F)?)
    } else {
        None
    };
    for (i, w) in WORKLOADS.iter().enumerate() {
        nginx.check_alive()?;
        let r = measure(args, nginx, w, agent.as_ref(), mode == Mode::F)?;
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
        stop_agent(a)?;
    }
    Ok(())
}

/// One wrk run with every measurement around it.
fn measure(
    args: &OverheadArgs,
    nginx: &BenchNginx,
    w: &Workload,
    agent: Option<&Agent>,
    floor: bool,
) -> Result<RunResult> {
    let stub0 = nginx.stub_requests()?;
    let m0 = agent.map(Agent::scrape).transpose()?;
    let a0 = agent.map(|a| cpu_time_us(a.pid() as u32)).transpose()?;
    let w0 = cpu_time_us(nginx.worker)?;
    let started = Instant::now();
    let (out, agent_rss_max_kib) = wrk(nginx, w, args.connections, args.seconds, agent)?;
    let w1 = cpu_time_us(nginx.worker)?;
    let wall = started.elapsed().as_secs_f64();
    let a1 = agent.map(|a| cpu_time_us(a.pid() as u32)).transpose()?;
    if out.requests == 0 {
        bail!("wrk completed no requests on {}:\n{}", w.name, out.output);
    }
    let requests = out.requests as f64;
    let mut r = RunResult {
        requests,
        rps: out.rate(),
        errors: out.errors(),
        worker_us_per_req: (w1 - w0) / requests,
        ..RunResult::default()
    };
    if let (Some(agent), Some(m0), Some(a0), Some(a1)) = (agent, m0, a0, a1) {
        r.agent_cpu_pct = Some((a1 - a0) / 1e6 / wall * 100.0);
        r.agent_rss_kib = agent_rss_max_kib;
        // Let the agent catch up before comparing its request count.
        sleep(Duration::from_millis(500))?;
        let stub1 = nginx.stub_requests()?;
        let m1 = agent.scrape()?;
        let run_s = delta_by_program(&m1, &m0, RUN_SECONDS_METRIC);
        let runs = delta_by_program(&m1, &m0, RUNS_METRIC);
        // With bpf_stats off the kernel reports zeros: no figure, not 0 ns.
        if !run_s.is_empty() && !args.no_bpf_stats {
            r.bpf_ns_per_req = Some(run_s.values().sum::<f64>() * 1e9 / requests);
            r.bpf_runs_per_req = Some(runs.values().sum::<f64>() / requests);
            r.bpf_ns_by_program = run_s.into_iter().map(|(p, s)| (p, s * 1e9 / requests)).collect();
        }
        let conf = nginx.conf.as_str();
        let agent_reqs =
            m1.sum_where(REQUESTS_METRIC, "conf_path", conf) - m0.sum_where(REQUESTS_METRIC, "conf_path", conf);
        // stub_status counts its own request: one more on the second read.
        let stub_reqs = stub1 - stub0 - 1.0;
        // (The floor's empty programs count nothing.)
        if !floor && reports(&m1, conf) && stub_reqs > 0.0 {
            r.agent_vs_stub = Some(agent_reqs / stub_reqs);
        }
    }
    Ok(r)
}

/// Per-program increase of the counter `name` between two scrapes.
fn delta_by_program(after: &Scrape, before: &Scrape, name: &str) -> BTreeMap<String, f64> {
    let b = before.sum_by(name, "program");
    after
        .sum_by(name, "program")
        .into_iter()
        .map(|(p, v)| {
            let d = v - b.get(&p).copied().unwrap_or(0.0);
            (p, d)
        })
        .collect()
}

/// Does the scrape have the benchmark's nginx (`nginx_up{conf_path}`)?
fn reports(m: &Scrape, conf: &str) -> bool {
    m.conf_paths().iter().any(|c| c == conf)
}

// ---------------------------------------------------------------- wrk

/// One wrk run, with the agent's peak RSS sampled while it runs.
fn wrk(
    nginx: &BenchNginx,
    w: &Workload,
    connections: u32,
    seconds: u32,
    agent: Option<&Agent>,
) -> Result<(WrkResult, Option<u64>)> {
    let url = nginx.nginx.url(w.path);
    let (c, d) = (format!("-c{connections}"), format!("-d{seconds}s"));
    let mut wrk_args = vec!["-t1", c.as_str(), d.as_str()];
    if w.close {
        wrk_args.extend(["-H", "Connection: close"]);
    }
    wrk_args.push(&url);
    let limit = Duration::from_secs(seconds as u64 + 30);
    let mut run = WrkRun::spawn(&wrk_args, Duration::from_secs(seconds.into()))?;
    let deadline = Instant::now() + limit;
    let mut rss_max: Option<u64> = None;
    while run.is_running() {
        if let Some(rss) = agent.and_then(|a| rss_kib(a.pid() as u32)) {
            rss_max = Some(rss_max.map_or(rss, |m| m.max(rss)));
        }
        if Instant::now() > deadline {
            bail!("wrk did not finish within {limit:?}");
        }
        sleep(Duration::from_millis(200))?;
    }
    Ok((run.wait()?, rss_max))
}

// ---------------------------------------------------------------- nginx

/// The harness's nginx as the benchmark needs it: one worker, keep-alive
/// connections that last the whole run, no 10 MB file.
struct BenchNginx {
    nginx: Nginx,
    worker: u32,
    conf: String,
}

impl BenchNginx {
    fn start(bin: &Path) -> Result<Self> {
        let nginx = Nginx::start(NginxOptions {
            tag: "bench-overhead".into(),
            bin: Some(bin.to_path_buf()),
            keepalive_requests: 1_000_000,
            big_file: false,
            ..NginxOptions::default()
        })?;
        let worker = match nginx.worker_pids()[..] {
            [w] => w as u32,
            ref ws => bail!("nginx has {} workers, want 1: {ws:?}", ws.len()),
        };
        let conf = nginx.conf_label();
        Ok(BenchNginx { nginx, worker, conf })
    }

    fn check_alive(&self) -> Result<()> {
        if !is_alive(self.worker as i32) {
            bail!("the nginx worker {} is gone (crashed?)", self.worker);
        }
        Ok(())
    }

    /// The `requests` counter of stub_status.
    fn stub_requests(&self) -> Result<f64> {
        Ok(self.nginx.oracle()?.requests as f64)
    }
}

// ---------------------------------------------------------------- agent

/// Starts the agent (`floor`: with empty programs) and waits until it is
/// ready and (bounded, warning only) reports the benchmark's nginx.
fn start_agent(bin: &Path, conf: &str, floor: bool) -> Result<Agent> {
    let mut opts = AgentOptions {
        bin: Some(bin.to_path_buf()),
        ..AgentOptions::default()
    };
    if floor {
        opts.env.push(("NGXPROBE_EBPF_FLOOR".into(), "1".into()));
    }
    let agent = Agent::start_opts(&opts)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reports(&agent.scrape().context("scraping the agent")?, conf) {
        if Instant::now() > deadline {
            eprintln!("warning: the agent does not report conf_path=\"{conf}\" after 20 s; continuing");
            break;
        }
        sleep(Duration::from_millis(200))?;
    }
    Ok(agent)
}

fn stop_agent(agent: Agent) -> Result<()> {
    let pid = agent.pid();
    agent.stop();
    if is_alive(pid) {
        bail!("the agent (pid {pid}) is still running after stop");
    }
    Ok(())
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
    let (st, ru) = ChildGuard::spawn(&mut cmd, "dd")?.wait_rusage(check_interrupted)?;
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
        ChildGuard::spawn(&mut cmd, &format!("ping-pong {role}"))
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
    let (cst, cru) = spawn("client")?.wait_rusage(check_interrupted)?;
    let (sst, sru) = server.wait_rusage(check_interrupted)?;
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
    fn program_deltas() {
        let m0 = Scrape::parse("ngxprobe_ebpf_program_runs_total{program=\"recv\"} 4\n".into()).unwrap();
        let m1 = Scrape::parse(
            "# HELP x y\nngxprobe_ebpf_program_runs_total{program=\"recv\"} 10\n\
             ngxprobe_ebpf_program_runs_total{program=\"state\"} 5\n\
             nginx_up{conf_path=\"/a b/\\\"n\\\".conf\"} 1\n"
                .into(),
        )
        .unwrap();
        let d = delta_by_program(&m1, &m0, RUNS_METRIC);
        assert_eq!(d.get("recv"), Some(&6.0));
        assert_eq!(d.get("state"), Some(&5.0));
        assert!(reports(&m1, "/a b/\"n\".conf"));
        assert!(!reports(&m1, "/other"));
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio_median(&[1.0, 2.0, 4.0], &[2.0, 2.0, 4.0]), 1.0);
    }
}
