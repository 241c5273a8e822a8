//! TCP health of each instance's client connections, per listener, and the
//! distributions of its connections at close (from the tcp_health programs).
//!
//! Attribution: a connection belongs to the instance whose listener accepted
//! it; counters are kept per local port, so `listen_address` names the
//! instance's listener(s) on that port (several joined with "," when one
//! port is bound on several addresses, e.g. `0.0.0.0:80,[::]:80`: the
//! kernel events do not say which of them).
use std::collections::BTreeMap;

use agent_common::{CLOSE_NORMAL, CLOSE_RESET, CLOSE_TIMEOUT, HIST_BUCKETS, Hist, TcpCounters};

use crate::metrics::{Family, HistogramValue, MetricType};

use super::registry::Tracked;

/// `cause` label values, by TcpCounters::closed index.
const CAUSES: [(usize, &str); 3] = [
    (CLOSE_NORMAL, "normal"),
    (CLOSE_RESET, "reset"),
    (CLOSE_TIMEOUT, "timeout"),
];

/// The families of this module, filled per instance by [`TcpFamilies::add`].
pub struct TcpFamilies {
    retrans: Family,
    synack: Family,
    rst_sent: Family,
    rst_received: Family,
    closed: Family,
    stalled: Family,
    segs_out: Family,
    rtt: Family,
    duration: Family,
    requests: Family,
    bytes: Family,
    /// The kernel's HZ (chrono stats count in jiffies); None: stalled time is not exposed.
    hz: Option<u32>,
}

impl TcpFamilies {
    pub fn new(hz: Option<u32>) -> Self {
        let c = |name, help| Family::new(name, help, MetricType::Counter);
        let h = |name, help| Family::new(name, help, MetricType::Histogram);
        TcpFamilies {
            retrans: c(
                "ngxprobe_tcp_retransmitted_segments_total",
                "Segments the kernel retransmitted on client connections of this listener (tcp:tcp_retransmit_skb, \
                 in segments as RetransSegs counts them)",
            ),
            synack: c(
                "ngxprobe_tcp_synack_retransmits_total",
                "SYN-ACKs the kernel retransmitted for handshakes on this listener (tcp:tcp_retransmit_synack)",
            ),
            rst_sent: c(
                "ngxprobe_tcp_resets_sent_total",
                "RST segments sent on client connections of this listener (tcp:tcp_send_reset)",
            ),
            rst_received: c(
                "ngxprobe_tcp_resets_received_total",
                "RST segments received on client connections of this listener (tcp:tcp_receive_reset)",
            ),
            closed: c(
                "ngxprobe_tcp_connections_closed_total",
                "Client connections whose socket the kernel destroyed, by cause (timeout: the kernel gave up, \
                 sk_err ETIMEDOUT; reset: an RST was sent or received; normal: anything else)",
            ),
            stalled: c(
                "ngxprobe_tcp_send_stalled_seconds_total",
                "Time closed client connections spent with nginx's sending stalled, by reason (receive_window: the \
                 client's receive window was full, a slow reader; send_buffer: the socket's send buffer was full); \
                 tcp_sock chrono stats, added at close",
            ),
            segs_out: c(
                "ngxprobe_tcp_segments_sent_total",
                "Segments sent on client connections of this listener, retransmissions included (tcp_sock segs_out, \
                 added when the connection closes)",
            ),
            rtt: h(
                "ngxprobe_tcp_connection_rtt_seconds",
                "Smoothed round-trip time of client connections when they closed",
            ),
            duration: h(
                "ngxprobe_tcp_connection_duration_seconds",
                "Lifetime of client connections from accept to close (connections found open at start are left out)",
            ),
            requests: h(
                "ngxprobe_tcp_connection_requests",
                "HTTP/1.x requests per client connection, at close (TLS and HTTP/2 connections are left out)",
            ),
            bytes: h(
                "ngxprobe_tcp_connection_bytes",
                "Bytes per client connection at close, by direction (sent to / received from the client)",
            ),
            hz,
        }
    }

    /// Adds one instance's values.
    pub fn add(
        &mut self,
        t: &Tracked,
        labels: &[(String, String)],
        counters: &BTreeMap<u16, TcpCounters>,
        hists: Option<&agent_common::ConnHists>,
    ) {
        // Every listener shows from the start, at 0 until its first event
        // (a series that appears at 1 is invisible to rate() and increase()).
        let zero = TcpCounters::default();
        let mut all: BTreeMap<u16, &TcpCounters> = t.inst.listeners.iter().map(|l| (l.port, &zero)).collect();
        all.extend(counters.iter().map(|(p, c)| (*p, c)));
        for (port, c) in all {
            let mut l = labels.to_vec();
            l.push(("listen_address".into(), listen_address(t, port)));
            self.retrans.push_owned(l.clone(), c.retrans_segs as f64);
            self.synack.push_owned(l.clone(), c.synack_retrans as f64);
            self.rst_sent.push_owned(l.clone(), c.resets_sent as f64);
            self.rst_received.push_owned(l.clone(), c.resets_received as f64);
            self.segs_out.push_owned(l.clone(), c.segs_out as f64);
            for (i, cause) in CAUSES {
                let mut cl = l.clone();
                cl.push(("cause".into(), cause.into()));
                self.closed.push_owned(cl, c.closed[i] as f64);
            }
            if let Some(hz) = self.hz {
                for (jiffies, reason) in [
                    (c.rwnd_limited_jiffies, "receive_window"),
                    (c.sndbuf_limited_jiffies, "send_buffer"),
                ] {
                    let mut sl = l.clone();
                    sl.push(("reason".into(), reason.into()));
                    self.stalled.push_owned(sl, jiffies as f64 / f64::from(hz));
                }
            }
        }
        let Some(hists) = hists else {
            return;
        };
        let l = labels.to_vec();
        // Bounds: powers of two of the recorded unit, over the range that matters.
        self.rtt
            .push_histogram(l.clone(), &histogram(&hists.rtt_us, 4, 24, 1e-6));
        self.duration
            .push_histogram(l.clone(), &histogram(&hists.duration_ms, 0, 24, 1e-3));
        self.requests
            .push_histogram(l.clone(), &histogram(&hists.requests, 0, 16, 1.0));
        for (h, dir) in [(&hists.bytes_sent, "sent"), (&hists.bytes_received, "received")] {
            let mut bl = l.clone();
            bl.push(("direction".into(), dir.into()));
            self.bytes.push_histogram(bl, &histogram(h, 6, 30, 1.0));
        }
    }

    /// The per-connection histograms' families (a map read and a
    /// histogram each to build).
    pub fn histogram_names(&self) -> [&str; 4] {
        [
            &self.rtt.name,
            &self.duration.name,
            &self.requests.name,
            &self.bytes.name,
        ]
    }

    pub fn into_families(self) -> Vec<Family> {
        vec![
            self.retrans,
            self.synack,
            self.rst_sent,
            self.rst_received,
            self.closed,
            self.stalled,
            self.segs_out,
            self.rtt,
            self.duration,
            self.requests,
            self.bytes,
        ]
    }
}

/// The instance's listener addresses on `port`, as `0.0.0.0:80` / `[::]:80`.
pub fn listen_address(t: &Tracked, port: u16) -> String {
    let mut addrs: Vec<String> = t
        .inst
        .listeners
        .iter()
        .filter(|l| l.port == port)
        .map(|l| std::net::SocketAddr::new(l.addr, l.port).to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        // The listener closed since (a reload): the port is all we know.
        return format!("*:{port}");
    }
    addrs.join(",")
}

/// A log2 histogram as Prometheus buckets: bounds 2^lo ..= 2^hi (in the
/// recorded unit, times `scale` in the exposed one); lower buckets fold
/// into the first, values above 2^hi are only in +Inf.
pub fn histogram(h: &Hist, lo: usize, hi: usize, scale: f64) -> HistogramValue {
    let hi = hi.min(HIST_BUCKETS - 2);
    let count: u64 = h.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    let mut cum = 0u64;
    let mut buckets = Vec::with_capacity(hi + 1 - lo);
    for (i, n) in h.buckets.iter().enumerate().take(hi + 1) {
        cum = cum.wrapping_add(*n);
        if i >= lo {
            buckets.push(((1u64 << i) as f64 * scale, cum));
        }
    }
    HistogramValue {
        buckets,
        sum: h.sum as f64 * scale,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::hist_bucket;

    #[test]
    fn buckets_are_cumulative_and_fold_the_ends() {
        let mut h = Hist::default();
        for v in [0u64, 1, 3, 4, 100, 5000] {
            h.buckets[hist_bucket(v)] += 1;
            h.sum += v;
        }
        let p = histogram(&h, 2, 8, 1.0);
        // le=4 holds 0, 1, 3, 4; le=128 adds 100; 5000 is above 2^8: only in +Inf.
        assert_eq!(p.buckets.first(), Some(&(4.0, 4)));
        assert_eq!(p.buckets.last(), Some(&(256.0, 5)));
        assert_eq!(p.buckets.len(), 7);
        assert_eq!((p.count, p.sum), (6, 5108.0));
        assert!(p.buckets.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        let s = histogram(&h, 0, 2, 1e-3);
        assert_eq!(s.buckets, vec![(1e-3, 2), (2e-3, 2), (4e-3, 4)]);
    }
}
