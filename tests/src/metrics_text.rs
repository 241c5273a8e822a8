//! Minimal Prometheus text-format parser and the per-instance view of the
//! stub_status families ngxprobe exports (nginx-prometheus-exporter names).
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line (comments and blank lines skipped).
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).with_context(|| format!("metrics line {}: {line:?}", no + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).context("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        bail!("empty metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').context("label without '='")?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].trim_start();
            let r = rest.strip_prefix('"').context("label value not quoted")?;
            let mut val = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        Some((_, o)) => {
                            val.push('\\');
                            val.push(o)
                        }
                        None => bail!("dangling backslash"),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    o => val.push(o),
                }
            }
            let end = end.context("unterminated label value")?;
            labels.push((key, val));
            rest = r[end + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    }
    let mut it = rest.split_whitespace();
    let v = it.next().context("missing value")?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse::<f64>().with_context(|| format!("bad value {other:?}"))?,
    };
    Ok(Sample { name, labels, value })
}

/// A parsed /metrics response.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub raw: String,
}

/// ngxprobe's numbers for one instance, as integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentView {
    pub accepted: i64,
    pub handled: i64,
    pub requests: i64,
    pub active: i64,
    pub reading: i64,
    pub writing: i64,
    pub waiting: i64,
    pub up: i64,
}

pub const ACCEPTED: &str = "nginx_connections_accepted";
pub const HANDLED: &str = "nginx_connections_handled";
pub const REQUESTS: &str = "nginx_http_requests_total";
pub const ACTIVE: &str = "nginx_connections_active";
pub const READING: &str = "nginx_connections_reading";
pub const WRITING: &str = "nginx_connections_writing";
pub const WAITING: &str = "nginx_connections_waiting";
pub const UP: &str = "nginx_up";

impl Scrape {
    pub fn parse(raw: String) -> Result<Scrape> {
        Ok(Scrape {
            samples: parse(&raw)?,
            raw,
        })
    }

    /// The single sample `name{conf_path="..."}` (other labels ignored);
    /// `None` if absent, an error if there are several.
    pub fn value(&self, name: &str, conf_path: &str) -> Result<Option<f64>> {
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.label("conf_path") == Some(conf_path));
        let first = found.next();
        if let Some(second) = found.next() {
            bail!(
                "several {name} samples for conf_path={conf_path:?}: {:?} and {:?}",
                first.unwrap().labels,
                second.labels
            );
        }
        Ok(first.map(|s| s.value))
    }

    /// The sample `name{conf_path="...", label="value"}`; 0 if absent.
    pub fn value_with(&self, name: &str, conf_path: &str, label: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.label("conf_path") == Some(conf_path) && s.label(label) == Some(value))
            .map(|s| s.value)
            .sum()
    }

    /// Sum of every `name` sample (all series of the family; 0 if none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// Sum of the `name` samples whose label `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.label(label) == Some(value))
            .map(|s| s.value)
            .sum()
    }

    /// Sums of the `name` samples by the value of label `by` (samples
    /// without it count under "").
    pub fn sum_by(&self, name: &str, by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            *out.entry(s.label(by).unwrap_or_default().to_string()).or_insert(0.0) += s.value;
        }
        out
    }

    /// Every conf_path label value seen on `nginx_up`.
    pub fn conf_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == UP)
            .filter_map(|s| s.label("conf_path").map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// All eight families for `conf_path`; an error names what is missing.
    pub fn view(&self, conf_path: &str) -> Result<AgentView> {
        let get = |name: &str| -> Result<i64> {
            let v = self.value(name, conf_path)?.with_context(|| {
                format!(
                    "no {name}{{conf_path={conf_path:?}}} in /metrics (instances seen: {:?})",
                    self.conf_paths()
                )
            })?;
            if !v.is_finite() || v.fract() != 0.0 {
                bail!("{name}{{conf_path={conf_path:?}}} = {v} is not an integer");
            }
            Ok(v as i64)
        };
        Ok(AgentView {
            accepted: get(ACCEPTED)?,
            handled: get(HANDLED)?,
            requests: get(REQUESTS)?,
            active: get(ACTIVE)?,
            reading: get(READING)?,
            writing: get(WRITING)?,
            waiting: get(WAITING)?,
            up: get(UP)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_format() {
        let raw = r#"# HELP nginx_up Status of the last metric scrape
# TYPE nginx_up gauge
nginx_up{conf_path="/a/nginx.conf",container=""} 1
nginx_up{conf_path="/b/nginx.conf"} 0
# TYPE nginx_connections_accepted counter
nginx_connections_accepted{conf_path="/a/nginx.conf"} 12
nginx_connections_handled{conf_path="/a/nginx.conf"} 12
nginx_http_requests_total{ conf_path = "/a/nginx.conf" , x="q\"uo\\te"} 30 1700000000000
nginx_connections_active{conf_path="/a/nginx.conf"} 3
nginx_connections_reading{conf_path="/a/nginx.conf"} 0
nginx_connections_writing{conf_path="/a/nginx.conf"} 1
nginx_connections_waiting{conf_path="/a/nginx.conf"} 2
other_metric 1.5e3
"#;
        let s = Scrape::parse(raw.to_string()).unwrap();
        assert_eq!(s.samples.len(), 10);
        assert_eq!(s.samples[4].label("x"), Some("q\"uo\\te"));
        assert_eq!(s.samples[9].value, 1500.0);
        assert_eq!(s.conf_paths(), vec!["/a/nginx.conf", "/b/nginx.conf"]);
        let v = s.view("/a/nginx.conf").unwrap();
        assert_eq!(
            v,
            AgentView {
                accepted: 12,
                handled: 12,
                requests: 30,
                active: 3,
                reading: 0,
                writing: 1,
                waiting: 2,
                up: 1
            }
        );
        let e = s.view("/b/nginx.conf").unwrap_err().to_string();
        assert!(e.contains("nginx_connections_accepted"), "{e}");
        let dup = Scrape::parse("nginx_up{conf_path=\"/a\",x=\"1\"} 1\nnginx_up{conf_path=\"/a\",x=\"2\"} 1\n".into())
            .unwrap();
        assert!(dup.value(UP, "/a").is_err());
        assert!(parse("bad{conf_path=\"x} 1").is_err());
    }

    #[test]
    fn sums_by_label() {
        let s = Scrape::parse(
            "# HELP x y\nruns_total{program=\"recv\"} 10\nruns_total{program=\"state\"} 5\n\
             runs_total{program=\"recv\",cpu=\"1\"} 2\nruns_total 1\n\
             nginx_http_requests_total{conf_path=\"/a b/\\\"n\\\".conf\",container_id=\"\"} 1.5e+03\n"
                .to_string(),
        )
        .unwrap();
        let by = s.sum_by("runs_total", "program");
        assert_eq!(by.get("recv"), Some(&12.0));
        assert_eq!(by.get("state"), Some(&5.0));
        assert_eq!(by.get(""), Some(&1.0));
        assert_eq!(s.sum("runs_total"), 18.0);
        assert_eq!(s.sum("absent"), 0.0);
        assert_eq!(s.sum_where(REQUESTS, "conf_path", "/a b/\"n\".conf"), 1500.0);
        assert_eq!(s.sum_where(REQUESTS, "conf_path", "/other"), 0.0);
    }
}
