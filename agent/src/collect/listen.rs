//! Per-listener kernel diagnostics: accept queue, backlog, drops and
//! half-open handshakes of each nginx listener, polled with sock_diag in the
//! instance's network namespace once per discovery cycle (not per packet),
//! and the namespace-wide listen counters next to them.
//!
//! Drops come from each listening socket's sk_drops, which lives and dies
//! with the socket: a restarted nginx gets new sockets starting at 0. The
//! exported counter is the sum, over every socket the agent has seen on that
//! address, of its last sk_drops: a socket's inode tells it from its
//! successor, so the counter never goes back. Drops of a socket between the
//! agent's last poll and its close are lost (at most one poll interval); a
//! socket that existed before the agent started brings its past drops in
//! its first sample, like any counter read for the first time.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::registry::{Collector, Tracked, describe};
use crate::discover::{DiscoverError, Instance, InstanceKey, ListenDiag, ListenSocket, Listener, NetnsListenCounters};
use crate::metrics::{Family, MetricType};

pub const QUEUE_LENGTH: (&str, &str) = (
    "ngxprobe_listen_queue_length",
    "Connections in the listener's accept queue: handshake done, not yet accept()ed by nginx (sock_diag \
     idiag_rqueue of the LISTEN socket = sk_ack_backlog; summed over reuseport sockets)",
);
pub const QUEUE_MAX: (&str, &str) = (
    "ngxprobe_listen_queue_max",
    "Limit of the listener's accept queue: its listen() backlog capped by net.core.somaxconn (sock_diag \
     idiag_wqueue = sk_max_ack_backlog; summed over reuseport sockets); once the queue holds more than this, \
     the kernel drops new handshakes",
);
pub const DROPS: (&str, &str) = (
    "ngxprobe_listen_drops_total",
    "Connection attempts the kernel dropped on the listening socket (sk_drops, counted by tcp_listendrop: a SYN \
     or handshake-completing ACK while the accept queue was full, and other failures to create the connection); \
     kept across nginx restarts that recreate the socket",
);
pub const SYN_RECV: (&str, &str) = (
    "ngxprobe_listen_syn_recv",
    "Handshakes in progress on the listener: SYN received and SYN-ACK sent, final ACK not yet received \
     (request sockets in SYN-RECV, from a sock_diag dump: counted every 5th discovery interval, and at every one \
     while there are some)",
);
pub const NETNS_OVERFLOWS: (&str, &str) = (
    "ngxprobe_netns_listen_overflows_total",
    "Accept-queue overflows in the instance's whole network namespace (TcpExt ListenOverflows of its \
     /proc/net/netstat: every listener of the namespace, nginx's or not; the same value for each instance \
     sharing the namespace)",
);
pub const NETNS_SYNCOOKIES: (&str, &str) = (
    "ngxprobe_netns_syncookies_sent_total",
    "SYN cookies sent in the instance's whole network namespace because a SYN queue was full (TcpExt \
     SyncookiesSent; every listener of the namespace; the same value for each instance sharing the namespace)",
);

/// `listen_address` label value: `127.0.0.1:80`, `[::1]:80`.
pub fn listen_address(l: &Listener) -> String {
    match l.addr {
        IpAddr::V4(a) => format!("{a}:{}", l.port),
        IpAddr::V6(a) => format!("[{a}]:{}", l.port),
    }
}

/// A drop counter that survives the socket being recreated.
#[derive(Debug, Default)]
pub(super) struct DropCounter {
    /// sk_drops of each socket (by inode) at the previous poll.
    last: BTreeMap<u32, u32>,
    total: u64,
}

impl DropCounter {
    /// Adds what each socket dropped since it was last seen (all of it for
    /// a socket seen for the first time) and returns the total; `None` if the
    /// kernel did not report drops for some socket (nothing is guessed).
    pub(super) fn update(&mut self, sockets: &[ListenSocket]) -> Option<u64> {
        let mut now = BTreeMap::new();
        for s in sockets {
            now.insert(s.inode, s.drops?);
        }
        for (inode, drops) in &now {
            // sk_drops is a 32-bit atomic: wrapping_sub spans one wrap.
            let before = self.last.get(inode).copied().unwrap_or(0);
            self.total += u64::from(drops.wrapping_sub(before));
        }
        self.last = now;
        Some(self.total)
    }
}

/// One listener's row of the latest poll.
#[derive(Debug, Clone)]
struct Row {
    address: String,
    queue_len: u64,
    queue_max: u64,
    syn_recv: u64,
    drops_total: Option<u64>,
}

/// Per-instance state kept by the registry.
#[derive(Debug, Default)]
pub(super) struct ListenState {
    /// Latest successful poll; cleared when a poll fails (nothing stale).
    rows: Option<Vec<Row>>,
    netns: Option<NetnsListenCounters>,
    drops: BTreeMap<String, DropCounter>,
    last_error: Option<String>,
    /// Polls since request sockets were last counted.
    polls_since_syn_recv: u32,
}

/// Request sockets (half-open handshakes) are counted at least every this
/// many polls (discovery.interval each), and at every poll while a listener
/// has some: counting them walks the kernel's whole connection table (see
/// `discover::sock_diag::dump_listeners`), and a listener under normal load
/// has none for longer than a round trip.
const SYN_RECV_EVERY: u32 = 5;

impl ListenState {
    /// Whether the next poll should count request sockets.
    fn wants_syn_recv(&self) -> bool {
        match &self.rows {
            None => true,
            Some(rows) => self.polls_since_syn_recv + 1 >= SYN_RECV_EVERY || rows.iter().any(|r| r.syn_recv > 0),
        }
    }
}

/// What the discovery loop needs to poll, taken under the lock and used
/// without it.
pub struct ListenTargets {
    pub proc_root: PathBuf,
    pub instances: Vec<Instance>,
    /// Network namespaces whose request sockets are counted this poll.
    pub syn_recv_netns: std::collections::BTreeSet<u64>,
}

impl ListenTargets {
    /// Polls every instance: one sock_diag dump per network namespace,
    /// shared by the instances running there.
    pub fn poll(self) -> Vec<(InstanceKey, Result<ListenDiag, DiscoverError>)> {
        let mut dumps: BTreeMap<u64, crate::discover::NetnsDump> = BTreeMap::new();
        self.instances
            .into_iter()
            .map(|inst| {
                let r = match dumps.get(&inst.key.netns) {
                    Some(d) => Ok(d.for_instance(&inst)),
                    None => {
                        let syn_recv = self.syn_recv_netns.contains(&inst.key.netns);
                        crate::discover::dump_netns_of(&inst, &self.proc_root, syn_recv).map(|d| {
                            let diag = d.for_instance(&inst);
                            dumps.insert(inst.key.netns, d);
                            diag
                        })
                    }
                };
                (inst.key, r)
            })
            .collect()
    }
}

impl Collector {
    /// Running instances with listeners, for [`ListenTargets::poll`].
    pub fn listen_targets(&self) -> ListenTargets {
        let polled: Vec<&Tracked> = self
            .instances
            .values()
            .filter(|t| t.stopped_since.is_none() && !t.inst.listeners.is_empty())
            .collect();
        ListenTargets {
            proc_root: self.proc_root().to_path_buf(),
            syn_recv_netns: polled
                .iter()
                .filter(|t| t.listen.wants_syn_recv())
                .map(|t| t.inst.key.netns)
                .collect(),
            instances: polled.iter().map(|t| t.inst.clone()).collect(),
        }
    }

    /// Takes a poll's results; returns log lines for failures that are new
    /// for an instance (and for its recovery), each said once.
    pub fn apply_listen(&mut self, polled: Vec<(InstanceKey, Result<ListenDiag, DiscoverError>)>) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, result) in polled {
            let Some(t) = self.instances.get_mut(&key) else {
                continue;
            };
            let st = &mut t.listen;
            match result {
                Ok(diag) => {
                    if st.last_error.take().is_some() {
                        lines.push(format!("listener diagnostics of {} available again", describe(&key)));
                    }
                    let mut rows = Vec::new();
                    for q in diag.queues.iter().filter(|q| !q.sockets.is_empty()) {
                        let address = listen_address(&q.listener);
                        let drops_total = st.drops.entry(address.clone()).or_default().update(&q.sockets);
                        // Not counted this poll: the last count stands.
                        let syn_recv = if diag.syn_recv_counted {
                            q.syn_recv
                        } else {
                            st.rows
                                .iter()
                                .flatten()
                                .find(|r| r.address == address)
                                .map_or(0, |r| r.syn_recv)
                        };
                        rows.push(Row {
                            address,
                            queue_len: q.queue_len,
                            queue_max: q.queue_max,
                            syn_recv,
                            drops_total,
                        });
                    }
                    st.polls_since_syn_recv = if diag.syn_recv_counted {
                        0
                    } else {
                        st.polls_since_syn_recv.saturating_add(1)
                    };
                    st.rows = Some(rows);
                    st.netns = diag.netns;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.discovery.count_error(e.kind());
                    st.rows = None;
                    st.netns = None;
                    if st.last_error.as_deref() != Some(msg.as_str()) {
                        lines.push(format!(
                            "listener diagnostics of {} unavailable (not exported until they are): {msg}",
                            describe(&key)
                        ));
                        st.last_error = Some(msg);
                    }
                }
            }
        }
        lines
    }

    /// The listen families, one sample per running instance and listener.
    pub(super) fn listen_families(&self) -> Vec<Family> {
        let fam = |d: (&str, &str), k| Family::new(d.0, d.1, k);
        let mut len = fam(QUEUE_LENGTH, MetricType::Gauge);
        let mut max = fam(QUEUE_MAX, MetricType::Gauge);
        let mut drops = fam(DROPS, MetricType::Counter);
        let mut syn = fam(SYN_RECV, MetricType::Gauge);
        let mut overflows = fam(NETNS_OVERFLOWS, MetricType::Counter);
        let mut cookies = fam(NETNS_SYNCOOKIES, MetricType::Counter);
        for t in self.instances.values().filter(|t| t.stopped_since.is_none()) {
            let labels = self.labels(t);
            for r in t.listen.rows.iter().flatten() {
                let mut l = labels.clone();
                l.push(("listen_address".into(), r.address.clone()));
                len.push_owned(l.clone(), r.queue_len as f64);
                max.push_owned(l.clone(), r.queue_max as f64);
                syn.push_owned(l.clone(), r.syn_recv as f64);
                if let Some(d) = r.drops_total {
                    drops.push_owned(l, d as f64);
                }
            }
            if let Some(n) = t.listen.netns {
                overflows.push_owned(labels.clone(), n.listen_overflows as f64);
                cookies.push_owned(labels, n.syncookies_sent as f64);
            }
        }
        vec![len, max, drops, syn, overflows, cookies]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(inode: u32, drops: u32) -> ListenSocket {
        ListenSocket {
            inode,
            drops: Some(drops),
        }
    }

    #[test]
    fn drops_never_go_back_when_the_socket_is_recreated() {
        let mut c = DropCounter::default();
        assert_eq!(c.update(&[s(1, 5)]), Some(5), "first sight brings its past drops");
        assert_eq!(c.update(&[s(1, 8)]), Some(8));
        // nginx restarted: a new socket, its own count from 0.
        assert_eq!(c.update(&[s(2, 0)]), Some(8));
        assert_eq!(c.update(&[s(2, 3)]), Some(11));
        // reuseport: two sockets on one address, counted each.
        assert_eq!(c.update(&[s(2, 4), s(3, 2)]), Some(14));
        // sk_drops wrapped around 2^32.
        let mut w = DropCounter::default();
        w.update(&[s(9, u32::MAX - 1)]);
        assert_eq!(w.update(&[s(9, 1)]), Some(u64::from(u32::MAX) - 1 + 3));
    }

    fn row(syn_recv: u64) -> Row {
        Row {
            address: "127.0.0.1:80".into(),
            queue_len: 0,
            queue_max: 511,
            syn_recv,
            drops_total: Some(0),
        }
    }

    #[test]
    fn request_sockets_are_counted_every_few_polls_and_every_poll_while_there_are_some() {
        let mut st = ListenState::default();
        assert!(st.wants_syn_recv(), "never polled");
        st.rows = Some(vec![row(0)]);
        let mut counted = Vec::new();
        for _ in 0..2 * SYN_RECV_EVERY {
            let walk = st.wants_syn_recv();
            counted.push(walk);
            st.polls_since_syn_recv = if walk { 0 } else { st.polls_since_syn_recv + 1 };
        }
        assert_eq!(counted.iter().filter(|w| **w).count(), 2, "{counted:?}");
        st.rows = Some(vec![row(3)]);
        st.polls_since_syn_recv = 0;
        assert!(st.wants_syn_recv(), "half-open handshakes seen: count again");
    }

    #[test]
    fn unknown_drops_are_not_guessed() {
        let mut c = DropCounter::default();
        assert_eq!(c.update(&[s(1, 5)]), Some(5));
        let unknown = ListenSocket { inode: 1, drops: None };
        assert_eq!(c.update(&[unknown]), None);
    }

    #[test]
    fn addresses_are_labelled_like_nginx_listen() {
        let v4 = Listener {
            addr: "0.0.0.0".parse().unwrap(),
            port: 80,
        };
        let v6 = Listener {
            addr: "::1".parse().unwrap(),
            port: 8443,
        };
        assert_eq!(listen_address(&v4), "0.0.0.0:80");
        assert_eq!(listen_address(&v6), "[::1]:8443");
    }
}
