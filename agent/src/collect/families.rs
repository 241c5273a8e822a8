//! Turns instance slots and probe self-statistics into metric families.
//!
//! The nginx_* families carry exactly nginx-prometheus-exporter's names, types
//! and HELP (shared/reference/nginx-prometheus-exporter-0.11.metrics.txt), one
//! set per instance, told apart by stable labels. Everything richer is ngxprobe_*.
use std::sync::atomic::Ordering;

use super::{
    registry::{Collector, PROBE_ERROR, Tracked},
    requests::families::RequestFamilies,
    tcp_health::TcpFamilies,
    unparsed,
    worker_health::WorkerFamilies,
};
use crate::{
    discover::{DiscoverError, RefusalReason},
    metrics::{Family, MetricType},
    probe::SlotTotals,
};

/// nginx-prometheus-exporter's families, verbatim.
const NGINX_ACCEPTED: (&str, &str) = ("nginx_connections_accepted", "Accepted client connections");
const NGINX_ACTIVE: (&str, &str) = ("nginx_connections_active", "Active client connections");
const NGINX_HANDLED: (&str, &str) = ("nginx_connections_handled", "Handled client connections");
const NGINX_READING: (&str, &str) = (
    "nginx_connections_reading",
    "Connections where NGINX is reading the request header",
);
const NGINX_WAITING: (&str, &str) = ("nginx_connections_waiting", "Idle client connections");
const NGINX_WRITING: (&str, &str) = (
    "nginx_connections_writing",
    "Connections where NGINX is writing the response back to the client",
);
const NGINX_REQUESTS: (&str, &str) = ("nginx_http_requests_total", "Total http requests");
const NGINX_UP: (&str, &str) = ("nginx_up", "Status of the last metric scrape");

fn fam(def: (&str, &str), kind: MetricType) -> Family {
    Family::new(def.0, def.1, kind)
}

/// The stub_status view of one instance, as nginx defines it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StubStatus {
    pub accepted: u64,
    pub handled: u64,
    pub requests: u64,
    pub active: u64,
    pub reading: u64,
    pub writing: u64,
    pub waiting: u64,
}

/// stub_status semantics from slot totals: waiting = active − (reading + writing),
/// as ngx_http_stub_status_module computes it. Per-CPU gauge sums can be
/// transiently negative while events are in flight on other CPUs: clamp at 0.
pub fn stub_status(t: &SlotTotals, seeded_active: i64) -> StubStatus {
    let active = (t.active + seeded_active).max(0) as u64;
    let reading = t.reading.max(0) as u64;
    let writing = t.writing.max(0) as u64;
    StubStatus {
        accepted: t.accepted,
        // nginx counts a connection handled unless worker_connections ran out;
        // that is invisible from the socket, so handled follows accepted.
        handled: t.accepted,
        requests: t.requests,
        active,
        reading: reading.min(active),
        writing: writing.min(active.saturating_sub(reading.min(active))),
        waiting: active.saturating_sub(reading + writing),
    }
}

/// Names of the families built only when wanted, taken from the builders
/// themselves (empty), so they cannot drift from what is built.
struct GroupNames {
    tcp: Vec<String>,
    tcp_hists: Vec<String>,
    worker: Vec<String>,
}

static GROUP_NAMES: std::sync::LazyLock<GroupNames> = std::sync::LazyLock::new(|| {
    let names = |f: Vec<Family>| f.into_iter().map(|f| f.name).collect();
    let tcp = TcpFamilies::new(Some(100));
    GroupNames {
        tcp_hists: tcp.histogram_names().map(String::from).to_vec(),
        tcp: names(tcp.into_families()),
        worker: names(WorkerFamilies::new().into_families()),
    }
});

/// A family whose samples are only added when it is wanted: an unwanted
/// one costs no label copies.
struct Gated {
    fam: Family,
    on: bool,
}

impl Gated {
    fn new(fam: Family, want: &dyn Fn(&str) -> bool) -> Self {
        let on = want(&fam.name);
        Gated { fam, on }
    }

    fn push(&mut self, labels: &[(String, String)], value: f64) {
        self.push_with(labels, &[], value);
    }

    /// `labels` and then `extra`.
    fn push_with(&mut self, labels: &[(String, String)], extra: &[(&str, String)], value: f64) {
        if self.on {
            let mut l = Vec::with_capacity(labels.len() + extra.len());
            l.extend_from_slice(labels);
            l.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
            self.fam.push_owned(l, value);
        }
    }
}

impl Collector {
    pub(super) fn labels(&self, t: &Tracked) -> Vec<(String, String)> {
        let mut l = vec![("conf_path".to_string(), t.inst.key.conf_path.clone())];
        let key = &t.inst.key;
        if let Some(id) = &key.container_id {
            l.push(("container_id".to_string(), id.clone()));
        }
        if let Some(m) = &self.metadata {
            l.extend(m.labels(key.container_id.as_deref(), key.pod_uid.as_deref()));
        }
        l.extend(self.extra_labels.iter().cloned());
        l
    }

    /// All families the collect stage exposes (process metrics are added by expose).
    pub fn families(&self) -> Vec<Family> {
        self.families_wanted(&|_| true)
    }

    /// The families whose name `want` accepts. Those that cost a kernel map
    /// read or a histogram per label set to build (TCP health, worker exits,
    /// per-request histograms, program statistics) are only built when one
    /// of their names is wanted; the rest are cheap and filtered at the end.
    pub fn families_wanted(&self, want: &dyn Fn(&str) -> bool) -> Vec<Family> {
        let any = |names: &[String]| names.iter().any(|n| want(n));
        let want_tcp = any(&GROUP_NAMES.tcp);
        let want_tcp_hists = any(&GROUP_NAMES.tcp_hists);
        let want_worker = any(&GROUP_NAMES.worker);
        let want_hists = super::requests::families::HISTOGRAMS.iter().any(|n| want(n));
        let mut accepted = Gated::new(fam(NGINX_ACCEPTED, MetricType::Counter), want);
        let mut active = Gated::new(fam(NGINX_ACTIVE, MetricType::Gauge), want);
        let mut handled = Gated::new(fam(NGINX_HANDLED, MetricType::Counter), want);
        let mut reading = Gated::new(fam(NGINX_READING, MetricType::Gauge), want);
        let mut waiting = Gated::new(fam(NGINX_WAITING, MetricType::Gauge), want);
        let mut writing = Gated::new(fam(NGINX_WRITING, MetricType::Gauge), want);
        let mut requests = Gated::new(fam(NGINX_REQUESTS, MetricType::Counter), want);
        let mut up = Gated::new(fam(NGINX_UP, MetricType::Gauge), want);

        let mut responses = Gated::new(
            Family::new(
                "ngxprobe_nginx_responses_total",
                "HTTP/1.x responses whose status line ngxprobe saw nginx send",
                MetricType::Counter,
            ),
            want,
        );
        let mut blocked = Gated::new(
            Family::new(
                "ngxprobe_nginx_blocked_writes_total",
                "Writes by nginx that the socket did not take in full (short write or EAGAIN)",
                MetricType::Counter,
            ),
            want,
        );
        let mut closed = Gated::new(
            Family::new(
                "ngxprobe_nginx_connections_closed_total",
                "Client connections closed",
                MetricType::Counter,
            ),
            want,
        );
        let mut unparsed_conns = Gated::new(fam(unparsed::FAMILY, MetricType::Counter), want);
        let mut workers = Gated::new(
            Family::new(
                "ngxprobe_nginx_workers",
                "Worker processes of the nginx instance",
                MetricType::Gauge,
            ),
            want,
        );
        let mut listeners = Gated::new(
            Family::new(
                "ngxprobe_nginx_listener_info",
                "Listening sockets of the nginx instance, in its own network namespace",
                MetricType::Gauge,
            ),
            want,
        );
        let mut info = Gated::new(
            Family::new(
                "ngxprobe_nginx_instance_info",
                "nginx instances found on the node",
                MetricType::Gauge,
            ),
            want,
        );
        let mut drift = Gated::new(
            Family::new(
                "ngxprobe_counter_drift",
                "ngxprobe's stub_status counter minus nginx's own (read from its shared memory where nginx has \
             the stub_status module): counters since the first reading, gauges as they are; 0 at rest",
                MetricType::Gauge,
            ),
            want,
        );
        let mut tcp = TcpFamilies::new(self.hz);
        let mut worker = WorkerFamilies::new();
        // Records of requests finished before this collection, not yet
        // taken in by the consumer thread, count now: TLS and HTTP/2
        // requests are in nginx_http_requests_total only through them.
        // A collection without those (the rules stage reads a few families
        // at a time) leaves the ring to the consumer thread.
        let from_records = want(NGINX_REQUESTS.0) || super::requests::families::FROM_RECORDS.iter().any(|n| want(n));
        if let Some(pr) = self.per_request.as_ref().filter(|_| from_records) {
            pr.drain_now();
        }
        let mut per_request = self.per_request.as_ref().map(|_| RequestFamilies::new(want_hists));
        for (key, t) in &self.instances {
            let labels = self.labels(t);
            if t.stopped_since.is_some() {
                up.push(&labels, 0.0);
                continue;
            }
            let totals = match self.probe.slot_totals(t.slot) {
                Ok(x) => x,
                Err(_) => {
                    self.discovery.slot_read_errors.fetch_add(1, Ordering::Relaxed);
                    up.push(&labels, 0.0);
                    continue;
                }
            };
            let s = stub_status(&totals, t.seeded_active);
            // Requests on TLS and HTTP/2 connections, which the socket
            // probes leave out, come from the uprobe when it is attached.
            let uprobe_requests = match (&mut per_request, &self.per_request) {
                (Some(f), Some(pr)) => f.add_instance(
                    pr,
                    key,
                    t.inst.master_pid,
                    &labels,
                    t.socket_requests,
                    totals.red_ring_full,
                ),
                _ => 0,
            };
            if let Some(d) = self.drift.latest(key).filter(|_| drift.on) {
                for (name, v) in super::counter_drift::COUNTERS.iter().zip(d) {
                    drift.push_with(&labels, &[("counter", (*name).into())], v as f64);
                }
            }
            accepted.push(&labels, s.accepted as f64);
            handled.push(&labels, s.handled as f64);
            requests.push(&labels, (s.requests + uprobe_requests) as f64);
            active.push(&labels, s.active as f64);
            reading.push(&labels, s.reading as f64);
            writing.push(&labels, s.writing as f64);
            waiting.push(&labels, s.waiting as f64);
            up.push(&labels, 1.0);
            responses.push(&labels, totals.responses as f64);
            blocked.push(&labels, totals.blocked_sends as f64);
            closed.push(&labels, totals.closed as f64);
            for (reason, n) in unparsed::REASONS.iter().zip(unparsed::by_reason(&totals)) {
                unparsed_conns.push_with(&labels, &[("reason", (*reason).into())], n as f64);
            }
            workers.push(&labels, t.inst.worker_pids.len() as f64);
            if want_tcp {
                let hists = want_tcp_hists.then(|| self.probe.conn_hists(t.slot));
                match (self.probe.tcp_counters(t.slot), hists.transpose()) {
                    (Ok(c), Ok(h)) => tcp.add(t, &labels, &c, h.as_ref()),
                    _ => {
                        self.discovery.slot_read_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if want_worker {
                match self.probe.worker_exits(t.slot) {
                    Ok(e) => worker.add(&labels, &e, &t.workers),
                    Err(_) => {
                        self.discovery.slot_read_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if listeners.on {
                for l in &t.inst.listeners {
                    listeners.push_with(&labels, &[("address", super::listen::listen_address(l))], 1.0);
                }
            }
            if info.on {
                let extra = [
                    ("exe", t.inst.exe.clone()),
                    ("netns", t.inst.key.netns.to_string()),
                    ("version", t.inst.version.clone()),
                ];
                info.push_with(&labels, &extra, 1.0);
            }
        }

        let mut out: Vec<Family> = [
            accepted,
            active,
            handled,
            reading,
            waiting,
            writing,
            requests,
            up,
            responses,
            blocked,
            closed,
            unparsed_conns,
            workers,
            listeners,
            info,
            drift,
        ]
        .into_iter()
        .map(|g| g.fam)
        .collect();
        out.extend(tcp.into_families());
        out.extend(worker.into_families());
        out.extend(self.listen_families());
        if let (Some(f), Some(pr)) = (per_request, &self.per_request) {
            out.extend(f.finish(pr, &self.probe));
        }
        out.extend(self.self_families(want));
        out.retain(|f| want(&f.name));
        out
    }

    fn self_families(&self, want: &dyn Fn(&str) -> bool) -> Vec<Family> {
        let mut out = Vec::new();
        let mut build = Family::new(
            "ngxprobe_build_info",
            "A metric with a constant '1' value labeled by version and target from which ngxprobe was built",
            MetricType::Gauge,
        );
        build.push(
            &[("version", env!("CARGO_PKG_VERSION")), ("arch", std::env::consts::ARCH)],
            1.0,
        );
        out.push(build);

        let mut n = Family::new(
            "ngxprobe_nginx_instances",
            "nginx instances currently running on the node",
            MetricType::Gauge,
        );
        n.push(&[], self.instance_count() as f64);
        out.push(n);

        let d = &self.discovery;
        let mut scans = Family::new(
            "ngxprobe_discovery_scans_total",
            "Discovery scans of /proc for nginx processes",
            MetricType::Counter,
        );
        scans.push(&[], d.scans as f64);
        out.push(scans);
        let mut errs = Family::new(
            "ngxprobe_discovery_errors_total",
            "Discovery scans, process reads and probe map accesses that failed, by kind of error",
            MetricType::Counter,
        );
        let slot_errors = d.slot_read_errors.load(Ordering::Relaxed);
        for kind in DiscoverError::KINDS.iter().chain(&[PROBE_ERROR]) {
            let n = d.errors.get(kind).copied().unwrap_or(0) + if *kind == PROBE_ERROR { slot_errors } else { 0 };
            errs.push(&[("kind", kind)], n as f64);
        }
        out.push(errs);
        let mut refused = Family::new(
            "ngxprobe_discovery_refused_total",
            "Processes and instances claiming to be nginx that discovery did not track, by reason",
            MetricType::Counter,
        );
        for reason in RefusalReason::ALL {
            let n = d.refused.get(&reason).copied().unwrap_or(0);
            refused.push(&[("reason", reason.as_str())], n as f64);
        }
        out.push(refused);
        let mut dur = Family::new(
            "ngxprobe_discovery_duration_seconds",
            "Duration of the last discovery scan",
            MetricType::Gauge,
        );
        dur.push(&[], d.last_duration.as_secs_f64());
        out.push(dur);

        let mut loaded = Family::new(
            "ngxprobe_ebpf_programs_loaded",
            "eBPF programs loaded and attached",
            MetricType::Gauge,
        );
        loaded.push(&[], self.probe.programs_loaded() as f64);
        out.push(loaded);

        let mut run_s = Family::new(
            "ngxprobe_ebpf_program_run_seconds_total",
            "Time the kernel spent running each eBPF program (counts only while kernel.bpf_stats_enabled=1)",
            MetricType::Counter,
        );
        let mut runs = Family::new(
            "ngxprobe_ebpf_program_runs_total",
            "Runs of each eBPF program (counts only while kernel.bpf_stats_enabled=1)",
            MetricType::Counter,
        );
        // One bpf(2) call per program: only when asked for.
        if want(&run_s.name) || want(&runs.name) {
            for p in self.probe.program_stats() {
                run_s.push(&[("program", p.name)], p.run_time_ns as f64 / 1e9);
                runs.push(&[("program", p.name)], p.run_count as f64);
            }
        }
        out.push(run_s);
        out.push(runs);

        let mut stats_on = Family::new(
            "ngxprobe_ebpf_stats_enabled",
            "1 if kernel.bpf_stats_enabled is on (program run time is being measured)",
            MetricType::Gauge,
        );
        let on = want(&stats_on.name)
            && std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
        stats_on.push(&[], if on { 1.0 } else { 0.0 });
        out.push(stats_on);

        let mut cap = Family::new(
            "ngxprobe_ebpf_map_capacity",
            "Maximum entries of each eBPF map",
            MetricType::Gauge,
        );
        cap.push(&[("map", "SEEDS")], self.probe.seed_capacity() as f64);
        cap.push(&[("map", "LISTENERS")], agent_common::MAX_LISTENERS as f64);
        out.push(cap);
        let mut used = Family::new(
            "ngxprobe_ebpf_map_entries",
            "Entries in use in each eBPF map",
            MetricType::Gauge,
        );
        used.push(&[("map", "LISTENERS")], self.probe.listener_count() as f64);
        let tracked: i64 = self
            .instances
            .values()
            .filter_map(|t| self.probe.slot_totals(t.slot).ok().map(|x| x.active + t.seeded_active))
            .sum();
        let seeds: usize = self.instances.values().map(|t| t.pending_seeds.len()).sum();
        used.push(&[("map", "SEEDS")], seeds as f64);
        out.push(used);
        let mut live = Family::new(
            "ngxprobe_ebpf_tracked_connections",
            "Client connections with per-socket state in the kernel (socket storage, freed with the socket)",
            MetricType::Gauge,
        );
        live.push(&[], tracked.max(0) as f64);
        out.push(live);
        let mut h2c = Family::new(
            "ngxprobe_h2c_listeners_undecided",
            "Running nginx instances whose h2c-only listeners (nginx before 1.25.1, listen ... http2 without ssl: \
             no HTTP/1.x requests there) could not be decided, by reason (config: not read for certain; version: \
             not a known nginx version; mixed_port: plaintext http2 on some addresses of a port only); HTTP/1.x \
             bytes sent to those listeners are counted as requests nginx does not count",
            MetricType::Gauge,
        );
        for r in crate::discover::nginx_conf::H2C_UNKNOWN_REASONS {
            let n = self
                .instances
                .values()
                .filter(|t| t.stopped_since.is_none() && t.h2c.unknown.as_ref().is_some_and(|u| u.0 == r))
                .count();
            h2c.push(&[("reason", r)], n as f64);
        }
        out.push(h2c);
        if let Ok(g) = self.probe.global_totals() {
            let mut full = Family::new(
                "ngxprobe_ebpf_untracked_connections_total",
                "Accepted connections that could not be tracked (socket storage could not be allocated)",
                MetricType::Counter,
            );
            full.push(&[], g.conn_map_full as f64);
            out.push(full);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_active_minus_reading_and_writing() {
        let t = SlotTotals {
            accepted: 10,
            requests: 20,
            active: 5,
            reading: 1,
            writing: 2,
            ..Default::default()
        };
        let s = stub_status(&t, 1);
        assert_eq!((s.active, s.reading, s.writing, s.waiting), (6, 1, 2, 3));
        assert_eq!(s.handled, 10);
    }

    #[test]
    fn transient_negative_gauges_are_clamped() {
        let t = SlotTotals {
            active: 1,
            reading: -1,
            writing: 3,
            ..Default::default()
        };
        let s = stub_status(&t, 0);
        assert_eq!(s.reading + s.writing + s.waiting, s.active);
    }
}
