//! Which discovered instances are tracked: caps per network namespace, per
//! instance and in total, so that processes started by a neighbour can
//! neither crowd out the real nginx nor use up the agent's tables.
//!
//! The order is stateless and cannot be gamed: masters running as root first
//! (an unprivileged user cannot start one), then older masters first (nobody
//! can make a process older than it is), then by key. So a flood started by
//! another user in the host's namespace takes only what root's nginx leaves,
//! and an instance that is tracked stays tracked while newer ones come and go.
use super::{Instance, Refusal, RefusalReason};
use std::collections::HashMap;

/// An instance found by the scan, before the caps.
#[derive(Debug)]
pub(super) struct Candidate {
    pub inst: Instance,
    /// The master runs as root.
    pub root: bool,
    /// The master's start time (clock ticks after boot).
    pub start_ticks: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub per_netns: usize,
    pub listeners_per_instance: usize,
    /// Instance slots of the probe's counter maps.
    pub instances: usize,
    /// Entries of the probe's listener map.
    pub listeners: usize,
}

/// Admitted instances (sorted by key) and the refusals.
pub(super) fn admit(mut candidates: Vec<Candidate>, limits: &Limits) -> (Vec<Instance>, Vec<Refusal>) {
    candidates.sort_by(|a, b| (!a.root, a.start_ticks, &a.inst.key).cmp(&(!b.root, b.start_ticks, &b.inst.key)));
    let mut per_netns: HashMap<u64, usize> = HashMap::new();
    let mut listeners = 0usize;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for c in candidates {
        let n_listeners = c.inst.listeners.len();
        let in_netns = per_netns.get(&c.inst.key.netns).copied().unwrap_or(0);
        let refusal = if n_listeners > limits.listeners_per_instance {
            Some((
                RefusalReason::TooManyListeners,
                format!(
                    "{n_listeners} listening sockets (discovery.max_listeners_per_instance is {})",
                    limits.listeners_per_instance
                ),
            ))
        } else if in_netns >= limits.per_netns {
            Some((
                RefusalReason::TooManyInstances,
                format!(
                    "{in_netns} instances already tracked in network namespace {} (discovery.max_instances_per_netns)",
                    c.inst.key.netns
                ),
            ))
        } else if admitted.len() >= limits.instances {
            Some((
                RefusalReason::TooManyInstances,
                format!("all {} instance slots are in use", limits.instances),
            ))
        } else if listeners + n_listeners > limits.listeners {
            Some((
                RefusalReason::TooManyListeners,
                format!("the listener table ({} entries) is full", limits.listeners),
            ))
        } else {
            None
        };
        match refusal {
            Some((reason, detail)) => refused.push(Refusal {
                reason,
                subject: describe(&c.inst),
                detail,
            }),
            None => {
                *per_netns.entry(c.inst.key.netns).or_default() += 1;
                listeners += n_listeners;
                admitted.push(c.inst);
            }
        }
    }
    admitted.sort_by(|a, b| a.key.cmp(&b.key));
    (admitted, refused)
}

/// An instance for a log line (its labels are already bounded and checked).
fn describe(inst: &Instance) -> String {
    format!(
        "nginx instance {:?} (netns {}, master pid {})",
        inst.key.conf_path, inst.key.netns, inst.master_pid
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{InstanceKey, Listener};
    use std::net::{IpAddr, Ipv4Addr};

    fn cand(conf: &str, netns: u64, root: bool, start_ticks: u64, n_listeners: u16) -> Candidate {
        Candidate {
            inst: Instance {
                key: InstanceKey {
                    conf_path: conf.into(),
                    container_id: None,
                    pod_uid: None,
                    netns,
                },
                master_pid: start_ticks as u32 + 100,
                worker_pids: vec![],
                exe: "/usr/sbin/nginx".into(),
                version: "nginx/1.22.1".into(),
                listeners: (0..n_listeners)
                    .map(|port| Listener {
                        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        port: 8000 + port,
                    })
                    .collect(),
            },
            root,
            start_ticks,
        }
    }

    const LIMITS: Limits = Limits {
        per_netns: 2,
        listeners_per_instance: 4,
        instances: 5,
        listeners: 12,
    };

    fn confs(v: &[Instance]) -> Vec<&str> {
        v.iter().map(|i| i.key.conf_path.as_str()).collect()
    }

    #[test]
    fn root_and_older_first_within_a_netns() {
        let (ok, refused) = admit(
            vec![
                cand("/flood1", 1, false, 10, 1),
                cand("/flood2", 1, false, 11, 1),
                cand("/real", 1, true, 50, 1),
                cand("/other-ns", 2, false, 60, 1),
            ],
            &LIMITS,
        );
        assert_eq!(confs(&ok), ["/flood1", "/other-ns", "/real"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, RefusalReason::TooManyInstances);
        assert!(refused[0].subject.contains("\"/flood2\""), "{:?}", refused[0]);
    }

    #[test]
    fn listener_caps() {
        let (ok, refused) = admit(
            vec![
                cand("/wide", 1, true, 1, 5),
                cand("/a", 2, true, 2, 4),
                cand("/b", 3, true, 3, 4),
                cand("/c", 4, true, 4, 4),
                cand("/d", 5, true, 5, 4),
            ],
            &LIMITS,
        );
        assert_eq!(confs(&ok), ["/a", "/b", "/c"]);
        let reasons: Vec<_> = refused.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, [RefusalReason::TooManyListeners; 2]);
        assert!(refused[0].detail.contains("5 listening sockets"), "{:?}", refused[0]);
        assert!(refused[1].detail.contains("listener table"), "{:?}", refused[1]);
    }

    #[test]
    fn global_instance_cap() {
        let cands = (0..8).map(|i| cand(&format!("/n{i}"), i, true, i, 0)).collect();
        let (ok, refused) = admit(cands, &LIMITS);
        assert_eq!(ok.len(), LIMITS.instances);
        assert_eq!(refused.len(), 3);
        assert!(
            refused.iter().all(|r| r.detail.contains("instance slots")),
            "{refused:?}"
        );
    }
}
