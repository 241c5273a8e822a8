//! Prometheus text format 0.0.4 and OpenMetrics 1.0 rendering.
//!
//! Both renderers group samples of equally named families under one
//! HELP/TYPE (the first family's wins), sort families by name and samples by
//! labels, drop exact duplicate series (Prometheus would reject the whole
//! scrape) and skip families without samples, so output is deterministic.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::compat::float::{format_openmetrics_value, format_text_value};
use crate::metrics::{Family, MetricType, Sample};

/// `text/plain; version=0.0.4` exposition, as client_golang writes it.
pub fn render_text(families: &[Family]) -> String {
    let mut out = String::new();
    for group in group_families(families) {
        if !group.help.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", group.name, escape_help(group.help, false));
        }
        let kind = match group.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
            MetricType::Histogram => "histogram",
        };
        let _ = writeln!(out, "# TYPE {} {}", group.name, kind);
        for sample in &group.samples {
            write_sample(&mut out, group.name, sample, &format_text_value(sample.value));
        }
    }
    out
}

/// OpenMetrics 1.0 exposition, terminated by `# EOF`.
///
/// DECISION: a counter whose name lacks `_total` (the exporter's
/// `nginx_connections_accepted` / `_handled`) is emitted as
/// `# TYPE name unknown` with the sample name unchanged. As a `counter`,
/// OpenMetrics would force the sample name to `name_total`, and Prometheus —
/// which negotiates OpenMetrics by default — would store a different series
/// than nginx-prometheus-exporter produces, breaking users' dashboards and
/// rules. Counters ending in `_total` follow the spec: `# TYPE base counter`
/// with samples named `base_total`.
pub fn render_openmetrics(families: &[Family]) -> String {
    let mut out = String::new();
    for group in group_families(families) {
        let (family_name, kind) = match group.kind {
            MetricType::Counter => match group.name.strip_suffix("_total") {
                Some(base) if !base.is_empty() => (base, "counter"),
                _ => (group.name, "unknown"),
            },
            MetricType::Gauge => (group.name, "gauge"),
            MetricType::Untyped => (group.name, "unknown"),
            MetricType::Histogram => (group.name, "histogram"),
        };
        if !group.help.is_empty() {
            let _ = writeln!(out, "# HELP {} {}", family_name, escape_help(group.help, true));
        }
        let _ = writeln!(out, "# TYPE {family_name} {kind}");
        for sample in &group.samples {
            write_sample(&mut out, group.name, sample, &format_openmetrics_value(sample.value));
        }
    }
    out.push_str("# EOF\n");
    out
}

struct Group<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    samples: Vec<&'a Sample>,
}

fn group_families(families: &[Family]) -> Vec<Group<'_>> {
    let mut groups: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    for family in families {
        let group = groups.entry(family.name.as_str()).or_insert_with(|| Group {
            name: &family.name,
            help: &family.help,
            kind: family.kind,
            samples: Vec::new(),
        });
        group.samples.extend(family.samples.iter());
    }
    let mut out: Vec<Group<'_>> = groups.into_values().collect();
    for group in &mut out {
        if group.kind == MetricType::Histogram {
            // One histogram's samples stay together in the order pushed
            // (buckets by bound, _sum, _count): sort by the labels without `le`.
            group
                .samples
                .sort_by(|a, b| histogram_labels(a).cmp(&histogram_labels(b)));
            group
                .samples
                .dedup_by(|later, first| later.labels == first.labels && later.suffix == first.suffix);
            continue;
        }
        // Stable sort: among duplicates the first one pushed is kept.
        group.samples.sort_by(|a, b| a.labels.cmp(&b.labels));
        group
            .samples
            .dedup_by(|later, first| later.labels == first.labels && later.suffix == first.suffix);
    }
    out.retain(|g| !g.samples.is_empty());
    out
}

/// A histogram sample's labels without `le` (which tells its buckets apart).
fn histogram_labels(s: &Sample) -> Vec<&(String, String)> {
    s.labels.iter().filter(|(k, _)| k != "le").collect()
}

fn write_sample(out: &mut String, name: &str, sample: &Sample, value: &str) {
    out.push_str(name);
    out.push_str(sample.suffix);
    if !sample.labels.is_empty() {
        out.push('{');
        for (i, (label, label_value)) in sample.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(label_value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// HELP text: `\` and newline are escaped; OpenMetrics also escapes `"`.
fn escape_help(help: &str, quote: bool) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// Label values: `\`, `"` and newline are escaped (both formats).
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight nginx_* families plus build info, built the way collect
    /// builds them, with the values of the reference scrape.
    fn reference_families() -> Vec<Family> {
        let specs: [(&str, &str, MetricType, f64); 8] = [
            (
                "nginx_connections_accepted",
                "Accepted client connections",
                MetricType::Counter,
                15585.0,
            ),
            (
                "nginx_connections_active",
                "Active client connections",
                MetricType::Gauge,
                1.0,
            ),
            (
                "nginx_connections_handled",
                "Handled client connections",
                MetricType::Counter,
                15585.0,
            ),
            (
                "nginx_connections_reading",
                "Connections where NGINX is reading the request header",
                MetricType::Gauge,
                0.0,
            ),
            (
                "nginx_connections_waiting",
                "Idle client connections",
                MetricType::Gauge,
                0.0,
            ),
            (
                "nginx_connections_writing",
                "Connections where NGINX is writing the response back to the client",
                MetricType::Gauge,
                1.0,
            ),
            (
                "nginx_http_requests_total",
                "Total http requests",
                MetricType::Counter,
                15304375.0,
            ),
            ("nginx_up", "Status of the last metric scrape", MetricType::Gauge, 1.0),
        ];
        // Deliberately unsorted input: the renderer sorts.
        let mut families: Vec<Family> = specs
            .iter()
            .rev()
            .map(|(name, help, kind, value)| {
                let mut f = Family::new(name, help, *kind);
                f.push(&[], *value);
                f
            })
            .collect();
        let mut build = Family::new(
            "nginxexporter_build_info",
            "Exporter build information",
            MetricType::Gauge,
        );
        build.push(
            &[
                ("arch", "linux/amd64"),
                ("commit", ""),
                ("date", ""),
                ("dirty", "false"),
                ("go", "go1.19.8"),
                ("version", "0.11.0-1+b4"),
            ],
            1.0,
        );
        families.insert(3, build);
        families
    }

    #[test]
    fn histograms_render_buckets_in_order_with_sum_and_count() {
        let mut f = Family::new("req_seconds", "Request time", MetricType::Histogram);
        let l = |v: &str| vec![("code".to_string(), v.to_string())];
        f.push_histogram(
            l("500"),
            &crate::metrics::HistogramValue::from_bucket_counts(&[0.1, 1.0], &[1, 0, 1], 2.5),
        );
        f.push_histogram(
            l("200"),
            &crate::metrics::HistogramValue::from_bucket_counts(&[0.1, 1.0], &[3, 1, 0], 0.75),
        );
        let text = render_text(&[f.clone()]);
        let want = "# HELP req_seconds Request time\n# TYPE req_seconds histogram\n\
req_seconds_bucket{code=\"200\",le=\"0.1\"} 3\n\
req_seconds_bucket{code=\"200\",le=\"1\"} 4\n\
req_seconds_bucket{code=\"200\",le=\"+Inf\"} 4\n\
req_seconds_sum{code=\"200\"} 0.75\n\
req_seconds_count{code=\"200\"} 4\n\
req_seconds_bucket{code=\"500\",le=\"0.1\"} 1\n\
req_seconds_bucket{code=\"500\",le=\"1\"} 1\n\
req_seconds_bucket{code=\"500\",le=\"+Inf\"} 2\n\
req_seconds_sum{code=\"500\"} 2.5\n\
req_seconds_count{code=\"500\"} 2\n";
        assert_eq!(text, want);
        let om = render_openmetrics(&[f]);
        assert!(
            om.contains("# TYPE req_seconds histogram\n") && om.ends_with("# EOF\n"),
            "{om}"
        );
        assert!(om.contains("req_seconds_count{code=\"500\"} 2.0\n"), "{om}");
    }

    #[test]
    fn text_matches_reference_byte_for_byte() {
        let reference = include_str!("testdata/nginx-prometheus-exporter-0.11.metrics.txt");
        assert_eq!(render_text(&reference_families()), reference);
    }

    #[test]
    fn text_nginx_lines_match_reference() {
        // The nginx_* lines on their own (the part ngxprobe must reproduce).
        let reference = include_str!("testdata/nginx-prometheus-exporter-0.11.metrics.txt");
        let only_nginx = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains(" nginx_") || l.starts_with("nginx_"))
                .map(str::to_string)
                .collect()
        };
        let families: Vec<Family> = reference_families()
            .into_iter()
            .filter(|f| f.name.starts_with("nginx_"))
            .collect();
        let rendered = render_text(&families);
        assert_eq!(only_nginx(&rendered), only_nginx(reference));
        assert_eq!(only_nginx(reference).len(), 24);
    }

    #[test]
    fn escapes_help_and_label_values() {
        let mut f = Family::new("x", "a \\ b\nc \"q\"", MetricType::Gauge);
        f.push(&[("path", "C:\\dir\n\"x\"")], 2.5);
        assert_eq!(
            render_text(std::slice::from_ref(&f)),
            "# HELP x a \\\\ b\\nc \"q\"\n# TYPE x gauge\nx{path=\"C:\\\\dir\\n\\\"x\\\"\"} 2.5\n"
        );
        assert_eq!(
            render_openmetrics(&[f]),
            "# HELP x a \\\\ b\\nc \\\"q\\\"\n# TYPE x gauge\nx{path=\"C:\\\\dir\\n\\\"x\\\"\"} 2.5\n# EOF\n"
        );
    }

    #[test]
    fn groups_sorts_and_dedups_samples() {
        let mut a = Family::new("m", "first help", MetricType::Gauge);
        a.push(&[("k", "b")], 2.0);
        let mut b = Family::new("m", "second help", MetricType::Counter);
        b.push(&[("k", "a")], 1.0);
        b.push(&[("k", "b")], 99.0); // duplicate series: the first one wins
        let empty = Family::new("empty", "no samples", MetricType::Gauge);
        let mut untyped = Family::new("a_untyped", "", MetricType::Untyped);
        untyped.push(&[], f64::NAN);
        let text = render_text(&[a, empty, b, untyped]);
        assert_eq!(
            text,
            "# TYPE a_untyped untyped\na_untyped NaN\n# HELP m first help\n# TYPE m gauge\nm{k=\"a\"} 1\nm{k=\"b\"} 2\n"
        );
    }

    #[test]
    fn histograms_render_buckets_sum_and_count() {
        use crate::metrics::HistogramValue;
        let mut f = Family::new("h_seconds", "A histogram", MetricType::Histogram);
        let h = HistogramValue {
            buckets: vec![(0.5, 1), (1.0, 3)],
            sum: 2.5,
            count: 4,
        };
        f.push_histogram(vec![("x".into(), "b".into())], &h);
        f.push_histogram(vec![("x".into(), "a".into())], &h);
        let text = render_text(std::slice::from_ref(&f));
        let want_b = "h_seconds_bucket{x=\"b\",le=\"0.5\"} 1\nh_seconds_bucket{x=\"b\",le=\"1\"} 3\n\
                      h_seconds_bucket{x=\"b\",le=\"+Inf\"} 4\nh_seconds_sum{x=\"b\"} 2.5\nh_seconds_count{x=\"b\"} 4\n";
        assert!(
            text.starts_with(
                "# HELP h_seconds A histogram\n# TYPE h_seconds histogram\nh_seconds_bucket{x=\"a\",le=\"0.5\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with(want_b), "{text}");
        assert_eq!(text.lines().count(), 12);
        let om = render_openmetrics(&[f]);
        assert!(om.contains("# TYPE h_seconds histogram\n"), "{om}");
        assert!(om.contains("h_seconds_count{x=\"a\"} 4.0\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_keeps_exporter_names() {
        let om = render_openmetrics(&reference_families());
        let expected_head = "\
# HELP nginx_connections_accepted Accepted client connections
# TYPE nginx_connections_accepted unknown
nginx_connections_accepted 15585.0
# HELP nginx_connections_active Active client connections
# TYPE nginx_connections_active gauge
nginx_connections_active 1.0
";
        assert!(om.starts_with(expected_head), "{om}");
        assert!(
            om.contains("# TYPE nginx_connections_handled unknown\nnginx_connections_handled 15585.0\n"),
            "{om}"
        );
        assert!(
            om.contains("# HELP nginx_http_requests Total http requests\n# TYPE nginx_http_requests counter\nnginx_http_requests_total 1.5304375e+07\n"),
            "{om}"
        );
        assert!(om.contains("nginx_connections_reading 0.0\n"), "{om}");
        assert!(om.ends_with("version=\"0.11.0-1+b4\"} 1.0\n# EOF\n"), "{om}");
        assert_eq!(om.matches("# EOF").count(), 1);
        assert_eq!(render_openmetrics(&[]), "# EOF\n");
    }
}
