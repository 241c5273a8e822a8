//! Worker health: exits of each instance's worker processes by cause (from
//! the kernel's sched_process_exit and oom:mark_victim, for children of the
//! instance's master), respawns, and each worker's descriptors vs its limit.
//!
//! Every child of the master counts as a worker here (cache manager and
//! loader too): they are all respawned by the master the same way.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use agent_common::WorkerExits;

use crate::metrics::{Family, MetricType};

/// Signals shown even at zero, so a first crash is an increase from 0 (a
/// series that appears at 1 is invisible to increase()).
const ALWAYS_SHOWN: [usize; 6] = [4, 6, 7, 8, 9, 11];

/// Linux x86/arm signal names, by number.
const SIGNALS: [&str; 32] = [
    "SIGRT",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// Workers seen under one master, to count respawns.
#[derive(Debug, Default)]
pub struct WorkerTrack {
    known: BTreeSet<u32>,
    /// Workers that replaced one that died abnormally (signal or OOM).
    pub respawns: u64,
    started: bool,
    /// Open descriptors and their limit per worker, read by the discovery
    /// loop (whose thread may read other users' /proc/PID/fd; the scrape
    /// threads keep no capabilities).
    pub fds: BTreeMap<u32, (Option<f64>, Option<f64>)>,
}

impl WorkerTrack {
    /// Follows the master's workers after a scan. A new worker counts as a
    /// respawn while abnormal exits outnumber the respawns counted so far:
    /// workers started at a reload (after normal exits) do not count.
    pub fn update(&mut self, workers: &[u32], abnormal_exits: u64) {
        let new = workers.iter().filter(|p| !self.known.contains(p)).count() as u64;
        if self.started {
            let owed = abnormal_exits.saturating_sub(self.respawns);
            self.respawns += new.min(owed);
        } else {
            // The first scan finds the workers already running.
            self.started = true;
        }
        self.known = workers.iter().copied().collect();
    }

    /// Reads each worker's descriptors and limit from `proc_root`/PID.
    pub fn read_fds(&mut self, workers: &[u32], proc_root: &Path) {
        self.fds = workers
            .iter()
            .map(|pid| {
                let dir = proc_root.join(pid.to_string());
                (*pid, (crate::expose::open_fds(&dir), crate::expose::max_fds(&dir)))
            })
            .collect();
    }
}

pub fn abnormal(e: &WorkerExits) -> u64 {
    e.by_signal.iter().fold(e.oom, |a, b| a.wrapping_add(*b))
}

pub struct WorkerFamilies {
    exits: Family,
    respawns: Family,
    open_fds: Family,
    max_fds: Family,
}

impl WorkerFamilies {
    pub fn new() -> Self {
        let g = |name, help| Family::new(name, help, MetricType::Gauge);
        WorkerFamilies {
            exits: Family::new(
                "ngxprobe_nginx_worker_exits_total",
                "Worker processes of the nginx instance that exited, by cause (exit: by themselves, as at reload \
                 or shutdown; signal: killed by the signal in `signal`; oom: chosen by the OOM killer)",
                MetricType::Counter,
            ),
            respawns: Family::new(
                "ngxprobe_nginx_worker_respawns_total",
                "Workers nginx's master started to replace one killed by a signal or the OOM killer",
                MetricType::Counter,
            ),
            open_fds: g(
                "ngxprobe_nginx_worker_open_fds",
                "Open file descriptors of each nginx worker process",
            ),
            max_fds: g(
                "ngxprobe_nginx_worker_max_fds",
                "Open file descriptor limit (soft RLIMIT_NOFILE) of each nginx worker process",
            ),
        }
    }

    /// Adds one instance: its exits, respawns and its workers' descriptors
    /// (as the last discovery scan read them; a worker gone since is left out).
    pub fn add(&mut self, labels: &[(String, String)], e: &WorkerExits, track: &WorkerTrack) {
        let with = |cause: &str, signal: &str| {
            let mut l = labels.to_vec();
            l.push(("cause".into(), cause.into()));
            l.push(("signal".into(), signal.into()));
            l
        };
        self.exits.push_owned(with("exit", ""), e.exited as f64);
        self.exits.push_owned(with("oom", "SIGKILL"), e.oom as f64);
        for (sig, n) in e.by_signal.iter().enumerate() {
            if *n > 0 || ALWAYS_SHOWN.contains(&sig) {
                self.exits.push_owned(with("signal", SIGNALS[sig]), *n as f64);
            }
        }
        self.respawns.push_owned(labels.to_vec(), track.respawns as f64);
        for (pid, (open, max)) in &track.fds {
            let mut l = labels.to_vec();
            l.push(("pid".into(), pid.to_string()));
            if let Some(n) = open {
                self.open_fds.push_owned(l.clone(), *n);
            }
            if let Some(n) = max {
                self.max_fds.push_owned(l, *n);
            }
        }
    }

    pub fn into_families(self) -> Vec<Family> {
        vec![self.exits, self.respawns, self.open_fds, self.max_fds]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_is_not_a_respawn_but_replacing_a_crashed_worker_is() {
        let mut t = WorkerTrack::default();
        t.update(&[10, 11], 0);
        assert_eq!(t.respawns, 0);
        // Reload: all workers replaced after normal exits.
        t.update(&[20, 21], 0);
        assert_eq!(t.respawns, 0);
        // One killed by SIGSEGV and replaced.
        t.update(&[20, 22], 1);
        assert_eq!(t.respawns, 1);
        // Later scans, same workers: nothing new.
        t.update(&[20, 22], 1);
        assert_eq!(t.respawns, 1);
        // A reload after a crash: only the one owed counts.
        t.update(&[30, 31], 2);
        assert_eq!(t.respawns, 2);
        t.update(&[40, 41], 2);
        assert_eq!(t.respawns, 2);
    }

    #[test]
    fn exits_by_signal_are_named_and_common_crashes_always_shown() {
        let mut e = WorkerExits::default();
        e.by_signal[11] = 2;
        e.by_signal[15] = 1;
        e.exited = 4;
        let mut f = WorkerFamilies::new();
        let labels = vec![("conf_path".to_string(), "/x".to_string())];
        let mut track = WorkerTrack::default();
        track.read_fds(&[std::process::id()], Path::new("/proc"));
        f.add(&labels, &e, &track);
        let fams = f.into_families();
        let value = |cause: &str, sig: &str| {
            fams[0]
                .samples
                .iter()
                .find(|s| {
                    s.labels.contains(&("cause".into(), cause.into()))
                        && s.labels.contains(&("signal".into(), sig.into()))
                })
                .map(|s| s.value)
        };
        assert_eq!(value("signal", "SIGSEGV"), Some(2.0));
        assert_eq!(value("signal", "SIGTERM"), Some(1.0));
        assert_eq!(value("signal", "SIGKILL"), Some(0.0));
        assert_eq!(value("signal", "SIGHUP"), None);
        assert_eq!(value("exit", ""), Some(4.0));
        assert_eq!(abnormal(&e), 3);
        // This process's descriptors, read like a worker's.
        let pid = std::process::id().to_string();
        let fds = |i: usize| {
            fams[i]
                .samples
                .iter()
                .find(|s| s.labels.contains(&("pid".into(), pid.clone())))
                .map(|s| s.value)
        };
        assert!(fds(2).is_some_and(|n| n >= 3.0), "{:?}", fams[2]);
        assert!(fds(3).is_some_and(|n| n >= fds(2).unwrap_or(0.0)), "{:?}", fams[3]);
    }
}
