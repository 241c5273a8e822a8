//! A hostile neighbour on the node: 300 processes titled like nginx masters
//! (a copy of sleep named nginx each, argv[0] set to the title: newlines, ANSI
//! escapes, Slack markup, 10 KB titles) and real nginx binaries started with
//! hostile paths. Real instances started after the flood are still tracked
//! and their counters stay exact (stub_status is the oracle); the fakes are
//! refused and counted; the agent stays up, /metrics stays small and fast,
//! the log is neither forged nor flooded.
use ngxprobe_e2e::agent::AgentOptions;
use ngxprobe_e2e::clients::WrkRun;
use ngxprobe_e2e::measure::{self, Monitor, Target, assert_all};
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::util::{ChildGuard, Poll, TempDir, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FAKES: usize = 300;
/// Marker in every fake's title, to find any of them in /metrics.
const MARK: &str = "ngxflood";

/// Other tests on this machine may run nginx in the host's network namespace
/// too: a per-namespace cap that never refuses ours (caps are tested with
/// fake /proc trees in the unit tests).
const CONFIG: &str = "discovery:\n  max_instances_per_netns: 64\n";

/// The flood: copies of sleep named nginx, one per process, each titled like
/// an nginx master (or worker). Killed by PID on drop.
struct Flood {
    procs: Vec<ChildGuard>,
    _dir: TempDir,
}

fn title(i: usize) -> String {
    match i % 6 {
        0 => format!("nginx: master process /usr/sbin/nginx -c /tmp/{MARK}{i}.conf"),
        1 => format!("nginx: master process -c /tmp/{MARK}{i}\n2026-01-01T00:00:00Z  INFO ngxprobe: forged {i}"),
        2 => format!("nginx: master process -c /tmp/{MARK}\x1b[2J\x1b[31m{i}"),
        3 => format!("nginx: master process -c /tmp/{MARK}<!channel><http://evil|x>{i}"),
        4 => format!("nginx: master process -c /tmp/{MARK}{}{i}", "A".repeat(10_000)),
        _ => format!("nginx: worker process {MARK}{i}"),
    }
}

impl Flood {
    fn start() -> Flood {
        let dir = TempDir::new("flood").expect("temp dir");
        let mut procs = Vec::with_capacity(FAKES);
        for i in 0..FAKES {
            // One file per process: every one is a distinct binary to examine.
            let bin_dir = dir.path().join(i.to_string());
            std::fs::create_dir(&bin_dir).expect("mkdir");
            let bin = bin_dir.join("nginx");
            std::fs::copy("/bin/sleep", &bin).expect("copy sleep");
            let mut cmd = Command::new(&bin);
            cmd.arg0(title(i))
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            procs.push(ChildGuard::spawn(&mut cmd, "fake nginx").expect("spawn fake"));
        }
        Flood { procs, _dir: dir }
    }
}

fn refused(s: &Scrape, reason: &str) -> f64 {
    s.sum_where("ngxprobe_discovery_refused_total", "reason", reason)
}

/// Scrapes /metrics, failing if it takes a second or more.
fn timed_scrape(agent: &Agent, worst: &mut Duration) -> Scrape {
    let t0 = Instant::now();
    let s = agent.scrape().expect("scrape /metrics");
    let took = t0.elapsed();
    *worst = (*worst).max(took);
    assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
    s
}

/// Bytes of /metrics, without the per-request histograms (`http_server_*`):
/// those grow with the real instances' traffic (one series per label set
/// the load produces), which says nothing about the fakes.
fn metrics_bytes(agent: &Agent) -> usize {
    let (status, body) = ngxprobe_e2e::clients::http_get(agent.addr(), "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            !l.starts_with("http_server_")
                && !l.starts_with("# HELP http_server_")
                && !l.starts_with("# TYPE http_server_")
        })
        .map(|l| l.len() + 1)
        .sum()
}

#[test]
fn flood_of_fake_nginx_masters() {
    let _g = guard("flood_of_fake_nginx_masters");
    let mut agent = Agent::start_opts(&AgentOptions {
        config: Some(CONFIG.into()),
        ..Default::default()
    })
    .unwrap();
    let mut worst = Duration::ZERO;
    let before = timed_scrape(&agent, &mut worst);
    let bytes_before = metrics_bytes(&agent);

    let t0 = Instant::now();
    let flood = Flood::start();
    eprintln!("[e2e] {} fake masters started in {:?}", flood.procs.len(), t0.elapsed());
    let base_not_nginx = refused(&before, "not_nginx");
    let s = poll(
        "every fake refused as not_nginx",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let s = timed_scrape(&agent, &mut worst);
            let n = refused(&s, "not_nginx") - base_not_nginx;
            Ok(if n >= FAKES as f64 {
                Poll::Ready(s)
            } else {
                Poll::Pending(format!("{n} refused"))
            })
        },
    )
    .unwrap();
    eprintln!(
        "[e2e] all fakes refused after {:?}; scan took {:.1} ms",
        t0.elapsed(),
        s.sum("ngxprobe_discovery_duration_seconds") * 1e3
    );

    // Real nginx started after the flood: tracked. One with a path that has
    // Slack markup in it (a legal path: tracked, escaped by the templates),
    // two with paths no real nginx has (refused).
    let a = Nginx::start(NginxOptions {
        tag: "real-a".into(),
        ..Default::default()
    })
    .unwrap();
    let b = Nginx::start(NginxOptions {
        tag: "real-b<!channel>".into(),
        worker_processes: 2,
        ..Default::default()
    })
    .unwrap();
    let evil_conf = Nginx::start(NginxOptions {
        tag: "evil\x1b[2J".into(),
        ..Default::default()
    })
    .unwrap();
    let bin_dir = TempDir::new("evil-bin").unwrap();
    let evil_bin = bin_dir.path().join("bin\u{202e}x");
    std::fs::create_dir(&evil_bin).unwrap();
    let evil_bin = evil_bin.join("nginx");
    std::fs::copy(ngxprobe_e2e::nginx::nginx_bin(), &evil_bin).unwrap();
    let evil_exe = Nginx::start(NginxOptions {
        tag: "evil-exe".into(),
        bin: Some(evil_bin),
        ..Default::default()
    })
    .unwrap();
    agent.wait_instance_up(&a.conf_label()).unwrap();
    agent.wait_instance_up(&b.conf_label()).unwrap();
    let s = poll(
        "both hostile-path nginx refused as bad_label",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = timed_scrape(&agent, &mut worst);
            let n = refused(&s, "bad_label") - refused(&before, "bad_label");
            Ok(if n >= 2.0 {
                Poll::Ready(s)
            } else {
                Poll::Pending(format!("{n} refused"))
            })
        },
    )
    .unwrap();
    for refused_one in [&evil_conf, &evil_exe] {
        let conf = refused_one.conf_label();
        assert!(!s.conf_paths().contains(&conf), "{conf:?} exported");
    }
    assert!(
        s.samples
            .iter()
            .all(|x| x.labels.iter().all(|(_, v)| !v.contains(MARK))),
        "a fake's title reached /metrics"
    );
    let info = s
        .samples
        .iter()
        .find(|x| x.name == "ngxprobe_nginx_instance_info" && x.label("conf_path") == Some(a.conf_label().as_str()))
        .expect("instance info of A");
    assert!(
        info.label("version").is_some_and(|v| v.starts_with("nginx/")),
        "{info:?}"
    );

    // The real instances' counters are exact while the flood runs.
    let targets = [Target { nginx: &a, held: 0 }, Target { nginx: &b, held: 0 }];
    let base = measure::begin(&agent, &targets).unwrap();
    let mon = Monitor::start(agent.addr(), vec![a.conf_label(), b.conf_label()]);
    let wa = WrkRun::spawn(&["-t1", "-c10", "-d2s", &a.url("/")], Duration::from_secs(2)).unwrap();
    let wb = WrkRun::spawn(&["-t1", "-c5", "-d2s", &b.url("/missing")], Duration::from_secs(2)).unwrap();
    // Processes vanish between listing /proc and reading their files: half
    // the flood is killed (by PID, one at a time) while the scans and the
    // load run. A vanished process is skipped, never a failed scan.
    let scans_before = timed_scrape(&agent, &mut worst).sum("ngxprobe_discovery_scans_total");
    let mut flood = flood;
    flood.procs.truncate(FAKES / 2);
    let (ra, rb) = (wa.wait().unwrap(), wb.wait().unwrap());
    let mres = mon.stop();
    let s = timed_scrape(&agent, &mut worst);
    assert!(
        s.sum("ngxprobe_discovery_scans_total") > scans_before,
        "no discovery scan completed while the fakes vanished"
    );
    assert_eq!(
        refused(&s, "not_nginx"),
        refused(&before, "not_nginx") + FAKES as f64,
        "a vanishing fake was refused again (or a survivor was counted twice)"
    );
    let rep = measure::finish(&agent, base, &targets, "two real instances beside 300 fake masters").unwrap();
    assert_all(&rep, &mres);
    assert!(ra.requests >= 100 && rb.requests >= 50);

    // Bounded: /metrics grew by two instances' series, not by 300 fakes';
    // the log names each refusal once (at most 20 a scan), nothing forged.
    let bytes_after = metrics_bytes(&agent);
    eprintln!(
        "[e2e] /metrics {bytes_before} → {bytes_after} bytes; slowest scrape {worst:?}; agent RSS {} kB",
        ngxprobe_e2e::util::rss_kib(agent.pid()).0
    );
    assert!(
        bytes_after < bytes_before + 64 * 1024,
        "/metrics grew from {bytes_before} to {bytes_after} bytes"
    );
    assert!(agent.try_wait().unwrap().is_none(), "agent exited");
    let log = std::fs::read(agent.log_path()).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(!log.contains('\x1b'), "raw escape sequence in the agent log");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "forged log line"
    );
    let not_tracked = log.lines().filter(|l| l.contains("not tracked")).count();
    assert!(
        (20..=200).contains(&not_tracked),
        "{not_tracked} 'not tracked' lines for {FAKES} fakes (each once, at most 20 a scan)"
    );
    assert!(log.len() < 256 * 1024, "agent log is {} bytes", log.len());
    drop(flood);
    drop(agent);
}
