//! The kernel's view of an instance's listening sockets —
//! accept queue, backlog, drops, handshakes in progress — from one
//! sock_diag dump (LISTEN + SYN-RECV) in the instance's network namespace,
//! plus the namespace-wide listen counters of /proc/net/netstat
//! ([`dump_netns_of`], then [`NetnsDump::for_instance`] for each instance
//! running in that namespace).
//!
//! Cheap enough for every collect cycle: two netlink dumps (IPv4, IPv6) of
//! the namespace's listening and half-open sockets, no per-packet hook.
use super::conns::in_instance_netns;
use super::sock_diag::{self, DiagSocket};
use super::{DiscoverError, Instance, Listener};
use std::net::IpAddr;
use std::path::Path;

/// One listening socket of a listener (several share one address with
/// `reuseport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSocket {
    /// Socket inode: tells a socket recreated at restart from the old one.
    pub inode: u32,
    /// sk_drops of the socket, if the kernel sent SK_MEMINFO_DROPS.
    pub drops: Option<u32>,
}

/// Kernel state of one listener (`addr:port`) of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenQueue {
    pub listener: Listener,
    /// Connections in the accept queue (sk_ack_backlog), summed over the sockets.
    pub queue_len: u64,
    /// The accept queue's limit (sk_max_ack_backlog), summed over the sockets.
    pub queue_max: u64,
    /// Request sockets in SYN-RECV addressed to this listener.
    pub syn_recv: u64,
    /// The listening sockets found; empty if the listener vanished since
    /// the scan (then it is not reported).
    pub sockets: Vec<ListenSocket>,
}

/// Namespace-wide counters from /proc/net/netstat (TcpExt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsListenCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syncookies_sent: u64,
}

/// Everything [`NetnsDump::for_instance`] found for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenDiag {
    pub queues: Vec<ListenQueue>,
    /// `None` if /proc/net/netstat could not be read or lacks the fields.
    pub netns: Option<NetnsListenCounters>,
    /// Whether `ListenQueue::syn_recv` was counted in this dump (else 0).
    pub syn_recv_counted: bool,
}

/// One namespace's listening and SYN-RECV sockets and its netstat, as
/// dumped once for every instance that runs there.
#[derive(Clone, Debug)]
pub struct NetnsDump {
    sockets: Vec<DiagSocket>,
    netstat: Option<NetnsListenCounters>,
    /// Whether request sockets were dumped.
    syn_recv: bool,
}

impl NetnsDump {
    /// The instance's listeners in this dump (`inst` must run in the
    /// namespace the dump was taken in).
    pub fn for_instance(&self, inst: &Instance) -> ListenDiag {
        ListenDiag {
            queues: queues_of(&inst.listeners, &self.sockets),
            netns: self.netstat,
            syn_recv_counted: self.syn_recv,
        }
    }
}

/// Dumps the network namespace `inst` runs in (sock_diag there, and its
/// /proc/net/netstat).
/// Request sockets (SYN-RECV) are counted only if `syn_recv`: see
/// [`sock_diag::dump_listeners`] for what that costs.
pub fn dump_netns_of(inst: &Instance, proc_root: &Path, syn_recv: bool) -> Result<NetnsDump, DiscoverError> {
    type Dumped = (Vec<DiagSocket>, Option<String>);
    fn with_netstat(syn_recv: bool) -> Result<Dumped, DiscoverError> {
        let sockets = sock_diag::dump_listeners(syn_recv)?;
        // thread-self: this thread's namespace (it may have setns()ed).
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").ok();
        Ok((sockets, netstat))
    }
    // A plain function runs in the namespace: one per choice.
    let f: fn() -> Result<Dumped, DiscoverError> = if syn_recv {
        || with_netstat(true)
    } else {
        || with_netstat(false)
    };
    let (sockets, netstat) = in_instance_netns(inst, proc_root, f)?;
    Ok(NetnsDump {
        sockets,
        netstat: netstat.as_deref().and_then(parse_netstat),
        syn_recv,
    })
}

/// Groups the dump by the instance's listeners. A listening socket belongs
/// to the listener with its exact address and port; a request socket to the
/// listener its SYN was for: same port and address, else the wildcard of
/// its family, else `[::]` (a dual-stack IPv6 listener takes IPv4 too).
pub(super) fn queues_of(listeners: &[Listener], sockets: &[DiagSocket]) -> Vec<ListenQueue> {
    let mut out: Vec<ListenQueue> = listeners
        .iter()
        .map(|l| ListenQueue {
            listener: l.clone(),
            queue_len: 0,
            queue_max: 0,
            syn_recv: 0,
            sockets: Vec::new(),
        })
        .collect();
    for s in sockets {
        if s.is_listen() {
            if let Some(q) = out
                .iter_mut()
                .find(|q| q.listener.port == s.local_port && q.listener.addr == s.local_addr)
            {
                q.queue_len += u64::from(s.rqueue);
                q.queue_max += u64::from(s.wqueue);
                q.sockets.push(ListenSocket {
                    inode: s.inode,
                    drops: s.drops,
                });
            }
        } else if let Some(i) = listener_for(listeners, s.local_addr, s.local_port) {
            out[i].syn_recv += 1;
        }
    }
    out
}

fn listener_for(listeners: &[Listener], addr: IpAddr, port: u16) -> Option<usize> {
    let find = |f: &dyn Fn(&Listener) -> bool| listeners.iter().position(|l| l.port == port && f(l));
    let unspecified_v6 = |l: &Listener| matches!(l.addr, IpAddr::V6(a) if a.is_unspecified());
    find(&|l| l.addr == addr)
        .or_else(|| find(&|l| l.addr.is_unspecified() && l.addr.is_ipv4() == addr.is_ipv4()))
        .or_else(|| find(&unspecified_v6))
}

/// ListenOverflows, ListenDrops and SyncookiesSent from /proc/net/netstat
/// (a `TcpExt:` header line of names, then one of values).
pub(super) fn parse_netstat(text: &str) -> Option<NetnsListenCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    let mut c = NetnsListenCounters::default();
    let mut found = 0;
    for (n, v) in names.zip(values) {
        let slot = match n {
            "ListenOverflows" => &mut c.listen_overflows,
            "ListenDrops" => &mut c.listen_drops,
            "SyncookiesSent" => &mut c.syncookies_sent,
            _ => continue,
        };
        *slot = v.parse().ok()?;
        found += 1;
    }
    (found == 3).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn sock(state: u8, addr: IpAddr, port: u16, rq: u32, wq: u32, inode: u32, drops: Option<u32>) -> DiagSocket {
        DiagSocket {
            cookie: 0,
            local_port: port,
            local_addr: addr,
            state,
            rqueue: rq,
            wqueue: wq,
            inode,
            drops,
        }
    }

    const LISTEN: u8 = 10;
    const SYN_RECV: u8 = 3;

    #[test]
    fn groups_sockets_by_listener() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let listeners = vec![
            Listener { addr: lo, port: 80 },
            Listener { addr: any4, port: 81 },
            Listener { addr: any6, port: 82 },
        ];
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let dump = vec![
            // Two reuseport sockets on 127.0.0.1:80, one elsewhere on :80 (not ours).
            sock(LISTEN, lo, 80, 2, 4, 1, Some(3)),
            sock(LISTEN, lo, 80, 1, 4, 2, Some(0)),
            sock(LISTEN, other, 80, 9, 9, 3, Some(9)),
            sock(LISTEN, any4, 81, 0, 511, 4, None),
            sock(SYN_RECV, lo, 80, 0, 0, 0, None),
            sock(SYN_RECV, other, 81, 0, 0, 0, None), // wildcard v4 listener
            sock(SYN_RECV, other, 82, 0, 0, 0, None), // only [::] on :82
            sock(SYN_RECV, other, 99, 0, 0, 0, None), // nobody's
        ];
        let q = queues_of(&listeners, &dump);
        assert_eq!((q[0].queue_len, q[0].queue_max, q[0].syn_recv), (3, 8, 1));
        assert_eq!(
            q[0].sockets,
            vec![
                ListenSocket {
                    inode: 1,
                    drops: Some(3)
                },
                ListenSocket {
                    inode: 2,
                    drops: Some(0)
                }
            ]
        );
        assert_eq!((q[1].queue_len, q[1].queue_max, q[1].syn_recv), (0, 511, 1));
        assert_eq!(
            (q[2].syn_recv, q[2].sockets.len()),
            (1, 0),
            "no listening socket seen for :82"
        );
    }

    #[test]
    fn parses_netstat() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\nTcpExt: 1 2 3 4\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat(text),
            Some(NetnsListenCounters {
                listen_overflows: 3,
                listen_drops: 4,
                syncookies_sent: 1
            })
        );
        assert_eq!(
            parse_netstat("TcpExt: ListenDrops\nTcpExt: 4\n"),
            None,
            "fields missing"
        );
        assert_eq!(
            parse_netstat("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 x 3\n"),
            None
        );
        assert_eq!(parse_netstat(""), None);
    }

    /// A real listener with backlog 1 that never accepts, in the test's own
    /// namespace: the dump shows its queue at 2 (full is "more than the
    /// backlog"), its backlog, and sk_drops counting the refused attempts.
    #[test]
    fn real_listener_overflow_is_seen() {
        // SAFETY: plain syscalls on fds owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        let l = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            unsafe { libc::bind(l.as_raw_fd(), (&sin as *const libc::sockaddr_in).cast(), len) },
            0
        );
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
        let mut got: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut glen = len;
        assert_eq!(
            unsafe { libc::getsockname(l.as_raw_fd(), (&mut got as *mut libc::sockaddr_in).cast(), &mut glen) },
            0
        );
        let port = u16::from_be(got.sin_port);
        let listener = Listener {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        };
        let find = || {
            let dump = sock_diag::dump_listeners(true).expect("sock_diag dump");
            queues_of(std::slice::from_ref(&listener), &dump).remove(0)
        };
        let q = find();
        assert_eq!((q.queue_len, q.queue_max, q.sockets.len()), (0, 1, 1), "{q:?}");
        assert_eq!(q.sockets[0].drops, Some(0));

        // Blocking connects would hang on the dropped SYNs: non-blocking.
        let mut clients = Vec::new();
        for _ in 0..6 {
            let c = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            assert!(c >= 0);
            unsafe { libc::connect(c, (&got as *const libc::sockaddr_in).cast(), len) };
            clients.push(unsafe { OwnedFd::from_raw_fd(c) });
        }
        // Bounded wait for the handshakes that fit to complete.
        let mut q = find();
        for _ in 0..200 {
            if q.queue_len == 2 && q.sockets[0].drops.unwrap_or(0) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            q = find();
        }
        assert_eq!((q.queue_len, q.queue_max), (2, 1), "{q:?}");
        assert!(
            q.sockets[0].drops.unwrap_or(0) >= 4,
            "4 SYNs beyond the queue were dropped: {q:?}"
        );
        drop(clients);
    }
}
