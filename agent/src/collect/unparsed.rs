//! Connections the probe does not parse as HTTP/1.x (TLS, HTTP/2, other):
//! counted by reason, and said once per instance and reason in the log.
//!
//! The probe decides at a connection's first read (agent_common's
//! classify_first_bytes). Such a connection is in accepted, handled and
//! active like any other, but its requests are not counted and it is
//! `waiting` for its whole life: nothing about it is guessed.
use crate::probe::SlotTotals;

/// Values of the `reason` label, in the order of [`by_reason`].
pub const REASONS: [&str; 3] = ["tls", "http2", "other"];

pub const FAMILY: (&str, &str) = (
    "ngxprobe_unparsed_connections_total",
    "Client connections whose bytes ngxprobe cannot parse as HTTP/1.x, by reason (tls: a TLS record, \
     http2: the HTTP/2 preface, or any request line on an h2c-only listener, other: not an HTTP/1.x request line); they count in nginx_connections_accepted, \
     _handled and _active and as waiting; their requests are in nginx_http_requests_total only for tls and http2 \
     and only while the per-request uprobe is attached to the instance",
);

/// The slot's unparsed connections, in [`REASONS`] order.
pub fn by_reason(t: &SlotTotals) -> [u64; 3] {
    [t.unparsed_tls, t.unparsed_http2, t.unparsed_other]
}

/// Reasons an instance shows for the first time: marks them in `seen` and
/// returns them, so each is reported once per instance.
pub fn first_seen(seen: &mut [bool; 3], counts: [u64; 3]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for ((s, n), reason) in seen.iter_mut().zip(counts).zip(REASONS) {
        if n > 0 && !*s {
            *s = true;
            out.push(reason);
        }
    }
    out
}

/// The log line for an instance that shows unparsed connections of
/// `reason`; `uprobe` says whether the per-request uprobe counts their
/// requests (TLS and HTTP/2 only).
pub fn message(instance: &str, reason: &str, count: u64, uprobe: bool) -> String {
    let what = match reason {
        "tls" => "TLS connection(s)",
        "http2" => "HTTP/2 (h2c) connection(s)",
        _ => "connection(s) whose bytes are not HTTP/1.x",
    };
    let requests = if uprobe && reason != "other" {
        "their requests are counted from the uprobe in nginx"
    } else {
        "their requests are not counted in nginx_http_requests_total"
    };
    format!(
        "nginx instance {instance}: {count} {what} so far; ngxprobe does not parse them: {requests} and they \
         show as waiting (ngxprobe_unparsed_connections_total{{reason=\"{reason}\"}} counts them)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_reported_once() {
        let mut seen = [false; 3];
        assert!(first_seen(&mut seen, [0, 0, 0]).is_empty());
        assert_eq!(first_seen(&mut seen, [2, 0, 0]), vec!["tls"]);
        assert!(first_seen(&mut seen, [5, 0, 0]).is_empty());
        assert_eq!(first_seen(&mut seen, [5, 1, 3]), vec!["http2", "other"]);
        assert!(first_seen(&mut seen, [9, 9, 9]).is_empty());
    }

    #[test]
    fn counts_follow_reason_order() {
        let t = SlotTotals {
            unparsed_tls: 1,
            unparsed_http2: 2,
            unparsed_other: 3,
            ..Default::default()
        };
        assert_eq!(by_reason(&t), [1, 2, 3]);
        assert!(message("\"/etc/nginx/nginx.conf\"", "tls", 1, false).contains("reason=\"tls\""));
        assert!(message("x", "tls", 1, true).contains("counted from the uprobe"));
        assert!(message("x", "other", 1, true).contains("not counted"));
    }
}
