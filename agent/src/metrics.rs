//! The metric model every stage speaks: collect produces families, expose
//! renders them, store samples them. Nothing here knows where a value came from.

/// Anything that produces metric families on demand: the collect stage (the
/// probes' counters), each later stage's self-metrics, the whole pipeline as
/// /metrics shows it. Called on every scrape and sample: keep it cheap and
/// non-blocking.
pub trait MetricsSource: Send + Sync {
    fn families(&self) -> Vec<Family>;
}

/// Prometheus metric type, as written on `# TYPE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    /// OpenMetrics `unknown` / text-format `untyped`.
    Untyped,
    /// Samples named `<family>_bucket` (with `le`), `<family>_sum` and
    /// `<family>_count` (see [`Family::push_histogram`]).
    Histogram,
}

/// One sample: a label set and a value (the family gives the name).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label pairs, in the order they are rendered. Never contains `__name__`.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Appended to the family name to name the sample: empty, or for a
    /// histogram `_bucket`, `_sum`, `_count`.
    pub suffix: &'static str,
}

/// A metric family: name, HELP, TYPE and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: MetricType,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &str, help: &str, kind: MetricType) -> Self {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample with the given labels.
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        self.samples.push(Sample {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
            suffix: "",
        });
    }

    /// Adds a sample with owned labels.
    pub fn push_owned(&mut self, labels: Vec<(String, String)>, value: f64) {
        self.samples.push(Sample {
            labels,
            value,
            suffix: "",
        });
    }

    /// Adds one histogram series as Prometheus exposes it: a cumulative
    /// `_bucket` per upper bound in `bounds` plus `le="+Inf"`, then `_sum`
    /// and `_count`. `counts[i]` is the number of observations in bucket i
    /// (not cumulative); `counts` has one more entry than `bounds` (+Inf).
    pub fn push_histogram(&mut self, labels: Vec<(String, String)>, bounds: &[f64], counts: &[u64], sum: f64) {
        let mut cumulative = 0u64;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| crate::compat::float::format_text_value(*b));
            let mut l = labels.clone();
            l.push(("le".to_string(), le));
            self.samples.push(Sample {
                labels: l,
                value: cumulative as f64,
                suffix: "_bucket",
            });
        }
        self.samples.push(Sample {
            labels: labels.clone(),
            value: sum,
            suffix: "_sum",
        });
        self.samples.push(Sample {
            labels,
            value: cumulative as f64,
            suffix: "_count",
        });
    }
}

/// Rendering and storage order of samples in a family: by labels (a
/// histogram's `le` aside), then `_bucket` < `_sum` < `_count`, buckets by
/// numeric `le`. Identical for families without `le` to sorting by labels.
pub fn sample_order(a: &Sample, b: &Sample) -> std::cmp::Ordering {
    fn rank(s: &Sample) -> u8 {
        match s.suffix {
            "_sum" => 1,
            "_count" => 2,
            _ => 0,
        }
    }
    fn le(s: &Sample) -> f64 {
        s.labels
            .iter()
            .find(|(k, _)| k == "le")
            .and_then(|(_, v)| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse().ok()
                }
            })
            .unwrap_or(f64::NEG_INFINITY)
    }
    let base = |s: &Sample| s.labels.iter().filter(|(k, _)| k != "le").cloned().collect::<Vec<_>>();
    base(a)
        .cmp(&base(b))
        .then(rank(a).cmp(&rank(b)))
        .then(le(a).total_cmp(&le(b)))
        .then(a.labels.cmp(&b.labels))
}
