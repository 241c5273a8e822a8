//! The data side of `ngxprobe top`, without a terminal: which PromQL queries
//! one refresh asks, how their answers become one row per instance and
//! listener, how rows sort, and how each cell is written.
use std::collections::BTreeMap;

use crate::query::cli::VectorRow;

type Labels = BTreeMap<String, String>;

/// Labels of the per-request families that are not instance labels: summed
/// away so a query answers one series per instance (the status query keeps
/// `http_response_status_code`).
const REQUEST_LABELS: &[&str] = &[
    "http_request_method",
    "http_response_status_code",
    "network_protocol_version",
    "url_scheme",
    "server_port",
    "server_name",
];

/// What one query feeds. One query per field per refresh, whatever the
/// number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RequestRate,
    StatusRate,
    P50,
    P99,
    Connections,
    Queue,
    Drops,
    Retransmits,
    ResetsSent,
    ResetsReceived,
}

/// The queries of one refresh: rates and increases over `window` (a
/// Prometheus duration such as `10s`).
pub fn queries(window: &str) -> Vec<(Field, String)> {
    let without = |keep: &str| {
        REQUEST_LABELS
            .iter()
            .filter(|l| **l != keep)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all = without("");
    let quantile = |q: &str| {
        format!(
            "histogram_quantile({q}, sum without ({all}) (rate(http_server_request_duration_seconds_bucket[{window}])))"
        )
    };
    vec![
        (Field::RequestRate, format!("rate(nginx_http_requests_total[{window}])")),
        (
            Field::StatusRate,
            format!(
                "sum without ({}) (rate(http_server_request_duration_seconds_count[{window}]))",
                without("http_response_status_code")
            ),
        ),
        (Field::P50, quantile("0.5")),
        (Field::P99, quantile("0.99")),
        (
            Field::Connections,
            r#"{__name__=~"nginx_connections_(active|reading|writing|waiting)"}"#.to_string(),
        ),
        (
            Field::Queue,
            r#"{__name__=~"ngxprobe_listen_queue_(length|max)"}"#.to_string(),
        ),
        (Field::Drops, format!("increase(ngxprobe_listen_drops_total[{window}])")),
        (
            Field::Retransmits,
            format!("increase(ngxprobe_tcp_retransmitted_segments_total[{window}])"),
        ),
        (
            Field::ResetsSent,
            format!("increase(ngxprobe_tcp_resets_sent_total[{window}])"),
        ),
        (
            Field::ResetsReceived,
            format!("increase(ngxprobe_tcp_resets_received_total[{window}])"),
        ),
    ]
}

/// One line of the screen: a listener of an instance (or the instance
/// alone when no listener is known). Request and connection columns are the
/// instance's (nginx counts them per instance), repeated on each of its
/// listeners; `None` is a blank cell (the agent has no such series).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// The instance labels (everything but the metric name and listener).
    pub instance: Labels,
    /// `listen_address` as the agent labels it; empty for an instance row.
    pub listener: String,
    pub requests_per_s: Option<f64>,
    /// Shares of 2xx, 3xx, 4xx, 5xx among the requests of the window.
    pub status_share: Option<[f64; 4]>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// active, reading, writing, waiting.
    pub connections: [Option<f64>; 4],
    pub queue_length: Option<f64>,
    pub queue_max: Option<f64>,
    pub drops: Option<f64>,
    pub retransmits: Option<f64>,
    pub resets_sent: Option<f64>,
    pub resets_received: Option<f64>,
}

/// Instance identity of a series: its labels without the metric name, the
/// listener and the status code.
fn instance_of(l: &Labels) -> Labels {
    let mut k = l.clone();
    for x in ["__name__", "listen_address", "http_response_status_code"] {
        k.remove(x);
    }
    k
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Rows from the answers of one refresh (any field may be missing: that
/// query failed or the agent has no such family).
pub fn build(answers: &[(Field, Vec<VectorRow>)]) -> Vec<Row> {
    let get = |f: Field| answers.iter().filter(move |(g, _)| *g == f).flat_map(|(_, v)| v.iter());
    // Listeners per instance: from the accept-queue and TCP families. A TCP
    // label can list several addresses of one port ("0.0.0.0:80,[::]:80");
    // it is shown on each of them that has a row of its own.
    let mut listeners: BTreeMap<Labels, Vec<String>> = BTreeMap::new();
    let per_listener = [
        Field::Queue,
        Field::Drops,
        Field::Retransmits,
        Field::ResetsSent,
        Field::ResetsReceived,
    ];
    let mut instances: Vec<Labels> = Vec::new();
    for (f, rows) in answers {
        for (l, _) in rows {
            let inst = instance_of(l);
            if !instances.contains(&inst) {
                instances.push(inst.clone());
            }
            if per_listener.contains(f)
                && let Some(a) = l.get("listen_address")
            {
                let v = listeners.entry(inst).or_default();
                if !v.contains(a) {
                    v.push(a.clone());
                }
            }
        }
    }
    // A combined TCP label whose addresses all have rows of their own adds none.
    for v in listeners.values_mut() {
        let singles: Vec<String> = v.iter().filter(|a| !a.contains(',')).cloned().collect();
        v.retain(|a| !a.contains(',') || !a.split(',').all(|x| singles.iter().any(|s| s == x)));
        v.sort();
    }

    let mut out = Vec::new();
    for inst in instances {
        let of_inst = |f: Field| get(f).filter(|(l, _)| instance_of(l) == inst);
        let one = |f: Field| of_inst(f).map(|(_, v)| *v).find(|v| v.is_finite());
        let named = |f: Field, name: &str| {
            of_inst(f)
                .find(|(l, _)| l.get("__name__").map(String::as_str) == Some(name))
                .and_then(|(_, v)| finite(*v))
        };
        let mut classes = [0.0; 4];
        let mut any_status = false;
        for (l, v) in of_inst(Field::StatusRate) {
            let Some(c) = l.get("http_response_status_code").and_then(|c| c.chars().next()) else {
                continue;
            };
            any_status = true;
            if let Some(i) = "2345".find(c)
                && v.is_finite()
            {
                classes[i] += v;
            }
        }
        let total: f64 = of_inst(Field::StatusRate)
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
            .sum();
        let base = Row {
            instance: inst.clone(),
            requests_per_s: one(Field::RequestRate),
            status_share: (any_status && total > 0.0).then(|| classes.map(|c| c / total)),
            p50_s: one(Field::P50),
            p99_s: one(Field::P99),
            connections: ["active", "reading", "writing", "waiting"]
                .map(|s| named(Field::Connections, &format!("nginx_connections_{s}"))),
            ..Default::default()
        };
        let addrs = listeners.get(&inst).cloned().unwrap_or_default();
        if addrs.is_empty() {
            out.push(base);
            continue;
        }
        for a in addrs {
            // A series belongs to the row of `a` when its listen_address is
            // `a` or a combined label that lists `a`.
            let matches = |l: &Labels| {
                l.get("listen_address")
                    .is_some_and(|x| x == &a || x.split(',').any(|p| p == a))
            };
            let at = |f: Field| {
                of_inst(f)
                    .filter(|(l, _)| matches(l))
                    .map(|(_, v)| *v)
                    .find(|v| v.is_finite())
            };
            let queue = |name: &str| {
                of_inst(Field::Queue)
                    .find(|(l, _)| matches(l) && l.get("__name__").map(String::as_str) == Some(name))
                    .and_then(|(_, v)| finite(*v))
            };
            out.push(Row {
                listener: a.clone(),
                queue_length: queue("ngxprobe_listen_queue_length"),
                queue_max: queue("ngxprobe_listen_queue_max"),
                drops: at(Field::Drops),
                retransmits: at(Field::Retransmits),
                resets_sent: at(Field::ResetsSent),
                resets_received: at(Field::ResetsReceived),
                ..base.clone()
            });
        }
    }
    out
}

/// The column rows are sorted by (largest first; `Name`: alphabetical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Rate,
    Errors,
    Latency,
    Queue,
    Drops,
    Retransmits,
    Resets,
    Name,
}

impl SortKey {
    /// The key that selects it on the screen.
    pub const KEYS: &[(char, SortKey, &str)] = &[
        ('r', SortKey::Rate, "rate"),
        ('e', SortKey::Errors, "5xx"),
        ('l', SortKey::Latency, "p99"),
        ('a', SortKey::Queue, "accept queue"),
        ('d', SortKey::Drops, "drops"),
        ('t', SortKey::Retransmits, "retransmits"),
        ('x', SortKey::Resets, "resets"),
        ('n', SortKey::Name, "name"),
    ];

    pub fn from_key(c: char) -> Option<SortKey> {
        Self::KEYS.iter().find(|(k, _, _)| *k == c).map(|(_, s, _)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::KEYS.iter().find(|(_, s, _)| *s == self).map_or("", |(_, _, n)| n)
    }

    fn value(self, r: &Row) -> Option<f64> {
        match self {
            SortKey::Rate => r.requests_per_s,
            SortKey::Errors => r.status_share.map(|s| s[3]),
            SortKey::Latency => r.p99_s,
            SortKey::Queue => r.queue_length,
            SortKey::Drops => r.drops,
            SortKey::Retransmits => r.retransmits,
            SortKey::Resets => match (r.resets_sent, r.resets_received) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            },
            SortKey::Name => None,
        }
    }
}

/// Sorts by `key`, largest first, blanks last; ties (and `Name`) by
/// instance, then listener, so the order is stable between refreshes.
pub fn sort(rows: &mut [Row], key: SortKey) {
    rows.sort_by(|a, b| {
        let by_value = match (key.value(a), key.value(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_value
            .then_with(|| instance_name(&a.instance).cmp(&instance_name(&b.instance)))
            .then_with(|| a.listener.cmp(&b.listener))
    });
}

/// How an instance is named on screen: its config file, then where it runs.
pub fn instance_name(l: &Labels) -> String {
    let mut s = l.get("conf_path").cloned().unwrap_or_else(|| "?".into());
    if let (Some(ns), Some(pod)) = (l.get("namespace"), l.get("pod")) {
        s.push_str(&format!(" pod {ns}/{pod}"));
    } else if let Some(c) = l.get("container_id") {
        s.push_str(&format!(" container {}", &c[..c.len().min(12)]));
    }
    s
}

/// Column headers, in the order of [`cells`].
pub const HEADER: &[&str] = &[
    "LISTENER", "REQ/S", "2XX", "3XX", "4XX", "5XX", "P50", "P99", "ACTIVE", "READ", "WRITE", "WAIT", "QUEUE", "DROPS",
    "RETRANS", "RST_OUT", "RST_IN", "INSTANCE",
];

/// The cells of a row, as written on screen (blank when unknown).
pub fn cells(r: &Row) -> Vec<String> {
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{}", v.round() as i64));
    let mut c = vec![r.listener.clone(), r.requests_per_s.map_or(String::new(), rate)];
    match r.status_share {
        Some(s) => c.extend(s.map(|x| format!("{:.0}%", x * 100.0))),
        None => c.extend(std::iter::repeat_n(String::new(), 4)),
    }
    c.push(r.p50_s.map_or(String::new(), seconds));
    c.push(r.p99_s.map_or(String::new(), seconds));
    c.extend(r.connections.map(num));
    c.push(match (r.queue_length, r.queue_max) {
        (Some(l), Some(m)) => format!("{}/{}", l.round() as i64, m.round() as i64),
        (Some(l), None) => num(Some(l)),
        _ => String::new(),
    });
    for v in [r.drops, r.retransmits, r.resets_sent, r.resets_received] {
        c.push(num(v));
    }
    c.push(instance_name(&r.instance));
    c
}

/// Requests per second, three significant figures at most.
pub fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency in the unit that reads best: 850us, 12.5ms, 1.20s.
pub fn seconds(v: f64) -> String {
    if v < 1e-3 {
        format!("{:.0}us", v * 1e6)
    } else if v < 1.0 {
        format!("{:.1}ms", v * 1e3)
    } else {
        format!("{v:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)], v: f64) -> VectorRow {
        (pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), v)
    }

    const C: (&str, &str) = ("conf_path", "/etc/nginx/nginx.conf");

    fn answers() -> Vec<(Field, Vec<VectorRow>)> {
        let l80 = ("listen_address", "0.0.0.0:80");
        let l6 = ("listen_address", "[::]:80");
        let other = ("conf_path", "/srv/b.conf");
        vec![
            (Field::RequestRate, vec![s(&[C], 200.0), s(&[other], 5.0)]),
            (
                Field::StatusRate,
                vec![
                    s(&[C, ("http_response_status_code", "200")], 150.0),
                    s(&[C, ("http_response_status_code", "304")], 10.0),
                    s(&[C, ("http_response_status_code", "404")], 20.0),
                    s(&[C, ("http_response_status_code", "502")], 20.0),
                ],
            ),
            (Field::P50, vec![s(&[C], 0.0042), s(&[other], f64::NAN)]),
            (Field::P99, vec![s(&[C], 0.25)]),
            (
                Field::Connections,
                vec![
                    s(&[("__name__", "nginx_connections_active"), C], 7.0),
                    s(&[("__name__", "nginx_connections_waiting"), C], 3.0),
                ],
            ),
            (
                Field::Queue,
                vec![
                    s(&[("__name__", "ngxprobe_listen_queue_length"), C, l80], 5.0),
                    s(&[("__name__", "ngxprobe_listen_queue_max"), C, l80], 4.0),
                    s(&[("__name__", "ngxprobe_listen_queue_length"), C, l6], 0.0),
                    s(&[("__name__", "ngxprobe_listen_queue_max"), C, l6], 511.0),
                ],
            ),
            (Field::Drops, vec![s(&[C, l80], 7.4), s(&[C, l6], 0.0)]),
            (
                Field::Retransmits,
                vec![s(&[C, ("listen_address", "0.0.0.0:80,[::]:80")], 3.0)],
            ),
            (Field::ResetsSent, vec![s(&[C, ("listen_address", "0.0.0.0:443")], 2.0)]),
        ]
    }

    #[test]
    fn one_row_per_listener_with_the_instance_columns_on_each() {
        let rows = build(&answers());
        let names: Vec<_> = rows
            .iter()
            .map(|r| (instance_name(&r.instance), r.listener.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/etc/nginx/nginx.conf".to_string(), "0.0.0.0:443".to_string()),
                ("/etc/nginx/nginx.conf".to_string(), "0.0.0.0:80".to_string()),
                ("/etc/nginx/nginx.conf".to_string(), "[::]:80".to_string()),
                ("/srv/b.conf".to_string(), String::new()),
            ]
        );
        let r80 = &rows[1];
        assert_eq!(r80.requests_per_s, Some(200.0));
        assert_eq!(r80.status_share, Some([0.75, 0.05, 0.1, 0.1]));
        assert_eq!((r80.p50_s, r80.p99_s), (Some(0.0042), Some(0.25)));
        assert_eq!(r80.connections, [Some(7.0), None, None, Some(3.0)]);
        assert_eq!(
            (r80.queue_length, r80.queue_max, r80.drops),
            (Some(5.0), Some(4.0), Some(7.4))
        );
        // The combined TCP label lands on both of its addresses.
        assert_eq!(r80.retransmits, Some(3.0));
        assert_eq!(rows[2].retransmits, Some(3.0));
        assert_eq!(rows[0].resets_sent, Some(2.0));
        assert_eq!(rows[0].queue_length, None);
        // NaN quantile (no requests in the window) and absent families: blank.
        let b = &rows[3];
        assert_eq!((b.requests_per_s, b.p50_s, b.status_share), (Some(5.0), None, None));
        assert_eq!(
            cells(r80),
            [
                "0.0.0.0:80",
                "200",
                "75%",
                "5%",
                "10%",
                "10%",
                "4.2ms",
                "250.0ms",
                "7",
                "",
                "",
                "3",
                "5/4",
                "7",
                "3",
                "",
                "",
                "/etc/nginx/nginx.conf"
            ]
        );
        assert_eq!(cells(b).len(), HEADER.len());
    }

    #[test]
    fn a_combined_tcp_label_without_rows_of_its_own_is_a_row() {
        let rows = build(&[(
            Field::Retransmits,
            vec![s(&[C, ("listen_address", "0.0.0.0:80,[::]:80")], 1.0)],
        )]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].listener, "0.0.0.0:80,[::]:80");
        assert!(build(&[]).is_empty());
    }

    #[test]
    fn sorts_largest_first_blanks_last_ties_by_name() {
        let mut rows = build(&answers());
        let order = |rows: &[Row]| rows.iter().map(|r| r.listener.clone()).collect::<Vec<_>>();
        sort(&mut rows, SortKey::Drops);
        assert_eq!(order(&rows), ["0.0.0.0:80", "[::]:80", "0.0.0.0:443", ""]);
        sort(&mut rows, SortKey::Name);
        assert_eq!(order(&rows), ["0.0.0.0:443", "0.0.0.0:80", "[::]:80", ""]);
        sort(&mut rows, SortKey::Rate);
        assert_eq!(order(&rows), ["0.0.0.0:443", "0.0.0.0:80", "[::]:80", ""]);
        sort(&mut rows, SortKey::Resets);
        assert_eq!(order(&rows), ["0.0.0.0:443", "0.0.0.0:80", "[::]:80", ""]);
        sort(&mut rows, SortKey::Queue);
        assert_eq!(order(&rows), ["0.0.0.0:80", "[::]:80", "0.0.0.0:443", ""]);
        assert_eq!(SortKey::from_key('d'), Some(SortKey::Drops));
        assert_eq!(SortKey::from_key('q'), None);
        assert_eq!(SortKey::Latency.name(), "p99");
    }

    #[test]
    fn queries_sum_per_instance_and_keep_the_status() {
        let q = queries("10s");
        assert_eq!(q.len(), 10);
        let status = &q.iter().find(|(f, _)| *f == Field::StatusRate).unwrap().1;
        assert!(!status.contains("http_response_status_code"), "{status}");
        assert!(
            status.contains("server_port") && status.ends_with("[10s]))"),
            "{status}"
        );
        let p99 = &q.iter().find(|(f, _)| *f == Field::P99).unwrap().1;
        assert!(
            p99.starts_with("histogram_quantile(0.99, sum without (http_request_method, http_response_status_code,")
        );
        for (_, e) in &q {
            promql_parser::parser::parse(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn formats() {
        assert_eq!(seconds(0.00085), "850us");
        assert_eq!(seconds(0.0125), "12.5ms");
        assert_eq!(seconds(1.2), "1.20s");
        assert_eq!(rate(1234.4), "1234");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(0.5), "0.50");
    }
}
