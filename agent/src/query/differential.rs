//! Differential test: the same deterministic nginx-like data in a real
//! Prometheus (imported with promtool) and in ngxprobe's store; every query
//! goes through both HTTP APIs and the JSON results must agree (same series
//! by labels, values within 1e-9 relative, NaN == NaN).
//!
//! Prometheus 2.x (Debian ships 2.42) closes range selectors on the left
//! (`[t-r, t]`), 3.x and ngxprobe do not (`(t-r, t]`). To compare semantics
//! rather than that edge, samples sit at `xx.317 s`, query times at `xx.500 s`
//! and every step, range, offset and subquery step is whole seconds (see
//! [`ngxprobe_e2e::prometheus`]): no sample or subquery point lands on an edge.
use std::collections::BTreeMap;

use ngxprobe_e2e::prometheus::{api_get, secs};
use serde_json::Value as J;

use super::promharness::{Pair, nginx_dataset};

/// One series of an answer: its labels and its points (t in ms, value text).
type CanonSeries = (BTreeMap<String, String>, Vec<(i64, String)>);

/// Series → points; sorted unless `ordered`.
#[derive(Debug, Clone, PartialEq)]
enum Canon {
    Scalar(i64, String),
    String(i64, String),
    Series(String, Vec<CanonSeries>),
    Error(String, String),
}

fn ts(v: &J) -> i64 {
    (v.as_f64().unwrap_or(f64::NAN) * 1000.0).round() as i64
}

fn canon(v: &J, ordered: bool) -> Canon {
    if v["status"] != "success" {
        return Canon::Error(
            v["errorType"].as_str().unwrap_or("").into(),
            v["error"].as_str().unwrap_or("").into(),
        );
    }
    let d = &v["data"];
    let r = &d["result"];
    let point = |p: &J| (ts(&p[0]), p[1].as_str().unwrap_or("").to_string());
    match d["resultType"].as_str().unwrap_or("") {
        "scalar" => Canon::Scalar(ts(&r[0]), r[1].as_str().unwrap_or("").into()),
        "string" => Canon::String(ts(&r[0]), r[1].as_str().unwrap_or("").into()),
        kind => {
            let mut out: Vec<_> = r
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let m: BTreeMap<String, String> = s["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").into()))
                        .collect();
                    let pts = if kind == "vector" {
                        vec![point(&s["value"])]
                    } else {
                        s["values"].as_array().into_iter().flatten().map(point).collect()
                    };
                    (m, pts)
                })
                .collect();
            if !ordered {
                out.sort_by(|a, b| a.0.cmp(&b.0));
            }
            Canon::Series(kind.into(), out)
        }
    }
}

fn num(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

/// 1e-9 relative (with an absolute floor of 1e-12 for results that are
/// differences of nearly equal numbers); NaN equals NaN.
fn close(a: &str, b: &str) -> bool {
    let (x, y) = (num(a), num(b));
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    if x == y {
        return true;
    }
    let d = (x - y).abs();
    d <= 1e-9 * x.abs().max(y.abs()) || d <= 1e-12
}

fn same(a: &Canon, b: &Canon) -> bool {
    match (a, b) {
        (Canon::Scalar(t1, v1), Canon::Scalar(t2, v2)) => t1 == t2 && close(v1, v2),
        (Canon::Series(k1, s1), Canon::Series(k2, s2)) => {
            k1 == k2
                && s1.len() == s2.len()
                && s1.iter().zip(s2).all(|((m1, p1), (m2, p2))| {
                    m1 == m2 && p1.len() == p2.len() && p1.iter().zip(p2).all(|(x, y)| x.0 == y.0 && close(&x.1, &y.1))
                })
        }
        (Canon::Error(k1, _), Canon::Error(k2, _)) => k1 == k2,
        _ => a == b,
    }
}

fn short(s: String) -> String {
    if s.len() > 600 {
        format!("{}… ({} chars)", &s[..s.floor_char_boundary(600)], s.len())
    } else {
        s
    }
}

/// Where two results first differ, compactly.
fn explain(p: &Canon, o: &Canon) -> String {
    if let (Canon::Series(k1, s1), Canon::Series(k2, s2)) = (p, o)
        && k1 == k2
    {
        let l1: Vec<_> = s1.iter().map(|s| &s.0).collect();
        let l2: Vec<_> = s2.iter().map(|s| &s.0).collect();
        if l1 != l2 {
            return short(format!(
                "series differ:\n    prometheus: {l1:?}\n    ngxprobe:   {l2:?}"
            ));
        }
        for ((m, a), (_, b)) in s1.iter().zip(s2) {
            let i = a
                .iter()
                .zip(b)
                .position(|(x, y)| x.0 != y.0 || !close(&x.1, &y.1))
                .unwrap_or(a.len().min(b.len()));
            if i < a.len().max(b.len()) {
                return format!(
                    "{m:?}: {} vs {} points; first difference at #{i}:\n    prometheus: {:?}\n    ngxprobe:   {:?}",
                    a.len(),
                    b.len(),
                    a.get(i.saturating_sub(1)..(i + 2).min(a.len())).unwrap_or(&[]),
                    b.get(i.saturating_sub(1)..(i + 2).min(b.len())).unwrap_or(&[])
                );
            }
        }
    }
    format!(
        "\n    prometheus: {}\n    ngxprobe:   {}",
        short(format!("{p:?}")),
        short(format!("{o:?}"))
    )
}

/// Known Prometheus 2.x vs 3.x differences (ngxprobe implements 3.x): the
/// comparison drops `__name__` from both results for these queries.
const IGNORE_NAME: &[(&str, &str)] = &[(
    "nginx_connections_active atan2 nginx_connections_waiting",
    "Prometheus 2.x keeps the metric name on `atan2` (not in its list of arithmetic operators); 3.x drops it \
     (promqltest operators.test: `trigy atan2 trigx` => `{}`)",
)];

fn drop_name(c: Canon) -> Canon {
    match c {
        Canon::Series(k, mut s) => {
            for x in &mut s {
                x.0.remove("__name__");
            }
            s.sort_by(|a, b| a.0.cmp(&b.0));
            Canon::Series(k, s)
        }
        c => c,
    }
}

/// The query expressions; `{T60}`-style placeholders are replaced with
/// absolute `xx.500` times (minutes after the data start).
const EXPRS: &[&str] = &[
    // selectors
    "nginx_http_requests_total",
    r#"nginx_http_requests_total{status="200"}"#,
    r#"nginx_http_requests_total{job=~"ngi.*", status!="500"}"#,
    r#"{__name__=~"nginx_connections_(reading|writing)", instance!~"10\\.0\\.1\\..*"}"#,
    // counters
    "rate(nginx_http_requests_total[1m])",
    "rate(nginx_http_requests_total[5m])",
    "irate(nginx_http_requests_total[1m])",
    "increase(nginx_http_requests_total[10m])",
    "increase(nginx_http_request_duration_seconds_count[15m])",
    "resets(nginx_http_requests_total[30m])",
    "avg(rate(nginx_connections_accepted_total[2m]))",
    // gauges
    "delta(nginx_connections_active[5m])",
    "idelta(nginx_connections_active[2m])",
    "deriv(nginx_connections_active[10m])",
    "predict_linear(nginx_connections_active[10m], 600)",
    "changes(nginx_up[30m])",
    "changes(nginx_connections_waiting[5m])",
    // *_over_time
    "avg_over_time(nginx_connections_active[5m])",
    "min_over_time(nginx_connections_active[5m])",
    "max_over_time(nginx_connections_active[7m])",
    "sum_over_time(nginx_connections_reading[3m])",
    "count_over_time(nginx_connections_active[4m])",
    "last_over_time(nginx_up[5m])",
    "stddev_over_time(nginx_upstream_response_seconds[10m])",
    "stdvar_over_time(nginx_connections_writing[10m])",
    "present_over_time(nginx_up[1m])",
    "quantile_over_time(0.9, nginx_upstream_response_seconds[10m])",
    "quantile_over_time(0.25, nginx_connections_active[15m])",
    "absent_over_time(nginx_nonexistent[5m])",
    "absent_over_time(nginx_up[5m])",
    // histograms
    "histogram_quantile(0.99, sum by (le) (rate(nginx_http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, sum by (instance, le) (rate(nginx_http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.9, rate(nginx_http_request_duration_seconds_bucket[10m]))",
    "rate(nginx_http_request_duration_seconds_sum[5m]) / rate(nginx_http_request_duration_seconds_count[5m])",
    "sum by (le) (nginx_http_request_duration_seconds_bucket)",
    // aggregations
    "sum by (instance) (rate(nginx_http_requests_total[1m]))",
    "sum without (status) (rate(nginx_http_requests_total[5m]))",
    "sum(rate(nginx_http_requests_total[1m])) by (job)",
    "avg by (job) (nginx_connections_active)",
    "min(nginx_connections_active)",
    "max by (job) (nginx_connections_waiting)",
    "count by (job) (nginx_up)",
    "group by (job) (nginx_up)",
    "topk(2, nginx_connections_active)",
    "bottomk by (job) (1, nginx_connections_active)",
    "topk(3, sum by (instance, status) (rate(nginx_http_requests_total[5m])))",
    "quantile(0.75, nginx_connections_active)",
    "quantile by (job) (0.5, rate(nginx_http_requests_total[5m]))",
    r#"count_values("value", nginx_up)"#,
    r#"count_values by (job) ("conns", nginx_connections_reading)"#,
    "stddev(nginx_connections_active)",
    "stdvar by (job) (nginx_connections_waiting)",
    "count(nginx_http_requests_total) by (job)",
    // binary operators
    "nginx_connections_reading + nginx_connections_writing",
    "nginx_connections_active - on(instance, job) nginx_connections_waiting",
    "rate(nginx_http_requests_total[5m]) / ignoring(status) group_left sum without (status) (rate(nginx_http_requests_total[5m]))",
    r#"sum by (instance) (rate(nginx_http_requests_total{status=~"5.."}[5m])) / on(instance) sum by (instance) (rate(nginx_http_requests_total[5m]))"#,
    "nginx_up * on(instance, job) group_right nginx_http_requests_total",
    r#"nginx_connections_active * on(instance) group_left(status) nginx_http_requests_total{status="404"}"#,
    "nginx_connections_active % 7",
    "nginx_connections_active ^ 2",
    "-nginx_connections_active",
    "nginx_connections_active atan2 nginx_connections_waiting",
    "nginx_connections_active / scalar(count(nginx_up))",
    "1 + 2 * 3 - 4 / 2 ^ 2",
    // comparisons and sets
    "nginx_connections_active > 50",
    "nginx_connections_active > bool 50",
    "50 < nginx_connections_active",
    "nginx_connections_active >= on(instance, job) nginx_connections_waiting",
    "nginx_up == bool 1",
    "nginx_connections_active > 40 and on(instance, job) nginx_up == 1",
    "nginx_connections_active > 60 or nginx_connections_waiting > 60",
    "nginx_connections_active unless nginx_connections_active > 50",
    "nginx_http_requests_total and on(instance) nginx_up == 1",
    // offset, @, subqueries
    "rate(nginx_http_requests_total[5m] offset 10m)",
    "nginx_connections_active offset 3m - nginx_connections_active",
    "nginx_connections_active @ {T60}",
    "rate(nginx_http_requests_total[5m] @ {T60})",
    "sum(nginx_connections_active @ start())",
    "max_over_time(nginx_connections_active[10m] @ end())",
    "max_over_time(rate(nginx_http_requests_total[1m])[10m:30s])",
    "avg_over_time(sum by (job) (nginx_connections_active)[15m:1m])",
    "min_over_time(nginx_connections_active[5m:])",
    "deriv(sum(nginx_connections_active)[20m:2m])",
    "max_over_time(nginx_connections_active[10m:1m] offset 5m)",
    // labels
    r#"label_replace(nginx_up, "host", "$1", "instance", "(.*):.*")"#,
    r#"label_join(nginx_up, "id", "/", "job", "instance")"#,
    r#"label_replace(rate(nginx_http_requests_total[5m]), "class", "${1}xx", "status", "(.).*")"#,
    // math
    "abs(delta(nginx_connections_active[5m]))",
    "sqrt(nginx_connections_active)",
    "ln(nginx_connections_active + 1)",
    "log2(nginx_connections_waiting + 1)",
    "log10(nginx_http_requests_total + 1)",
    "exp(nginx_upstream_response_seconds)",
    "ceil(nginx_upstream_response_seconds * 10)",
    "floor(nginx_upstream_response_seconds * 10)",
    "round(nginx_upstream_response_seconds, 0.1)",
    "clamp(nginx_connections_active, 10, 40)",
    "clamp_min(nginx_connections_active, 30)",
    "clamp_max(nginx_connections_active, 30)",
    "sgn(delta(nginx_connections_active[5m]))",
    "sin(nginx_upstream_response_seconds) + cos(nginx_upstream_response_seconds)",
    // scalars, vectors, time
    "scalar(sum(nginx_up))",
    "vector(1)",
    "time()",
    "timestamp(nginx_up)",
    "absent(nginx_nonexistent)",
    r#"absent(nginx_up{job="nope"})"#,
    "hour(timestamp(nginx_up))",
    "minute()",
    "day_of_week()",
];

/// Instant-only queries; `true` = the result order must match (sort).
const INSTANT_ONLY: &[(&str, bool)] = &[
    ("nginx_connections_active[2m]", false),
    (
        r#"nginx_http_requests_total{instance="10.0.0.2:9113",status="200"}[10m]"#,
        false,
    ),
    ("nginx_http_request_duration_seconds_sum[3m] offset 1m", false),
    ("sort(rate(nginx_http_requests_total[5m]))", true),
    ("sort_desc(nginx_connections_active)", true),
    (r#""a string""#, false),
    ("42", false),
];

/// One comparison: (query, parameters, API path, result order matters).
type Case = (String, Vec<(&'static str, String)>, &'static str, bool);

#[test]
fn differential_vs_prometheus() {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Yesterday 00:00 UTC: recent (Prometheus keeps it), and aligned so the
    // data layout is the same every run.
    let start_s = now_s / 86_400 * 86_400 - 86_400;
    let n = 400; // samples per series, 10..20 s apart: ~100 minutes
    let fams = nginx_dataset(start_s, n);
    let pair = Pair::new("differential", &fams);
    let at = |min: i64| (start_s + min * 60) * 1000 + 500;
    let sub = |e: &str| e.replace("{T60}", &secs(at(60)));

    // Prometheus must serve the imported blocks: all series, all samples
    // (and the ms timestamps both sides derived from `xx.317` must agree).
    let data_end = at(n as i64 * 20 / 60 + 2);
    let mut names: Vec<&str> = fams
        .iter()
        .flat_map(|f| f.series.iter().filter_map(|s| s.name()))
        .collect();
    names.sort();
    names.dedup();
    for (who, addr) in [("prometheus", pair.prom.addr()), ("ngxprobe", pair.ours.addr)] {
        let value = |q: String, t: i64| {
            let r = api_get(addr, "/api/v1/query", &[("query", q.clone()), ("time", secs(t))]).unwrap();
            r["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{who}: {q}: {r}"))
        };
        let series = value(r#"count({__name__=~"nginx_.+"})"#.into(), at(50));
        assert_eq!(series as usize, pair.series, "{who}: series served");
        let samples: f64 = names
            .iter()
            .map(|n| value(format!("sum(count_over_time({n}[1d]))"), data_end))
            .sum();
        assert_eq!(samples as usize, pair.samples, "{who}: samples served");
        let ts = value(
            r#"sum(timestamp(nginx_up{instance="10.0.0.1:9113"} @ "#.to_string() + &secs(at(50)) + "))",
            at(50),
        );
        let want = fams
            .iter()
            .flat_map(|f| &f.series)
            .find(|s| s.name() == Some("nginx_up"))
            .unwrap();
        let last = want.samples.iter().rev().find(|p| p.0 <= at(50)).unwrap();
        assert_eq!((ts * 1000.0).round() as i64, last.0, "{who}: sample timestamps");
    }

    let mut cases: Vec<Case> = vec![];
    for e in EXPRS {
        let q = sub(e);
        for m in [37, 75] {
            cases.push((
                q.clone(),
                vec![("query", q.clone()), ("time", secs(at(m)))],
                "/api/v1/query",
                false,
            ));
        }
        let params = vec![
            ("query", q.clone()),
            ("start", secs(at(10))),
            ("end", secs(at(100))),
            ("step", "60".into()),
        ];
        cases.push((q.clone(), params, "/api/v1/query_range", false));
    }
    // A few ranges with an odd step and a window past the end of the data.
    for e in [
        "rate(nginx_http_requests_total[1m])",
        "nginx_connections_active",
        "max_over_time(nginx_up[2m:17s])",
    ] {
        let params = vec![
            ("query", e.to_string()),
            ("start", secs(at(90))),
            ("end", secs(at(120))),
            ("step", "37".into()),
        ];
        cases.push((e.to_string(), params, "/api/v1/query_range", false));
    }
    for (q, ordered) in INSTANT_ONLY {
        cases.push((
            q.to_string(),
            vec![("query", q.to_string()), ("time", secs(at(50)))],
            "/api/v1/query",
            *ordered,
        ));
    }

    let mut diffs = vec![];
    let mut empty = 0;
    let mut known = 0;
    for (q, params, path, ordered) in &cases {
        let p = api_get(pair.prom.addr(), path, params).unwrap_or_else(|e| panic!("prometheus: {e:#}"));
        let o = api_get(pair.ours.addr, path, params).unwrap_or_else(|e| panic!("ngxprobe: {e:#}"));
        let (mut cp, mut co) = (canon(&p, *ordered), canon(&o, *ordered));
        if IGNORE_NAME.iter().any(|(e, _)| e == q) {
            known += 1;
            (cp, co) = (drop_name(cp), drop_name(co));
        }
        if matches!(&cp, Canon::Series(_, s) if s.is_empty()) {
            empty += 1;
        }
        if !same(&cp, &co) {
            let when: Vec<String> = params.iter().skip(1).map(|(k, v)| format!("{k}={v}")).collect();
            diffs.push(format!("{path} {q} [{}]\n  {}", when.join(" "), explain(&cp, &co)));
        }
    }
    println!(
        "differential vs Prometheus 2.42: {} queries, {} equal, {} different ({} empty on both sides; {} compared without \
         __name__ for a documented 2.x/3.x difference)",
        cases.len(),
        cases.len() - diffs.len(),
        diffs.len(),
        empty,
        known
    );
    assert!(cases.len() >= 100);
    assert!(
        diffs.is_empty(),
        "{} of {} queries differ:\n{}",
        diffs.len(),
        cases.len(),
        diffs.join("\n")
    );
}
