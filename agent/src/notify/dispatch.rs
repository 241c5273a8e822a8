//! Alertmanager's dispatcher and notification log as a clock-free state
//! machine: every method takes `now`, so tests drive time by hand.
//!
//! - alert store: alerts by fingerprint, merged like Alertmanager's provider
//!   (overlapping activity ranges merge; EndsAt unset → now + resolve_timeout);
//! - aggregation groups per (route, group labels): first flush after
//!   group_wait (at once for alerts older than that), then every
//!   group_interval; resolved alerts leave a group after a successful flush;
//! - inhibition at flush time (mute stage);
//! - notification log dedup: an integration is notified when its firing set
//!   grew, all alerts resolved, (send_resolved) the resolved set grew, or
//!   repeat_interval passed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::clock::{next_tick_after, time_after};
use super::compile::{Compiled, GroupBy, InhibitRule, Route};
use crate::alerts::Alert;
use crate::series::labels_string;

/// Prometheus' label-set fingerprint (FNV-1a 64 over name, 0xff, value, 0xff).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    if labels.is_empty() {
        return OFFSET;
    }
    let mut h = OFFSET;
    let mut add = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    for (k, v) in labels {
        k.bytes().for_each(&mut add);
        add(0xff);
        v.bytes().for_each(&mut add);
        add(0xff);
    }
    h
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "unix_nanos")]
    pub starts_at: SystemTime,
    #[serde(with = "unix_nanos")]
    pub ends_at: SystemTime,
    pub generator_url: String,
    #[serde(with = "unix_nanos")]
    pub updated_at: SystemTime,
    /// EndsAt was not given: it is now + resolve_timeout, and any explicit
    /// EndsAt wins in a merge.
    pub timeout: bool,
}

impl StoredAlert {
    pub fn resolved_at(&self, now: SystemTime) -> bool {
        self.ends_at <= now
    }
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.labels)
    }

    /// Alertmanager's `Alert.Merge`: `self` is the stored one, `new` arrived.
    fn merge(&self, new: &StoredAlert) -> StoredAlert {
        let (old, young) = if new.updated_at < self.updated_at {
            (new, self)
        } else {
            (self, new)
        };
        let mut res = young.clone();
        if old.starts_at < young.starts_at {
            res.starts_at = old.starts_at;
        }
        let now = young.updated_at;
        if young.resolved_at(now) {
            if old.resolved_at(now) && old.ends_at > young.ends_at {
                res.ends_at = old.ends_at;
            }
        } else if old.ends_at > young.ends_at && !old.timeout {
            res.ends_at = old.ends_at;
        }
        res
    }
}

mod unix_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let n = t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        s.serialize_u64(u64::try_from(n).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(super::super::clock::time_after(
            UNIX_EPOCH,
            Duration::from_nanos(u64::deserialize(d)?),
        ))
    }
}

/// Identity of an aggregation group: route key + group labels.
pub type GroupKey = String;

#[derive(Debug)]
struct Group {
    route: Route,
    labels: BTreeMap<String, String>,
    /// fingerprint → (alert, version at insert)
    alerts: BTreeMap<u64, (StoredAlert, u64)>,
    next_flush: SystemTime,
    has_flushed: bool,
    in_flight: bool,
    /// When the group was first seen with no alerts left. Alertmanager keeps
    /// such a group (and its group_interval cadence) until its periodic
    /// maintenance, so an alert arriving meanwhile goes out at the next tick
    /// rather than after a fresh group_wait.
    emptied_at: Option<SystemTime>,
}

/// What one flush of one group hands to the notify pipeline.
#[derive(Clone, Debug)]
pub struct FlushJob {
    pub group_key: GroupKey,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub repeat_interval: Duration,
    /// Not muted, in Alertmanager's order, with their status as of the flush.
    pub alerts: Vec<(StoredAlert, bool)>,
    /// Resolved alerts in this flush: (fingerprint, version), removed from the
    /// group after success unless they changed meanwhile.
    pub resolved_versions: Vec<(u64, u64)>,
    /// Flush deadline: retries stop here (max(group_interval, 10s)).
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Dispatcher {
    compiled: Compiled,
    store: HashMap<u64, (StoredAlert, u64)>,
    groups: BTreeMap<GroupKey, Group>,
    version: u64,
}

pub const MIN_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Resolved alerts stay in the store this long (Alertmanager's GC period).
const STORE_RETENTION: Duration = Duration::from_secs(30 * 60);
/// Alertmanager's dispatcher maintenance period: empty groups live at most this long.
const EMPTY_GROUP_RETENTION: Duration = Duration::from_secs(30);

impl Dispatcher {
    pub fn new(compiled: Compiled) -> Dispatcher {
        Dispatcher {
            compiled,
            store: HashMap::new(),
            groups: BTreeMap::new(),
            version: 0,
        }
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Swaps in a new config; alerts are re-routed into fresh groups
    /// (Alertmanager rebuilds its dispatcher on reload too).
    pub fn reload(&mut self, compiled: Compiled, now: SystemTime) {
        self.compiled = compiled;
        self.groups.clear();
        let alerts: Vec<StoredAlert> = self.store.values().map(|(a, _)| a.clone()).collect();
        for a in alerts {
            self.route_alert(a, now);
        }
    }

    /// Alertmanager's POST /api/v2/alerts plus the dispatcher's insert.
    pub fn insert(&mut self, alert: &Alert, now: SystemTime) {
        let mut a = StoredAlert {
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at: alert.starts_at,
            ends_at: alert.ends_at,
            generator_url: alert.generator_url.clone(),
            updated_at: now,
            timeout: false,
        };
        if a.labels.is_empty() {
            return;
        }
        if a.starts_at == UNIX_EPOCH {
            a.starts_at = if a.ends_at == UNIX_EPOCH { now } else { a.ends_at };
        }
        if a.ends_at == UNIX_EPOCH {
            a.timeout = true;
            a.ends_at = time_after(now, self.compiled.resolve_timeout);
        }
        self.insert_stored(a, now);
    }

    /// Inserts an already-normalised alert (also used to restore state).
    pub fn insert_stored(&mut self, mut a: StoredAlert, now: SystemTime) {
        let fp = a.fingerprint();
        if let Some((old, _)) = self.store.get(&fp) {
            let overlap = (a.ends_at > old.starts_at && a.ends_at < old.ends_at)
                || (a.starts_at > old.starts_at && a.starts_at < old.ends_at);
            if overlap {
                a = old.merge(&a);
            }
        }
        self.version += 1;
        self.store.insert(fp, (a.clone(), self.version));
        self.route_alert(a, now);
    }

    fn route_alert(&mut self, a: StoredAlert, now: SystemTime) {
        let fp = a.fingerprint();
        let version = self.store.get(&fp).map(|(_, v)| *v).unwrap_or(0);
        let routes: Vec<Route> = self.compiled.route.matching(&a.labels).into_iter().cloned().collect();
        for route in routes {
            let labels: BTreeMap<String, String> = match &route.group_by {
                GroupBy::All => a.labels.clone(),
                GroupBy::Labels(names) => names
                    .iter()
                    .filter_map(|n| a.labels.get(n).map(|v| (n.clone(), v.clone())))
                    .collect(),
            };
            let key = format!("{}:{}", route.key, labels_string(&labels));
            let group = self.groups.entry(key).or_insert_with(|| Group {
                next_flush: time_after(now, route.group_wait),
                route: route.clone(),
                labels,
                alerts: BTreeMap::new(),
                has_flushed: false,
                in_flight: false,
                emptied_at: None,
            });
            group.emptied_at = None;
            if !group.has_flushed && time_after(a.starts_at, group.route.group_wait) < now {
                group.next_flush = now;
            }
            group.alerts.insert(fp, (a.clone(), version));
        }
    }

    /// When the next group flush is due.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.groups
            .values()
            .filter(|g| !g.in_flight)
            .map(|g| g.next_flush)
            .min()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn alert_count(&self) -> usize {
        self.store.len()
    }

    /// Every stored alert, for persistence.
    pub fn stored_alerts(&self) -> Vec<StoredAlert> {
        let mut v: Vec<StoredAlert> = self.store.values().map(|(a, _)| a.clone()).collect();
        v.sort_by_key(|a| a.fingerprint());
        v
    }

    /// Flushes due groups: returns the jobs and marks those groups in flight.
    pub fn due(&mut self, now: SystemTime) -> Vec<FlushJob> {
        // GC: resolved alerts nobody holds, after the retention.
        let held: BTreeSet<u64> = self.groups.values().flat_map(|g| g.alerts.keys().copied()).collect();
        self.store.retain(|fp, (a, _)| {
            held.contains(fp) || !a.resolved_at(now) || time_after(a.ends_at, STORE_RETENTION) > now
        });
        // Groups with nothing left are dropped at Alertmanager's maintenance
        // (every 30 s); until then they keep their flush cadence.
        for g in self.groups.values_mut() {
            if g.alerts.is_empty() && g.emptied_at.is_none() {
                g.emptied_at = Some(now);
            }
        }
        self.groups
            .retain(|_, g| g.in_flight || g.emptied_at.is_none_or(|t| now < time_after(t, EMPTY_GROUP_RETENTION)));
        // An empty group's tick sends nothing; keep the cadence.
        for g in self.groups.values_mut() {
            if g.alerts.is_empty() && !g.in_flight && g.next_flush <= now {
                g.next_flush = next_tick_after(g.next_flush, g.route.group_interval, now);
            }
        }

        let mut jobs = Vec::new();
        let keys: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.in_flight && g.next_flush <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(g) = self.groups.get(&key) else { continue };
            let mut alerts: Vec<(StoredAlert, bool)> = g
                .alerts
                .values()
                .filter(|(a, _)| !self.muted(a, now))
                .map(|(a, _)| (a.clone(), a.resolved_at(now)))
                .collect();
            alerts.sort_by(|(a, _), (b, _)| alert_order(a, b));
            let resolved_versions = g
                .alerts
                .iter()
                .filter(|(_, (a, _))| a.resolved_at(now))
                .map(|(fp, (_, v))| (*fp, *v))
                .collect();
            let job = FlushJob {
                group_key: key.clone(),
                receiver: g.route.receiver.clone(),
                group_labels: g.labels.clone(),
                repeat_interval: g.route.repeat_interval,
                alerts,
                resolved_versions,
                timeout: g.route.group_interval.max(MIN_FLUSH_TIMEOUT),
            };
            if let Some(g) = self.groups.get_mut(&key) {
                g.next_flush = time_after(now, g.route.group_interval);
                g.has_flushed = true;
                g.in_flight = true;
            }
            jobs.push(job);
        }
        jobs
    }

    /// The notify pipeline finished a job; `ok` when every integration
    /// succeeded (or had nothing to send).
    pub fn complete(&mut self, job: &FlushJob, ok: bool) {
        let Some(g) = self.groups.get_mut(&job.group_key) else {
            return;
        };
        g.in_flight = false;
        if ok {
            for (fp, version) in &job.resolved_versions {
                if g.alerts.get(fp).map(|(_, v)| v) == Some(version) {
                    g.alerts.remove(fp);
                }
            }
        }
    }

    /// Inhibition: some firing source alert (other than this one's two-sided
    /// twins) with equal `equal` labels mutes a matching target.
    pub fn muted(&self, a: &StoredAlert, now: SystemTime) -> bool {
        self.compiled
            .inhibit_rules
            .iter()
            .any(|r| inhibits(r, a, self.store.values().map(|(s, _)| s), now))
    }
}

fn inhibits<'a>(
    r: &InhibitRule,
    target: &StoredAlert,
    sources: impl Iterator<Item = &'a StoredAlert>,
    now: SystemTime,
) -> bool {
    if !r.target.iter().all(|m| m.matches(&target.labels)) {
        return false;
    }
    let two_sided = r.source.iter().all(|m| m.matches(&target.labels));
    sources
        .filter(|s| !s.resolved_at(now))
        .filter(|s| r.source.iter().all(|m| m.matches(&s.labels)))
        .filter(|s| r.equal.iter().all(|n| s.labels.get(n) == target.labels.get(n)))
        .any(|s| !(two_sided && r.target.iter().all(|m| m.matches(&s.labels))))
}

/// Alertmanager's AlertSlice order: `job`, then `instance` (alerts having
/// the label first), then the label sets.
fn alert_order(a: &StoredAlert, b: &StoredAlert) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for k in ["job", "instance"] {
        match (a.labels.get(k), b.labels.get(k)) {
            (None, None) => continue,
            (None, Some(_)) => return Ordering::Greater,
            (Some(_), None) => return Ordering::Less,
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
    }
    label_sets_before(&a.labels, &b.labels)
}

/// `model.LabelSet.Before`: names then values, pairwise in sorted order.
fn label_sets_before(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    if a.len() != b.len() {
        // Go compares by length first only when one is a prefix; use the
        // pairwise order and fall back to length.
    }
    for ((ka, va), (kb, vb)) in a.iter().zip(b.iter()) {
        match ka.cmp(kb) {
            Ordering::Equal => {}
            o => return o,
        }
        match va.cmp(vb) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    a.len().cmp(&b.len())
}

// ---- notification log ----------------------------------------------------

/// What was last sent to one integration for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NflogEntry {
    pub firing: BTreeSet<u64>,
    pub resolved: BTreeSet<u64>,
    #[serde(with = "unix_nanos")]
    pub timestamp: SystemTime,
}

/// (receiver, integration name, integration index, group key) → last sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Nflog {
    pub entries: BTreeMap<String, NflogEntry>,
}

/// Entries older than this are forgotten (Alertmanager's default retention).
pub const NFLOG_RETENTION: Duration = Duration::from_secs(120 * 3600);

pub fn nflog_key(receiver: &str, integration: &str, index: usize, group_key: &str) -> String {
    format!("{receiver}/{integration}/{index}/{group_key}")
}

impl Nflog {
    pub fn get(&self, key: &str) -> Option<&NflogEntry> {
        self.entries.get(key)
    }

    pub fn log(&mut self, key: String, firing: BTreeSet<u64>, resolved: BTreeSet<u64>, now: SystemTime) {
        self.entries.insert(
            key,
            NflogEntry {
                firing,
                resolved,
                timestamp: now,
            },
        );
    }

    pub fn gc(&mut self, now: SystemTime) {
        self.entries
            .retain(|_, e| time_after(e.timestamp, NFLOG_RETENTION) > now);
    }
}

/// Alertmanager's DedupStage decision.
pub fn needs_update(
    entry: Option<&NflogEntry>,
    firing: &BTreeSet<u64>,
    resolved: &BTreeSet<u64>,
    send_resolved: bool,
    repeat: Duration,
    now: SystemTime,
) -> bool {
    let Some(entry) = entry else {
        return !firing.is_empty();
    };
    if !firing.is_subset(&entry.firing) {
        return true;
    }
    if firing.is_empty() {
        return !entry.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&entry.resolved) {
        return true;
    }
    time_after(entry.timestamp, repeat) <= now
}
