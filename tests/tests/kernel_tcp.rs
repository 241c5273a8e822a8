//! TCP health of nginx's client connections and worker health, induced for
//! real. nginx runs in a network namespace of its own and its clients in a
//! second one across a veth link, so nginx's namespace's /proc/net/snmp and
//! /proc/net/netstat count nothing but this nginx: they are the oracle.
//!
//! * retransmits: random loss on nginx's side of the link (nftables, or
//!   iptables' statistic match; this kernel has no netem) under load;
//!   ngxprobe's retransmitted segments + SYN-ACK retransmits = RetransSegs,
//!   SYN-ACK retransmits = TCPSynRetrans.
//! * resets: clients closing with SO_LINGER 0 (resets received = EstabResets)
//!   and nginx's `return 444` with `reset_timedout_connection on` (resets
//!   sent = OutRsts).
//! * timeouts: data dropped with net.ipv4.tcp_retries2=2 (closed by timeout
//!   = TCPAbortOnTimeout); a slow reader (stalled on the receive window as
//!   long as `ss -ti` says: rwnd_limited).
//! * worker crash: SIGSEGV and SIGKILL to workers are exits by signal with
//!   the right signal; a reload's exits are normal exits, not crashes; a
//!   worker OOM-killed in a memory cgroup is an exit by `oom` (the cgroup's
//!   oom_kill count).
use anyhow::{Context, Result, bail};
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::netns::{NetCounters, Netns};
use ngxprobe_e2e::nginx::{Nginx, NginxOptions};
use ngxprobe_e2e::util::{Poll, poll, skip_or_fail};
use ngxprobe_e2e::{Agent, Session, guard};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Port of the test's server on the veth address (the namespace is ours alone).
const PORT: u16 = 8080;
const MID_FILE: &str = "mid.bin";
const MID_SIZE: usize = 256 * 1024;

/// Sum of `name{conf_path, labels...}` samples.
fn metric(s: &Scrape, name: &str, conf: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.name == name && x.label("conf_path") == Some(conf))
        .filter(|x| labels.iter().all(|(k, v)| x.label(k) == Some(*v)))
        .map(|x| x.value)
        .sum()
}

/// nginx in namespace `ns_nginx` with a server on the veth address, its
/// clients in `ns_client`, the agent on the host.
struct Net {
    agent: Agent,
    nginx: Nginx,
    addr: SocketAddr,
    /// The clients' end of the link (where the loss rule drops nginx's packets).
    veth: String,
    client: Netns,
    server: Netns,
}

impl Net {
    fn start(tag: &str) -> Net {
        let server = Netns::create(&format!("{tag}s")).expect("create nginx's namespace");
        let client = Netns::create(&format!("{tag}c")).expect("create the clients' namespace");
        let pair = server.link(&client).expect("veth link");
        let addr = SocketAddr::from((pair.local_addr, PORT));
        // `root html` is the instance's own html directory (relative to its prefix).
        let extra_http = format!(
            r#"
    server {{
        listen {addr};
        server_name veth;
        reset_timedout_connection on;
        root html;
        location = /close {{
            return 444;
        }}
    }}
"#
        );
        let nginx = Nginx::start(NginxOptions {
            netns: Some(server.handle()),
            tag: tag.into(),
            extra_http,
            ..NginxOptions::default()
        })
        .expect("start nginx");
        std::fs::write(nginx.dir().join("html").join(MID_FILE), vec![b'x'; MID_SIZE]).expect("write mid.bin");
        let agent = Agent::start().expect("start ngxprobe");
        agent
            .wait_instance_up(&nginx.conf_label())
            .expect("agent reports the nginx instance up");
        Net {
            agent,
            nginx,
            addr,
            veth: pair.peer_if,
            client,
            server,
        }
    }

    fn conf(&self) -> String {
        self.nginx.conf_label()
    }

    fn counters(&self) -> NetCounters {
        self.server.counters().expect("nginx namespace's counters")
    }

    /// Polls the agent until `check` holds (bounded); returns the last scrape.
    fn wait_for(&self, what: &str, check: impl Fn(&Scrape) -> Result<bool>) -> Scrape {
        poll(what, Duration::from_secs(15), Duration::from_millis(100), || {
            let s = self.agent.scrape()?;
            Ok(if check(&s)? {
                Poll::Ready(s)
            } else {
                Poll::Pending("not yet".into())
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.agent.log_tail(30)))
    }
}

/// One GET on a new connection from the clients' namespace. With
/// `keep_open`, reads the whole response (headers + Content-Length) and
/// returns the open connection; else reads until the server closes or
/// resets it. Returns the bytes read.
fn get(addr: SocketAddr, path: &str, keep_open: bool) -> Result<(TcpStream, usize)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    let conn = if keep_open { "keep-alive" } else { "close" };
    write!(c, "GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: {conn}\r\n\r\n")?;
    let mut got: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if keep_open && response_complete(&got)? {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((c, got.len()))
}

/// True once `got` holds the headers and a body of their Content-Length.
fn response_complete(got: &[u8]) -> Result<bool> {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no Content-Length")?
        .trim()
        .parse()?;
    Ok(got.len() >= end + 4 + len)
}

/// Closes with SO_LINGER {on, 0}: the kernel sends an RST instead of a FIN.
fn close_with_reset(c: TcpStream) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd we own, with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    drop(c);
    Ok(())
}

/// A drop rule on the input hook of a namespace (nftables, else iptables),
/// removed when dropped. Drops are on the receiving side: a packet dropped
/// on the sender's output hook is an error the sender sees (it sends again
/// later, not a retransmission).
struct DropRule<'a> {
    ns: &'a Netns,
    /// "nft" or "iptables".
    how: &'static str,
    table: &'static str,
    ipt_match: Vec<String>,
}

/// Adds `nft_match drop` (table `table`) or else `iptables -A INPUT
/// ipt_match -j DROP` in `ns`; Err (why) if neither works here.
fn drop_rule<'a>(
    ns: &'a Netns,
    table: &'static str,
    nft_match: &str,
    ipt_match: &[&str],
) -> std::result::Result<DropRule<'a>, String> {
    let t = Duration::from_secs(10);
    let rule = format!(
        "table inet {table} {{\n  chain in {{\n    type filter hook input priority 0;\n    {nft_match} drop\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("ngxprobe-{table}-{}.nft", std::process::id()));
    let nft = std::fs::write(&file, &rule)
        .context("write the nft rule")
        .and_then(|_| ns.output("nft", &["-f", &file.display().to_string()], t));
    let _ = std::fs::remove_file(&file);
    let ipt_match: Vec<String> = ipt_match.iter().map(|a| a.to_string()).collect();
    let how = match nft {
        Ok(_) => "nft",
        Err(nft_err) => {
            let mut args = vec!["-A", "INPUT"];
            args.extend(ipt_match.iter().map(String::as_str));
            args.extend(["-j", "DROP"]);
            ns.output("iptables", &args, t)
                .map_err(|e| format!("nft: {nft_err:#}; iptables: {e:#}"))?;
            "iptables"
        }
    };
    Ok(DropRule {
        ns,
        how,
        table,
        ipt_match,
    })
}

impl Drop for DropRule<'_> {
    fn drop(&mut self) {
        let t = Duration::from_secs(10);
        let r = if self.how == "nft" {
            self.ns.output("nft", &["delete", "table", "inet", self.table], t)
        } else {
            let mut args = vec!["-D", "INPUT"];
            args.extend(self.ipt_match.iter().map(String::as_str));
            args.extend(["-j", "DROP"]);
            self.ns.output("iptables", &args, t)
        };
        if let Err(e) = r {
            eprintln!("[e2e] removing the drop rule: {e:#} (the namespace goes with the test)");
        }
    }
}

/// Random loss of `percent` % of the TCP packets arriving on `veth`.
fn add_loss<'a>(ns: &'a Netns, veth: &str, percent: u32) -> std::result::Result<DropRule<'a>, String> {
    let p = format!("0.{percent:02}");
    drop_rule(
        ns,
        "ngxprobe_loss",
        &format!("iifname \"{veth}\" meta l4proto tcp numgen random mod 100 < {percent}"),
        &[
            "-i",
            veth,
            "-p",
            "tcp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
        ],
    )
}

/// Drops every data segment from nginx arriving on `veth` (packets over 100
/// bytes: handshakes and pure ACKs pass), so nginx's data is never acknowledged.
fn drop_data<'a>(ns: &'a Netns, veth: &str) -> std::result::Result<DropRule<'a>, String> {
    let port = PORT.to_string();
    drop_rule(
        ns,
        "ngxprobe_black",
        &format!("iifname \"{veth}\" tcp sport {PORT} meta length > 100"),
        &[
            "-i",
            veth,
            "-p",
            "tcp",
            "--sport",
            &port,
            "-m",
            "length",
            "--length",
            "101:65535",
        ],
    )
}

#[test]
fn kernel_tcp_retransmits_match_the_namespace_counters() {
    let _g = guard("kernel_tcp_retransmits_match_the_namespace_counters");
    let net = Net::start("rtx");
    let conf = net.conf();
    let listener = net.addr.to_string();
    // A warm-up request: the listener's series exist, no loss yet.
    let addr = net.addr;
    net.client.run(move || get(addr, MID_FILE, false)).unwrap().unwrap();
    let before = net.counters();
    let s0 = net.agent.scrape().unwrap();
    let rtx0 = metric(
        &s0,
        "ngxprobe_tcp_retransmitted_segments_total",
        &conf,
        &[("listen_address", &listener)],
    );
    let syn0 = metric(
        &s0,
        "ngxprobe_tcp_synack_retransmits_total",
        &conf,
        &[("listen_address", &listener)],
    );
    let percent = 8;
    let loss = match add_loss(&net.client, &net.veth, percent) {
        Ok(rule) => rule,
        Err(why) => {
            skip_or_fail(&format!(
                "retransmit case: no packet-loss facility here (no netem in this kernel): {why}"
            ));
            return;
        }
    };
    // 4 clients × 8 connections × 256 KiB under loss.
    let results = net
        .client
        .run(move || {
            std::thread::scope(|sc| {
                let hs: Vec<_> = (0..4)
                    .map(|_| {
                        sc.spawn(move || {
                            (0..8)
                                .map(|_| get(addr, MID_FILE, false).map(|r| r.1))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                hs.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
            })
        })
        .unwrap();
    let how = loss.how;
    drop(loss);
    for r in &results {
        let n = *r.as_ref().expect("request under loss");
        assert!(n > MID_SIZE, "a full response despite the loss: {n} bytes");
    }
    // Retransmissions end with the transfers (all complete above); wait for
    // the namespace and the agent to agree, bounded.
    let s = net.wait_for("ngxprobe's retransmits to match RetransSegs", |s| {
        let c = net.counters();
        let want = c.delta(&before, "Tcp.RetransSegs")?;
        let rtx = metric(
            s,
            "ngxprobe_tcp_retransmitted_segments_total",
            &conf,
            &[("listen_address", &listener)],
        ) - rtx0;
        let syn = metric(
            s,
            "ngxprobe_tcp_synack_retransmits_total",
            &conf,
            &[("listen_address", &listener)],
        ) - syn0;
        eprintln!("[e2e] RetransSegs +{want}, ngxprobe retransmitted +{rtx} + SYN-ACK +{syn}");
        Ok(want > 0 && (rtx + syn) as i64 == want)
    });
    let after = net.counters();
    let want = after.delta(&before, "Tcp.RetransSegs").unwrap();
    let syn = metric(
        &s,
        "ngxprobe_tcp_synack_retransmits_total",
        &conf,
        &[("listen_address", &listener)],
    ) - syn0;
    let rtx = metric(
        &s,
        "ngxprobe_tcp_retransmitted_segments_total",
        &conf,
        &[("listen_address", &listener)],
    ) - rtx0;
    eprintln!(
        "[e2e] loss {percent}% via {how}: RetransSegs +{want}, TCPSynRetrans +{}; ngxprobe segments +{rtx}, SYN-ACKs +{syn}",
        after.delta(&before, "TcpExt.TCPSynRetrans").unwrap()
    );
    assert_eq!(syn as i64, after.delta(&before, "TcpExt.TCPSynRetrans").unwrap());
    assert!(rtx > 0.0, "data segments were retransmitted");
    // Sent segments (at close) exceed the retransmitted ones; every closed
    // connection is in the distributions.
    let sent = metric(
        &s,
        "ngxprobe_tcp_segments_sent_total",
        &conf,
        &[("listen_address", &listener)],
    );
    assert!(sent > rtx, "segments sent {sent} vs retransmitted {rtx}");
    let closed = metric(&s, "ngxprobe_tcp_connections_closed_total", &conf, &[]);
    let rtt_count = metric(&s, "ngxprobe_tcp_connection_rtt_seconds_count", &conf, &[]);
    assert_eq!(closed, rtt_count, "one RTT observation per closed connection");
    let big = metric(
        &s,
        "ngxprobe_tcp_connection_bytes_bucket",
        &conf,
        &[("direction", "sent"), ("le", "+Inf")],
    ) - metric(
        &s,
        "ngxprobe_tcp_connection_bytes_bucket",
        &conf,
        &[("direction", "sent"), ("le", "262144")],
    );
    assert!(big >= 33.0, "33 responses of more than 256 KiB: {big}");
}

/// Runs `clients` in the clients' namespace, waits until ngxprobe's `metric`
/// on the test's listener grew by `n`, and returns (ngxprobe's increase, the
/// namespace's counters before and after).
fn reset_case(
    net: &Net,
    metric_name: &str,
    n: usize,
    clients: impl FnOnce() -> Result<()> + Send,
) -> (f64, f64, NetCounters, NetCounters) {
    let conf = net.conf();
    let l = net.addr.to_string();
    let labels = [("listen_address", l.as_str())];
    let reset_closes = |s: &Scrape| {
        metric(
            s,
            "ngxprobe_tcp_connections_closed_total",
            &conf,
            &[("listen_address", &l), ("cause", "reset")],
        )
    };
    let before = net.counters();
    let s0 = net.agent.scrape().unwrap();
    net.client.run(clients).unwrap().unwrap();
    let s1 = net.wait_for(metric_name, |s| {
        Ok(
            metric(s, metric_name, &conf, &labels) - metric(&s0, metric_name, &conf, &labels) >= n as f64
                && reset_closes(s) - reset_closes(&s0) >= n as f64,
        )
    });
    let after = net.counters();
    (
        metric(&s1, metric_name, &conf, &labels) - metric(&s0, metric_name, &conf, &labels),
        reset_closes(&s1) - reset_closes(&s0),
        before,
        after,
    )
}

#[test]
fn kernel_tcp_resets_sent_and_received_match_the_namespace_counters() {
    let _g = guard("kernel_tcp_resets_sent_and_received_match_the_namespace_counters");
    let net = Net::start("rst");
    let addr = net.addr;
    let n = 5;

    // Clients that close with SO_LINGER 0 after a keep-alive response: RSTs
    // nginx receives on established connections (EstabResets), none sent.
    let (received, closes, before, after) = reset_case(&net, "ngxprobe_tcp_resets_received_total", n, move || {
        for _ in 0..n {
            let (c, got) = get(addr, MID_FILE, true)?;
            if got < MID_SIZE {
                bail!("short response: {got}");
            }
            close_with_reset(c)?;
        }
        Ok(())
    });
    eprintln!(
        "[e2e] SO_LINGER 0 clients: EstabResets +{}, OutRsts +{}; ngxprobe resets received +{received}, closed by reset +{closes}",
        after.delta(&before, "Tcp.EstabResets").unwrap(),
        after.delta(&before, "Tcp.OutRsts").unwrap()
    );
    assert_eq!(received as i64, after.delta(&before, "Tcp.EstabResets").unwrap());
    assert_eq!(received as i64, n as i64);
    assert_eq!(after.delta(&before, "Tcp.OutRsts").unwrap(), 0, "nginx sent no RST");
    assert_eq!(closes, n as f64);

    // nginx resetting: `return 444` with reset_timedout_connection on.
    let (sent, closes, before, after) = reset_case(&net, "ngxprobe_tcp_resets_sent_total", n, move || {
        for _ in 0..n {
            let (_c, got) = get(addr, "close", false)?;
            if got != 0 {
                bail!("444 sends nothing, got {got} bytes");
            }
        }
        Ok(())
    });
    eprintln!(
        "[e2e] return 444: OutRsts +{}, EstabResets +{}; ngxprobe resets sent +{sent}, closed by reset +{closes}",
        after.delta(&before, "Tcp.OutRsts").unwrap(),
        after.delta(&before, "Tcp.EstabResets").unwrap()
    );
    assert_eq!(sent as i64, after.delta(&before, "Tcp.OutRsts").unwrap());
    assert_eq!(sent as i64, n as i64);
    assert_eq!(closes, n as f64);

    // Normal closes: three pipelined requests per connection, the last with
    // `Connection: close`, read to the end: nginx closes with a FIN, no RST
    // either way. Each connection is one observation of the duration and
    // requests-per-connection histograms, with 3 requests.
    let conf = net.conf();
    let l = net.addr.to_string();
    let on_listener = |s: &Scrape, name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("listen_address", l.as_str())];
        labels.extend_from_slice(extra);
        metric(s, name, &conf, &labels)
    };
    let per_instance = |s: &Scrape, name: &str, extra: &[(&str, &str)]| metric(s, name, &conf, extra);
    let before = net.counters();
    let s0 = net.agent.scrape().unwrap();
    let started = std::time::Instant::now();
    net.client
        .run(move || -> Result<()> {
            for _ in 0..n {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                c.set_read_timeout(Some(Duration::from_secs(20)))?;
                let ka = "Connection: keep-alive";
                write!(
                    c,
                    "GET /{MID_FILE} HTTP/1.1\r\nHost: t\r\n{ka}\r\n\r\n\
                     GET /{MID_FILE} HTTP/1.1\r\nHost: t\r\n{ka}\r\n\r\n\
                     GET /{MID_FILE} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                )?;
                let mut got = Vec::new();
                c.read_to_end(&mut got)?;
                if got.len() < 3 * MID_SIZE {
                    bail!("three responses expected, got {} bytes", got.len());
                }
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    let client_secs = started.elapsed().as_secs_f64();
    let closed_normal = |s: &Scrape| on_listener(s, "ngxprobe_tcp_connections_closed_total", &[("cause", "normal")]);
    let s1 = net.wait_for("normal closes", |s| {
        Ok(closed_normal(s) - closed_normal(&s0) >= n as f64)
    });
    let after = net.counters();
    let d = |name: &str, extra: &[(&str, &str)]| per_instance(&s1, name, extra) - per_instance(&s0, name, extra);
    eprintln!(
        "[e2e] normal closes: OutRsts +{}, EstabResets +{}; ngxprobe normal +{}, requests per connection count +{} sum +{}, \
         duration count +{} sum +{:.4} s (clients took {client_secs:.3} s)",
        after.delta(&before, "Tcp.OutRsts").unwrap(),
        after.delta(&before, "Tcp.EstabResets").unwrap(),
        closed_normal(&s1) - closed_normal(&s0),
        d("ngxprobe_tcp_connection_requests_count", &[]),
        d("ngxprobe_tcp_connection_requests_sum", &[]),
        d("ngxprobe_tcp_connection_duration_seconds_count", &[]),
        d("ngxprobe_tcp_connection_duration_seconds_sum", &[]),
    );
    assert_eq!(closed_normal(&s1) - closed_normal(&s0), n as f64);
    assert_eq!(
        after.delta(&before, "Tcp.OutRsts").unwrap(),
        0,
        "no RST on a normal close"
    );
    assert_eq!(
        after.delta(&before, "Tcp.EstabResets").unwrap(),
        0,
        "no RST on a normal close"
    );
    assert_eq!(d("ngxprobe_tcp_connection_requests_count", &[]), n as f64);
    assert_eq!(d("ngxprobe_tcp_connection_requests_sum", &[]), 3.0 * n as f64);
    // Power-of-two buckets: 3 requests are above le="2", within le="4".
    assert_eq!(d("ngxprobe_tcp_connection_requests_bucket", &[("le", "2")]), 0.0);
    assert_eq!(d("ngxprobe_tcp_connection_requests_bucket", &[("le", "4")]), n as f64);
    assert_eq!(d("ngxprobe_tcp_connection_duration_seconds_count", &[]), n as f64);
    // The kernel side keeps whole milliseconds per connection (these
    // loopback connections last well under one): at most 1 ms each above
    // the clients' own wall time.
    let dur = d("ngxprobe_tcp_connection_duration_seconds_sum", &[]);
    assert!(
        (0.0..=client_secs + n as f64 * 0.001).contains(&dur),
        "connections' summed lifetime {dur} s within the clients' {client_secs} s"
    );

    let s = net.agent.scrape().unwrap();
    let timeouts = [("listen_address", l.as_str()), ("cause", "timeout")];
    assert_eq!(
        metric(&s, "ngxprobe_tcp_connections_closed_total", &net.conf(), &timeouts),
        0.0
    );
}

#[test]
fn kernel_worker_crashes_are_exits_by_signal_and_reload_is_not() {
    let s = Session::start(
        "kernel_worker_crashes_are_exits_by_signal_and_reload_is_not",
        NginxOptions {
            tag: "crash".into(),
            ..NginxOptions::workers(2)
        },
    );
    let conf = s.nginx.conf_label();
    let exits = |sc: &Scrape, cause: &str, sig: &str| {
        metric(
            sc,
            "ngxprobe_nginx_worker_exits_total",
            &conf,
            &[("cause", cause), ("signal", sig)],
        )
    };
    let wait = |what: &str, f: &dyn Fn(&Scrape) -> bool| -> Scrape {
        poll(what, Duration::from_secs(15), Duration::from_millis(100), || {
            let sc = s.agent.scrape()?;
            Ok(if f(&sc) {
                Poll::Ready(sc)
            } else {
                Poll::Pending("not yet".into())
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", s.agent.log_tail(30)))
    };
    let sc = s.agent.scrape().unwrap();
    assert_eq!(exits(&sc, "signal", "SIGSEGV"), 0.0);
    assert_eq!(metric(&sc, "ngxprobe_nginx_worker_respawns_total", &conf, &[]), 0.0);

    // The store has sampled the exit counters at 0 (diagnose and the alert
    // read history: a crash before the first sample of a new instance
    // would be the series' first value, and no increase).
    let stored = format!("ngxprobe_nginx_worker_exits_total{{conf_path={conf:?},signal=\"SIGSEGV\"}} == 0");
    poll(
        "exit counters at 0 in the store",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let v = s.agent.query(&stored)?;
            Ok(match v["result"].as_array() {
                Some(r) if !r.is_empty() => Poll::Ready(()),
                _ => Poll::Pending(v.to_string()),
            })
        },
    )
    .unwrap();
    // SIGSEGV to a worker (nginx has no handler for it: the worker dies).
    let victim = *s.nginx.worker_pids().first().expect("a worker");
    assert_eq!(unsafe { libc::kill(victim, libc::SIGSEGV) }, 0);
    poll(
        "respawn after SIGSEGV",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let w = s.nginx.worker_pids();
            Ok(if w.len() == 2 && !w.contains(&victim) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{w:?}"))
            })
        },
    )
    .unwrap();
    wait("the SIGSEGV exit and its respawn", &|sc| {
        exits(sc, "signal", "SIGSEGV") == 1.0 && metric(sc, "ngxprobe_nginx_worker_respawns_total", &conf, &[]) == 1.0
    });
    // SIGKILL (the harness waits for the respawn).
    s.nginx.kill_worker().expect("kill a worker");
    let sc = wait("the SIGKILL exit and its respawn", &|sc| {
        exits(sc, "signal", "SIGKILL") == 1.0 && metric(sc, "ngxprobe_nginx_worker_respawns_total", &conf, &[]) == 2.0
    });
    assert_eq!(exits(&sc, "signal", "SIGSEGV"), 1.0);
    assert_eq!(exits(&sc, "exit", ""), 0.0);
    assert_eq!(exits(&sc, "oom", "SIGKILL"), 0.0);

    // A reload: both old workers exit by themselves; no crash, no respawn.
    s.nginx.reload().expect("reload");
    wait("the reload's two normal exits", &|sc| exits(sc, "exit", "") == 2.0);
    // The new workers are seen (a scan after the reload) and not respawns.
    let new = s.nginx.worker_pids();
    let sc = wait("the new workers' descriptors", &|sc| {
        new.iter()
            .all(|p| metric(sc, "ngxprobe_nginx_worker_open_fds", &conf, &[("pid", &p.to_string())]) > 0.0)
    });
    let by_signal: f64 = sc
        .samples
        .iter()
        .filter(|x| x.name == "ngxprobe_nginx_worker_exits_total" && x.label("conf_path") == Some(conf.as_str()))
        .filter(|x| x.label("cause") != Some("exit"))
        .map(|x| x.value)
        .sum();
    assert_eq!(
        by_signal,
        2.0,
        "only the two crashes: {:?}",
        sc.raw
            .lines()
            .filter(|l| l.contains("worker_exits"))
            .collect::<Vec<_>>()
    );
    assert_eq!(metric(&sc, "ngxprobe_nginx_worker_respawns_total", &conf, &[]), 2.0);
    // Descriptors against the limit, per worker, as /proc says.
    for p in new {
        let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).unwrap();
        let soft: f64 = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .expect("soft limit");
        let pid = p.to_string();
        assert_eq!(
            metric(&sc, "ngxprobe_nginx_worker_max_fds", &conf, &[("pid", &pid)]),
            soft
        );
        let open = metric(&sc, "ngxprobe_nginx_worker_open_fds", &conf, &[("pid", &pid)]);
        assert!(open >= 3.0 && open < soft, "worker {p}: {open} open fds of {soft}");
    }
    // `ngxprobe diagnose` names both crashes, and not the reload's exits.
    let killed = |sig: &str| {
        format!(
            "PROBLEM: nginx {conf}: 1 worker process was killed by {sig} in the last 5m \
             (their connections were dropped; see nginx's error_log)"
        )
    };
    let report = s
        .agent
        .diagnose_until("5m", &[killed("SIGSEGV"), killed("SIGKILL")])
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.matches("worker process").count(), 2, "{report}");
}

/// Connections the kernel gives up on are closed by `timeout` (the
/// namespace's TCPAbortOnTimeout counts the same events); a client that
/// stops reading stalls nginx's sending on its receive window for as long
/// as `ss -ti` says (rwnd_limited).
#[test]
fn kernel_tcp_timeouts_and_slow_readers() {
    let _g = guard("kernel_tcp_timeouts_and_slow_readers");
    let net = Net::start("tmo");
    let conf = net.conf();
    let l = net.addr.to_string();
    let addr = net.addr;
    let closed = |s: &Scrape, cause: &str| {
        metric(
            s,
            "ngxprobe_tcp_connections_closed_total",
            &conf,
            &[("listen_address", &l), ("cause", cause)],
        )
    };
    let stalled = |s: &Scrape, reason: &str| {
        metric(
            s,
            "ngxprobe_tcp_send_stalled_seconds_total",
            &conf,
            &[("listen_address", &l), ("reason", reason)],
        )
    };

    // A slow reader: reads nothing for 1.5 s, then the whole response.
    let s0 = net.agent.scrape().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let client = net.client.handle();
        std::thread::spawn(move || {
            client
                .run(move || -> Result<usize> {
                    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                    c.set_read_timeout(Some(Duration::from_secs(20)))?;
                    write!(c, "GET /{MID_FILE} HTTP/1.1\r\nHost: t\r\n\r\n")?;
                    std::thread::sleep(Duration::from_millis(1500));
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    while !response_complete(&got)? {
                        let n = c.read(&mut buf)?;
                        if n == 0 {
                            bail!("closed early");
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    // Hold the connection open until ss was read, then close.
                    let _ = rx.recv_timeout(Duration::from_secs(20));
                    Ok(got.len())
                })
                .unwrap()
        })
    };
    // The reader has all of it once nginx's send queue is empty: ss then
    // shows the final rwnd_limited of the connection.
    let ss_ms: f64 = poll(
        "ss to show the slow reader's stall",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let out = net.server.output(
                "ss",
                &["-tinH", "state", "established", &format!("( sport = :{PORT} )")],
                Duration::from_secs(5),
            )?;
            let v = out
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rwnd_limited:"))
                .and_then(|w| w.split("ms").next())
                .and_then(|ms| ms.parse::<f64>().ok());
            let idle = !out.contains("unacked") && !out.contains("notsent");
            Ok(match v {
                Some(ms) if ms >= 1000.0 && idle => Poll::Ready(ms),
                _ => Poll::Pending(out),
            })
        },
    )
    .unwrap();
    let _ = tx.send(());
    let got = reader.join().unwrap().unwrap();
    assert!(got > MID_SIZE);
    let s1 = net.wait_for("the slow reader's stall", |s| {
        Ok(stalled(s, "receive_window") - stalled(&s0, "receive_window") > 0.9)
    });
    let ours_ms = (stalled(&s1, "receive_window") - stalled(&s0, "receive_window")) * 1000.0;
    eprintln!("[e2e] slow reader: ss rwnd_limited {ss_ms} ms; ngxprobe receive_window stall {ours_ms:.1} ms");
    // jiffies (4 ms at HZ=250) against ss's microseconds printed in ms.
    assert!(
        (ours_ms - ss_ms).abs() <= 10.0,
        "ss {ss_ms} ms vs ngxprobe {ours_ms} ms"
    );

    // Timeouts: the kernel retries twice (net.ipv4.tcp_retries2 in nginx's
    // namespace only), then gives up on connections whose data is dropped.
    net.server
        .output("sysctl", &["-w", "net.ipv4.tcp_retries2=2"], Duration::from_secs(5))
        .expect("sysctl in nginx's namespace");
    let black = match drop_data(&net.client, &net.veth) {
        Ok(rule) => rule,
        Err(why) => {
            skip_or_fail(&format!("timeout case: no packet filter usable here: {why}"));
            return;
        }
    };
    let before = net.counters();
    let s2 = net.agent.scrape().unwrap();
    let n = 2;
    let clients = net
        .client
        .run(move || -> Result<Vec<TcpStream>> {
            let mut v = Vec::new();
            for _ in 0..n {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                write!(c, "GET /{MID_FILE} HTTP/1.1\r\nHost: t\r\n\r\n")?;
                v.push(c);
            }
            Ok(v)
        })
        .unwrap()
        .unwrap();
    let s3 = net.wait_for("connections closed by timeout", |s| {
        Ok(closed(s, "timeout") - closed(&s2, "timeout") >= n as f64)
    });
    let after = net.counters();
    drop(clients);
    let ours = closed(&s3, "timeout") - closed(&s2, "timeout");
    eprintln!(
        "[e2e] data dropped ({}), tcp_retries2=2: TCPAbortOnTimeout +{}; ngxprobe closed by timeout +{ours}",
        black.how,
        after.delta(&before, "TcpExt.TCPAbortOnTimeout").unwrap()
    );
    assert_eq!(ours as i64, after.delta(&before, "TcpExt.TCPAbortOnTimeout").unwrap());
    assert_eq!(ours as i64, n);
    assert_eq!(closed(&s3, "reset") - closed(&s2, "reset"), 0.0);
    // `ngxprobe diagnose` names them on their listener.
    let want = format!(
        "PROBLEM: listener {addr} of nginx {}: {n} client connections timed out in the last 5m \
         (the kernel gave up retransmitting: clients vanished or the path drops packets)",
        net.conf()
    );
    let report = net.agent.diagnose_until("5m", &[want]).unwrap();
    eprintln!("{report}");
}

/// A worker the OOM killer chooses is an exit by `oom`, not by signal. The
/// worker is moved into a memory cgroup of its own with a tiny limit, then
/// made to allocate (connections with large request headers): the cgroup's
/// OOM killer picks it (memory.oom_control's oom_kill is the oracle).
#[test]
fn kernel_worker_oom_kill_is_counted_as_oom() {
    let s = Session::start(
        "kernel_worker_oom_kill_is_counted_as_oom",
        NginxOptions {
            tag: "oom".into(),
            ..NginxOptions::workers(1)
        },
    );
    let conf = s.nginx.conf_label();
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
    let (cg, limit_file, procs) = if root.join("memory.limit_in_bytes").exists() {
        let cg = root.join(format!("ngxprobe-e2e-oom-{}", std::process::id()));
        (cg.clone(), cg.join("memory.limit_in_bytes"), cg.join("cgroup.procs"))
    } else if std::fs::read_to_string(v2).is_ok_and(|c| c.contains("memory")) {
        let cg = std::path::Path::new("/sys/fs/cgroup").join(format!("ngxprobe-e2e-oom-{}", std::process::id()));
        (cg.clone(), cg.join("memory.max"), cg.join("cgroup.procs"))
    } else {
        skip_or_fail("OOM case: no memory cgroup controller here");
        return;
    };
    std::fs::create_dir_all(&cg).expect("create a memory cgroup");
    /// Removes the cgroup, moving anything still in it back to the parent.
    struct Rmdir(std::path::PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            if let (Ok(left), Some(parent)) = (std::fs::read_to_string(self.0.join("cgroup.procs")), self.0.parent()) {
                for pid in left.lines() {
                    let _ = std::fs::write(parent.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rmdir(cg.clone());
    let victim = *s.nginx.worker_pids().first().expect("a worker");
    std::fs::write(&limit_file, "262144").expect("set the cgroup's memory limit");
    std::fs::write(&procs, victim.to_string()).expect("move the worker into the cgroup");
    // Connections whose request headers need large buffers: new heap pages,
    // charged to the cgroup, over its limit.
    let addr = s.nginx.main_addr();
    let header = format!("X-Fill: {}\r\n", "y".repeat(7000));
    let mut held = Vec::new();
    for _ in 0..400 {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            break;
        };
        let _ = write!(c, "GET / HTTP/1.1\r\nHost: t\r\n{header}{header}{header}");
        held.push(c);
        if !std::path::Path::new(&format!("/proc/{victim}")).exists() {
            break;
        }
    }
    let sc = poll(
        "the OOM kill",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let sc = s.agent.scrape()?;
            let oom = metric(&sc, "ngxprobe_nginx_worker_exits_total", &conf, &[("cause", "oom")]);
            Ok(if oom >= 1.0 {
                Poll::Ready(sc)
            } else {
                Poll::Pending(format!("oom {oom}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", s.agent.log_tail(20)));
    drop(held);
    let kills = ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(cg.join(f)).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse::<f64>().ok()))
        .expect("oom_kill in the cgroup's memory.oom_control / memory.events");
    let oom = metric(&sc, "ngxprobe_nginx_worker_exits_total", &conf, &[("cause", "oom")]);
    let by_signal = metric(&sc, "ngxprobe_nginx_worker_exits_total", &conf, &[("cause", "signal")]);
    eprintln!("[e2e] OOM: cgroup oom_kill {kills}; ngxprobe exits oom {oom}, by signal {by_signal}");
    assert_eq!(oom, kills);
    assert_eq!(by_signal, 0.0, "an OOM kill is not counted as a plain SIGKILL");
}
