//! Per-request (RED) views for comparing the agent's histograms with nginx's
//! access log (the oracle, format [`crate::nginx::ACCESS_LOG_FORMAT`]):
//! both summed per (method, status, protocol version, scheme, port).
use crate::agent::Agent;
use crate::metrics_text::Scrape;
use crate::nginx::Nginx;
use crate::util::{Poll, poll};
use std::collections::BTreeMap;
use std::time::Duration;

pub const DURATION: &str = "http_server_request_duration_seconds";
pub const REQ_SIZE: &str = "http_server_request_body_size_bytes";
pub const RESP_SIZE: &str = "http_server_response_body_size_bytes";
pub const ATTACHED: &str = "ngxprobe_per_request_probe_attached";
pub const SOCKET: &str = "ngxprobe_per_request_socket_probes";
pub const LOST: &str = "ngxprobe_per_request_records_lost_total";

/// (method, status, protocol version, scheme, port)
pub type Key = (String, String, String, String, String);

/// Sums over the requests of one label set.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sums {
    pub count: u64,
    pub duration_ms: u64,
    pub request_bytes: u64,
    /// `$body_bytes_sent` / the response body size histogram.
    pub body_bytes: u64,
    /// `$bytes_sent` (headers and body): the access log only.
    pub bytes_sent: u64,
}

pub const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Lines in the access log now.
pub fn log_lines(n: &Nginx) -> usize {
    std::fs::read_to_string(n.access_log_path())
        .unwrap_or_default()
        .lines()
        .count()
}

/// The access log after its first `skip` lines (requests before the agent
/// could see them), summed per label set.
pub fn oracle_sums(n: &Nginx, skip: usize) -> BTreeMap<Key, Sums> {
    let text = std::fs::read_to_string(n.access_log_path()).unwrap_or_default();
    let mut out: BTreeMap<Key, Sums> = BTreeMap::new();
    for line in text.lines().skip(skip) {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 9, "access log line {line:?}");
        let status = f[0].parse::<u16>().expect("status").to_string();
        let method = if KNOWN_METHODS.contains(&f[1]) { f[1] } else { "_OTHER" };
        let version = match f[2] {
            "HTTP/1.0" => "1.0",
            "HTTP/1.1" => "1.1",
            "HTTP/2.0" => "2",
            other => panic!("protocol {other:?} in {line:?}"),
        };
        let ms = (f[3].parse::<f64>().expect("request_time") * 1000.0).round() as u64;
        let e = out
            .entry((
                method.into(),
                status,
                version.into(),
                f[7].to_string(),
                f[8].to_string(),
            ))
            .or_default();
        e.count += 1;
        e.duration_ms += ms;
        e.request_bytes += f[4].parse::<u64>().expect("request_length");
        e.bytes_sent += f[5].parse::<u64>().expect("bytes_sent");
        e.body_bytes += f[6].parse::<u64>().expect("body_bytes_sent");
    }
    out
}

/// The agent's histograms for `conf` summed per label set.
pub fn agent_sums(scrape: &Scrape, conf: &str) -> BTreeMap<Key, Sums> {
    let mut out: BTreeMap<Key, Sums> = BTreeMap::new();
    for s in scrape.samples.iter().filter(|s| s.label("conf_path") == Some(conf)) {
        let key = || -> Key {
            let l = |n: &str| s.label(n).unwrap_or("?").to_string();
            (
                l("http_request_method"),
                l("http_response_status_code"),
                l("network_protocol_version"),
                l("url_scheme"),
                l("server_port"),
            )
        };
        let name = s.name.as_str();
        if name == format!("{DURATION}_count") {
            out.entry(key()).or_default().count += s.value as u64;
        } else if name == format!("{DURATION}_sum") {
            out.entry(key()).or_default().duration_ms += (s.value * 1000.0).round() as u64;
        } else if name == format!("{REQ_SIZE}_sum") {
            out.entry(key()).or_default().request_bytes += s.value as u64;
        } else if name == format!("{RESP_SIZE}_sum") {
            out.entry(key()).or_default().body_bytes += s.value as u64;
        }
    }
    out
}

pub fn total(m: &BTreeMap<Key, Sums>) -> u64 {
    m.values().map(|s| s.count).sum()
}

pub fn counts(m: &BTreeMap<Key, Sums>) -> BTreeMap<Key, u64> {
    m.iter().map(|(k, s)| (k.clone(), s.count)).collect()
}

/// Waits (bounded) until the agent has as many requests as the access log
/// has lines, then returns both views (on timeout the last ones: the
/// caller's per-label-set comparison says what differs).
pub fn quiesce(agent: &Agent, n: &Nginx, skip: usize) -> (BTreeMap<Key, Sums>, BTreeMap<Key, Sums>) {
    quiesce_until(agent, n, skip, |ours, log| ours == log)
}

/// [`quiesce`] until `done(agent's total, access log's total)`.
pub fn quiesce_until(
    agent: &Agent,
    n: &Nginx,
    skip: usize,
    done: impl Fn(u64, u64) -> bool,
) -> (BTreeMap<Key, Sums>, BTreeMap<Key, Sums>) {
    let conf = n.conf_label();
    let res = poll(
        "the agent's request histograms to reach the access log's count",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let log = oracle_sums(n, skip);
            let ours = agent_sums(&agent.scrape()?, &conf);
            Ok(if done(total(&ours), total(&log)) && total(&log) > 0 {
                Poll::Ready((log, ours))
            } else {
                Poll::Pending(format!("agent {} requests, access log {}", total(&ours), total(&log)))
            })
        },
    );
    match res {
        Ok(views) => views,
        Err(e) => {
            eprintln!("[e2e] {e:#}\n{}", agent.log_tail(10));
            (
                oracle_sums(n, skip),
                agent_sums(&agent.scrape().expect("scrape"), &conf),
            )
        }
    }
}

/// Prints both views side by side, one line per label set.
pub fn print_views(log: &BTreeMap<Key, Sums>, ours: &BTreeMap<Key, Sums>) {
    eprintln!("[e2e] access log: {} requests in {} label sets", total(log), log.len());
    for k in log.keys().chain(ours.keys().filter(|k| !log.contains_key(*k))) {
        let l = log.get(k).copied().unwrap_or_default();
        let o = ours.get(k).copied().unwrap_or_default();
        eprintln!("[e2e]   {k:?}: log {l:?} / agent {o:?}");
    }
}

/// Waits (bounded) until `ngxprobe_per_request_probe_attached` of the
/// instance is `want`.
pub fn wait_attached(agent: &Agent, conf: &str, want: f64) {
    poll(
        "the per-request uprobe state of the instance",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let v = agent.scrape()?.value(ATTACHED, conf)?;
            Ok(if v == Some(want) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{ATTACHED} = {v:?}"))
            })
        },
    )
    .expect("uprobe state");
}

/// Counts per label set equal; sizes and durations equal where the uprobe
/// made the records (nginx's own fields, same clock).
pub fn assert_red_exact(log: &BTreeMap<Key, Sums>, ours: &BTreeMap<Key, Sums>) {
    print_views(log, ours);
    assert_eq!(counts(ours), counts(log), "requests per label set: agent vs access log");
    for (k, l) in log {
        let o = ours[k];
        assert_eq!(
            o.request_bytes, l.request_bytes,
            "{k:?}: request bytes ($request_length)"
        );
        assert_eq!(
            o.body_bytes, l.body_bytes,
            "{k:?}: response body bytes ($body_bytes_sent)"
        );
        assert_eq!(o.duration_ms, l.duration_ms, "{k:?}: duration sum (ms, $request_time)");
    }
}
