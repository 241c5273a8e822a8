//! Aggregates request records into per-instance histograms, with a bounded
//! number of label sets per instance.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// The record path looks up three maps per request (process, instance,
/// label set); std's SipHash (DoS-resistant, slower) buys nothing for keys
/// the agent makes itself, and was most of the consumer's time.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use agent_common::{
    REQ_FLAG_HTTP2, REQ_FLAG_NO_LINE, REQ_FLAG_NO_VERSION, REQ_FLAG_SOCKET, REQ_FLAG_SSL, RequestRecord,
};

use super::config::PerRequestConfig;
use crate::discover::InstanceKey;

/// How long an exited process of an instance still has its records
/// attributed: well above the consumer's wait for records (200 ms, or a
/// scrape) plus a discovery scan, so records it sent before it exited count.
const GONE_GRACE: Duration = Duration::from_secs(5);

/// Label value for a method or status not kept as its own value.
pub const OTHER: &str = "_OTHER";

/// One label set of the http_server_* families (instance labels aside).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub method: &'static str,
    /// None: folded (`_OTHER`).
    pub status: Option<u16>,
    pub version: &'static str,
    pub scheme: &'static str,
    pub port: u16,
    /// The answering server block's name; None when the label is off.
    pub server_name: Option<String>,
}

impl SeriesKey {
    /// The labels, OpenTelemetry's names as Prometheus exports them.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut l = vec![
            ("http_request_method", self.method.to_string()),
            (
                "http_response_status_code",
                self.status.map_or_else(|| OTHER.to_string(), |s| s.to_string()),
            ),
            ("network_protocol_version", self.version.to_string()),
            ("url_scheme", self.scheme.to_string()),
            ("server_port", self.port.to_string()),
        ];
        if let Some(name) = &self.server_name {
            l.push(("server_name", name.clone()));
        }
        l
    }
}

/// Observations per bucket (the last one is +Inf) and their sum, in the
/// record's integer unit (ms or bytes) so sums do not drift.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl Hist {
    fn new(bounds: usize) -> Self {
        Hist {
            counts: vec![0; bounds + 1],
            sum: 0,
        }
    }

    /// `value` in the bounds' unit goes in the first bucket whose bound is >= it.
    fn observe(&mut self, bounds: &[f64], value: f64, raw: u64) {
        let i = bounds.partition_point(|b| *b < value);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum = self.sum.saturating_add(raw);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SeriesStats {
    /// Sum in microseconds (the uprobe's are whole milliseconds, nginx's
    /// resolution).
    pub duration: Hist,
    pub request_size: Hist,
    pub response_size: Hist,
}

/// One instance's requests since the agent started watching it.
#[derive(Clone, Debug, Default)]
pub struct InstanceRequests {
    /// Unordered: families sort the label sets when they lay them out.
    pub series: FastMap<SeriesKey, SeriesStats>,
    /// Requests whose label set was beyond the cap, counted under `_OTHER`.
    pub folded: u64,
    /// Requests over TLS or HTTP/2: the socket probes do not parse those
    /// connections, so these are the requests they leave out.
    pub unparsed_conn_requests: u64,
    /// Socket-probe records with a label the probes could not read, by
    /// reason (SOCKET_UNLABELLED order): counted under `_OTHER`, not guessed.
    pub socket_unlabelled: [u64; 3],
}

/// Reasons a socket-probe record has `_OTHER` labels, in
/// `InstanceRequests::socket_unlabelled` order: `pipelined` (nginx made the
/// request from bytes read with the previous one, so its request line was
/// never read: method and version `_OTHER`, and its bytes count in the
/// previous request), `no_version` (the request line's end was not in the
/// first bytes of the read: version `_OTHER`), `no_response` (no status line
/// was sent, e.g. the client closed first: status `_OTHER`).
pub const SOCKET_UNLABELLED: [&str; 3] = ["pipelined", "no_version", "no_response"];

/// nginx's method bits (ngx_http_request.h) → OpenTelemetry's known methods.
fn method_name(bit: u32) -> &'static str {
    match bit {
        0x2 => "GET",
        0x4 => "HEAD",
        0x8 => "POST",
        0x10 => "PUT",
        0x20 => "DELETE",
        0x200 => "OPTIONS",
        0x4000 => "PATCH",
        0x8000 => "TRACE",
        0x1_0000 => "CONNECT",
        _ => OTHER,
    }
}

/// nginx's http_version → network.protocol.version.
fn version_name(v: u32) -> &'static str {
    match v {
        9 => "0.9",
        1000 => "1.0",
        1001 => "1.1",
        2000 => "2",
        3000 => "3",
        _ => OTHER,
    }
}

/// Where [`Aggregator::resolve_owner`] found a process's instance.
enum Owner {
    /// In `pids` (listed by the last scan, or added now by its parent).
    InPids,
    /// In `gone`: exited lately.
    Gone,
    Unknown,
}

pub struct Aggregator {
    /// Seconds.
    duration_bounds: Vec<f64>,
    size_bounds: Vec<f64>,
    max_series: usize,
    server_name_label: bool,
    proc_root: PathBuf,
    instances: FastMap<InstanceKey, InstanceRequests>,
    /// nginx processes (masters and workers) → their instance.
    pids: FastMap<u32, InstanceKey>,
    /// Processes looked up in /proc and found to be no tracked instance's.
    strangers: FastSet<u32>,
    /// Processes of instances that the last scans no longer list (exited:
    /// a reload, a crash), with when that was seen: their last records may
    /// still wait in the ring when the scan notices the exit.
    gone: FastMap<u32, (InstanceKey, Instant)>,
    /// Records from processes of no tracked instance.
    pub unattributed: u64,
}

impl Aggregator {
    pub fn new(cfg: &PerRequestConfig, proc_root: PathBuf) -> Self {
        Aggregator {
            duration_bounds: cfg.duration_buckets.clone(),
            size_bounds: cfg.size_buckets.clone(),
            max_series: cfg.max_series_per_instance as usize,
            server_name_label: cfg.server_name_label,
            proc_root,
            instances: FastMap::default(),
            pids: FastMap::default(),
            strangers: FastSet::default(),
            gone: FastMap::default(),
            unattributed: 0,
        }
    }

    /// The processes of tracked instances, after each discovery scan.
    pub fn set_pids(&mut self, pids: HashMap<u32, InstanceKey>) {
        self.set_pids_at(pids, Instant::now());
    }

    fn set_pids_at(&mut self, pids: HashMap<u32, InstanceKey>, now: Instant) {
        let old = std::mem::replace(&mut self.pids, pids.into_iter().collect());
        for (pid, key) in old {
            if !self.pids.contains_key(&pid) {
                self.gone.insert(pid, (key, now));
            }
        }
        self.gone
            .retain(|pid, (_, since)| !self.pids.contains_key(pid) && now.duration_since(*since) < GONE_GRACE);
        self.strangers.clear();
    }

    /// Drops a forgotten instance's series.
    pub fn forget(&mut self, key: &InstanceKey) {
        self.instances.remove(key);
        self.gone.retain(|_, (k, _)| k != key);
    }

    pub fn instance(&self, key: &InstanceKey) -> Option<&InstanceRequests> {
        self.instances.get(key)
    }

    /// Whether process `tgid` belongs to an instance, and where its key is:
    /// known from the last scan, or a worker started since (after a reload,
    /// a crash) whose parent (`ppid`, from the record, else /proc) is a known
    /// master, or a process that exited within [`GONE_GRACE`] after a scan
    /// listed it (a live process is always judged by its parent: its pid may
    /// be reused).
    fn resolve_owner(&mut self, tgid: u32, ppid: u32) -> Owner {
        if self.pids.contains_key(&tgid) {
            return Owner::InPids;
        }
        // The parent the kernel gave when the record was made: a worker
        // started and gone between two scans still has its master.
        if ppid != 0
            && let Some(k) = self.pids.get(&ppid).cloned()
        {
            self.pids.insert(tgid, k);
            return Owner::InPids;
        }
        if self.strangers.contains(&tgid) {
            return Owner::Unknown;
        }
        let parent = std::fs::read_to_string(self.proc_root.join(tgid.to_string()).join("stat"))
            .ok()
            .and_then(|s| parent_pid(&s));
        let Some(parent) = parent else {
            // Exited: a process the scans knew until lately, else a stranger.
            if self.gone.contains_key(&tgid) {
                return Owner::Gone;
            }
            self.strangers.insert(tgid);
            return Owner::Unknown;
        };
        match self.pids.get(&parent).cloned() {
            Some(k) => {
                self.pids.insert(tgid, k);
                Owner::InPids
            }
            None => {
                self.strangers.insert(tgid);
                Owner::Unknown
            }
        }
    }

    pub fn record(&mut self, rec: &RequestRecord) {
        // The instance key is borrowed from `pids`, not cloned: this runs
        // for every request and should not allocate.
        let inst = match self.resolve_owner(rec.tgid, rec.ppid) {
            Owner::InPids => self.pids.get(&rec.tgid),
            Owner::Gone => self.gone.get(&rec.tgid).map(|(k, _)| k),
            Owner::Unknown => None,
        };
        let Some(inst) = inst else {
            self.unattributed += 1;
            return;
        };
        // nginx logs an HTTP/0.9 request without a status as 009.
        let status = if rec.status == 0 && rec.http_version == 9 {
            9
        } else {
            rec.status
        };
        let socket = rec.flags & REQ_FLAG_SOCKET != 0;
        let mut key = SeriesKey {
            method: method_name(rec.method),
            // The socket probes see no status for a request without a
            // response (nginx logs 499, 408, 444, ...): `_OTHER`.
            status: u16::try_from(status).ok().filter(|s| *s < 1000 && !(socket && *s == 0)),
            version: version_name(rec.http_version),
            scheme: if rec.flags & REQ_FLAG_SSL != 0 { "https" } else { "http" },
            port: rec.port,
            server_name: self.server_name_label.then(|| server_name_of(rec)),
        };
        let n_durations = self.duration_bounds.len();
        let n_sizes = self.size_bounds.len();
        // One lookup when the instance has records already (every record
        // but its first); the key is cloned only for the first.
        let entry = match self.instances.get_mut(inst) {
            Some(e) => e,
            None => self.instances.entry(inst.clone()).or_default(),
        };
        if rec.flags & (REQ_FLAG_SSL | REQ_FLAG_HTTP2) != 0 {
            entry.unparsed_conn_requests += 1;
        }
        if socket {
            if rec.flags & REQ_FLAG_NO_LINE != 0 {
                entry.socket_unlabelled[0] += 1;
            } else if rec.flags & REQ_FLAG_NO_VERSION != 0 {
                entry.socket_unlabelled[1] += 1;
            }
            if key.status.is_none() {
                entry.socket_unlabelled[2] += 1;
            }
        }
        let s = match entry.series.get_mut(&key) {
            Some(s) => s,
            None => {
                if entry.series.len() >= self.max_series {
                    entry.folded += 1;
                    key.method = OTHER;
                    key.status = None;
                }
                entry.series.entry(key).or_insert_with(|| SeriesStats {
                    duration: Hist::new(n_durations),
                    request_size: Hist::new(n_sizes),
                    response_size: Hist::new(n_sizes),
                })
            }
        };
        // Compared in seconds, as the bounds were given: 500 µs / 1e6 is
        // the same double as a bound written 0.0005 (upper-inclusive holds).
        s.duration
            .observe(&self.duration_bounds, rec.duration_us as f64 / 1e6, rec.duration_us);
        s.request_size
            .observe(&self.size_bounds, rec.request_length as f64, rec.request_length);
        s.response_size
            .observe(&self.size_bounds, rec.body_bytes_sent as f64, rec.body_bytes_sent);
    }
}

/// The record's server name as a label value: nginx lowercases names at
/// config time; bytes that are not UTF-8 are replaced, a name longer than
/// the record holds ends in "...", an unreadable one is "".
fn server_name_of(rec: &RequestRecord) -> String {
    let len = rec.server_name_len as usize;
    let kept = len.min(rec.server_name.len());
    let mut s = String::from_utf8_lossy(&rec.server_name[..kept]).into_owned();
    if len > kept {
        s.push_str("...");
    }
    s
}

/// Field 4 of /proc/PID/stat (after the parenthesised command, which may
/// itself contain spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(conf: &str) -> InstanceKey {
        InstanceKey {
            netns: 1,
            conf_path: conf.into(),
            container_id: None,
            pod_uid: None,
        }
    }

    fn rec(tgid: u32, status: u32, ms: u64) -> RequestRecord {
        rec_us(tgid, status, ms * 1000)
    }

    fn rec_us(tgid: u32, status: u32, us: u64) -> RequestRecord {
        RequestRecord {
            tgid,
            status,
            method: 2,
            http_version: 1001,
            flags: 0,
            port: 8080,
            duration_us: us,
            request_length: 100,
            bytes_sent: 300,
            body_bytes_sent: 200,
            ..Default::default()
        }
    }

    fn agg(cap: u32) -> Aggregator {
        let cfg = PerRequestConfig {
            max_series_per_instance: cap,
            ..Default::default()
        };
        let mut a = Aggregator::new(&cfg, PathBuf::from("/nonexistent-proc"));
        a.set_pids(HashMap::from([(10, key("/a")), (11, key("/a"))]));
        a
    }

    #[test]
    fn buckets_are_upper_inclusive_in_ms() {
        let mut a = agg(10);
        for ms in [0, 1, 2, 1000, 99_999] {
            a.record(&rec(10, 200, ms));
        }
        let i = a.instance(&key("/a")).unwrap();
        let s = i.series.values().next().unwrap();
        // bounds 0.5ms, 1ms, 2.5ms, ... 10s, +Inf
        assert_eq!(s.duration.counts[0], 1);
        assert_eq!(s.duration.counts[1], 1);
        assert_eq!(s.duration.counts[2], 1);
        assert_eq!(s.duration.counts[10], 1);
        assert_eq!(s.duration.counts[14], 1);
        assert_eq!(s.duration.sum, 101_002_000);
        assert_eq!(s.response_size.sum, 1000);
    }

    /// Socket-probe durations are microseconds: a static file's 80 µs lands
    /// at or below 0.5 ms, not in nginx's "0 ms"; exactly 500 µs stays in
    /// the 0.5 ms bucket (upper-inclusive), 501 µs does not.
    #[test]
    fn sub_millisecond_durations_resolve() {
        let mut a = agg(10);
        for us in [80, 500, 501, 2_499, 2_501] {
            a.record(&rec_us(10, 200, us));
        }
        let i = a.instance(&key("/a")).unwrap();
        let s = i.series.values().next().unwrap();
        assert_eq!(&s.duration.counts[..4], &[2, 1, 1, 1]);
        assert_eq!(s.duration.sum, 80 + 500 + 501 + 2_499 + 2_501);
    }

    #[test]
    fn label_sets_beyond_the_cap_fold_and_are_counted() {
        let mut a = agg(3);
        for status in 200..210 {
            a.record(&rec(11, status, 1));
        }
        let i = a.instance(&key("/a")).unwrap();
        assert_eq!(i.folded, 7);
        assert_eq!(i.series.len(), 4);
        let other = i.series.iter().find(|(k, _)| k.status.is_none()).unwrap();
        assert!(other.0.labels().iter().all(|(n, _)| *n != "server_name"));
        assert_eq!((other.0.method, other.1.duration.count()), (OTHER, 7));
        // A kept label set still gets its own series.
        a.record(&rec(10, 200, 1));
        assert_eq!(a.instance(&key("/a")).unwrap().folded, 7);
    }

    #[test]
    fn unknown_processes_are_not_attributed_and_tls_h2_counted() {
        let mut a = agg(10);
        a.record(&rec(99, 200, 1));
        assert_eq!(a.unattributed, 1);
        let mut r = rec(10, 200, 1);
        r.flags = REQ_FLAG_SSL;
        a.record(&r);
        r.flags = REQ_FLAG_HTTP2;
        r.http_version = 2000;
        a.record(&r);
        a.record(&rec(10, 200, 1));
        let i = a.instance(&key("/a")).unwrap();
        assert_eq!(i.unparsed_conn_requests, 2);
        let versions: Vec<_> = i.series.keys().map(|k| (k.version, k.scheme)).collect();
        assert!(versions.contains(&("2", "http")) && versions.contains(&("1.1", "https")));
    }

    #[test]
    fn socket_records_without_a_label_are_other_and_counted() {
        let mut a = agg(10);
        let mut r = rec(10, 200, 1);
        r.flags = REQ_FLAG_SOCKET;
        a.record(&r);
        r.flags = REQ_FLAG_SOCKET | REQ_FLAG_NO_LINE | REQ_FLAG_NO_VERSION;
        r.method = agent_common::METHOD_UNKNOWN;
        r.http_version = agent_common::VERSION_UNKNOWN;
        a.record(&r);
        r.flags = REQ_FLAG_SOCKET | REQ_FLAG_NO_VERSION;
        r.method = 8;
        a.record(&r);
        r.flags = REQ_FLAG_SOCKET;
        r.http_version = 1001;
        r.status = 0;
        a.record(&r);
        let i = a.instance(&key("/a")).unwrap();
        assert_eq!(i.socket_unlabelled, [1, 1, 1]);
        assert_eq!(i.unparsed_conn_requests, 0);
        let keys: Vec<_> = i.series.keys().map(|k| (k.method, k.status, k.version)).collect();
        assert!(keys.contains(&("GET", Some(200), "1.1")), "{keys:?}");
        assert!(keys.contains(&(OTHER, Some(200), OTHER)), "{keys:?}");
        assert!(keys.contains(&("POST", Some(200), OTHER)), "{keys:?}");
        assert!(keys.contains(&("POST", None, "1.1")), "{keys:?}");
        // The uprobe's HTTP/0.9 request without a status stays 009.
        let mut u = rec(10, 0, 1);
        u.http_version = 9;
        a.record(&u);
        assert!(
            a.instance(&key("/a"))
                .unwrap()
                .series
                .keys()
                .any(|k| k.status == Some(9))
        );
    }

    #[test]
    fn server_name_label_comes_from_the_record() {
        let cfg = PerRequestConfig {
            server_name_label: true,
            ..Default::default()
        };
        let mut a = Aggregator::new(&cfg, PathBuf::from("/nonexistent-proc"));
        a.set_pids(HashMap::from([(10, key("/a"))]));
        let mut r = rec(10, 200, 1);
        r.server_name[..4].copy_from_slice(b"main");
        r.server_name_len = 4;
        a.record(&r);
        r.server_name_len = 100;
        r.server_name = [b'x'; agent_common::SERVER_NAME_MAX];
        a.record(&r);
        let mut names: Vec<String> = a
            .instance(&key("/a"))
            .unwrap()
            .series
            .keys()
            .filter_map(|k| k.server_name.clone())
            .collect();
        names.sort();
        assert_eq!(names, vec!["main".to_string(), format!("{}...", "x".repeat(48))]);
    }

    #[test]
    fn a_worker_no_scan_listed_is_attributed_by_its_parent() {
        let mut a = agg(10);
        a.set_pids(HashMap::from([(10, key("/a")), (20, key("/b"))]));
        // Worker 12 (gone, never listed) of master 10; 13 of no known master.
        let mut r = rec(12, 200, 1);
        r.ppid = 10;
        a.record(&r);
        r.tgid = 13;
        r.ppid = 1;
        a.record(&r);
        assert_eq!(a.unattributed, 1);
        assert_eq!(
            a.instance(&key("/a"))
                .unwrap()
                .series
                .values()
                .next()
                .unwrap()
                .duration
                .count(),
            1
        );
        assert!(a.instance(&key("/b")).is_none());
    }

    #[test]
    fn records_of_a_process_that_exited_count_for_a_while() {
        let mut a = agg(10);
        let t0 = Instant::now();
        // A scan no longer lists worker 11 (it exited; /proc has no entry).
        a.set_pids_at(HashMap::from([(10, key("/a"))]), t0);
        a.record(&rec(11, 200, 1));
        assert_eq!(a.unattributed, 0);
        // More scans within the grace: still its instance's.
        a.set_pids_at(HashMap::from([(10, key("/a"))]), t0 + Duration::from_secs(1));
        a.record(&rec(11, 200, 1));
        assert_eq!(
            a.instance(&key("/a"))
                .unwrap()
                .series
                .values()
                .next()
                .unwrap()
                .duration
                .count(),
            2
        );
        // After it, or once the instance is forgotten: not attributed.
        a.set_pids_at(HashMap::from([(10, key("/a"))]), t0 + GONE_GRACE);
        a.record(&rec(11, 200, 1));
        assert_eq!(a.unattributed, 1);
        a.set_pids_at(HashMap::new(), t0 + GONE_GRACE);
        a.forget(&key("/a"));
        a.record(&rec(10, 200, 1));
        assert_eq!(a.unattributed, 2);
        assert!(a.instance(&key("/a")).is_none());
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("123 (nginx: worker) S 42 123 123 0"), Some(42));
        assert_eq!(parent_pid("1 (a) b) c) S 7 1"), Some(7));
        assert_eq!(parent_pid("garbage"), None);
    }
}
