//! `ngxprobe diagnose`: a one-shot report over the last N minutes from a
//! running agent's PromQL API, naming what looks wrong (for support
//! tickets): listeners that dropped connections, accept queues that ran
//! nearly full, SYN cookies, instances down, workers killed, retransmit
//! ratios, connections ended by timeout or reset, alerts firing.
//!
//! A client of the HTTP API only (`/api/v1/query`, `/api/v1/alerts`): it
//! works against any agent it can reach, and never reads the store itself.
use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value as J;

use crate::compat::duration::parse_ms;
use crate::query::cli::{http_get, instant_vector};

use crate::query::cli::VectorRow as Row;

/// What the report is built from, as the API answered.
#[derive(Debug, Default)]
pub struct Observed {
    /// Exact drops in the window per listener (max − min of the counter,
    /// which never goes back within an agent's life).
    pub drops: Vec<Row>,
    /// Listeners whose drop counter went back in the window (agent
    /// restarted): for them `increase()` is used, marked "about".
    pub drops_reset: Vec<Row>,
    pub drops_increase: Vec<Row>,
    pub queue_peak: Vec<Row>,
    pub queue_max: Vec<Row>,
    pub syncookies: Vec<Row>,
    pub down: Vec<Row>,
    /// Workers that exited by a signal or the OOM killer, per instance,
    /// cause and signal.
    pub crashes: Counted,
    /// Client connections closed by `cause="timeout"` / `cause="reset"`,
    /// per listener, and all closed connections (the denominator).
    pub timeouts: Counted,
    pub reset_closes: Counted,
    pub closed: Vec<Row>,
    /// Retransmitted / sent segments per listener, where above 5 %.
    pub retransmit_ratio: Vec<Row>,
    /// Firing alerts: (alertname, summary).
    pub firing: Vec<(String, String)>,
    /// Listeners known at all (for the "nothing wrong" line).
    pub listeners: usize,
}

/// How much a counter grew in the window, per series: exactly (max − min,
/// a counter never goes back within an agent's life) unless it was reset
/// in the window (agent restarted), where `increase()` is said "about".
#[derive(Debug, Default)]
pub struct Counted {
    pub exact: Vec<Row>,
    pub reset: Vec<Row>,
    pub increase: Vec<Row>,
}

impl Counted {
    /// (series identity, "N" or "about N") for every series that grew.
    fn grew(&self) -> Vec<(BTreeMap<String, String>, String)> {
        let reset: Vec<_> = self.reset.iter().map(|(l, _)| key(l)).collect();
        let mut out = Vec::new();
        for (l, n) in &self.exact {
            let k = key(l);
            if !reset.contains(&k) {
                out.push((k, format!("{}", n.round() as u64)));
            }
        }
        for (l, n) in &self.increase {
            let k = key(l);
            if reset.contains(&k) && n.round() >= 1.0 {
                out.push((k, format!("about {}", n.round() as u64)));
            }
        }
        out
    }
}

/// `host:port` from `http://host:port[/]` (or a bare `host:port`).
pub fn addr_from_url(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err(format!("--url {url}: only http:// is supported"));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or("");
    if hostport.is_empty() || !hostport.contains(':') {
        return Err(format!("--url {url}: expected http://HOST:PORT"));
    }
    Ok(hostport.to_string())
}

/// Runs the report against the agent at `url` over the last `since`
/// (a Prometheus duration, e.g. `5m`). Returns whether anything looks wrong.
pub fn run(url: &str, since: &str, out: &mut dyn Write) -> Result<bool, String> {
    if parse_ms(since).is_none_or(|ms| ms <= 0) {
        return Err(format!("--since {since:?}: not a positive duration (e.g. 5m, 1h)"));
    }
    let addr = addr_from_url(url)?;
    let obs = observe(&addr, since)?;
    let found = findings(&obs, since);
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    w(out, format!("ngxprobe diagnose: last {since}, agent {url}"))?;
    if found.is_empty() {
        w(
            out,
            format!(
                "nothing looks wrong in the last {since} ({} listeners checked)",
                obs.listeners
            ),
        )?;
    }
    for f in &found {
        w(out, format!("PROBLEM: {f}"))?;
    }
    Ok(!found.is_empty())
}

fn observe(addr: &str, since: &str) -> Result<Observed, String> {
    let q = |expr: String| instant_vector(addr, &expr);
    let counted = |sel: &str| -> Result<Counted, String> {
        Ok(Counted {
            exact: q(format!(
                "max_over_time({sel}[{since}]) - min_over_time({sel}[{since}]) > 0"
            ))?,
            reset: q(format!("resets({sel}[{since}]) > 0"))?,
            increase: q(format!("increase({sel}[{since}]) > 0"))?,
        })
    };
    let d = "ngxprobe_listen_drops_total";
    let closed = "ngxprobe_tcp_connections_closed_total";
    let alerts = alerts(addr)?;
    Ok(Observed {
        crashes: counted(r#"ngxprobe_nginx_worker_exits_total{cause=~"signal|oom"}"#)?,
        timeouts: counted(&format!(r#"{closed}{{cause="timeout"}}"#))?,
        reset_closes: counted(&format!(r#"{closed}{{cause="reset"}}"#))?,
        closed: q(format!("sum without (cause) (increase({closed}[{since}]))"))?,
        retransmit_ratio: q(format!(
            "increase(ngxprobe_tcp_retransmitted_segments_total[{since}]) \
             / increase(ngxprobe_tcp_segments_sent_total[{since}]) > {RETRANSMIT_RATIO}"
        ))?,
        drops: q(format!("max_over_time({d}[{since}]) - min_over_time({d}[{since}]) > 0"))?,
        drops_reset: q(format!("resets({d}[{since}]) > 0"))?,
        drops_increase: q(format!("increase({d}[{since}]) > 0"))?,
        queue_peak: q(format!("max_over_time(ngxprobe_listen_queue_length[{since}])"))?,
        queue_max: q(format!("max_over_time(ngxprobe_listen_queue_max[{since}])"))?,
        syncookies: q(format!("increase(ngxprobe_netns_syncookies_sent_total[{since}]) > 0"))?,
        down: q("nginx_up == 0".to_string())?,
        firing: alerts,
        listeners: q("ngxprobe_listen_queue_max".to_string())?.len(),
    })
}

fn alerts(addr: &str) -> Result<Vec<(String, String)>, String> {
    let body = http_get(addr, "/api/v1/alerts")?;
    let v: J = serde_json::from_str(&body).map_err(|e| format!("/api/v1/alerts: bad response from {addr}: {e}"))?;
    Ok(v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                a["annotations"]["summary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Identity of a series without the metric name: instance labels + listener.
fn key(l: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut k = l.clone();
    k.remove("__name__");
    k
}

fn instance(l: &BTreeMap<String, String>) -> String {
    let conf = l.get("conf_path").map_or("?", String::as_str);
    match l.get("container_id") {
        Some(c) => format!("nginx {conf} (container {})", &c[..c.len().min(12)]),
        None => format!("nginx {conf}"),
    }
}

fn listener(l: &BTreeMap<String, String>) -> String {
    format!(
        "listener {} of {}",
        l.get("listen_address").map_or("?", String::as_str),
        instance(l)
    )
}

/// Retransmitted / sent segments above which a listener is named (the
/// default alert's threshold).
const RETRANSMIT_RATIO: f64 = 0.05;
/// Share of a listener's closed connections ended by an RST above which it
/// is named (browsers and load balancers reset some as a matter of course).
const RESET_SHARE: f64 = 0.10;

/// The report's lines, most severe first: instances down, workers killed,
/// drops, nearly full queues, SYN cookies, connections timed out, resets,
/// retransmits, then every firing alert.
pub fn findings(o: &Observed, since: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (l, _) in &o.down {
        out.push(format!("{} is down (nginx_up 0)", instance(l)));
    }
    for (k, n) in o.crashes.grew() {
        let by = match (k.get("cause").map(String::as_str), k.get("signal")) {
            (Some("oom"), _) => " by the OOM killer".to_string(),
            (_, Some(sig)) if !sig.is_empty() => format!(" by {sig}"),
            _ => String::new(),
        };
        let who = if n == "1" {
            "worker process was"
        } else {
            "worker processes were"
        };
        out.push(format!(
            "{}: {n} {who} killed{by} in the last {since} (their connections were dropped; see nginx's error_log)",
            instance(&k)
        ));
    }
    let find = |rows: &[Row], k: &BTreeMap<String, String>| rows.iter().find(|(l, _)| key(l) == *k).map(|r| r.1);
    let queue = |k: &BTreeMap<String, String>| match (find(&o.queue_peak, k), find(&o.queue_max, k)) {
        (Some(len), Some(max)) => Some((len, max)),
        _ => None,
    };
    let mut dropping = Vec::new();
    let reset: Vec<_> = o.drops_reset.iter().map(|(l, _)| key(l)).collect();
    for (l, n) in &o.drops {
        let k = key(l);
        if reset.contains(&k) {
            continue;
        }
        dropping.push((k, format!("{}", n.round() as u64)));
    }
    for (l, n) in &o.drops_increase {
        let k = key(l);
        if reset.contains(&k) {
            dropping.push((k, format!("about {}", n.round() as u64)));
        }
    }
    for (k, n) in &dropping {
        let q = match queue(k) {
            Some((len, max)) if len > max => format!("accept queue {len}/{max} (full) at its peak"),
            Some((len, max)) => format!("accept queue peaked at {len}/{max}"),
            None => "accept queue unknown".into(),
        };
        out.push(format!(
            "{} dropped {n} connection attempts in the last {since}: {q}",
            listener(k)
        ));
    }
    for (l, len) in &o.queue_peak {
        let k = key(l);
        if dropping.iter().any(|(d, _)| *d == k) {
            continue;
        }
        if let Some(max) = find(&o.queue_max, &k)
            && *len > 0.8 * max
        {
            out.push(format!(
                "{} accept queue reached {len}/{max} (over 80% of its limit) in the last {since}: nginx accepts too slowly",
                listener(&k)
            ));
        }
    }
    for (l, n) in &o.syncookies {
        out.push(format!(
            "the network namespace of {} sent about {} SYN cookies in the last {since} (a SYN queue was full: SYN flood or slow handshakes)",
            instance(l),
            n.round() as u64
        ));
    }
    for (k, n) in o.timeouts.grew() {
        out.push(format!(
            "{}: {n} client connections timed out in the last {since} (the kernel gave up retransmitting: clients vanished or the path drops packets)",
            listener(&k)
        ));
    }
    for (k, n) in o.reset_closes.grew() {
        let mut any_cause = k.clone();
        any_cause.remove("cause");
        let all = find(&o.closed, &any_cause).unwrap_or(0.0);
        let resets = o
            .reset_closes
            .increase
            .iter()
            .find(|(l, _)| key(l) == k)
            .map_or(0.0, |r| r.1);
        if all > 0.0 && resets / all > RESET_SHARE {
            out.push(format!(
                "{}: {n} client connections ended by a reset in the last {since}, {:.0}% of those closed",
                listener(&k),
                100.0 * (resets / all).min(1.0)
            ));
        }
    }
    for (l, ratio) in &o.retransmit_ratio {
        out.push(format!(
            "{}: {:.1}% of the segments sent in the last {since} were retransmitted (packet loss or congestion between clients and nginx)",
            listener(l),
            100.0 * ratio
        ));
    }
    for (name, summary) in &o.firing {
        out.push(format!("alert {name} firing: {summary}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)], v: f64) -> Row {
        (pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), v)
    }

    #[test]
    fn urls() {
        assert_eq!(addr_from_url("http://127.0.0.1:9113").unwrap(), "127.0.0.1:9113");
        assert_eq!(addr_from_url("http://[::1]:9113/").unwrap(), "[::1]:9113");
        assert_eq!(addr_from_url("127.0.0.1:9113").unwrap(), "127.0.0.1:9113");
        assert!(addr_from_url("https://x:1").is_err());
        assert!(addr_from_url("http://nohost").is_err());
    }

    #[test]
    fn names_dropping_listeners_with_their_queue() {
        let l = [("conf_path", "/etc/nginx/nginx.conf"), ("listen_address", "0.0.0.0:80")];
        let other = [
            ("conf_path", "/etc/nginx/nginx.conf"),
            ("listen_address", "0.0.0.0:443"),
        ];
        let mut named = vec![("__name__", "ngxprobe_listen_queue_length")];
        named.extend(l);
        let o = Observed {
            drops: vec![row(&l, 312.0)],
            queue_peak: vec![row(&named, 512.0), row(&other, 460.0)],
            queue_max: vec![row(&l, 511.0), row(&other, 511.0)],
            firing: vec![("NginxListenerDroppingConnections".into(), "s".into())],
            listeners: 2,
            ..Default::default()
        };
        let f = findings(&o, "5m");
        assert_eq!(
            f,
            vec![
                "listener 0.0.0.0:80 of nginx /etc/nginx/nginx.conf dropped 312 connection attempts in the last 5m: accept queue 512/511 (full) at its peak",
                "listener 0.0.0.0:443 of nginx /etc/nginx/nginx.conf accept queue reached 460/511 (over 80% of its limit) in the last 5m: nginx accepts too slowly",
                "alert NginxListenerDroppingConnections firing: s",
            ]
        );
        assert!(findings(&Observed::default(), "5m").is_empty());
    }

    #[test]
    fn names_killed_workers_timeouts_resets_and_retransmits() {
        let inst = [("conf_path", "/c")];
        let l = [("conf_path", "/c"), ("listen_address", "0.0.0.0:80")];
        let with = |base: &[(&'static str, &'static str)], more: &[(&'static str, &'static str)]| {
            base.iter().chain(more).copied().collect::<Vec<_>>()
        };
        let segv = with(&inst, &[("cause", "signal"), ("signal", "SIGSEGV")]);
        let oom = with(&inst, &[("cause", "oom"), ("signal", "")]);
        let timeout = with(&l, &[("cause", "timeout")]);
        let reset = with(&l, &[("cause", "reset")]);
        let o = Observed {
            crashes: Counted {
                exact: vec![row(&segv, 2.0), row(&oom, 1.0)],
                ..Default::default()
            },
            timeouts: Counted {
                exact: vec![row(&timeout, 3.0)],
                increase: vec![row(&timeout, 3.4)],
                ..Default::default()
            },
            reset_closes: Counted {
                exact: vec![row(&reset, 30.0)],
                increase: vec![row(&reset, 31.0)],
                ..Default::default()
            },
            closed: vec![row(&l, 100.0)],
            retransmit_ratio: vec![row(&l, 0.073)],
            ..Default::default()
        };
        assert_eq!(
            findings(&o, "5m"),
            vec![
                "nginx /c: 2 worker processes were killed by SIGSEGV in the last 5m (their connections were dropped; see nginx's error_log)",
                "nginx /c: 1 worker process was killed by the OOM killer in the last 5m (their connections were dropped; see nginx's error_log)",
                "listener 0.0.0.0:80 of nginx /c: 3 client connections timed out in the last 5m (the kernel gave up retransmitting: clients vanished or the path drops packets)",
                "listener 0.0.0.0:80 of nginx /c: 30 client connections ended by a reset in the last 5m, 31% of those closed",
                "listener 0.0.0.0:80 of nginx /c: 7.3% of the segments sent in the last 5m were retransmitted (packet loss or congestion between clients and nginx)",
            ]
        );
        // Resets that are a small share of closes are not a problem.
        let o = Observed {
            reset_closes: Counted {
                exact: vec![row(&reset, 3.0)],
                increase: vec![row(&reset, 3.0)],
                ..Default::default()
            },
            closed: vec![row(&l, 100.0)],
            ..Default::default()
        };
        assert!(findings(&o, "5m").is_empty());
    }

    #[test]
    fn a_counter_reset_in_the_window_is_said_to_be_approximate() {
        let l = [("conf_path", "/c"), ("listen_address", "[::]:80")];
        let o = Observed {
            drops: vec![row(&l, 3.0)],
            drops_reset: vec![row(&l, 1.0)],
            drops_increase: vec![row(&l, 9.4)],
            ..Default::default()
        };
        assert_eq!(
            findings(&o, "10m"),
            vec![
                "listener [::]:80 of nginx /c dropped about 9 connection attempts in the last 10m: accept queue unknown"
            ]
        );
    }
}
