//! The per-request families: OpenTelemetry HTTP server semantic conventions
//! as Prometheus exports them, plus ngxprobe's own accounting of the uprobe.
use super::{PerRequest, SOCKET_UNLABELLED, attach::REFUSAL_REASONS};
use crate::{
    discover::InstanceKey,
    metrics::{Family, HistogramValue, MetricType},
    probe::Probe,
};

pub const DURATION: (&str, &str) = (
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests, as nginx measures $request_time (millisecond resolution)",
);
pub const REQUEST_SIZE: (&str, &str) = (
    "http_server_request_body_size_bytes",
    "Size of HTTP server requests as nginx's $request_length: request line, headers and body",
);
pub const RESPONSE_SIZE: (&str, &str) = (
    "http_server_response_body_size_bytes",
    "Size of HTTP server response bodies, as nginx's $body_bytes_sent",
);

/// Families of one scrape, filled instance by instance.
pub struct RequestFamilies {
    histograms: bool,
    duration: Family,
    request_size: Family,
    response_size: Family,
    folded: Family,
    attached: Family,
    socket: Family,
    socket_unlabelled: Family,
    /// Socket-probe records lost to a full ring buffer, over the instances.
    socket_ring_full: u64,
}

/// The histogram families, the costly ones to lay out.
pub const HISTOGRAMS: [&str; 3] = [DURATION.0, REQUEST_SIZE.0, RESPONSE_SIZE.0];
const FOLDED: &str = "ngxprobe_per_request_folded_total";
const SOCKET_UNLABELLED_FAMILY: &str = "ngxprobe_per_request_socket_unlabelled_total";
const LOST: &str = "ngxprobe_per_request_records_lost_total";
/// The families that count records (besides nginx_http_requests_total):
/// only a collection of one of them drains the ring first.
pub const FROM_RECORDS: [&str; 6] = [
    DURATION.0,
    REQUEST_SIZE.0,
    RESPONSE_SIZE.0,
    FOLDED,
    SOCKET_UNLABELLED_FAMILY,
    LOST,
];

impl RequestFamilies {
    /// `histograms`: lay out the http_server_* histograms (else they stay
    /// empty; the rest is cheap).
    pub fn new(histograms: bool) -> Self {
        RequestFamilies {
            histograms,
            duration: Family::new(DURATION.0, DURATION.1, MetricType::Histogram),
            request_size: Family::new(REQUEST_SIZE.0, REQUEST_SIZE.1, MetricType::Histogram),
            response_size: Family::new(RESPONSE_SIZE.0, RESPONSE_SIZE.1, MetricType::Histogram),
            folded: Family::new(
                FOLDED,
                "Requests counted under http_request_method and http_response_status_code \"_OTHER\" because the \
                 instance already had per_request.max_series_per_instance label sets",
                MetricType::Counter,
            ),
            attached: Family::new(
                "ngxprobe_per_request_probe_attached",
                "1 if the uprobe on ngx_http_free_request is attached to the instance's nginx executable \
                 (per-request metrics and TLS/HTTP/2 request counts), else 0",
                MetricType::Gauge,
            ),
            socket: Family::new(
                "ngxprobe_per_request_socket_probes",
                "1 if the instance's per-request metrics come from the socket probes (plaintext HTTP/1.x only; \
                 the uprobe is not attached to its executable), else 0",
                MetricType::Gauge,
            ),
            socket_unlabelled: Family::new(
                SOCKET_UNLABELLED_FAMILY,
                "Requests measured by the socket probes with labels they could not read, counted under \"_OTHER\", \
                 by reason (pipelined: request line never read, method and version; no_version: the request line \
                 ends past the first 128 bytes read, version; no_response: no status line sent, status)",
                MetricType::Counter,
            ),
            socket_ring_full: 0,
        }
    }

    /// Adds one running instance; returns the requests on TLS and HTTP/2
    /// connections the uprobe counted while it was attached (0 if never).
    /// `socket`: the socket probes make its records (`socket_ring_full` of
    /// them were lost, from its slot's counters).
    pub fn add_instance(
        &mut self,
        pr: &PerRequest,
        key: &InstanceKey,
        master_pid: u32,
        labels: &[(String, String)],
        socket: bool,
        socket_ring_full: u64,
    ) -> u64 {
        let attached = pr.attached.get(&master_pid).copied().unwrap_or(false);
        self.attached
            .push_owned(labels.to_vec(), if attached { 1.0 } else { 0.0 });
        self.socket.push_owned(labels.to_vec(), if socket { 1.0 } else { 0.0 });
        self.socket_ring_full = self.socket_ring_full.saturating_add(socket_ring_full);
        let agg = pr.agg.lock();
        let unlabelled = agg.instance(key).map(|i| i.socket_unlabelled).unwrap_or_default();
        if socket || unlabelled.iter().any(|n| *n > 0) {
            for (reason, n) in SOCKET_UNLABELLED.iter().zip(unlabelled) {
                let mut l = labels.to_vec();
                l.push(("reason".into(), (*reason).into()));
                self.socket_unlabelled.push_owned(l, n as f64);
            }
        }
        let Some(inst) = agg.instance(key) else {
            if attached {
                self.folded.push_owned(labels.to_vec(), 0.0);
            }
            return 0;
        };
        self.folded.push_owned(labels.to_vec(), inst.folded as f64);
        let ms = pr.cfg.duration_buckets.as_slice();
        let sizes = pr.cfg.size_buckets.as_slice();
        let mut series: Vec<_> = inst.series.iter().filter(|_| self.histograms).collect();
        series.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, s) in series {
            let mut l = labels.to_vec();
            l.extend(k.labels().into_iter().map(|(n, v)| (n.to_string(), v)));
            self.duration.push_histogram(
                l.clone(),
                &HistogramValue::from_bucket_counts(ms, &s.duration.counts, s.duration.sum as f64 / 1e6),
            );
            self.request_size.push_histogram(
                l.clone(),
                &HistogramValue::from_bucket_counts(sizes, &s.request_size.counts, s.request_size.sum as f64),
            );
            self.response_size.push_histogram(
                l,
                &HistogramValue::from_bucket_counts(sizes, &s.response_size.counts, s.response_size.sum as f64),
            );
        }
        // What the uprobe counted stays in the total after a detach: the
        // requests counter must never go down.
        inst.unparsed_conn_requests
    }

    /// The families, with the node-wide uprobe accounting.
    pub fn finish(self, pr: &PerRequest, probe: &Probe) -> Vec<Family> {
        let mut refused = Family::new(
            "ngxprobe_uprobe_attach_refused_total",
            "nginx executables the per-request uprobe was not attached to or was detached from, by reason \
             (unknown_build: no known struct offsets for its version and module signature; signature_mismatch: \
             requests did not carry nginx's signature at the expected offset; attach_failed: the kernel refused)",
            MetricType::Counter,
        );
        for r in REFUSAL_REASONS {
            let n = pr.attachments.refused.get(r).copied().unwrap_or(0);
            refused.push(&[("reason", r)], n as f64);
        }
        let (mut ring_full, mut read_errors) = (
            pr.attachments.retired_ring_full + self.socket_ring_full,
            pr.attachments.retired_read_errors,
        );
        for idx in pr.attachments.attached() {
            if let Ok(st) = probe.request_probe_stats(idx) {
                ring_full += st.ring_full;
                read_errors += st.read_errors;
            }
        }
        let mut lost = Family::new(
            LOST,
            "Requests seen by the uprobe or the socket probes but missing from the http_server_* families, by \
             reason (ring_full: the ring buffer to the agent was full; read_error: nginx's memory could not be read; unattributed: the \
             process belongs to no tracked instance)",
            MetricType::Counter,
        );
        lost.push(&[("reason", "ring_full")], ring_full as f64);
        lost.push(&[("reason", "read_error")], read_errors as f64);
        lost.push(&[("reason", "unattributed")], pr.agg.lock().unattributed as f64);
        let mut conf_unknown = Family::new(
            "ngxprobe_per_request_config_unknown_total",
            "Reads of an instance's nginx config (at discovery and reload, uprobe: auto) that could not tell \
             whether it has TLS, HTTP/2 or HTTP/3 listeners; the uprobe is then attached as if it had, by reason \
             (unreadable: a file could not be read; syntax: nginx would refuse it; too_large: more than 256 files, \
             8 MiB or 16 nested includes; path_unknown: a config path relative to the compiled-in prefix)",
            MetricType::Counter,
        );
        for r in crate::discover::nginx_conf::UNKNOWN_REASONS {
            let n = pr.conf_unknown.get(r).copied().unwrap_or(0);
            conf_unknown.push(&[("reason", r)], n as f64);
        }
        vec![
            self.duration,
            self.request_size,
            self.response_size,
            self.folded,
            self.attached,
            self.socket,
            self.socket_unlabelled,
            refused,
            lost,
            conf_unknown,
        ]
    }
}
