//! The metric model every stage speaks: collect produces families, expose
//! renders them, store samples them. Nothing here knows where a value came from.

/// Anything that produces metric families on demand: the collect stage (the
/// probes' counters), each later stage's self-metrics, the whole pipeline as
/// /metrics shows it. Called on every scrape and sample: keep it cheap and
/// non-blocking.
pub trait MetricsSource: Send + Sync {
    fn families(&self) -> Vec<Family>;

    /// Only the families whose name `want` accepts. The rules stage reads
    /// the probes' values live several times a second for a few names; a
    /// source whose families cost something to build (kernel maps read,
    /// histograms laid out) overrides this to skip the others.
    fn families_wanted(&self, want: &dyn Fn(&str) -> bool) -> Vec<Family> {
        let mut f = self.families();
        f.retain(|f| want(&f.name));
        f
    }
}

/// Prometheus metric type, as written on `# TYPE` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    /// OpenMetrics `unknown` / text-format `untyped`.
    Untyped,
    /// Cumulative buckets (`_bucket{le}`), `_sum` and `_count` per label set;
    /// filled with [`Family::push_histogram`].
    Histogram,
}

/// One sample: a label set and a value (the family gives the name).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label pairs, in the order they are rendered. Never contains `__name__`.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Appended to the family name: "" for counters and gauges; `_bucket`,
    /// `_sum` or `_count` in a histogram.
    pub suffix: &'static str,
}

impl Sample {
    /// The sample's metric name (`__name__`) in family `family`.
    pub fn name<'a>(&self, family: &'a str) -> std::borrow::Cow<'a, str> {
        if self.suffix.is_empty() {
            std::borrow::Cow::Borrowed(family)
        } else {
            std::borrow::Cow::Owned(format!("{family}{}", self.suffix))
        }
    }
}

/// One histogram observation set: cumulative counts per upper bound
/// (ascending, without +Inf, which is `count`), the sum and the count.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl HistogramValue {
    /// From per-bucket (not cumulative) counts: `counts[i]` observations fell
    /// in bucket i (upper bound `bounds[i]`); `counts` may carry one more
    /// entry than `bounds`, the observations above the last bound (+Inf).
    pub fn from_bucket_counts(bounds: &[f64], counts: &[u64], sum: f64) -> Self {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            if let Some(&b) = bounds.get(i) {
                buckets.push((b, cumulative));
            }
        }
        HistogramValue {
            buckets,
            sum,
            count: cumulative,
        }
    }
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

    /// Adds one histogram (a family of kind Histogram): a `_bucket` sample
    /// per bound plus `le="+Inf"`, then `_sum` and `_count`, all with `labels`.
    pub fn push_histogram(&mut self, labels: Vec<(String, String)>, h: &HistogramValue) {
        let bound = |le: String| {
            let mut l = labels.clone();
            l.push(("le".to_string(), le));
            l
        };
        for &(le, n) in &h.buckets {
            self.samples.push(Sample {
                labels: bound(crate::compat::float::format_text_value(le)),
                value: n as f64,
                suffix: "_bucket",
            });
        }
        self.samples.push(Sample {
            labels: bound("+Inf".to_string()),
            value: h.count as f64,
            suffix: "_bucket",
        });
        self.samples.push(Sample {
            labels: labels.clone(),
            value: h.sum,
            suffix: "_sum",
        });
        self.samples.push(Sample {
            labels,
            value: h.count as f64,
            suffix: "_count",
        });
    }
}
