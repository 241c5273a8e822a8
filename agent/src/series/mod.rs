//! The read/write interface between the store stage and its neighbours:
//! collect/expose feed families in, the query and rules stages read series out.
//! Kept small and stage-neutral; the store implements it, nothing else does.
mod budget;
mod mem;

pub use budget::ReadBudget;
pub use mem::MemStore;

use std::{collections::BTreeMap, fmt};

/// A label set, sorted by name, including `__name__`. Empty values are never kept
/// (Prometheus treats an empty label as absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(pub Vec<(String, String)>);

impl Labels {
    /// Builds a sorted label set, dropping empty values; later duplicates win.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let map: BTreeMap<String, String> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        Labels(map.into_iter().collect())
    }

    /// The series of one exposed sample: `__name__` = the family's name.
    pub fn of_sample(family: &str, labels: &[(String, String)]) -> Self {
        Labels::new(
            std::iter::once(("__name__".to_string(), family.to_string()))
                .chain(labels.iter().filter(|(k, _)| k != "__name__").cloned()),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn name(&self) -> Option<&str> {
        self.get("__name__")
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name().unwrap_or("");
        write!(f, "{name}{{")?;
        let mut first = true;
        for (k, v) in &self.0 {
            if k == "__name__" {
                continue;
            }
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(
                f,
                "{k}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
            )?;
        }
        write!(f, "}}")
    }
}

/// Whether `name` is a label name in Prometheus's classic character set
/// (`[a-zA-Z_][a-zA-Z0-9_]*`), as rule files and Alertmanager require.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's `labels.Labels.String()` for a label map: `{a="1", b="2"}`.
pub fn labels_string(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::compat::quote::go_quote(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The value Prometheus writes as a staleness marker (a signalling NaN with
/// this exact bit pattern; any other NaN is an ordinary value).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

pub fn stale_marker() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A label matcher. Regexes are fully anchored and `.` matches newline, as
/// Prometheus compiles them (`^(?s:re)$`).
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<regex::Regex>,
}

impl Matcher {
    pub fn new(op: MatchOp, name: &str, value: &str) -> Result<Self, regex::Error> {
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(compiled(value)?),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// Whether a label value (empty string when the label is absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    pub fn matches_labels(&self, l: &Labels) -> bool {
        self.matches(l.get(&self.name).unwrap_or(""))
    }
}

/// Regexes compiled lately, by source: a rule's selectors are compiled
/// again at each evaluation (several times a second), which cost more than
/// the selection itself. Bounded: emptied when full (queries may send any
/// number of distinct regexes).
const REGEX_CACHE_MAX: usize = 512;

static REGEX_CACHE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, regex::Regex>>> =
    std::sync::LazyLock::new(Default::default);

/// `value` compiled as Prometheus compiles a matcher's regex (`^(?s:re)$`).
fn compiled(value: &str) -> Result<regex::Regex, regex::Error> {
    let mut cache = REGEX_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(value) {
        return Ok(re.clone());
    }
    let re = regex::Regex::new(&format!("^(?s:{value})$"))?;
    if cache.len() >= REGEX_CACHE_MAX {
        cache.clear();
    }
    cache.insert(value.to_string(), re.clone());
    Ok(re)
}

/// One series' samples in a time range, oldest first. Stale markers are kept
/// (the query engine needs them); timestamps are Unix milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Unknown,
}

/// Metadata of a metric name (type, HELP, unit), as /api/v1/metadata serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricMeta {
    pub kind: MetricKind,
    pub help: String,
    pub unit: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage read failed: {0}")]
    Io(String),
    #[error("part of the requested range is unreadable ({0}); it was skipped")]
    Corrupt(String),
    /// The query's [`ReadBudget`] ran out of samples.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The query's deadline passed while reading.
    #[error("query timed out in expression evaluation")]
    Timeout,
}

/// What a read asks for: the series matching all `matchers`, their samples
/// in [mint, maxt] (ms, inclusive), charged to `budget`.
#[derive(Clone, Copy)]
pub struct Selection<'a> {
    pub matchers: &'a [Matcher],
    pub mint: i64,
    pub maxt: i64,
    pub budget: &'a ReadBudget,
}

impl<'a> Selection<'a> {
    pub fn new(matchers: &'a [Matcher], mint: i64, maxt: i64, budget: &'a ReadBudget) -> Self {
        Selection {
            matchers,
            mint,
            maxt,
            budget,
        }
    }
}

/// What the query and rules stages read. Implementations must never block
/// ingest for long: readers see a consistent snapshot of the head.
///
/// Every read takes the query's [`ReadBudget`]: a reader charges each sample
/// it loads as it loads it (per chunk at most) and checks the deadline as it
/// goes, so a query is stopped while reading, not after everything it asked
/// for is in memory.
pub trait SeriesReader: Send + Sync {
    /// Series matching `sel` with at least one sample in its range, with
    /// their samples in that range. Every sample returned has been charged
    /// to the selection's budget.
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError>;
    /// Label sets of the series matching `sel` (all series when it has no
    /// matchers) with data in its range, answered from the index and the
    /// time ranges of the series' chunks: no sample is decoded (Prometheus's
    /// series API does the same, at chunk granularity). Checks the deadline.
    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError>;
    /// Label names of series matching `sel`, sorted.
    fn label_names(&self, sel: &Selection) -> Result<Vec<String>, ReadError> {
        let names: std::collections::BTreeSet<String> = self
            .series(sel)?
            .into_iter()
            .flat_map(|l| l.0.into_iter().map(|(k, _)| k))
            .collect();
        Ok(names.into_iter().collect())
    }
    /// Values of label `name` over series matching `sel`, sorted.
    fn label_values(&self, name: &str, sel: &Selection) -> Result<Vec<String>, ReadError> {
        let values: std::collections::BTreeSet<String> = self
            .series(sel)?
            .iter()
            .filter_map(|l| l.get(name).map(str::to_string))
            .collect();
        Ok(values.into_iter().collect())
    }
    /// Metadata by metric name (all names when `metric` is None).
    fn metadata(&self, metric: Option<&str>) -> Vec<(String, MetricMeta)>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("out of order sample")]
    OutOfOrder,
    #[error("duplicate sample for timestamp")]
    Duplicate,
    #[error("storage is not writable: {0}")]
    Unwritable(String),
}

/// What writers (the agent's sampler, recording rules, ALERTS) use.
pub trait SeriesWriter: Send + Sync {
    /// Appends one sample. Out-of-order and duplicate samples are rejected and
    /// counted, never stored.
    fn append(&self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError>;
    /// Records metadata for a metric name.
    fn set_metadata(&self, metric: &str, meta: MetricMeta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_matchers_are_anchored_and_dot_matches_newline() {
        let m = Matcher::new(MatchOp::Regex, "a", "fo.").unwrap();
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("foox"));
        assert!(m.matches("fo\n"));
        let n = Matcher::new(MatchOp::NotRegex, "a", "").unwrap();
        assert!(n.matches("x") && !n.matches(""));
    }

    #[test]
    fn labels_sorted_and_empty_dropped() {
        let l = Labels::new([
            ("b".into(), "1".into()),
            ("a".into(), "".into()),
            ("__name__".into(), "m".into()),
        ]);
        assert_eq!(l.0.len(), 2);
        assert_eq!(l.name(), Some("m"));
        assert_eq!(l.to_string(), "m{b=\"1\"}");
    }
}
