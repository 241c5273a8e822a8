//! Instance registry: stable identity → counter slot, lifecycle and seeding.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use agent_common::{LISTEN_H2C_ONLY, ListenKey, MAX_INSTANCES};

use super::{
    discovery_stats::{DiscoveryStats, ScanNews},
    requests::{AttachNews, PerRequest, PerRequestConfig, RequestFeed, SharedRing, UprobeMode},
    unparsed,
    worker_health::{self, WorkerTrack},
};
use crate::{
    discover::{
        self, DiscoverError, Instance, InstanceKey, RefusalReason, ScanOutcome,
        nginx_conf::{self, ConfVerdict, H2cPorts, InstanceConf},
    },
    kubernetes::MetadataCache,
    probe::{Probe, ProbeError},
};

/// `kind` of errors from the probe's maps.
pub(super) const PROBE_ERROR: &str = "probe";

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
    /// Consecutive scans that could not read one of its processes and kept
    /// it as it was.
    pub unread_scans: u32,
    /// Unparsed-connection reasons already logged for it (unparsed::REASONS order).
    pub unparsed_logged: [bool; 3],
    /// Its workers as last seen, and the respawns counted.
    pub workers: WorkerTrack,
    /// Its listeners as the kernel saw them at the last poll (collect::listen).
    pub listen: super::listen::ListenState,
    /// The socket programs make its per-request records (RED_SLOTS is on
    /// for its slot): per_request is enabled and the uprobe is not attached
    /// to its executable.
    pub socket_requests: bool,
    /// What its config says, and the workers it was read with: a reload
    /// starts new workers, and the config is read again then (not at every
    /// scan).
    pub conf: Option<(Vec<u32>, InstanceConf)>,
    /// The last read's uprobe verdict is not yet counted and logged
    /// (`uprobe: auto`, needs_uprobe).
    pub conf_unreported: bool,
    /// The uprobe verdict last logged.
    pub conf_logged: Option<ConfVerdict>,
    /// Its h2c-only ports (LISTEN_H2C_ONLY), from the config and version.
    pub h2c: H2cPorts,
}

impl Tracked {
    /// A newly discovered instance in `slot`.
    pub fn new(slot: u32, inst: Instance) -> Tracked {
        Tracked {
            slot,
            inst,
            stopped_since: None,
            seeded_active: 0,
            pending_seeds: BTreeSet::new(),
            unread_scans: 0,
            unparsed_logged: [false; 3],
            workers: WorkerTrack::default(),
            listen: Default::default(),
            socket_requests: false,
            conf: None,
            conf_unreported: false,
            conf_logged: None,
            h2c: H2cPorts::default(),
        }
    }
}

/// Scans an instance is kept unchanged while one of its processes cannot be
/// read (a transient EMFILE); after that it is taken for stopped, so a pid
/// reused by an unreadable process cannot keep a dead instance up.
const MAX_UNREAD_SCANS: u32 = 30;

/// What changed in one reconcile, for the caller to log. Every string is
/// safe to log (foreign values escaped).
#[derive(Debug, Default)]
pub struct ScanReport {
    pub discovered: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub forgotten: Vec<String>,
    pub errors: Vec<String>,
    /// Refusals and unreadable processes new since the previous scan.
    pub news: ScanNews,
    /// Per-request uprobe attachments and refusals made by this scan.
    pub per_request: AttachNews,
    /// h2c-only ports found (to log as info) and ports left undecided (to
    /// log as warnings), when an instance's config was read again and they
    /// changed.
    pub h2c: Vec<String>,
    pub h2c_unknown: Vec<String>,
}

pub struct Collector {
    pub(super) probe: Probe,
    pub(super) instances: BTreeMap<InstanceKey, Tracked>,
    pub(super) extra_labels: Vec<(String, String)>,
    /// Pod metadata (kubernetes stage), when the agent runs in Kubernetes.
    pub(super) metadata: Option<MetadataCache>,
    pub(super) discovery: DiscoveryStats,
    proc_root: PathBuf,
    retention: Duration,
    /// Per-request metrics, when enabled and the probe has its ring buffer.
    pub(super) per_request: Option<PerRequest>,
    /// The kernel's CONFIG_HZ (TCP chrono stats are in jiffies); None if unknown.
    pub(super) hz: Option<u32>,
    /// Our counters against nginx's own shared-memory ones.
    pub(super) drift: super::counter_drift::DriftChecks,
}

/// The kernel's CONFIG_HZ, or a warning that stalled-send time is not exposed.
fn kernel_hz() -> Option<u32> {
    let hz = crate::probe::kernel_hz();
    if hz.is_none() {
        tracing::warn!(
            "kernel tick rate unknown (no CONFIG_HZ in /boot/config-RELEASE or /proc/config.gz): \
             ngxprobe_tcp_send_stalled_seconds_total is not exposed"
        );
    }
    hz
}

/// Human-readable name of an instance for logs (quoted and escaped).
pub fn describe(key: &InstanceKey) -> String {
    match &key.container_id {
        Some(id) => format!("{:?} (container {})", key.conf_path, &id[..id.len().min(12)]),
        None => format!("{:?}", key.conf_path),
    }
}

/// The LISTENERS (and SEEDS) value of a connection to `port` of `t`: its
/// slot, with LISTEN_H2C_ONLY if the port speaks only cleartext HTTP/2.
fn listen_value(t: &Tracked, port: u16) -> u32 {
    if t.h2c.ports.contains(&port) {
        t.slot | LISTEN_H2C_ONLY
    } else {
        t.slot
    }
}

/// Reads an instance's config at discovery and again when its workers
/// change (a reload), and decides its h2c-only ports from it and the nginx
/// version; a change of those is logged (into `report`).
fn refresh_conf(proc_root: &std::path::Path, key: &InstanceKey, t: &mut Tracked, report: &mut ScanReport) {
    let fresh = t.conf.as_ref().is_some_and(|(w, _)| *w == t.inst.worker_pids);
    if fresh {
        return;
    }
    let conf = nginx_conf::read_instance_conf(proc_root, t.inst.master_pid, &key.conf_path);
    let h2c = nginx_conf::h2c_ports(&conf, &t.inst.version);
    if h2c != t.h2c {
        let who = describe(key);
        if !h2c.ports.is_empty() {
            report.h2c.push(format!(
                "nginx instance {who}: ports {:?} speak only cleartext HTTP/2 ({}, listen ... http2 without ssl): \
                 bytes read there are never counted as HTTP/1.x requests",
                h2c.ports,
                crate::discover::log_excerpt(&t.inst.version)
            ));
        }
        if let Some((_, why)) = &h2c.unknown {
            report.h2c_unknown.push(format!(
                "nginx instance {who}: h2c-only listeners not decided ({why}): HTTP/1.x bytes sent to such a \
                 listener would be counted as a request nginx does not count"
            ));
        }
        t.h2c = h2c;
    }
    t.conf = Some((t.inst.worker_pids.clone(), conf));
    t.conf_unreported = true;
}

/// Whether an instance needs the request uprobe (`uprobe: auto`): its
/// config has TLS, HTTP/2 or HTTP/3 listeners, or cannot be read for
/// certain (the uprobe is exact where it attaches; the socket probes do not
/// count TLS and HTTP/2 requests). Uses the config as refresh_conf last
/// read it; what it says is counted at each read and logged when it changes.
fn needs_uprobe(
    key: &InstanceKey,
    t: &mut Tracked,
    unknown: &mut BTreeMap<&'static str, u64>,
    news: &mut AttachNews,
) -> bool {
    let Some((_, conf)) = &t.conf else {
        return true;
    };
    if t.conf_unreported {
        t.conf_unreported = false;
        let verdict = &conf.verdict;
        if let ConfVerdict::Unknown(u) = verdict {
            *unknown.entry(u.reason).or_default() += 1;
        }
        let changed = t.conf_logged.as_ref() != Some(verdict);
        if changed {
            let who = describe(key);
            match &verdict {
                ConfVerdict::NeedsUprobe { why } => news.config.push(format!(
                    "nginx instance {who}: TLS, HTTP/2 or HTTP/3 listener ({why}): per-request metrics from the uprobe"
                )),
                ConfVerdict::PlaintextOnly => news.config.push(format!(
                    "nginx instance {who}: plaintext HTTP/1.x listeners only: per-request metrics from the socket \
                     probes unless its executable carries the uprobe for another instance"
                )),
                ConfVerdict::Unknown(u) => {
                    news.config_unknown.push(format!(
                        "nginx instance {who}: config not read for certain ({}: {}): the uprobe is attached as if it \
                         had TLS or HTTP/2 listeners",
                        u.reason, u.detail
                    ));
                }
            }
            t.conf_logged = Some(verdict.clone());
        }
    }
    !matches!(&t.conf, Some((_, c)) if c.verdict == ConfVerdict::PlaintextOnly)
}

impl Collector {
    pub fn new(probe: Probe, proc_root: PathBuf, retention: Duration, extra_labels: Vec<(String, String)>) -> Self {
        Collector {
            probe,
            instances: BTreeMap::new(),
            extra_labels,
            metadata: None,
            discovery: DiscoveryStats::default(),
            proc_root,
            retention,
            hz: kernel_hz(),
            per_request: None,
            drift: Default::default(),
        }
    }

    /// Turns per-request metrics on: returns the ring buffer of request
    /// records and the aggregator its consumer feeds (None when disabled).
    pub fn enable_per_request(&mut self, cfg: PerRequestConfig) -> Option<RequestFeed> {
        if !cfg.enabled {
            return None;
        }
        let ring = SharedRing::new(self.probe.take_request_ring()?);
        let mut pr = PerRequest::new(cfg, self.proc_root.clone());
        pr.ring = Some(ring.clone());
        let agg = pr.agg.clone();
        self.per_request = Some(pr);
        Some((ring, agg))
    }

    /// Attaches the request uprobe to the executables of running instances
    /// (detaching from those no longer run) and tells the aggregator which
    /// processes belong to which instance.
    fn reconcile_per_request(&mut self, report: &mut ScanReport, forgotten: &[InstanceKey]) {
        let Some(pr) = self.per_request.as_mut() else {
            return;
        };
        let mut running = Vec::new();
        let mut pids = std::collections::HashMap::new();
        for (key, t) in self.instances.iter_mut() {
            if t.stopped_since.is_some() {
                continue;
            }
            match pr.cfg.uprobe {
                UprobeMode::Never => {}
                UprobeMode::Always => running.push((t.inst.master_pid, t.inst.exe.clone(), true)),
                UprobeMode::Auto => {
                    let need = needs_uprobe(key, t, &mut pr.conf_unknown, &mut report.per_request);
                    running.push((t.inst.master_pid, t.inst.exe.clone(), need));
                }
            }
            pids.insert(t.inst.master_pid, key.clone());
            for w in &t.inst.worker_pids {
                pids.insert(*w, key.clone());
            }
        }
        pr.attached = pr.attachments.reconcile(
            &mut self.probe,
            &self.proc_root,
            &running,
            pr.cfg.server_name_label,
            &mut report.per_request,
        );
        {
            let mut agg = pr.agg.lock();
            agg.set_pids(pids);
            for k in forgotten {
                agg.forget(k);
            }
        }
        // Per instance, one source of per-request records: the uprobe where
        // it is attached to the instance's executable, else the socket
        // programs (plaintext HTTP/1.x only). An instance whose attachment
        // state is unknown this scan (its executable could not be examined)
        // keeps its source. Attaching happened above, before the socket
        // records are turned off; detaching too, before they are turned on.
        let never = pr.cfg.uprobe == UprobeMode::Never;
        let mut errors = Vec::new();
        for t in self.instances.values_mut() {
            if t.stopped_since.is_some() {
                continue;
            }
            let want = if never {
                true
            } else {
                match pr.attached.get(&t.inst.master_pid) {
                    Some(attached) => !attached,
                    None => continue,
                }
            };
            if want != t.socket_requests {
                match self.probe.set_socket_requests(t.slot, want) {
                    Ok(()) => t.socket_requests = want,
                    Err(e) => errors.push(format!("per-request records from the socket probes: {e}")),
                }
            }
        }
        for e in errors {
            self.error(report, PROBE_ERROR, e);
        }
    }

    pub(super) fn proc_root(&self) -> &std::path::Path {
        &self.proc_root
    }

    /// Labels instances in pods with their namespace, pod and container.
    pub fn set_metadata(&mut self, metadata: MetadataCache) {
        self.metadata = Some(metadata);
    }

    pub fn instance_count(&self) -> usize {
        self.instances.values().filter(|t| t.stopped_since.is_none()).count()
    }

    /// Records a failed scan (the previous view is kept).
    pub fn scan_failed(&mut self, took: Duration, err: &DiscoverError) {
        self.discovery.scans += 1;
        self.discovery.count_error(err.kind());
        self.discovery.last_duration = took;
    }

    fn error(&mut self, report: &mut ScanReport, kind: &'static str, msg: String) {
        self.discovery.count_error(kind);
        report.errors.push(msg);
    }

    /// Reconciles the registry with a fresh discovery scan.
    pub fn apply_scan(&mut self, mut outcome: ScanOutcome, took: Duration, now: Instant) -> ScanReport {
        self.discovery.scans += 1;
        self.discovery.last_duration = took;
        let mut report = ScanReport {
            news: self.discovery.note_scan(&mut outcome),
            ..ScanReport::default()
        };
        let scan = outcome.instances;
        let mut seen: BTreeSet<InstanceKey> = scan.iter().map(|i| i.key.clone()).collect();
        // An instance one of whose processes could not be read this time is
        // not known to have stopped: keep it as it was.
        let unreadable: BTreeSet<u32> = outcome.errors.iter().map(|e| e.pid).collect();
        for (key, t) in self.instances.iter_mut() {
            if seen.contains(key) {
                t.unread_scans = 0;
                continue;
            }
            let mut pids = std::iter::once(&t.inst.master_pid).chain(&t.inst.worker_pids);
            if t.stopped_since.is_none() && t.unread_scans < MAX_UNREAD_SCANS && pids.any(|p| unreadable.contains(p)) {
                t.unread_scans += 1;
                seen.insert(key.clone());
            }
        }
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
                None => match self.free_slot(&mut report) {
                    Some(slot) => {
                        if let Err(e) = self.probe.reset_slot(slot) {
                            self.error(&mut report, PROBE_ERROR, format!("resetting slot {slot}: {e}"));
                            continue;
                        }
                        report.discovered.push(describe(&inst.key));
                        new_keys.push(inst.key.clone());
                        self.instances.insert(inst.key.clone(), Tracked::new(slot, inst));
                    }
                    None => {
                        self.discovery.count_refusal(RefusalReason::TooManyInstances);
                        report.errors.push(format!(
                            "nginx instance {} not tracked: all {MAX_INSTANCES} instance slots are in use",
                            describe(&inst.key)
                        ));
                    }
                },
            }
        }
        let retention = self.retention;
        let mut forgotten_keys = Vec::new();
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
                    forgotten_keys.push(key.clone());
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
                Err(e) => {
                    let msg = format!("finding open connections of {}: {e}", describe(&key));
                    self.error(&mut report, e.kind(), msg);
                }
            }
        }
        // The config decides which ports are h2c-only: read before the
        // listeners are installed with that flag.
        for (key, t) in self.instances.iter_mut() {
            if t.stopped_since.is_none() {
                refresh_conf(&self.proc_root, key, t, &mut report);
            }
        }
        if let Err(e) = self.install_listeners() {
            self.error(&mut report, PROBE_ERROR, e.to_string());
        }
        if let Err(e) = self.follow_workers() {
            self.error(&mut report, PROBE_ERROR, e.to_string());
        }
        for (key, conns) in open_before {
            if let Err(e) = self.seed(&key, &conns) {
                let msg = format!("handing open connections of {} to the probe: {e}", describe(&key));
                self.error(&mut report, PROBE_ERROR, msg);
            }
        }
        if let Err((kind, e)) = self.reconcile_seeds() {
            self.error(&mut report, kind, format!("following connections open at start: {e}"));
        }
        self.reconcile_per_request(&mut report, &forgotten_keys);
        self.check_drift();
        report
    }

    /// Our stub_status view of each running instance against nginx's own
    /// counters (collect::counter_drift).
    fn check_drift(&mut self) {
        let running = |t: &Tracked| t.stopped_since.is_none();
        let instances = &self.instances;
        self.drift.retain(|k| instances.get(k).is_some_and(running));
        for (key, t) in &self.instances {
            if !running(t) {
                continue;
            }
            let Ok(totals) = self.probe.slot_totals(t.slot) else {
                continue;
            };
            let mut ours = super::families::stub_status(&totals, t.seeded_active);
            // As families() adds them: requests the uprobe counted.
            ours.requests += self
                .per_request
                .as_ref()
                .and_then(|pr| pr.agg.lock().instance(key).map(|i| i.unparsed_conn_requests))
                .unwrap_or(0);
            self.drift.check(&self.proc_root, key, t.inst.master_pid, &ours);
        }
    }

    /// One line per instance and reason the first time the instance shows
    /// connections ngxprobe does not parse (TLS, HTTP/2, other).
    pub fn unparsed_news(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, t) in self.instances.iter_mut() {
            if t.stopped_since.is_some() {
                continue;
            }
            let Ok(totals) = self.probe.slot_totals(t.slot) else {
                continue;
            };
            let counts = unparsed::by_reason(&totals);
            for reason in unparsed::first_seen(&mut t.unparsed_logged, counts) {
                let n = unparsed::REASONS
                    .iter()
                    .position(|r| *r == reason)
                    .map_or(0, |i| counts[i]);
                let uprobe = self
                    .per_request
                    .as_ref()
                    .is_some_and(|pr| pr.attached.get(&t.inst.master_pid) == Some(&true));
                out.push(unparsed::message(&describe(key), reason, n, uprobe));
            }
        }
        out
    }

    /// A free counter slot. When every slot is taken, the one of the
    /// instance stopped the longest is reclaimed (forgotten before its
    /// retention ends): a running instance matters more than the `up 0` of
    /// a stopped one. Discovery never admits more running instances than
    /// there are slots.
    fn free_slot(&mut self, report: &mut ScanReport) -> Option<u32> {
        let used: BTreeSet<u32> = self.instances.values().map(|t| t.slot).collect();
        if let Some(slot) = (0..MAX_INSTANCES).find(|s| !used.contains(s)) {
            return Some(slot);
        }
        let key = self
            .instances
            .iter()
            .filter_map(|(k, t)| t.stopped_since.map(|since| (since, k)))
            .min()?
            .1
            .clone();
        let t = self.instances.remove(&key)?;
        report
            .forgotten
            .push(format!("{} (its slot is needed by a running instance)", describe(&key)));
        Some(t.slot)
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
                desired.insert(key, listen_value(t, l.port));
            }
        }
        self.probe.set_listeners(&desired)
    }

    /// Installs the running masters (whose children's exits the programs
    /// count) and follows each instance's workers for respawns.
    fn follow_workers(&mut self) -> Result<(), ProbeError> {
        let mut masters = BTreeMap::new();
        for t in self.instances.values_mut() {
            if t.stopped_since.is_some() {
                continue;
            }
            masters.insert(t.inst.master_pid, t.slot);
            let abnormal = self
                .probe
                .worker_exits(t.slot)
                .map(|e| worker_health::abnormal(&e))
                .unwrap_or(0);
            t.workers.update(&t.inst.worker_pids, abnormal);
            t.workers.read_fds(&t.inst.worker_pids, &self.proc_root);
        }
        self.probe.set_masters(&masters)
    }

    /// Hands connections that were open before we watched to the programs.
    fn seed(&mut self, key: &InstanceKey, conns: &[discover::ExistingConn]) -> Result<(), String> {
        let Some(t) = self.instances.get(key) else {
            return Ok(());
        };
        let values: Vec<u32> = conns.iter().map(|c| listen_value(t, c.local_port)).collect();
        let mut seeded = BTreeSet::new();
        for (c, value) in conns.iter().zip(values) {
            if self.probe.seed_conn(c.cookie, value).map_err(|e| e.to_string())? {
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
    fn reconcile_seeds(&mut self) -> Result<(), (&'static str, String)> {
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
                    .map_err(|e| (e.kind(), e.to_string()))?
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
            self.probe
                .set_seeding(false)
                .map_err(|e| (PROBE_ERROR, e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The config is read at discovery and when the workers change (a
    /// reload), not at every scan; what it says is logged once per change
    /// and an unreadable one counts as needing the uprobe.
    #[test]
    fn config_is_read_again_only_when_the_workers_change() {
        let root = tempfile::tempdir().unwrap();
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("7")).unwrap();
        symlink(root.path(), proc.path().join("7/root")).unwrap();
        let conf = root.path().join("nginx.conf");
        std::fs::write(&conf, "http { server { listen 80; } }").unwrap();
        let key = InstanceKey {
            conf_path: "/nginx.conf".into(),
            container_id: None,
            pod_uid: None,
            netns: 1,
        };
        let mut t = Tracked::new(
            0,
            Instance {
                key: key.clone(),
                master_pid: 7,
                worker_pids: vec![8],
                exe: "/usr/sbin/nginx".into(),
                version: "nginx/1.22.1".into(),
                listeners: vec![],
            },
        );
        let mut unknown = BTreeMap::new();
        let mut news = AttachNews::default();
        let mut need = |t: &mut Tracked, news: &mut AttachNews| {
            refresh_conf(proc.path(), &key, t, &mut ScanReport::default());
            needs_uprobe(&key, t, &mut unknown, news)
        };
        assert!(!need(&mut t, &mut news));
        assert_eq!(news.config.len(), 1, "{news:?}");
        // A TLS listener appears in the file: not seen until a reload.
        std::fs::write(&conf, "http { server { listen 443 ssl; } }").unwrap();
        assert!(!need(&mut t, &mut news));
        t.inst.worker_pids = vec![9];
        assert!(need(&mut t, &mut news));
        assert_eq!(news.config.len(), 2, "{news:?}");
        // The same verdict after another reload is not logged again.
        t.inst.worker_pids = vec![10];
        assert!(need(&mut t, &mut news));
        assert_eq!(news.config.len(), 2, "{news:?}");
        // Unreadable: needs the uprobe, logged and counted.
        std::fs::remove_file(&conf).unwrap();
        t.inst.worker_pids = vec![11];
        assert!(need(&mut t, &mut news));
        assert_eq!(news.config_unknown.len(), 1, "{news:?}");
        assert!(news.config_unknown[0].contains("/nginx.conf"), "{news:?}");
        // Counted at every read, logged once.
        t.inst.worker_pids = vec![12];
        assert!(need(&mut t, &mut news));
        assert_eq!(news.config_unknown.len(), 1, "{news:?}");
        assert_eq!(unknown.get("unreadable"), Some(&2));
    }
}
