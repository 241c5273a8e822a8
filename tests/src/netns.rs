//! A network namespace the test creates (`ip netns add`), for conditions that
//! must not touch the host's network and for counters that count only the
//! test: the namespace's own /proc/net/snmp and /proc/net/netstat
//! (ListenOverflows, ListenDrops, RetransSegs, OutRsts, ...) are an oracle
//! for nothing but what runs inside it.
//!
//! * [`Netns::create`]: a fresh namespace with loopback up (127.0.0.1, ::1).
//! * [`Netns::link`]: a veth pair between two test namespaces on a private
//!   /30 (nothing is added to the host's namespace), for tests that need a
//!   real link (qdiscs, drop rules on one side).
//! * [`NetnsRef::run`]: runs a closure on a thread moved into the namespace
//!   (clients, oracle fetches); [`NetnsRef::command`]: a `Command` whose child
//!   enters the namespace before exec (nginx, wrk, ss, tc...). The mount
//!   namespace stays the host's (unlike `ip netns exec`), so paths, pid
//!   files and /proc look the same to the agent as for any other nginx.
//! * [`NetnsRef::counters`]: the namespace's TCP MIB counters.
//!
//! On drop every process left in the namespace is killed by PID (found by
//! its /proc/PID/ns/net inode) and the namespace is deleted.
use crate::util::{ChildGuard, Poll, poll};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const IP: &str = "/usr/sbin/ip";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace by name: cheap to clone into options (e.g.
/// [`crate::NginxOptions::netns`]); does not own the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    name: String,
}

/// A test-created network namespace, deleted (with its processes) on drop.
#[derive(Debug)]
pub struct Netns {
    ns: NetnsRef,
}

impl std::ops::Deref for Netns {
    type Target = NetnsRef;
    fn deref(&self) -> &NetnsRef {
        &self.ns
    }
}

/// Runs `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {IP} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{IP} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates `ngxprobe-<tag>-<pid>-<seq>` with loopback up. Fails if `ip`
    /// is missing or namespaces cannot be created (needs root).
    pub fn create(tag: &str) -> Result<Netns> {
        if !Path::new(IP).is_file() {
            bail!("{IP} not found (apt-get install iproute2)");
        }
        let name = format!(
            "ngxprobe-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { ns: NetnsRef { name } };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle to put into options; the namespace lives as long as `self`.
    pub fn handle(&self) -> NetnsRef {
        self.ns.clone()
    }

    /// Links `self` and `peer` with a veth pair: `self`'s end gets
    /// 10.231.0.1/30, `peer`'s 10.231.0.2/30 (private to these two
    /// namespaces; nothing is added to the host's). Returns the interface
    /// names (`self`'s, `peer`'s) and the two addresses.
    pub fn link(&self, peer: &Netns) -> Result<VethPair> {
        // Interface names are at most 15 bytes.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("nxp{:x}{seq}", std::process::id());
        let (a, b) = (format!("{base}a"), format!("{base}b"));
        if a.len() > 15 {
            bail!("veth name {a:?} longer than 15 bytes");
        }
        ip(&[
            "link", "add", "name", &a, "netns", &self.name, "type", "veth", "peer", "name", &b, "netns", &peer.name,
        ])?;
        let pair = VethPair {
            local_if: a,
            peer_if: b,
            local_addr: std::net::Ipv4Addr::new(10, 231, 0, 1),
            peer_addr: std::net::Ipv4Addr::new(10, 231, 0, 2),
        };
        for (ns, ifname, addr) in [
            (&self.name, &pair.local_if, pair.local_addr),
            (&peer.name, &pair.peer_if, pair.peer_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(pair)
    }
}

/// The two ends of a [`Netns::link`].
#[derive(Clone, Debug)]
pub struct VethPair {
    pub local_if: String,
    pub peer_if: String,
    pub local_addr: std::net::Ipv4Addr,
    pub peer_addr: std::net::Ipv4Addr,
}

impl NetnsRef {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the bind mount `ip netns add` made.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Inode of the namespace: what `ngxprobe_nginx_instance_info{netns}`
    /// and /proc/PID/ns/net show for processes inside it.
    pub fn inode(&self) -> Result<u64> {
        let p = self.path();
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("stat {}", p.display()))?
            .ino())
    }

    fn open(&self) -> Result<File> {
        let p = self.path();
        File::open(&p).with_context(|| format!("open {}", p.display()))
    }

    /// Runs `f` on a new thread that has entered the namespace (setns only
    /// moves that thread), and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = self.open()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a valid fd; CLONE_NEWNET only affects this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({}): {}", self.name, std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// A `Command` for `program` whose child enters the namespace right
    /// before exec (the namespace's file is opened now and kept open by the
    /// command until it is dropped).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let ns = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // on an fd that stays open (moved into the closure) until exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `program args...` inside the namespace to completion (bounded
    /// by `timeout`) and returns its stdout; fails on a non-zero exit.
    pub fn output(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let dir = crate::util::TempDir::new("netns-out")?;
        let (out_p, err_p) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut cmd = self.command(program)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_p)?)
            .stderr(File::create(&err_p)?);
        let mut g = ChildGuard::spawn(&mut cmd, program)?;
        let st = g.wait_timeout(timeout)?;
        let out = std::fs::read_to_string(&out_p).unwrap_or_default();
        if !st.success() {
            bail!(
                "{program} {} in netns {}: {st}: {}",
                args.join(" "),
                self.name,
                std::fs::read_to_string(&err_p).unwrap_or_default().trim()
            );
        }
        Ok(out)
    }

    /// The namespace's TCP MIB counters, read from /proc/thread-self/net/
    /// {snmp,netstat} on a thread inside it (/proc/self/net would show the
    /// main thread's namespace).
    pub fn counters(&self) -> Result<NetCounters> {
        self.run(|| -> Result<NetCounters> {
            let mut c = NetCounters::default();
            for f in ["/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"] {
                let text = std::fs::read_to_string(f).with_context(|| format!("read {f}"))?;
                c.parse_into(&text).with_context(|| format!("parse {f}"))?;
            }
            Ok(c)
        })?
    }

    /// The namespace's listening TCP sockets on `port`, as `ss -ltn` shows
    /// them (the reference for accept-queue length and backlog).
    pub fn ss_listeners(&self, port: u16) -> Result<Vec<SsListener>> {
        let filter = format!("sport = :{port}");
        let out = self.output("ss", &["-ltnH", &filter], Duration::from_secs(10))?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(SsListener::parse)
            .collect()
    }

    /// Starts `n` TCP connects to `addr` from inside the namespace without
    /// waiting for any to complete (non-blocking sockets): a burst the
    /// listener sees at once. The sockets stay open (and their SYNs keep
    /// being retransmitted by the kernel) until the returned value is dropped.
    pub fn connect_burst(&self, addr: std::net::SocketAddr, n: usize) -> Result<Vec<std::os::fd::OwnedFd>> {
        self.run(|| (0..n).map(|_| connect_nonblocking(addr)).collect::<Result<Vec<_>>>())?
    }

    /// PIDs of every process whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let ino = self.inode()?;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino)
                && crate::util::is_alive(pid)
            {
                out.push(pid);
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what is left inside by PID, bounded, then delete the name.
        let killed = poll(
            "processes in the test netns to die",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let pids = self.pids()?;
                for &p in &pids {
                    // SAFETY: plain kill(2) of a pid that runs in our namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                Ok(if pids.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("still alive: {pids:?}"))
                })
            },
        );
        if let Err(e) = killed {
            eprintln!("[e2e] netns {}: {e:#}", self.name);
        }
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("[e2e] {e:#}");
        }
    }
}

/// One row of `ss -ltnH`: for a listening socket Recv-Q is the current
/// accept queue and Send-Q the backlog it was created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsListener {
    pub recv_q: u64,
    pub send_q: u64,
    pub local: String,
}

impl SsListener {
    /// `LISTEN 0      4      127.0.0.1:8080      0.0.0.0:*`
    pub fn parse(line: &str) -> Result<SsListener> {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            ["LISTEN", rq, sq, local, ..] => Ok(SsListener {
                recv_q: rq.parse().with_context(|| format!("Recv-Q in {line:?}"))?,
                send_q: sq.parse().with_context(|| format!("Send-Q in {line:?}"))?,
                local: (*local).to_string(),
            }),
            _ => bail!("not an ss LISTEN row: {line:?}"),
        }
    }
}

/// A non-blocking TCP connect to `addr` (connect(2) returns EINPROGRESS);
/// the socket is returned at once, whatever becomes of the handshake.
pub fn connect_nonblocking(addr: std::net::SocketAddr) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the fd is owned right below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_storage is valid; we fill the family's fields.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            bail!("connect {addr}: {e}");
        }
    }
    Ok(sock)
}

/// TCP/IP MIB counters of one namespace: `"<Section>.<Name>"` → value, e.g.
/// `"TcpExt.ListenOverflows"`, `"Tcp.RetransSegs"` (as /proc/net/snmp and
/// /proc/net/netstat name them; `nstat` prints the same with no dot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub values: BTreeMap<String, i64>,
}

impl NetCounters {
    /// Parses the two-line-per-section format: a header line
    /// `Section: Name1 Name2 ...` followed by `Section: v1 v2 ...`.
    pub fn parse_into(&mut self, text: &str) -> Result<()> {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.len().is_multiple_of(2) {
            bail!("odd number of lines ({}): header without values", lines.len());
        }
        for pair in lines.chunks_exact(2) {
            let (hs, names) = pair[0].split_once(':').context("no section in header line")?;
            let (vs, vals) = pair[1].split_once(':').context("no section in value line")?;
            if hs != vs {
                bail!("header section {hs:?} followed by values of {vs:?}");
            }
            let names: Vec<&str> = names.split_whitespace().collect();
            let vals: Vec<&str> = vals.split_whitespace().collect();
            if names.len() != vals.len() {
                bail!("section {hs}: {} names, {} values", names.len(), vals.len());
            }
            for (n, v) in names.into_iter().zip(vals) {
                let v: i64 = v.parse().with_context(|| format!("{hs}.{n}: {v:?} is not a number"))?;
                self.values.insert(format!("{hs}.{n}"), v);
            }
        }
        Ok(())
    }

    /// The counter `key` (e.g. `"TcpExt.ListenDrops"`); an error names it if
    /// this kernel does not have it.
    pub fn get(&self, key: &str) -> Result<i64> {
        self.values
            .get(key)
            .copied()
            .with_context(|| format!("counter {key} not in /proc/net/snmp or /proc/net/netstat"))
    }

    /// `self[key] - before[key]`.
    pub fn delta(&self, before: &NetCounters, key: &str) -> Result<i64> {
        Ok(self.get(key)? - before.get(key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snmp_and_netstat_sections() {
        let mut c = NetCounters::default();
        c.parse_into("Tcp: RtoAlgorithm MaxConn RetransSegs\nTcp: 1 -1 7\nUdp: InDatagrams\nUdp: 3\n")
            .unwrap();
        c.parse_into("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 13\n")
            .unwrap();
        assert_eq!(c.get("Tcp.MaxConn").unwrap(), -1);
        assert_eq!(c.get("Tcp.RetransSegs").unwrap(), 7);
        assert_eq!(c.get("TcpExt.ListenOverflows").unwrap(), 12);
        assert_eq!(c.get("TcpExt.ListenDrops").unwrap(), 13);
        assert!(c.get("TcpExt.Nope").is_err());
        let mut before = c.clone();
        before.values.insert("TcpExt.ListenDrops".into(), 10);
        assert_eq!(c.delta(&before, "TcpExt.ListenDrops").unwrap(), 3);
    }

    #[test]
    fn parses_ss_listen_rows() {
        let l = SsListener::parse("LISTEN 5      4          127.0.0.1:8080      0.0.0.0:*").unwrap();
        assert_eq!((l.recv_q, l.send_q, l.local.as_str()), (5, 4, "127.0.0.1:8080"));
        let l = SsListener::parse("LISTEN 0 511 [::1]:80 [::]:*").unwrap();
        assert_eq!((l.recv_q, l.send_q, l.local.as_str()), (0, 511, "[::1]:80"));
        assert!(SsListener::parse("ESTAB 0 0 1.2.3.4:1 5.6.7.8:2").is_err());
        assert!(SsListener::parse("LISTEN x 4 a b").is_err());
    }

    #[test]
    fn rejects_mismatched_sections() {
        let mut c = NetCounters::default();
        assert!(c.parse_into("Tcp: A B\nTcp: 1\n").is_err(), "count mismatch");
        assert!(c.parse_into("Tcp: A\nUdp: 1\n").is_err(), "section mismatch");
        assert!(c.parse_into("Tcp: A\n").is_err(), "header alone");
        assert!(c.parse_into("Tcp: A\nTcp: x\n").is_err(), "not a number");
    }
}
