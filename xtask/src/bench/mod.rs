//! `cargo xtask bench overhead`: what the agent costs nginx and the rest of the node.
//!
//! Workloads (`--workloads`, see workloads.rs), each with its own nginx (1
//! worker, loopback) started alone: plaintext keep-alive, `Connection:
//! close`, HTTPS keep-alive, HTTP/2 over TLS, proxied, and `other` (no
//! nginx: `dd bs=1` and a loopback TCP ping-pong). Modes (report.rs): A = no
//! agent, B = agent with RED off, R = agent with RED on, F = the floor (empty
//! programs on the same tracepoints). Each round runs every mode, in an order
//! rotated by one each round (so every mode takes every position about as
//! often: slow drift of the machine cancels out of the per-round ratios);
//! within a mode one agent serves every workload in turn.
//!
//! bpf_stats: nginx CPU is measured with kernel.bpf_stats_enabled=0 (the
//! stats add their own time to every program run), eBPF run time needs it
//! on. Rather than running everything twice, each (workload, mode) is one
//! short run with the stats on, which is also the warm-up (A runs it too,
//! with nothing to measure), followed by the longer CPU run with them off:
//! both in the same agent session and the same round. The sysctl is set to 0
//! for the whole benchmark and restored on exit (also on error and Ctrl-C).
//!
//! Per CPU run: nginx worker on-CPU time (/proc/PID/schedstat, ns) per
//! request nginx served (stub_status delta), the client's own count and
//! errors, agent CPU % (all its threads) and peak RSS (with its anonymous,
//! file and shmem parts), and the agent's nginx_http_requests_total
//! delta against stub_status (sanity). Per stats-on run: eBPF ns and runs per
//! request, per program. Every process started here is stopped by PID
//! through Drop guards.
mod other;
mod report;
mod workloads;

pub use other::{PingPongArgs, ping_pong};

use crate::util::{self, check_interrupted, cpu_time_us, sleep};
use anyhow::{Context as _, Result, bail};
use ngxprobe_e2e::clients::wrk_bin;
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::util::{TempDir, is_alive};
use ngxprobe_e2e::{Agent, AgentOptions};
use other::{STATS_SYSCTL, SysctlGuard};
use report::{EbpfRun, Mode, OtherRun, Results, Run, Setup, hook_of};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use workloads::{ClientSettings, Site, Workload};

const RUN_SECONDS_METRIC: &str = "ngxprobe_ebpf_program_run_seconds_total";
const RUNS_METRIC: &str = "ngxprobe_ebpf_program_runs_total";
const REQUESTS_METRIC: &str = "nginx_http_requests_total";
const ATTACHED_METRIC: &str = "ngxprobe_per_request_probe_attached";
const SCANS_METRIC: &str = "ngxprobe_discovery_scans_total";

#[derive(clap::Args)]
pub struct OverheadArgs {
    /// Rounds; each runs every mode on every workload.
    #[arg(long, default_value_t = 9)]
    rounds: u32,
    /// Seconds of each CPU run (bpf_stats off).
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    /// Seconds of each eBPF-time run (bpf_stats on), which is also the warm-up.
    #[arg(long, default_value_t = 2)]
    ebpf_seconds: u32,
    /// Workloads, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "plain-ka,close,https,h2,proxy,other"
    )]
    workloads: Vec<Workload>,
    /// Modes, comma-separated: a (no agent), b (RED off), r (RED on), f (floor).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b,r,f")]
    modes: Vec<Mode>,
    /// Kept for old command lines: the floor F is among the default modes.
    #[arg(long, hide = true)]
    floor: bool,
    /// `per_request.uprobe` of the agent in mode R (auto | always | never).
    #[arg(long, default_value = "auto")]
    uprobe: String,
    /// wrk connections (HTTP/1.1 workloads).
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// h2load clients (connections).
    #[arg(long, default_value_t = 10)]
    h2_clients: u32,
    /// h2load streams at once per connection.
    #[arg(long, default_value_t = 10)]
    h2_streams: u32,
    /// Round trips of the loopback TCP ping-pong (workload `other`).
    #[arg(long, default_value_t = 100_000)]
    ping_pongs: u64,
    /// Bytes written one at a time by `dd bs=1` (workload `other`).
    #[arg(long, default_value_t = 2_000_000)]
    dd_count: u64,
    /// Leave kernel.bpf_stats_enabled alone: no eBPF time figures (the
    /// short run is then only a warm-up).
    #[arg(long)]
    no_bpf_stats: bool,
    /// Where the report is written too (default target/bench/overhead-<UTC time>.md).
    #[arg(long)]
    out: Option<PathBuf>,
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

impl OverheadArgs {
    fn clients(&self) -> ClientSettings {
        ClientSettings {
            connections: self.connections,
            h2_clients: self.h2_clients,
            h2_streams: self.h2_streams,
        }
    }

    /// The modes to run, deduplicated, in A B R F order.
    fn mode_list(&self) -> Vec<Mode> {
        let mut m = self.modes.clone();
        if self.floor {
            m.push(Mode::F);
        }
        m.sort();
        m.dedup();
        m
    }

    fn workload_list(&self) -> Vec<Workload> {
        let mut w = self.workloads.clone();
        w.sort();
        w.dedup();
        w
    }
}

/// The agent's config file for `mode` (None: no agent).
fn agent_config(mode: Mode, uprobe: &str) -> Option<String> {
    match mode {
        Mode::A => None,
        Mode::B | Mode::F => Some("per_request:\n  enabled: false\n".into()),
        Mode::R => Some(format!("per_request:\n  enabled: true\n  uprobe: {uprobe}\n")),
    }
}

/// Mode order of round `round`: the list rotated by `round`.
fn round_order(modes: &[Mode], round: u32) -> Vec<Mode> {
    let mut m = modes.to_vec();
    if !m.is_empty() {
        let k = round as usize % m.len();
        m.rotate_left(k);
    }
    m
}

/// Rough wall time of a run, for the banner: per (mode, nginx workload)
/// both runs plus ~1.5 s of nginx start, discovery and scrapes, per agent
/// session ~1.5 s of start, `other` ~4 s per mode.
fn estimate_seconds(rounds: u32, seconds: u32, ebpf_seconds: u32, modes: &[Mode], workloads: &[Workload]) -> f64 {
    let nginx_workloads = workloads.iter().filter(|w| **w != Workload::Other).count() as f64;
    let other = workloads.contains(&Workload::Other);
    let per_mode = |m: &Mode| {
        let agent = if m.has_agent() { 1.5 } else { 0.0 };
        let discovery = if m.has_agent() { 1.0 } else { 0.0 };
        agent + nginx_workloads * (f64::from(seconds + ebpf_seconds) + 0.5 + discovery) + if other { 4.0 } else { 0.0 }
    };
    f64::from(rounds) * modes.iter().map(per_mode).sum::<f64>()
}

pub fn overhead(args: OverheadArgs) -> Result<()> {
    crate::bench_prelude(
        "overhead",
        "the agent loads eBPF programs; bpf_stats is a sysctl",
        args.no_setup,
        args.no_build,
    )?;
    let modes = args.mode_list();
    let workloads = args.workload_list();
    if modes.is_empty() || workloads.is_empty() {
        bail!("nothing to run: --modes and --workloads must name at least one each");
    }
    if !matches!(args.uprobe.as_str(), "auto" | "always" | "never") {
        bail!("--uprobe {:?}: want auto, always or never", args.uprobe);
    }
    if args.rounds < 9 {
        eprintln!(
            "note: {} rounds; the goals are judged on medians of >= 9 rounds",
            args.rounds
        );
    }
    let agent_bin = args.agent.clone().unwrap_or_else(util::agent_bin);
    for (what, path) in [("agent", agent_bin.as_path()), ("nginx", args.nginx.as_path())] {
        if !path.is_file() {
            bail!("{what} binary {} not found", path.display());
        }
    }
    let needs = |w: Workload| workloads.contains(&w);
    if workloads.iter().any(|w| !matches!(w, Workload::H2 | Workload::Other)) && !Path::new(&wrk_bin()).is_file() {
        bail!("wrk ({}) not found (run `cargo xtask setup`)", wrk_bin());
    }
    for (tool, wanted) in [("h2load", needs(Workload::H2)), ("dd", needs(Workload::Other))] {
        if wanted && util::which(tool).is_none() {
            bail!("`{tool}` not found on PATH (run `cargo xtask setup`)");
        }
    }
    util::catch_interrupts();

    let when = utc_now();
    let est = estimate_seconds(args.rounds, args.seconds, args.ebpf_seconds, &modes, &workloads);
    println!(
        "== bench overhead {when}: {} rounds x modes {:?} x workloads {:?}; {} s CPU runs + {} s eBPF runs; agent {}; about {:.0} min",
        args.rounds,
        modes,
        workloads,
        args.seconds,
        if args.no_bpf_stats { 0 } else { args.ebpf_seconds },
        agent_bin.display(),
        est / 60.0
    );
    let started = Instant::now();
    let tmp = TempDir::new("bench-overhead")?;
    // bpf_stats off for the whole run (CPU figures); switched on around the
    // eBPF-time runs only. Restored to the previous value on the way out.
    let _stats_off = if args.no_bpf_stats {
        None
    } else {
        Some(SysctlGuard::set(STATS_SYSCTL, "0")?)
    };
    let mut results = Results::default();
    for round in 0..args.rounds {
        for mode in round_order(&modes, round) {
            check_interrupted()?;
            run_mode(&args, &agent_bin, tmp.path(), &workloads, round, mode, &mut results)?;
        }
    }
    let setup = Setup {
        rounds: args.rounds,
        seconds: args.seconds,
        ebpf_seconds: (!args.no_bpf_stats).then_some(args.ebpf_seconds),
        connections: args.connections,
        h2_clients: args.h2_clients,
        h2_streams: args.h2_streams,
        uprobe: args.uprobe.clone(),
        ping_pongs: args.ping_pongs,
        dd_count: args.dd_count,
        when: when.clone(),
    };
    let text = report::report(&setup, &results);
    println!("\n{text}");
    let out = args.out.clone().unwrap_or_else(|| {
        util::target_dir()
            .join("bench")
            .join(format!("overhead-{}.md", when.replace(':', "")))
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "report written to {} (wall time {:.1} min)",
        out.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn utc_now() -> String {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report::utc_timestamp(s)
}

/// Every workload in one mode: one agent session (none for A).
fn run_mode(
    args: &OverheadArgs,
    agent_bin: &Path,
    dir: &Path,
    workloads: &[Workload],
    round: u32,
    mode: Mode,
    results: &mut Results,
) -> Result<()> {
    let agent = match agent_config(mode, &args.uprobe) {
        Some(config) => {
            let mut opts = AgentOptions {
                bin: Some(agent_bin.to_path_buf()),
                config: Some(config),
                ..AgentOptions::default()
            };
            if mode == Mode::F {
                opts.env.push(("NGXPROBE_EBPF_FLOOR".into(), "1".into()));
            }
            Some(Agent::start_opts(&opts)?)
        }
        None => None,
    };
    let tag = format!("round {}/{} {mode:?}", round + 1, args.rounds);
    for &w in workloads {
        check_interrupted()?;
        if w == Workload::Other {
            let o = OtherRun {
                dd_s: other::dd_cpu(args.dd_count)?,
                ping_pong_us: other::ping_pong_cpu(dir, args.ping_pongs)?,
            };
            println!(
                "{tag} {:<30} dd bs=1: {:.3} s CPU; TCP ping-pong: {:.2} µs CPU/round trip",
                w.title(),
                o.dd_s,
                o.ping_pong_us
            );
            results.other.entry(mode).or_default().push(o);
            continue;
        }
        let site = Site::start(w, &args.nginx)?;
        let r = measure(args, dir, &site, agent.as_ref(), mode)?;
        println!("{tag} {:<30} {}", w.title(), describe_run(&r));
        drop(site);
        results.runs.entry((w, mode)).or_default().push(r);
    }
    if let Some(a) = agent {
        let pid = a.pid();
        a.stop();
        if is_alive(pid) {
            bail!("the agent (pid {pid}) is still running after stop");
        }
    }
    Ok(())
}

fn describe_run(r: &Run) -> String {
    let mut line = format!(
        "{:>8.0} req ({:>6.0}/s) worker {:>6.2} µs/req",
        r.requests, r.rps, r.worker_us_per_req
    );
    if let Some(e) = &r.ebpf {
        let _ = write!(
            line,
            ", eBPF {:.0} ns/req ({:.2} runs/req)",
            e.ns_total(),
            e.runs_total()
        );
    }
    if let (Some(cpu), Some(rss)) = (r.agent_cpu_pct, r.agent_rss) {
        let mib = |k: u64| k as f64 / 1024.0;
        let _ = write!(
            line,
            ", agent {cpu:.2}% CPU {:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1})",
            mib(rss.total),
            mib(rss.anon),
            mib(rss.file),
            mib(rss.shmem)
        );
    }
    if let Some(acc) = r.agent_vs_stub {
        let _ = write!(line, ", agent/stub_status {acc:.4}");
    }
    if let Some(att) = r.uprobe_attached {
        let _ = write!(line, ", uprobe {}", if att { "attached" } else { "not attached" });
    }
    if r.errors > 0 {
        let _ = write!(line, ", {} client errors", r.errors);
    }
    line
}

/// On-CPU time of a process in µs: /proc/PID/schedstat (ns, exact), else
/// utime+stime from /proc/PID/stat (clock ticks).
/// On-CPU time of the whole agent: the sum over its threads. The process's
/// own /proc/PID/schedstat is its main thread's only, and the agent's main
/// thread sleeps while its loops run on others. (Threads that ended during
/// the run drop out; the agent's loops live as long as it does.)
fn agent_on_cpu_us(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("reading /proc/{pid}/task"))?;
    let mut ns = 0.0;
    for t in tasks {
        let path = t?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(&path)
            && let Some(v) = s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok())
        {
            ns += v;
        }
    }
    Ok(ns / 1e3)
}

fn on_cpu_us(pid: u32) -> Result<f64> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok())
    {
        return Ok(ns / 1e3);
    }
    cpu_time_us(pid)
}

fn workers_cpu_us(site: &Site) -> Result<f64> {
    site.workers.iter().map(|&w| on_cpu_us(w)).sum()
}

/// One workload in one mode: the stats-on run (eBPF time; also the warm-up),
/// then the CPU run.
fn measure(args: &OverheadArgs, dir: &Path, site: &Site, agent: Option<&Agent>, mode: Mode) -> Result<Run> {
    let clients = args.clients();
    let mut run = Run::default();
    if let Some(agent) = agent {
        let scans = wait_reported(agent, &site.conf)?;
        if mode == Mode::R {
            run.uprobe_attached = Some(uprobe_attached(agent, &site.conf, scans)?);
        }
    }
    site.check_alive()?;

    // Stats-on run (the warm-up in A or with --no-bpf-stats).
    match agent {
        Some(agent) if !args.no_bpf_stats => {
            let on = SysctlGuard::set(STATS_SYSCTL, "1")?;
            let (m0, s0) = (agent.scrape()?, site.stub_requests()?);
            site.drive(&clients, args.ebpf_seconds, dir, None)?;
            let (s1, m1) = (site.stub_requests()?, agent.scrape()?);
            drop(on);
            // stub_status counts its own second request.
            let requests = s1 - s0 - 1.0;
            if requests > 0.0 {
                run.ebpf = Some(ebpf_per_request(&m0, &m1, requests));
            }
        }
        _ => {
            site.drive(&clients, args.ebpf_seconds, dir, None)?;
        }
    }

    // CPU run, bpf_stats off. The agent first takes in the records of the
    // run before (the request uprobe wakes its reader only once many wait;
    // otherwise it drains them every 200 ms), or they would count here.
    site.check_alive()?;
    if let Some(agent) = agent {
        agent_requests_quiet(agent, &site.conf)?;
    }
    let stub0 = site.stub_requests()?;
    let m0 = agent.map(Agent::scrape).transpose()?;
    let agent_pid = agent.map(|a| a.pid() as u32);
    let a0 = agent_pid.map(agent_on_cpu_us).transpose()?;
    let w0 = workers_cpu_us(site)?;
    let t0 = Instant::now();
    let c = site.drive(&clients, args.seconds, dir, agent_pid)?;
    let w1 = workers_cpu_us(site)?;
    let wall = t0.elapsed().as_secs_f64();
    let a1 = agent_pid.map(agent_on_cpu_us).transpose()?;
    let stub1 = site.stub_requests()?;
    site.check_alive()?;
    let requests = stub1 - stub0 - 1.0;
    if requests <= 0.0 {
        bail!("nginx served no request in the CPU run of {}", site.conf);
    }
    run.requests = requests;
    run.client_requests = c.requests as f64;
    run.rps = c.rps;
    run.errors = c.errors;
    run.worker_us_per_req = (w1 - w0) / requests;
    if let (Some(agent), Some(m0), Some(a0), Some(a1)) = (agent, m0, a0, a1) {
        run.agent_cpu_pct = Some((a1 - a0) / 1e6 / wall * 100.0);
        run.agent_rss_kib = c.rss_max.map(|r| r.total);
        run.agent_rss = c.rss_max;
        if mode != Mode::F {
            run.agent_vs_stub = Some(agent_requests_settled(agent, &site.conf, &m0, requests)? / requests);
        }
    }
    Ok(run)
}

/// Waits (bounded) until the agent reports the nginx; returns the agent's
/// discovery scan count at that moment.
fn wait_reported(agent: &Agent, conf: &str) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.scrape().context("scraping the agent")?;
        if reports(&m, conf) {
            return Ok(m.sum(SCANS_METRIC));
        }
        if Instant::now() > deadline {
            bail!(
                "the agent does not report conf_path=\"{conf}\" after 20 s; its log:\n{}",
                agent.log_tail(20)
            );
        }
        sleep(Duration::from_millis(100))?;
    }
}

/// Whether the agent attached the request uprobe for this nginx: read once a
/// further discovery scan has completed after the instance appeared (the
/// attach decision is made in the scan that finds it), bounded.
fn uprobe_attached(agent: &Agent, conf: &str, scans_at_report: f64) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = agent.scrape()?;
        let attached = m.value(ATTACHED_METRIC, conf)?;
        if attached == Some(1.0) || (m.sum(SCANS_METRIC) > scans_at_report && attached.is_some()) {
            return Ok(attached == Some(1.0));
        }
        if Instant::now() > deadline {
            eprintln!("warning: no {ATTACHED_METRIC} for {conf} after 10 s; counting it as not attached");
            return Ok(false);
        }
        sleep(Duration::from_millis(100))?;
    }
}

/// The agent's request count since `m0`: polled (bounded, 1 s) until it
/// reaches what nginx counted, since the agent may still be catching up; a
/// count that stays below (e.g. TLS requests with RED off) is reported as is.
fn agent_requests_settled(agent: &Agent, conf: &str, m0: &Scrape, expected: f64) -> Result<f64> {
    let before = m0.sum_where(REQUESTS_METRIC, "conf_path", conf);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let got = agent.scrape()?.sum_where(REQUESTS_METRIC, "conf_path", conf) - before;
        // The agent also counts stub_status's second request (nginx's
        // `expected` leaves it out).
        if got >= expected || Instant::now() > deadline {
            return Ok(got);
        }
        sleep(Duration::from_millis(50))?;
    }
}

/// Waits (bounded, 2 s) until the agent's request count for `conf` has not
/// moved for longer than its record reader's poll interval (200 ms).
fn agent_requests_quiet(agent: &Agent, conf: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = agent.scrape()?.sum_where(REQUESTS_METRIC, "conf_path", conf);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        sleep(Duration::from_millis(50))?;
        let now = agent.scrape()?.sum_where(REQUESTS_METRIC, "conf_path", conf);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_millis(300) {
            return Ok(());
        }
    }
    Ok(())
}

/// Per-hook eBPF ns and runs per request between two scrapes.
fn ebpf_per_request(m0: &Scrape, m1: &Scrape, requests: f64) -> EbpfRun {
    let per_req = |name| -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (program, d) in delta_by_program(m1, m0, name) {
            *out.entry(hook_of(&program)).or_insert(0.0) += d / requests;
        }
        out
    };
    EbpfRun {
        ns: per_req(RUN_SECONDS_METRIC)
            .into_iter()
            .map(|(h, s)| (h, s * 1e9))
            .collect(),
        runs: per_req(RUNS_METRIC),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_deltas() {
        let m0 = Scrape::parse("ngxprobe_ebpf_program_runs_total{program=\"ngx_recv\"} 4\n".into()).unwrap();
        let m1 = Scrape::parse(
            "# HELP x y\nngxprobe_ebpf_program_runs_total{program=\"ngx_recv\"} 10\n\
             ngxprobe_ebpf_program_runs_total{program=\"ngx_set_state\"} 5\n\
             ngxprobe_ebpf_program_run_seconds_total{program=\"ngx_recv\"} 0.000002\n\
             nginx_up{conf_path=\"/a b/\\\"n\\\".conf\"} 1\n"
                .into(),
        )
        .unwrap();
        let d = delta_by_program(&m1, &m0, RUNS_METRIC);
        assert_eq!(d.get("ngx_recv"), Some(&6.0));
        assert_eq!(d.get("ngx_set_state"), Some(&5.0));
        assert!(reports(&m1, "/a b/\"n\".conf"));
        assert!(!reports(&m1, "/other"));
        let e = ebpf_per_request(&m0, &m1, 2.0);
        assert_eq!(e.runs.get("recv"), Some(&3.0));
        assert_eq!(e.runs.get("set_state"), Some(&2.5));
        assert!((e.ns.get("recv").copied().unwrap() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn modes_rotate_and_configure_the_agent() {
        let m = [Mode::A, Mode::B, Mode::R, Mode::F];
        assert_eq!(round_order(&m, 0), m);
        assert_eq!(round_order(&m, 1), [Mode::B, Mode::R, Mode::F, Mode::A]);
        assert_eq!(round_order(&m, 5), round_order(&m, 1));
        // Over as many rounds as modes, each mode takes each position once.
        for pos in 0..m.len() {
            let mut seen: Vec<Mode> = (0..4).map(|r| round_order(&m, r)[pos]).collect();
            seen.sort();
            assert_eq!(seen, m);
        }
        assert!(round_order(&[], 3).is_empty());
        assert_eq!(agent_config(Mode::A, "auto"), None);
        assert!(agent_config(Mode::B, "auto").unwrap().contains("enabled: false"));
        assert!(agent_config(Mode::F, "auto").unwrap().contains("enabled: false"));
        let r = agent_config(Mode::R, "always").unwrap();
        assert!(r.contains("enabled: true") && r.contains("uprobe: always"), "{r}");
    }

    #[test]
    fn estimate_is_in_the_right_range() {
        let all = [Mode::A, Mode::B, Mode::R, Mode::F];
        let w = [
            Workload::PlainKa,
            Workload::Close,
            Workload::Https,
            Workload::H2,
            Workload::Proxy,
            Workload::Other,
        ];
        let s = estimate_seconds(9, 4, 2, &all, &w);
        assert!(s > 15.0 * 60.0 && s < 30.0 * 60.0, "{s}");
        assert_eq!(estimate_seconds(0, 4, 2, &all, &w), 0.0);
    }
}
