//! Instance registry: stable identity → counter slot, lifecycle and seeding.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use agent_common::{ListenKey, MAX_INSTANCES};

use super::families::DiscoveryStats;
use crate::{
    discover::{self, Instance, InstanceKey},
    probe::{Probe, ProbeError},
};

/// One instance the agent knows of, running or recently stopped.
pub(super) struct Tracked {
    pub slot: u32,
    pub inst: Instance,
    /// Set while the instance is not running; dropped after the retention.
    pub stopped_since: Option<Instant>,
    /// Connections found open at discovery (sock_diag) and handed to the
    /// programs: they were accepted before we watched, so `active` starts here.
    pub seeded_active: i64,
    /// Seeds (socket cookies) the programs have not adopted yet.
    pub pending_seeds: BTreeSet<u64>,
}

/// What changed in one reconcile, for the caller to log.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub discovered: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub forgotten: Vec<String>,
    pub errors: Vec<String>,
}

pub struct Collector {
    pub(super) probe: Probe,
    pub(super) instances: BTreeMap<InstanceKey, Tracked>,
    pub(super) extra_labels: Vec<(String, String)>,
    pub(super) discovery: DiscoveryStats,
    proc_root: PathBuf,
    retention: Duration,
}

/// Human-readable name of an instance for logs.
pub fn describe(key: &InstanceKey) -> String {
    match &key.container_id {
        Some(id) => format!("{} (container {})", key.conf_path, &id[..id.len().min(12)]),
        None => key.conf_path.clone(),
    }
}

impl Collector {
    pub fn new(probe: Probe, proc_root: PathBuf, retention: Duration, extra_labels: Vec<(String, String)>) -> Self {
        Collector {
            probe,
            instances: BTreeMap::new(),
            extra_labels,
            discovery: DiscoveryStats::default(),
            proc_root,
            retention,
        }
    }

    pub fn instance_count(&self) -> usize {
        self.instances.values().filter(|t| t.stopped_since.is_none()).count()
    }

    /// Records a failed scan (the previous view is kept).
    pub fn scan_failed(&mut self, took: Duration) {
        self.discovery.scans += 1;
        self.discovery.errors += 1;
        self.discovery.last_duration = took;
    }

    /// Reconciles the registry with a fresh discovery scan.
    pub fn apply_scan(&mut self, scan: Vec<Instance>, took: Duration, now: Instant) -> ScanReport {
        self.discovery.scans += 1;
        self.discovery.last_duration = took;
        let mut report = ScanReport::default();
        let seen: BTreeSet<InstanceKey> = scan.iter().map(|i| i.key.clone()).collect();
        let mut new_keys = Vec::new();
        for inst in scan {
            match self.instances.get_mut(&inst.key) {
                Some(t) => {
                    if t.stopped_since.take().is_some() {
                        report.restarted.push(describe(&inst.key));
                        new_keys.push(inst.key.clone());
                    }
                    t.inst = inst;
                }
                None => match self.free_slot() {
                    Some(slot) => {
                        if let Err(e) = self.probe.reset_slot(slot) {
                            report.errors.push(format!("resetting slot {slot}: {e}"));
                            continue;
                        }
                        report.discovered.push(describe(&inst.key));
                        new_keys.push(inst.key.clone());
                        self.instances.insert(
                            inst.key.clone(),
                            Tracked {
                                slot,
                                inst,
                                stopped_since: None,
                                seeded_active: 0,
                                pending_seeds: BTreeSet::new(),
                            },
                        );
                    }
                    None => report.errors.push(format!(
                        "nginx instance {} not tracked: all {MAX_INSTANCES} instance slots are in use",
                        describe(&inst.key)
                    )),
                },
            }
        }
        let retention = self.retention;
        self.instances.retain(|key, t| {
            if seen.contains(key) {
                return true;
            }
            match t.stopped_since {
                None => {
                    t.stopped_since = Some(now);
                    report.stopped.push(describe(key));
                    true
                }
                Some(since) if now.duration_since(since) > retention => {
                    report.forgotten.push(describe(key));
                    false
                }
                Some(_) => true,
            }
        });
        // Connections open *before* the listener is installed were accepted
        // unseen: list them first, then install, then hand them over. One
        // accepted in between is tracked by the programs instead, never twice.
        let mut open_before = Vec::new();
        for key in new_keys {
            let Some(t) = self.instances.get(&key) else { continue };
            match discover::existing_conns(&t.inst, &self.proc_root) {
                Ok(conns) => open_before.push((key, conns)),
                Err(e) => report
                    .errors
                    .push(format!("finding open connections of {}: {e}", describe(&key))),
            }
        }
        if let Err(e) = self.install_listeners() {
            report.errors.push(e.to_string());
        }
        for (key, conns) in open_before {
            if let Err(e) = self.seed(&key, &conns) {
                report.errors.push(format!(
                    "handing open connections of {} to the probe: {e}",
                    describe(&key)
                ));
            }
        }
        if let Err(e) = self.reconcile_seeds() {
            report.errors.push(format!("following connections open at start: {e}"));
        }
        report
    }

    fn free_slot(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self.instances.values().map(|t| t.slot).collect();
        (0..MAX_INSTANCES).find(|s| !used.contains(s))
    }

    fn install_listeners(&mut self) -> Result<(), ProbeError> {
        let mut desired = BTreeMap::new();
        for t in self.instances.values() {
            if t.stopped_since.is_some() {
                continue;
            }
            for l in &t.inst.listeners {
                let key = ListenKey {
                    // Namespace inode numbers are 32-bit in the kernel (ns_common.inum).
                    netns: t.inst.key.netns as u32,
                    port: l.port,
                    _pad: 0,
                };
                desired.insert(key, t.slot);
            }
        }
        self.probe.set_listeners(&desired)
    }

    /// Hands connections that were open before we watched to the programs.
    fn seed(&mut self, key: &InstanceKey, conns: &[discover::ExistingConn]) -> Result<(), String> {
        let Some(slot) = self.instances.get(key).map(|t| t.slot) else {
            return Ok(());
        };
        let mut seeded = BTreeSet::new();
        for c in conns {
            if self.probe.seed_conn(c.cookie, slot).map_err(|e| e.to_string())? {
                seeded.insert(c.cookie);
            }
        }
        if let Some(t) = self.instances.get_mut(key) {
            t.seeded_active += seeded.len() as i64;
            t.pending_seeds.extend(seeded);
        }
        Ok(())
    }

    /// Follows seeds until the programs adopt them (at the socket's first
    /// event, which includes its close). A seed whose socket vanished first
    /// (it closed between the listing and the hand-over) is withdrawn and no
    /// longer counted. Seed lookups in the programs stop when none is left.
    fn reconcile_seeds(&mut self) -> Result<(), String> {
        let keys: Vec<InstanceKey> = self
            .instances
            .iter()
            .filter(|(_, t)| !t.pending_seeds.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(t) = self.instances.get(&key) else { continue };
            let inst = t.inst.clone();
            let pending = t.pending_seeds.clone();
            let stopped = t.stopped_since.is_some();
            let open: BTreeSet<u64> = if stopped {
                BTreeSet::new()
            } else {
                discover::existing_conns(&inst, &self.proc_root)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|c| c.cookie)
                    .collect()
            };
            let mut withdrawn = 0i64;
            let mut done = BTreeSet::new();
            for cookie in pending {
                if !self.probe.seed_pending(cookie) {
                    done.insert(cookie);
                } else if !open.contains(&cookie) {
                    if self.probe.withdraw_seed(cookie) {
                        withdrawn += 1;
                    }
                    done.insert(cookie);
                }
            }
            if let Some(t) = self.instances.get_mut(&key) {
                t.seeded_active -= withdrawn;
                t.pending_seeds.retain(|c| !done.contains(c));
            }
        }
        if self.instances.values().all(|t| t.pending_seeds.is_empty()) {
            self.probe.set_seeding(false).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
