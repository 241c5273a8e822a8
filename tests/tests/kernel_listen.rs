//! Accept-queue diagnostics per listener against the kernel's own numbers.
//!
//! nginx runs in a network namespace the test creates (so the namespace's
//! /proc/net/netstat counts nothing but this nginx) with `backlog=4`; the
//! agent runs in the host namespace and must reach it with setns. With the
//! worker stopped (SIGSTOP) a bounded burst of connects from inside the
//! namespace fills the accept queue and overflows it:
//! * `ngxprobe_listen_queue_length` == `ss`'s Recv-Q, `ngxprobe_listen_queue_max`
//!   == Send-Q == 4, `ngxprobe_listen_syn_recv` == `ss state syn-recv` rows
//!   (0 during the burst; > 0 at the end, when the listener's SYN-ACKs are
//!   dropped by nftables so handshakes stay half-open);
//! * `ngxprobe_listen_drops_total` (sk_drops, summed over the instance's
//!   listeners) == the namespace's TcpExt ListenDrops: both are incremented
//!   by the same tcp_listendrop() call, so once the drops stop they are equal
//!   exactly; ListenOverflows counts only the overflow cases among them (<=),
//!   and `ngxprobe_netns_listen_overflows_total` == ListenOverflows,
//!   `ngxprobe_netns_syncookies_sent_total` == SyncookiesSent (with a backlog
//!   of 4 the SYN queue, whose limit is the backlog too, fills with the
//!   half-open handshakes and the kernel answers with cookies: > 0);
//! * the default alert NginxListenerDroppingConnections fires;
//! * after SIGCONT the queue drains to 0 in both views;
//! * `ngxprobe diagnose` names the listener, its drops and its full queue;
//! * nginx restarted (new listening sockets, sk_drops from 0): the counter
//!   does not go back, and after a second overflow still equals ListenDrops.
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::netns::{NetCounters, Netns};
use ngxprobe_e2e::nginx::{Nginx, NginxOptions, nginx_bin};
use ngxprobe_e2e::util::{self, ChildGuard, Poll, ResumeOnDrop, poll};
use ngxprobe_e2e::{Agent, guard};
use std::process::Stdio;
use std::time::{Duration, Instant};

const BACKLOG: u64 = 4;
const BURST: usize = 12;

/// The sample `name{conf_path, listen_address}`, if present.
fn listen_value(s: &Scrape, name: &str, conf: &str, addr: &str) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.name == name && x.label("conf_path") == Some(conf) && x.label("listen_address") == Some(addr))
        .map(|x| x.value)
}

/// Sum of `name` over every listener of the instance.
fn instance_sum(s: &Scrape, name: &str, conf: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.name == name && x.label("conf_path") == Some(conf))
        .map(|x| x.value)
        .sum()
}

#[test]
fn accept_queue_overflow_matches_ss_and_netns_counters() {
    let _g = guard("accept_queue_overflow_matches_ss_and_netns_counters");
    if util::require_tool("ss", "apt-get install iproute2").is_none() {
        return;
    }
    let t0 = Instant::now();
    let ns = Netns::create("listen").expect("create netns");
    let base = ns.counters().expect("netns counters");
    let n = Nginx::start(NginxOptions {
        tag: "listen".into(),
        big_file: false,
        netns: Some(ns.handle()),
        backlog: Some(BACKLOG as u32),
        ..Default::default()
    })
    .expect("start nginx in the netns");
    let agent = Agent::start().expect("start ngxprobe");
    let conf = n.conf_label();
    agent
        .wait_instance_up(&conf)
        .expect("agent sees the nginx in the other netns");
    let port = n.main_port();
    let v4 = format!("127.0.0.1:{port}");

    // Idle: the limit is the backlog, nothing queued, nothing dropped.
    poll(
        "idle listener in /metrics",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            let got = [
                "ngxprobe_listen_queue_length",
                "ngxprobe_listen_queue_max",
                "ngxprobe_listen_drops_total",
            ]
            .map(|m| listen_value(&s, m, &conf, &v4));
            Ok(if got == [Some(0.0), Some(BACKLOG as f64), Some(0.0)] {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{got:?}"))
            })
        },
    )
    .unwrap();

    // Worker stopped, burst: while the queue is full, agent, ss and the
    // default rule are checked; then the worker resumes and the queue drains.
    let worker = n.worker_pids()[0];
    let (queued, max) = overflow_once(&ns, n.main_addr(), worker, || {
        // Full queue: agent and ss agree (ss read before and after the scrape
        // must agree too, so the three are one moment).
        let (queued, max) = poll(
            "agent's queue == ss Recv-Q, full",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let before = ns.ss_listeners(port)?;
                let s = agent.scrape()?;
                let after = ns.ss_listeners(port)?;
                let row = |v: &[ngxprobe_e2e::netns::SsListener]| v.iter().find(|l| l.local == v4).cloned();
                let (Some(b), Some(a)) = (row(&before), row(&after)) else {
                    return Ok(Poll::Pending(format!("no {v4} in ss: {after:?}")));
                };
                let len = listen_value(&s, "ngxprobe_listen_queue_length", &conf, &v4);
                let max = listen_value(&s, "ngxprobe_listen_queue_max", &conf, &v4);
                Ok(
                    if b == a && a.recv_q == BACKLOG + 1 && len == Some(a.recv_q as f64) && max == Some(a.send_q as f64)
                    {
                        Poll::Ready((a.recv_q, a.send_q))
                    } else {
                        Poll::Pending(format!("ss {b:?} / {a:?}, agent length {len:?} max {max:?}"))
                    },
                )
            },
        )
        .unwrap();
        assert_eq!(max, BACKLOG);
        eprintln!("accept queue {queued}/{max} (agent == ss)");

        // Half-open handshakes: the agent's count == ss's SYN-RECV rows.
        let syn = poll(
            "agent's SYN-RECV == ss state syn-recv",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let filter = format!("sport = :{port}");
                let count = |out: String| out.lines().filter(|l| l.contains(&format!("127.0.0.1:{port}"))).count();
                let before = count(ns.output("ss", &["-tnH", "state", "syn-recv", &filter], Duration::from_secs(5))?);
                let s = agent.scrape()?;
                let after = count(ns.output("ss", &["-tnH", "state", "syn-recv", &filter], Duration::from_secs(5))?);
                let ours = listen_value(&s, "ngxprobe_listen_syn_recv", &conf, &v4);
                Ok(if before == after && ours == Some(after as f64) {
                    Poll::Ready(after)
                } else {
                    Poll::Pending(format!("ss {before}/{after}, agent {ours:?}"))
                })
            },
        )
        .unwrap();
        eprintln!("SYN-RECV on {v4}: {syn} (agent == ss)");

        // The default rule sees the drops.
        poll(
            "NginxListenerDroppingConnections firing",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                let v = agent.get_json("/api/v1/alerts")?;
                let found = v["data"]["alerts"].as_array().into_iter().flatten().find(|a| {
                    a["labels"]["alertname"] == "NginxListenerDroppingConnections"
                        && a["labels"]["conf_path"] == conf.as_str()
                        && a["labels"]["listen_address"] == v4.as_str()
                });
                Ok(match found {
                    Some(a) if a["state"] == "firing" => Poll::Ready(()),
                    other => Poll::Pending(format!("{other:?}")),
                })
            },
        )
        .unwrap();
        (queued, max)
    });
    poll(
        "agent's queue drained",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            let len = listen_value(&s, "ngxprobe_listen_queue_length", &conf, &v4);
            Ok(if len == Some(0.0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("agent {len:?}"))
            })
        },
    )
    .unwrap();

    // Drops: once they stop, the agent's sum over the instance's listeners
    // equals the namespace's ListenDrops exactly (nginx is all that listens
    // in the namespace).
    let (ours, drops, overflows, netns_overflows, cookies) = drops_match(&agent, &ns, &base, &conf);
    assert!(overflows <= drops, "ListenOverflows {overflows} > ListenDrops {drops}");
    eprintln!(
        "drops: agent {ours}, netns ListenDrops +{drops}, ListenOverflows +{overflows} (agent's netns-wide {netns_overflows:?}), SYN cookies (agent == netns) {cookies:?}; \
         test took {:?}",
        t0.elapsed()
    );
    // Only the burst's listener dropped anything.
    let s = agent.scrape().unwrap();
    assert_eq!(listen_value(&s, "ngxprobe_listen_drops_total", &conf, &v4), Some(ours));

    // `ngxprobe diagnose` names the listener, its exact drops and the full
    // queue (from the store: polled until the last sample is in).
    let want = format!(
        "PROBLEM: listener {v4} of nginx {conf} dropped {ours} connection attempts in the last 5m: accept queue {queued}/{max} (full) at its peak"
    );
    let report = agent.diagnose_until("5m", std::slice::from_ref(&want)).unwrap();
    eprintln!("{report}");
    assert!(
        report.contains("alert NginxListenerDroppingConnections firing"),
        "{report}"
    );

    // nginx restarted (stopped, started again with the same config): new
    // listening sockets whose sk_drops start at 0. The agent's counter keeps
    // what the old sockets dropped and adds the new ones': after a second
    // overflow it still equals the namespace's ListenDrops, which counts
    // across sockets too.
    let old_inodes = listen_inodes(&ns, port).unwrap();
    // SAFETY: kill(2) of our nginx master: SIGQUIT, graceful shutdown.
    unsafe { libc::kill(n.master_pid(), libc::SIGQUIT) };
    poll(
        "nginx gone from the namespace",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let left = ns.pids()?;
            Ok(if left.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{left:?}"))
            })
        },
    )
    .unwrap();
    let mut cmd = ns.command(nginx_bin()).unwrap();
    cmd.arg("-p")
        .arg(n.dir())
        .arg("-c")
        .arg(n.conf_path())
        .arg("-e")
        .arg(n.dir().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let master2 = ChildGuard::spawn(&mut cmd, "nginx (restarted)").unwrap();
    let worker2 = poll(
        "restarted nginx listening",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let inodes = listen_inodes(&ns, port)?;
            let workers: Vec<i32> = util::children_of(master2.pid())
                .into_iter()
                .filter(|p| util::cmdline(*p).contains("worker process"))
                .collect();
            Ok(match workers.first() {
                Some(w) if !inodes.is_empty() && inodes.iter().all(|i| !old_inodes.contains(i)) => Poll::Ready(*w),
                _ => Poll::Pending(format!(
                    "listeners {inodes:?} (old {old_inodes:?}), workers {workers:?}"
                )),
            })
        },
    )
    .unwrap();
    // Two full discovery cycles after the new sockets exist: the agent has
    // read them.
    let scans = |s: &Scrape| s.sum("ngxprobe_discovery_scans_total");
    let from = scans(&agent.scrape().unwrap());
    poll(
        "two discovery cycles",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            Ok(if scans(&s) >= from + 2.0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{} scans", scans(&s)))
            })
        },
    )
    .unwrap();
    let s = agent.scrape().unwrap();
    assert_eq!(
        listen_value(&s, "ngxprobe_listen_drops_total", &conf, &v4),
        Some(ours),
        "the counter does not go back when the socket is recreated"
    );
    overflow_once(&ns, n.main_addr(), worker2, || ());
    let (ours2, drops2, ..) = drops_match(&agent, &ns, &base, &conf);
    assert!(ours2 > ours, "new drops counted on top: {ours2} after {ours}");
    eprintln!(
        "after restart and a second overflow: agent {ours2}, netns ListenDrops +{drops2}; test took {:?}",
        t0.elapsed()
    );

    // Half-open handshakes: the listener's SYN-ACKs dropped on the way out
    // (nftables in the namespace), so connects stay in SYN-RECV; once the
    // SYN queue holds `backlog` of them the kernel answers with SYN cookies.
    // Both counts are > 0 here and the agent equals ss and SyncookiesSent.
    let nft = |args: &[&str]| ns.output("nft", args, Duration::from_secs(5));
    let p = port.to_string();
    if let Err(e) = nft(&["add", "table", "inet", "ngxprobe_e2e"])
        .and_then(|_| {
            nft(&[
                "add",
                "chain",
                "inet",
                "ngxprobe_e2e",
                "out",
                "{ type filter hook output priority 0; }",
            ])
        })
        .and_then(|_| {
            nft(&[
                "add",
                "rule",
                "inet",
                "ngxprobe_e2e",
                "out",
                "tcp",
                "sport",
                &p,
                "tcp",
                "flags",
                "&",
                "(syn|ack)",
                "==",
                "(syn|ack)",
                "drop",
            ])
        })
    {
        util::skip_or_fail(&format!("half-open case: no nftables in the namespace: {e:#}"));
        return;
    }
    let half_open = ns.connect_burst(n.main_addr(), 2 * BACKLOG as usize).expect("connects");
    let (syn, cookies) = poll(
        "agent's SYN-RECV == ss and SYN cookies == SyncookiesSent, both > 0",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let filter = format!("sport = :{port}");
            let count = |out: String| out.lines().filter(|l| l.contains(&v4)).count();
            let c0 = ns.counters()?;
            let ss0 = count(ns.output("ss", &["-tnH", "state", "syn-recv", &filter], Duration::from_secs(5))?);
            let s = agent.scrape()?;
            let ss1 = count(ns.output("ss", &["-tnH", "state", "syn-recv", &filter], Duration::from_secs(5))?);
            let c1 = ns.counters()?;
            let ours = listen_value(&s, "ngxprobe_listen_syn_recv", &conf, &v4);
            let cookies = s.value("ngxprobe_netns_syncookies_sent_total", &conf)?;
            let netns_cookies = c1.get("TcpExt.SyncookiesSent")?;
            Ok(
                if ss0 == ss1
                    && ss1 > 0
                    && ours == Some(ss1 as f64)
                    && c0 == c1
                    && netns_cookies > 0
                    && cookies == Some(netns_cookies as f64)
                {
                    Poll::Ready((ss1, netns_cookies))
                } else {
                    Poll::Pending(format!(
                        "ss SYN-RECV {ss0}/{ss1}, agent {ours:?}; SYN cookies agent {cookies:?}, netns {netns_cookies}"
                    ))
                },
            )
        },
    )
    .unwrap();
    drop(half_open);
    eprintln!("half-open: SYN-RECV {syn} (agent == ss), SYN cookies {cookies} (agent == netns)");
}

/// Polls until the namespace's counters are still and the agent's drops
/// (summed over the instance's listeners) equal ListenDrops since `base`,
/// its netns-wide overflows equal ListenOverflows and its SYN cookies
/// SyncookiesSent. Returns (agent drops, ListenDrops, ListenOverflows,
/// agent's netns overflows, agent's SYN cookies).
fn drops_match(agent: &Agent, ns: &Netns, base: &NetCounters, conf: &str) -> (f64, i64, i64, Option<f64>, Option<f64>) {
    poll(
        "agent's drops == netns ListenDrops",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let c0 = ns.counters()?;
            let s = agent.scrape()?;
            let c1 = ns.counters()?;
            let drops = c1.delta(base, "TcpExt.ListenDrops")?;
            let overflows = c1.delta(base, "TcpExt.ListenOverflows")?;
            let ours = instance_sum(&s, "ngxprobe_listen_drops_total", conf);
            let netns_ov = s.value("ngxprobe_netns_listen_overflows_total", conf)?;
            let cookies = s.value("ngxprobe_netns_syncookies_sent_total", conf)?;
            let stable = c0 == c1;
            Ok(
                if stable
                    && drops > 0
                    && ours == drops as f64
                    && netns_ov == Some(c1.get("TcpExt.ListenOverflows")? as f64)
                    && cookies == Some(c1.get("TcpExt.SyncookiesSent")? as f64)
                {
                    Poll::Ready((ours, drops, overflows, netns_ov, cookies))
                } else {
                    Poll::Pending(format!(
                        "agent {ours}, ListenDrops +{drops}, ListenOverflows +{overflows}, agent netns overflows \
                         {netns_ov:?}, SYN cookies: agent {cookies:?}, netns {:?}",
                        c1.get("TcpExt.SyncookiesSent")
                    ))
                },
            )
        },
    )
    .unwrap()
}

/// Socket inodes of the listeners on `port` (`ss -e`'s `ino:`).
fn listen_inodes(ns: &Netns, port: u16) -> anyhow::Result<Vec<String>> {
    let out = ns.output("ss", &["-ltnHe", &format!("sport = :{port}")], Duration::from_secs(5))?;
    Ok(out
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("ino:"))
        .map(str::to_string)
        .collect())
}

/// Stops `worker`, overflows the accept queue of `addr` with a burst from
/// inside the namespace, runs `while_full`, resumes the worker (also if
/// `while_full` panics) and waits for the queue to drain.
fn overflow_once<T>(ns: &Netns, addr: std::net::SocketAddr, worker: i32, while_full: impl FnOnce() -> T) -> T {
    // SAFETY: kill(2) of our own nginx worker.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let resume = ResumeOnDrop(worker);
    let burst = ns.connect_burst(addr, BURST).expect("connect burst");
    poll(
        "accept queue full",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let l = ns.ss_listeners(addr.port())?;
            Ok(match l.iter().find(|l| l.local == addr.to_string()) {
                Some(l) if l.recv_q == BACKLOG + 1 => Poll::Ready(()),
                other => Poll::Pending(format!("{other:?}")),
            })
        },
    )
    .unwrap();
    let r = while_full();
    drop(resume);
    poll(
        "queue drained",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let l = ns.ss_listeners(addr.port())?;
            Ok(if l.iter().all(|l| l.recv_q == 0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{l:?}"))
            })
        },
    )
    .unwrap();
    drop(burst);
    r
}
