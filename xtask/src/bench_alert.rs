//! `cargo xtask bench alert-latency`: how fast a Slack notification arrives,
//! ngxprobe against the usual stack, in one run on the same nginx and load.
//!
//! * ngxprobe: eBPF counters → store (storage.interval 1s) → rule (evaluation
//!   interval 1s) → built-in notifier → Slack webhook.
//! * peer: Debian's prometheus-nginx-exporter 0.11 (stub_status) → Prometheus
//!   2.42 (scrape 1s, evaluation 1s) → Alertmanager 0.25 (no cluster) → Slack
//!   webhook.
//!
//! Same rule on both sides (`rate(nginx_http_requests_total[5s]) > 100`,
//! `for: 2s`), same route timings (group_wait 1s, group_interval 1s,
//! repeat_interval 1h), the seed's `slack-notifications` receiver with
//! `api_url` pointing at a local HTTP server that timestamps each POST. Each
//! burst: paced load on nginx for N s, then quiet until both sides have sent
//! their resolved POST. Everything runs on loopback with temp dirs and free
//! ports and is stopped by PID (Drop guards), also on error or Ctrl-C.
use crate::util::{self, ProcGuard, TempDir, check_interrupted, http_get, median, sleep};
use anyhow::{Context as _, Result, anyhow, bail};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FOR_S: f64 = 2.0;
const GROUP_WAIT_S: f64 = 1.0;
const GROUP_INTERVAL_S: f64 = 1.0;
const RANGE_S: f64 = 5.0;
const TITLE: &str = "critical: WebServerConnectivity";

#[derive(clap::Args)]
pub struct AlertLatencyArgs {
    /// Load bursts (each: load, then quiet until both sides resolved).
    #[arg(long, default_value_t = 3)]
    bursts: u32,
    /// Seconds of load per burst.
    #[arg(long, default_value_t = 6)]
    load_seconds: u64,
    /// Paced load: requests per second over one keep-alive connection
    /// (well above the rule's 100/s, light enough not to starve 2 cores).
    #[arg(long, default_value_t = 1000)]
    rps: u32,
    /// Use wrk flat out with this many connections instead of the paced load.
    #[arg(long)]
    wrk_connections: Option<u32>,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Agent binary (default: target/release/ngxprobe).
    #[arg(long)]
    agent: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/prometheus")]
    prometheus: PathBuf,
    #[arg(long, default_value = "/usr/bin/prometheus-alertmanager")]
    alertmanager: PathBuf,
    #[arg(long, default_value = "/usr/bin/prometheus-nginx-exporter")]
    exporter: PathBuf,
    /// Do not wait for Alertmanager to drop the emptied aggregation group
    /// between bursts (later bursts then skip its group_wait).
    #[arg(long)]
    reuse_groups: bool,
    /// Skip `setup`.
    #[arg(long)]
    no_setup: bool,
    /// Skip building the agent.
    #[arg(long)]
    no_build: bool,
}

/// The seed's receiver (/work/shared/seeds/000_bf0a491ec61e482c.txt), verbatim
/// apart from api_url.
const SEED_RECEIVERS: &str = "receivers:
- name: 'slack-notifications'
  slack_configs:
    - send_resolved: true
      text: \"{{ .CommonAnnotations.summary }}\"
      title: \"{{ .CommonLabels.severity }}: {{ .CommonLabels.alertname }}\"
      channel: '#your-slack-channel'
      api_url: 'https://hooks.slack.com/services/your/slack/webhook/url'
";

const RULES: &str = r#"groups:
- name: example
  rules:
  - alert: WebServerConnectivity
    expr: rate(nginx_http_requests_total[5s]) > 100
    for: 2s
    labels:
      severity: critical
    annotations:
      description: The rate of HTTP requests is higher than 100 per minute.
      summary: High request rate on nginx
"#;

fn receivers(url: &str) -> String {
    SEED_RECEIVERS.replace("https://hooks.slack.com/services/your/slack/webhook/url", url)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Ngxprobe,
    Peer,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ngxprobe => "ngxprobe",
            Side::Peer => "Prometheus+Alertmanager",
        }
    }
    fn hook(self) -> &'static str {
        match self {
            Side::Ngxprobe => "/ngxprobe",
            Side::Peer => "/alertmanager",
        }
    }
}

pub fn alert_latency(args: AlertLatencyArgs) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench alert-latency` must run as root (the agent loads eBPF programs)");
    }
    if !args.no_setup {
        crate::setup::setup()?;
    }
    if !args.no_build {
        crate::build(true)?;
    }
    let agent_bin = args.agent.clone().unwrap_or_else(util::agent_bin);
    for (what, p) in [
        ("agent", &agent_bin),
        ("nginx", &args.nginx),
        ("prometheus", &args.prometheus),
        ("alertmanager", &args.alertmanager),
        ("nginx exporter", &args.exporter),
    ] {
        if !p.is_file() {
            bail!(
                "{what} binary {} not found (apt-get install nginx prometheus \
                 prometheus-alertmanager prometheus-nginx-exporter)",
                p.display()
            );
        }
    }
    if args.wrk_connections.is_some() && util::which("wrk").is_none() {
        bail!("wrk not found on PATH");
    }
    if args.bursts == 0 || args.load_seconds == 0 {
        bail!("--bursts and --load-seconds must be > 0");
    }
    util::catch_interrupts();

    let tmp = TempDir::new("ngxprobe-bench-alert")?;
    let dir = tmp.0.clone();
    let rx = Receiver::start()?;
    let nginx = Nginx::start(&args.nginx, &dir.join("nginx"))?;
    let rules = dir.join("rules.yml");
    std::fs::write(&rules, RULES)?;

    // --- peer stack: exporter, Alertmanager, Prometheus.
    let exporter_port = util::free_port()?;
    let exporter = spawn_logged(
        "prometheus-nginx-exporter",
        Command::new(&args.exporter)
            .arg("-nginx.scrape-uri")
            .arg(format!("http://127.0.0.1:{}/stub", nginx.port))
            .arg("-web.listen-address")
            .arg(format!("127.0.0.1:{exporter_port}")),
        &dir.join("exporter.log"),
    )?;
    let am_port = util::free_port()?;
    let am_dir = dir.join("alertmanager");
    std::fs::create_dir_all(&am_dir)?;
    std::fs::write(
        am_dir.join("alertmanager.yml"),
        format!(
            "route: {{ receiver: slack-notifications, group_wait: 1s, group_interval: 1s, repeat_interval: 1h }}\n{}",
            receivers(&rx.url(Side::Peer.hook()))
        ),
    )?;
    let alertmanager = spawn_logged(
        "alertmanager",
        Command::new(&args.alertmanager)
            .arg(format!("--config.file={}", am_dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", am_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
        &dir.join("alertmanager.log"),
    )?;
    let prom_port = util::free_port()?;
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir)?;
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
alerting:
  alertmanagers:
  - static_configs:
    - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
- job_name: nginx
  static_configs:
  - targets: ["127.0.0.1:{exporter_port}"]
"#,
            rules = rules.display()
        ),
    )?;
    let prometheus = spawn_logged(
        "prometheus",
        Command::new(&args.prometheus)
            .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &dir.join("prometheus.log"),
    )?;

    // --- ngxprobe.
    let agent_port = util::free_port()?;
    let agent_conf = dir.join("ngxprobe.yml");
    // group_by conf_path: the agent sees every nginx on the host; our
    // instance's alert gets a group (and POSTs) of its own.
    std::fs::write(
        &agent_conf,
        format!(
            r#"rules:
  rule_files: ["{rules}"]
  default_rules: false
alertmanager:
  route: {{ receiver: slack-notifications, group_by: [conf_path], group_wait: 1s, group_interval: 1s, repeat_interval: 1h }}
{recv}"#,
            rules = rules.display(),
            recv = indent(&receivers(&rx.url(Side::Ngxprobe.hook())), "  "),
        ),
    )?;
    let agent = spawn_logged(
        "ngxprobe",
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&agent_conf)
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{agent_port}"))
            .arg("--storage.path")
            .arg(dir.join("ngxprobe-data")),
        &dir.join("ngxprobe.log"),
    )?;
    let mut procs = vec![exporter, alertmanager, prometheus, agent];

    // --- readiness (bounded).
    wait_ok(&mut procs, "exporter", exporter_port, "/metrics", &dir)?;
    wait_ok(&mut procs, "alertmanager", am_port, "/-/ready", &dir)?;
    wait_ok(&mut procs, "prometheus", prom_port, "/-/ready", &dir)?;
    wait_ok(&mut procs, "ngxprobe", agent_port, "/readyz", &dir)?;
    let conf = nginx.conf.clone();
    let ngx_sel = format!("nginx_http_requests_total{{conf_path=\"{conf}\"}}");
    let peer_sel = "nginx_http_requests_total{job=\"nginx\"}".to_string();
    wait_until("both sides to have nginx_http_requests_total for 6 s", 40, || {
        check_procs(&mut procs, &dir)?;
        let a = range_samples(agent_port, &ngx_sel, 30)?;
        let p = range_samples(prom_port, &peer_sel, 30)?;
        Ok(a.len() >= 6 && p.len() >= 6)
    })?;
    let load_desc = match args.wrk_connections {
        Some(c) => format!("wrk -t1 -c{c} (flat out)"),
        None => format!("{} req/s paced, 1 keep-alive connection", args.rps),
    };
    println!(
        "== bench alert-latency: nginx 127.0.0.1:{} ({conf}); ngxprobe :{agent_port}; \
         exporter :{exporter_port} → prometheus :{prom_port} → alertmanager :{am_port}; \
         receiver {}; {} bursts × {} s load ({load_desc})",
        nginx.port,
        rx.url("/"),
        args.bursts,
        args.load_seconds
    );

    let mut rows: Vec<Burst> = Vec::new();
    for i in 0..args.bursts {
        check_interrupted()?;
        // Quiet: nothing active on either side, and the rate windows hold no
        // load (the previous burst's resolved POSTs came after that anyway).
        wait_until("both sides quiet (no active alert)", 60, || {
            check_procs(&mut procs, &dir)?;
            Ok(active_alerts(agent_port, Some(&conf))? == 0 && active_alerts(prom_port, None)? == 0)
        })?;
        // Alertmanager keeps an emptied aggregation group until its next
        // maintenance run (every 30 s); an alert arriving while the group
        // still exists is flushed at the group's next group_interval tick
        // instead of after group_wait. Unless --reuse-groups, wait until it is
        // gone so that every burst measures a first notification (group_wait)
        // on both sides, like the first one.
        // ngxprobe's notifier keeps emptied groups the same way: wait for both.
        if !args.reuse_groups {
            wait_until(
                "Alertmanager and ngxprobe to drop the emptied aggregation groups",
                45,
                || {
                    check_procs(&mut procs, &dir)?;
                    Ok(metric(am_port, "alertmanager_dispatcher_aggregation_groups")? == 0.0
                        && metric(agent_port, "ngxprobe_notify_aggregation_groups")? == 0.0)
                },
            )?;
        }
        // Start bursts at different phases of the 1 s sampling/evaluation
        // ticks: burst i starts (i × 337 ms) mod 1 s after a whole second.
        let phase = (i as i64 * 337) % 1000;
        let target = (now_ms() / 1000 + 1) * 1000 + phase;
        sleep(Duration::from_millis((target - now_ms()).max(0) as u64))?;

        let seen = rx.count();
        let t_start = Instant::now();
        let wall_start = now_ms();
        let sent = run_load(&args, nginx.port)?;
        let t_end = Instant::now();

        let mut b = Burst {
            index: i,
            load_s: t_end.duration_since(t_start).as_secs_f64(),
            requests: sent,
            sides: Vec::new(),
        };
        let sides = [
            (Side::Ngxprobe, agent_port, ngx_sel.as_str(), Some(conf.as_str())),
            (Side::Peer, prom_port, peer_sel.as_str(), None),
        ];
        // Firing POSTs first (and each alert's activeAt while it is still
        // active: the rate stays > 100 for ~5 s after the load), then the
        // resolved ones.
        let mut fired = Vec::new();
        for (side, port, _, c) in sides {
            let fire = rx.wait(
                &format!("{} firing POST (burst {i})", side.name()),
                seen,
                t_end + Duration::from_secs(30),
                |p| p.path == side.hook() && p.title() == TITLE && p.firing() && mine(side, p, &conf),
                &mut || check_procs(&mut procs, &dir),
            )?;
            let active_at = alert_active_at(port, c).ok().flatten();
            fired.push((fire, active_at));
        }
        for ((side, port, sel, _), (fire, active_at)) in sides.into_iter().zip(fired) {
            let res = rx.wait(
                &format!("{} resolved POST (burst {i})", side.name()),
                fire.seq + 1,
                t_end + Duration::from_secs(40),
                |p| p.path == side.hook() && p.title() == TITLE && p.resolved() && mine(side, p, &conf),
                &mut || check_procs(&mut procs, &dir),
            )?;
            let detectable = first_detectable(port, sel, wall_start).ok().flatten();
            let rel = |t: i64| (t - wall_start) as f64 / 1000.0;
            b.sides.push(SideResult {
                side,
                fire_s: fire.at.duration_since(t_start).as_secs_f64(),
                resolve_s: res.at.saturating_duration_since(t_end).as_secs_f64(),
                first_sample_s: detectable.map(|(first, _)| rel(first)),
                detectable_s: detectable.and_then(|(_, d)| d).map(rel),
                active_s: active_at.map(rel),
            });
        }
        // More than one firing POST per side and burst would be a duplicate
        // (nothing changed in between; repeat_interval is 1h).
        for side in [Side::Ngxprobe, Side::Peer] {
            let n = rx
                .since(seen)
                .iter()
                .filter(|p| p.path == side.hook() && p.title() == TITLE && p.firing() && mine(side, p, &conf))
                .count();
            if n != 1 {
                eprintln!("warning: burst {i}: {} sent {n} firing POSTs (want 1)", side.name());
            }
        }
        println!("{}", b.line());
        rows.push(b);
    }
    for p in procs.iter_mut() {
        p.term_signal = libc::SIGTERM;
    }
    drop(procs);
    drop(nginx);
    print!("{}", report(&args, &load_desc, &rows));
    Ok(())
}

fn mine(side: Side, p: &Post, conf: &str) -> bool {
    side == Side::Peer || p.fallback().contains(conf)
}

fn indent(s: &str, pre: &str) -> String {
    s.lines().map(|l| format!("{pre}{l}\n")).collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------- results

struct SideResult {
    side: Side,
    /// Load start → firing POST received.
    fire_s: f64,
    /// Load end → resolved POST received.
    resolve_s: f64,
    /// Load start → timestamp of the first stored/scraped sample after it.
    first_sample_s: Option<f64>,
    /// Load start → timestamp of the first sample at which
    /// rate(...[5s]) > 100 (what an evaluation right after it would see).
    detectable_s: Option<f64>,
    /// Load start → the alert's activeAt (the evaluation that saw it first).
    active_s: Option<f64>,
}

impl SideResult {
    fn minus_for_wait(&self) -> f64 {
        self.fire_s - FOR_S - GROUP_WAIT_S
    }
    /// activeAt − detectable: evaluation alignment (and staleness of the data
    /// the evaluation sees).
    fn eval_lag(&self) -> Option<f64> {
        Some(self.active_s? - self.detectable_s?)
    }
    /// firing POST − activeAt − for − group_wait: rule → notifier → webhook.
    fn notify_lag(&self) -> Option<f64> {
        Some(self.fire_s - self.active_s? - FOR_S - GROUP_WAIT_S)
    }
}

struct Burst {
    index: u32,
    load_s: f64,
    requests: u64,
    sides: Vec<SideResult>,
}

impl Burst {
    fn line(&self) -> String {
        let mut s = format!(
            "burst {}: {:.1} s load, {} requests;",
            self.index, self.load_s, self.requests
        );
        for r in &self.sides {
            let _ = write!(
                s,
                " {}: firing {:.2} s, resolved {:.2} s;",
                r.side.name(),
                r.fire_s,
                r.resolve_s
            );
        }
        s
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}"))
}

fn report(args: &AlertLatencyArgs, load: &str, rows: &[Burst]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## Alert latency: ngxprobe vs Prometheus + Alertmanager + nginx-exporter\n"
    );
    let _ = writeln!(
        o,
        "Rule `rate(nginx_http_requests_total[5s]) > 100`, `for: 2s`; route group_wait 1s, \
         group_interval 1s, repeat_interval 1h; the seed's Slack receiver → local webhook. \
         ngxprobe: its defaults (storage.interval 1s, rules.evaluation_interval 250ms, rules \
         read live values). Peer: exporter scraped every \
         1s, evaluation_interval 1s, Alertmanager without cluster{}. {} bursts × {} s of load \
         ({load}), each started at a different phase of the 1 s ticks.\n",
        if args.reuse_groups {
            ""
        } else {
            "; emptied groups dropped on both sides before each burst"
        },
        rows.len(),
        args.load_seconds
    );
    let _ = writeln!(
        o,
        "| burst | side | start → firing POST | − for − group_wait | end → resolved POST | start → 1st sample | start → detectable | detectable → activeAt | activeAt → POST − for − group_wait |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for b in rows {
        for r in &b.sides {
            let _ = writeln!(
                o,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                b.index,
                r.side.name(),
                r.fire_s,
                r.minus_for_wait(),
                r.resolve_s,
                opt(r.first_sample_s),
                opt(r.detectable_s),
                opt(r.eval_lag()),
                opt(r.notify_lag()),
            );
        }
    }
    let mut med = Vec::new();
    for side in [Side::Ngxprobe, Side::Peer] {
        let pick = |f: &dyn Fn(&SideResult) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = rows
                .iter()
                .flat_map(|b| b.sides.iter())
                .filter(|r| r.side == side)
                .filter_map(f)
                .collect();
            (!v.is_empty()).then(|| median(&v))
        };
        let m = [
            pick(&|r| Some(r.fire_s)),
            pick(&|r| Some(r.minus_for_wait())),
            pick(&|r| Some(r.resolve_s)),
            pick(&|r| r.first_sample_s),
            pick(&|r| r.detectable_s),
            pick(&|r| r.eval_lag()),
            pick(&|r| r.notify_lag()),
        ];
        let _ = writeln!(
            o,
            "| **median** | **{}** | **{}** | **{}** | **{}** | {} | {} | {} | {} |",
            side.name(),
            opt(m[0]),
            opt(m[1]),
            opt(m[2]),
            opt(m[3]),
            opt(m[4]),
            opt(m[5]),
            opt(m[6]),
        );
        med.push(m);
    }
    let (n, p) = (&med[0], &med[1]);
    let _ = writeln!(
        o,
        "\nAll times in seconds. \"− for − group_wait\" = (load start → firing POST) − 2 s − 1 s, \
         the time the pipeline itself adds (goal for ngxprobe ≤ 0.3 s; the peer stack is \
         expected around 1.7 s). Median: ngxprobe {} s ({}), peer {} s. It splits into \
         start → detectable (the first sample at which rate[5s] > 100 — an instant query at \
         that sample's timestamp), detectable → activeAt (when an evaluation first used that \
         sample) and activeAt → POST − for − group_wait (rule → notifier → webhook).",
        opt(n[1]),
        match n[1] {
            Some(x) if x <= 0.3 => "goal met",
            Some(_) => "goal NOT met",
            None => "no data",
        },
        opt(p[1]),
    );
    let _ = writeln!(
        o,
        "\nWhat bounds ngxprobe's latency: the counters are exact in the kernel at once and \
         the rules read them live (the store's history plus the probes' current values), so \
         the condition is seen at the first evaluation (every 250 ms) after the live counter \
         has risen enough for rate(...[5s]) to exceed 100/s — at 1000 req/s that takes \
         ~0.5 s of load by itself (the extrapolated rate over [5s] grows by ~200/s per \
         second of load). The store columns (start → detectable, from the 1 s samples) show \
         when a store-only evaluation could first have seen it (median {} s); detectable → \
         activeAt (median {} s) is negative when the live read got there first. From \
         activeAt on the rest is for + group_wait with ~no overhead (median {} s).",
        opt(n[4]),
        opt(n[5]),
        opt(n[6]),
    );
    let _ = writeln!(
        o,
        "\nResolution: rate(...[5s]) stays > 100 until the window holds no loaded sample, \
         i.e. ~{RANGE_S} s after the load ends plus the same sampling/evaluation alignment; \
         the resolved notification then goes out at the group's next group_interval \
         ({GROUP_INTERVAL_S} s) flush."
    );
    o
}

// ---------------------------------------------------------------- load

fn run_load(args: &AlertLatencyArgs, port: u16) -> Result<u64> {
    let dur = Duration::from_secs(args.load_seconds);
    if let Some(c) = args.wrk_connections {
        let out = Command::new("wrk")
            .args([
                "-t1".to_string(),
                format!("-c{c}"),
                format!("-d{}s", args.load_seconds),
                format!("http://127.0.0.1:{port}/"),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("unexpected wrk output:\n{text}"))?;
        return Ok(n);
    }
    paced_load(port, args.rps.max(1), dur)
}

/// GET / over one keep-alive connection at `rps` requests per second.
fn paced_load(port: u16, rps: u32, dur: Duration) -> Result<u64> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let start = Instant::now();
    let step = Duration::from_secs_f64(1.0 / rps as f64);
    let max = (rps as u64) * dur.as_secs() + rps as u64;
    let mut n = 0u64;
    while n < max {
        let due = start + step * (n as u32);
        let now = Instant::now();
        if now >= start + dur {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        w.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut len = None;
        for _ in 0..100 {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("nginx closed the connection");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let len = len.ok_or_else(|| anyhow!("response without Content-Length"))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        n += 1;
        if n.is_multiple_of(256) {
            check_interrupted()?;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------- HTTP API

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    let (code, body) = http_get(port, path, Duration::from_secs(5))?;
    if code != 200 {
        bail!("GET 127.0.0.1:{port}{path}: {code} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

/// Raw samples (ms, value) of `sel` over the last `secs` s (Prometheus API).
fn range_samples(port: u16, sel: &str, secs: u32) -> Result<Vec<(i64, f64)>> {
    let q = format!("{sel}[{secs}s]");
    let v = get_json(port, &format!("/api/v1/query?query={}", url_encode(&q)))?;
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        for p in s["values"].as_array().into_iter().flatten() {
            let t = p[0].as_f64().unwrap_or(0.0);
            let x: f64 = p[1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
            out.push(((t * 1000.0).round() as i64, x));
        }
    }
    out.sort_by_key(|p| p.0);
    Ok(out)
}

/// After `start_ms`: the first sample's timestamp, and the first sample at
/// which `rate(sel[5s]) > 100` (an instant query at that sample's timestamp,
/// i.e. what an evaluation right after the sample would see).
fn first_detectable(port: u16, sel: &str, start_ms: i64) -> Result<Option<(i64, Option<i64>)>> {
    let after: Vec<i64> = range_samples(port, sel, 120)?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t > start_ms)
        .take(8)
        .collect();
    let Some(&first) = after.first() else {
        return Ok(None);
    };
    let q = url_encode(&format!("rate({sel}[5s]) > 100"));
    for t in after {
        let v = get_json(
            port,
            &format!("/api/v1/query?query={q}&time={}.{:03}", t / 1000, t % 1000),
        )?;
        if v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
            return Ok(Some((first, Some(t))));
        }
    }
    Ok(Some((first, None)))
}

/// A gauge from a /metrics page (sum over its series).
fn metric(port: u16, name: &str) -> Result<f64> {
    let (code, body) = http_get(port, "/metrics", Duration::from_secs(5))?;
    if code != 200 {
        bail!("GET /metrics: {code}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn our_alerts(port: u16, conf: Option<&str>) -> Result<Vec<serde_json::Value>> {
    let v = get_json(port, "/api/v1/alerts")?;
    Ok(v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "WebServerConnectivity")
        .filter(|a| conf.is_none_or(|c| a["labels"]["conf_path"] == c))
        .cloned()
        .collect())
}

fn active_alerts(port: u16, conf: Option<&str>) -> Result<usize> {
    Ok(our_alerts(port, conf)?.len())
}

fn alert_active_at(port: u16, conf: Option<&str>) -> Result<Option<i64>> {
    Ok(our_alerts(port, conf)?
        .first()
        .and_then(|a| a["activeAt"].as_str().and_then(parse_rfc3339_ms)))
}

/// `2026-11-21T08:05:16.474Z` (or with a numeric offset) → Unix ms.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, dd): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let mut c = clock.split(':');
    let h: i64 = c.next()?.parse().ok()?;
    let mi: i64 = c.next()?.parse().ok()?;
    let sec: f64 = c.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 - offset_s;
    Some(secs * 1000 + (sec * 1000.0).round() as i64)
}

// ---------------------------------------------------------------- processes

fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<ProcGuard> {
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    ProcGuard::spawn(name, cmd)
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn check_procs(procs: &mut [ProcGuard], dir: &Path) -> Result<()> {
    for p in procs.iter_mut() {
        if let Some(st) = p.try_wait()? {
            let log = match p.name.as_str() {
                "prometheus-nginx-exporter" => "exporter.log",
                "alertmanager" => "alertmanager.log",
                "prometheus" => "prometheus.log",
                _ => "ngxprobe.log",
            };
            bail!(
                "{} exited ({}):\n{}",
                p.name,
                util::describe(st),
                tail(&dir.join(log), 20)
            );
        }
    }
    Ok(())
}

fn wait_ok(procs: &mut [ProcGuard], what: &str, port: u16, path: &str, dir: &Path) -> Result<()> {
    wait_until(&format!("{what} GET {path} == 200"), 60, || {
        check_procs(procs, dir)?;
        Ok(matches!(http_get(port, path, Duration::from_secs(2)), Ok((200, _))))
    })
}

/// Polls `f` every 100 ms for at most `secs` s.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        check_interrupted()?;
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.to_string().contains("exited") => return Err(e),
            Err(e) => last = format!("{e:#}"),
        }
        sleep(Duration::from_millis(100))?;
    }
    bail!("timed out after {secs} s waiting for {what} {last}")
}

// ---------------------------------------------------------------- nginx

struct Nginx {
    _guard: ProcGuard,
    port: u16,
    conf: String,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let port = util::free_port()?;
        for sub in ["html", "logs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("html/index.html"),
            "<!DOCTYPE html><html><body><p>ngxprobe alert-latency bench</p></body></html>\n",
        )?;
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                r#"# written by `cargo xtask bench alert-latency`
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
        location = /stub {{ stub_status; }}
    }}
}}
"#
            ),
        )?;
        let conf_s = conf.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?.to_string();
        let mut guard = spawn_logged(
            "nginx",
            Command::new(bin)
                .arg("-p")
                .arg(dir)
                .args(["-c", &conf_s, "-e"])
                .arg(dir.join("logs/error.log")),
            &dir.join("logs/nginx.out"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = guard.try_wait()? {
                bail!(
                    "nginx exited ({}):\n{}",
                    util::describe(st),
                    tail(&dir.join("logs/error.log"), 20)
                );
            }
            let workers = util::children_of(guard.pid());
            if !workers.is_empty() && matches!(http_get(port, "/stub", Duration::from_secs(2)), Ok((200, _))) {
                // Workers are killed by PID too if they outlive the master.
                guard.extra = workers;
                break;
            }
            if Instant::now() > deadline {
                bail!("nginx on 127.0.0.1:{port} not serving after 15 s");
            }
            sleep(Duration::from_millis(50))?;
        }
        Ok(Nginx {
            _guard: guard,
            port,
            conf: conf_s,
        })
    }
}

// ---------------------------------------------------------------- receiver

/// A POST received by the local webhook server.
#[derive(Clone)]
struct Post {
    seq: usize,
    at: Instant,
    path: String,
    body: serde_json::Value,
}

impl Post {
    fn att(&self, k: &str) -> String {
        self.body["attachments"][0][k].as_str().unwrap_or_default().to_string()
    }
    fn title(&self) -> String {
        self.att("title")
    }
    fn fallback(&self) -> String {
        self.att("fallback")
    }
    fn firing(&self) -> bool {
        self.fallback().starts_with("[FIRING")
    }
    fn resolved(&self) -> bool {
        self.fallback().starts_with("[RESOLVED")
    }
}

struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2) = (posts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = c else { continue };
                let p3 = p2.clone();
                // One thread per connection, so an idle keep-alive connection
                // never delays (and mis-timestamps) another request.
                std::thread::spawn(move || {
                    let _ = serve_conn(c, &p3);
                });
            }
        });
        Ok(Receiver {
            addr,
            posts,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn count(&self) -> usize {
        self.posts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn since(&self, from: usize) -> Vec<Post> {
        self.posts.lock().unwrap_or_else(|e| e.into_inner())[from..].to_vec()
    }

    fn wait(
        &self,
        what: &str,
        from: usize,
        deadline: Instant,
        pred: impl Fn(&Post) -> bool,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Post> {
        let mut n = 0u32;
        loop {
            if let Some(p) = self.since(from).into_iter().find(|p| pred(p)) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                let got: Vec<String> = self
                    .since(from)
                    .iter()
                    .map(|p| format!("{} {}", p.path, p.body))
                    .collect();
                bail!("timed out waiting for {what}; received since: {got:#?}");
            }
            n += 1;
            if n.is_multiple_of(20) {
                check()?;
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(c: TcpStream, posts: &Mutex<Vec<Post>>) -> Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    for _ in 0..1000 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        let mut close = line.contains("HTTP/1.0");
        for _ in 0..200 {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0; len.min(1 << 20)];
        r.read_exact(&mut body)?;
        let at = Instant::now();
        {
            let mut g = posts.lock().unwrap_or_else(|e| e.into_inner());
            let seq = g.len();
            g.push(Post {
                seq,
                at,
                path,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            });
        }
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("2026-11-21T08:05:16.474Z"), Some(1_795_248_316_474));
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T09:05:16.474+01:00"),
            Some(1_795_248_316_474)
        );
    }

    #[test]
    fn seed_receiver_only_changes_api_url() {
        let r = receivers("http://127.0.0.1:1/x");
        assert!(r.contains("api_url: 'http://127.0.0.1:1/x'"));
        assert_eq!(
            r.replace(
                "http://127.0.0.1:1/x",
                "https://hooks.slack.com/services/your/slack/webhook/url"
            ),
            SEED_RECEIVERS
        );
    }
}
