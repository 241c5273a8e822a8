//! Validates the network-namespace harness (tests/src/netns.rs) with real
//! namespaces, sockets and nginx, no agent: isolation, the namespace's own
//! TCP counters as an oracle, `ss` as the accept-queue reference, and
//! cleanup by PID.
use ngxprobe_e2e::guard;
use ngxprobe_e2e::netns::Netns;
use ngxprobe_e2e::nginx::{Nginx, NginxOptions};
use ngxprobe_e2e::util::{self, ChildGuard, Poll, poll};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn own_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

#[test]
fn netns_counts_only_its_own_traffic_and_cleans_up() {
    let _g = guard("netns_counts_only_its_own_traffic_and_cleans_up");
    let ns = Netns::create("selftest").expect("create netns");
    let path = ns.path();
    assert!(path.exists(), "{}", path.display());
    assert_ne!(ns.inode().unwrap(), own_netns(), "a namespace of its own");

    let before = ns.counters().expect("counters");
    assert_eq!(
        before.get("Tcp.PassiveOpens").unwrap(),
        0,
        "fresh namespace: {before:?}"
    );
    // Three loopback connections inside: exactly three passive and three
    // active opens in the namespace, whatever the host does meanwhile.
    let echoed = ns
        .run(|| -> anyhow::Result<Vec<u8>> {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let a = l.local_addr()?;
            let mut got = Vec::new();
            for i in 0..3u8 {
                let mut c = TcpStream::connect(a)?;
                let (mut s, _) = l.accept()?;
                c.write_all(&[i])?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                got.push(b[0]);
            }
            Ok(got)
        })
        .unwrap()
        .unwrap();
    assert_eq!(echoed, vec![0, 1, 2]);
    let after = ns.counters().unwrap();
    assert_eq!(after.delta(&before, "Tcp.PassiveOpens").unwrap(), 3);
    assert_eq!(after.delta(&before, "Tcp.ActiveOpens").unwrap(), 3);

    // A process started inside is listed by the namespace and killed by PID
    // when the namespace is dropped, even if nobody else stops it.
    let mut cmd = ns.command("/bin/sleep").unwrap();
    cmd.arg("60");
    let mut sleeper = ChildGuard::spawn(&mut cmd, "sleep in netns").unwrap();
    let pid = sleeper.pid();
    let ino = ns.inode().unwrap();
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino(),
        ino,
        "the child entered the namespace"
    );
    assert_eq!(ns.pids().unwrap(), vec![pid]);
    drop(ns);
    let st = sleeper
        .wait_timeout(Duration::from_secs(5))
        .expect("sleep killed by the netns drop");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(!path.exists(), "{} deleted", path.display());
}

#[test]
fn veth_link_between_two_namespaces() {
    let _g = guard("veth_link_between_two_namespaces");
    let server = Netns::create("srv").unwrap();
    let client = Netns::create("cli").unwrap();
    let link = server.link(&client).expect("veth pair");
    let l = server
        .run(|| TcpListener::bind((link.local_addr, 0)))
        .unwrap()
        .expect("bind on the veth address");
    let port = l.local_addr().unwrap().port();
    let c0 = client.counters().unwrap();
    let s0 = server.counters().unwrap();
    let stream = client
        .run(|| TcpStream::connect((link.local_addr, port)))
        .unwrap()
        .expect("connect across the link");
    let (_accepted, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(link.peer_addr));
    drop(stream);
    assert_eq!(client.counters().unwrap().delta(&c0, "Tcp.ActiveOpens").unwrap(), 1);
    assert_eq!(server.counters().unwrap().delta(&s0, "Tcp.PassiveOpens").unwrap(), 1);
    assert_eq!(client.counters().unwrap().delta(&c0, "Tcp.PassiveOpens").unwrap(), 0);
}

/// nginx in a namespace with `backlog=4`: `ss` there shows the backlog, the
/// oracle answers from inside, and with the worker stopped a burst of
/// connects overflows the accept queue, which the namespace's ListenOverflows
/// and ListenDrops count.
#[test]
fn nginx_in_netns_overflows_its_accept_queue() {
    let _g = guard("nginx_in_netns_overflows_its_accept_queue");
    if util::require_tool("ss", "apt-get install iproute2").is_none() {
        return;
    }
    let ns = Netns::create("nginx").unwrap();
    let n = Nginx::start(NginxOptions {
        tag: "netns".into(),
        big_file: false,
        netns: Some(ns.handle()),
        backlog: Some(4),
        ..Default::default()
    })
    .expect("start nginx in the netns");
    assert_eq!(
        std::fs::metadata(format!("/proc/{}/ns/net", n.master_pid()))
            .unwrap()
            .ino(),
        ns.inode().unwrap()
    );
    let o = n.oracle().expect("stub_status from inside the netns");
    assert_eq!(o.active, 1, "{o:?}");
    let ss = ns.ss_listeners(n.main_port()).unwrap();
    assert_eq!(ss.len(), 2, "127.0.0.1 and [::1]: {ss:?}");
    assert!(ss.iter().all(|l| l.send_q == 4 && l.recv_q == 0), "{ss:?}");

    let before = ns.counters().unwrap();
    let worker = n.worker_pids()[0];
    // SAFETY: kill(2) of our nginx's worker.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let burst = ns.connect_burst(n.main_addr(), 12).unwrap();
    // The queue holds backlog + 1 connections (full means more than backlog).
    let queued = poll(
        "accept queue to fill",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let l = ns.ss_listeners(n.main_port())?;
            let v4 = l
                .iter()
                .find(|l| l.local.starts_with("127.0.0.1:"))
                .map_or(0, |l| l.recv_q);
            let drops = ns.counters()?.delta(&before, "TcpExt.ListenDrops")?;
            Ok(if v4 == 5 && drops > 0 {
                Poll::Ready((v4, drops))
            } else {
                Poll::Pending(format!("recv-q {v4}, drops {drops}"))
            })
        },
    );
    // SAFETY: as above; always resume the worker, also on failure.
    unsafe { libc::kill(worker, libc::SIGCONT) };
    let (queued, drops) = queued.unwrap();
    let after = ns.counters().unwrap();
    let overflows = after.delta(&before, "TcpExt.ListenOverflows").unwrap();
    eprintln!("queue {queued}, ListenDrops +{drops}, ListenOverflows +{overflows}");
    assert!(overflows > 0 && overflows <= after.delta(&before, "TcpExt.ListenDrops").unwrap());
    drop(burst);
    poll(
        "accept queue to drain",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let l = ns.ss_listeners(n.main_port())?;
            Ok(if l.iter().all(|l| l.recv_q == 0) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{l:?}"))
            })
        },
    )
    .unwrap();
}
