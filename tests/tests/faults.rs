//! Clear errors, never a crash: missing capabilities, bad config, nginx
//! stopping under the agent. Each test checks what an operator would see.
use anyhow::{Result, bail};
use ngxprobe_e2e::agent::binary_path;
use ngxprobe_e2e::util::{ChildGuard, Poll, TempDir, free_port, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the agent binary with `args` (optionally through `setpriv`) and
/// returns (exit code, stdout+stderr), killing it if it outlives `limit`.
fn run_agent(prefix: &[&str], args: &[&str], limit: Duration) -> Result<(Option<i32>, String)> {
    let dir = TempDir::new("agent-run")?;
    let log = dir.path().join("out.log");
    let f = std::fs::File::create(&log)?;
    let bin = binary_path();
    let mut cmd = if prefix.is_empty() {
        Command::new(&bin)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(&bin);
        c
    };
    cmd.args(args).stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    let mut child = ChildGuard::spawn(&mut cmd, "ngxprobe")?;
    let status = child.wait_timeout(limit)?;
    let out = std::fs::read_to_string(&log)?;
    Ok((status.code(), out))
}

#[test]
fn unprivileged_agent_names_each_missing_capability() {
    let _g = guard("unprivileged_agent_names_each_missing_capability");
    let port = free_port().unwrap().to_string();
    let (code, out) = run_agent(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        &["--web.listen-address", &format!("127.0.0.1:{port}")],
        Duration::from_secs(20),
    )
    .unwrap();
    assert_ne!(code, Some(0), "an unprivileged agent must refuse to start:\n{out}");
    assert!(code.is_some(), "killed by a signal (crash?):\n{out}");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(out.contains(cap), "{cap} not named in:\n{out}");
    }
    assert!(!out.contains("panicked"), "panic instead of an error:\n{out}");
}

#[test]
fn bad_config_names_file_line_and_field_and_does_not_start() {
    let _g = guard("bad_config_names_file_line_and_field_and_does_not_start");
    let dir = TempDir::new("badcfg").unwrap();
    let cfg = dir.path().join("ngxprobe.yml");
    std::fs::write(&cfg, "web:\n  listen_address: \":0\"\ndiscovery:\n  intervall: 2s\n").unwrap();
    let cfg_s = cfg.to_string_lossy().to_string();
    let (code, out) = run_agent(&[], &["--config", &cfg_s], Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(2), "bad config must stop the agent with exit 2:\n{out}");
    assert!(
        out.contains(&format!("{cfg_s}:4:3")) && out.contains("discovery.intervall"),
        "error does not name file:line:col and field:\n{out}"
    );
    // `check config` agrees, and accepts the corrected file.
    let (code, out) = run_agent(&[], &["check", "config", &cfg_s], Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(1), "{out}");
    std::fs::write(&cfg, "discovery:\n  interval: 2s\n").unwrap();
    let (code, out) = run_agent(&[], &["check", "config", &cfg_s], Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// nginx exits under the agent: nginx_up goes to 0 for that instance, the
/// agent keeps serving, and the stop is logged once, not on every scan.
#[test]
fn nginx_stopping_under_the_agent() {
    let _g = guard("nginx_stopping_under_the_agent");
    let agent = Agent::start().unwrap();
    let nginx = Nginx::start(NginxOptions::default()).unwrap();
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).unwrap();
    drop(nginx); // kills master and workers by PID
    let scans_at_stop = poll(
        "nginx_up == 0 after nginx exits",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            match s.value("nginx_up", &conf)? {
                Some(0.0) => Ok(Poll::Ready(scans(&s))),
                other => Ok(Poll::Pending(format!("nginx_up = {other:?}"))),
            }
        },
    )
    .unwrap();
    // Let a few more scans pass, then the stop must still be logged once.
    poll(
        "three more discovery scans",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let n = scans(&agent.scrape()?);
            Ok(if n >= scans_at_stop + 3.0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{n}"))
            })
        },
    )
    .unwrap();
    let log = agent.log_tail(200);
    let stops = log
        .lines()
        .filter(|l| l.contains("nginx instance stopped") && l.contains(&conf))
        .count();
    assert_eq!(stops, 1, "stop should be logged exactly once:\n{log}");
    if log.contains("panicked") {
        bail_log(&log);
    }
}

fn scans(s: &ngxprobe_e2e::metrics_text::Scrape) -> f64 {
    s.samples
        .iter()
        .find(|x| x.name == "ngxprobe_discovery_scans_total")
        .map(|x| x.value)
        .unwrap_or(0.0)
}

fn bail_log(log: &str) {
    let r: Result<()> = (|| bail!("agent panicked:\n{log}"))();
    r.unwrap();
}
