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
}

/// One sample: a label set and a value (the family gives the name).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Label pairs, in the order they are rendered. Never contains `__name__`.
    pub labels: Vec<(String, String)>,
    pub value: f64,
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
        });
    }

    /// Adds a sample with owned labels.
    pub fn push_owned(&mut self, labels: Vec<(String, String)>, value: f64) {
        self.samples.push(Sample { labels, value });
    }
}
