//! What the rules stage reads: the store's history with, for queries about
//! "now", the probes' current values appended as the newest sample.
//!
//! Why: the store samples /metrics every storage.interval (1 s). Rules that
//! read only the store see a change after the next sample *and* the next
//! evaluation. ngxprobe's counters come straight from kernel maps and cost
//! microseconds to read, so each evaluation reads them live instead, and an
//! alert condition is seen at the first evaluation after it becomes true.
//! Nothing live is written to the store; the next regular sample follows.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    compat::time::now_ms,
    metrics::MetricsSource,
    series::{Labels, MatchOp, Matcher, MetricMeta, ReadError, Selection, SeriesData, SeriesReader},
};

/// How far from the wall clock a query's end may be and still count as "now".
const NOW_TOLERANCE_MS: i64 = 2_000;

/// The probes' values read for one evaluation time.
type LiveSamples = Arc<Vec<(Labels, f64)>>;

/// Live reads of one evaluation time, by the selection's `__name__`
/// matchers: the queries of one evaluation that select the same metric
/// share one read.
struct LiveCache {
    t: i64,
    by_names: HashMap<Vec<(MatchOp, String)>, LiveSamples>,
}

pub struct LiveReader {
    store: Arc<dyn SeriesReader>,
    live: Arc<dyn MetricsSource>,
    cache: Mutex<Option<LiveCache>>,
}

/// The sample names a family of that name may carry (a histogram's
/// `_bucket`, `_sum` and `_count`).
const SUFFIXES: [&str; 4] = ["", "_bucket", "_sum", "_count"];

impl LiveReader {
    pub fn new(store: Arc<dyn SeriesReader>, live: Arc<dyn MetricsSource>) -> Self {
        LiveReader {
            store,
            live,
            cache: Mutex::new(None),
        }
    }

    /// The live samples at `t` whose metric name `name_matchers` (the
    /// selection's `__name__` matchers) accept. Only those families are
    /// read: a rule selects a few metrics, the probes expose many.
    fn live_at(&self, t: i64, name_matchers: &[&Matcher]) -> LiveSamples {
        let key: Vec<(MatchOp, String)> = name_matchers.iter().map(|m| (m.op, m.value.clone())).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match cache.as_mut() {
            Some(c) if c.t == t => c,
            _ => cache.insert(LiveCache {
                t,
                by_names: HashMap::new(),
            }),
        };
        if let Some(v) = entry.by_names.get(&key) {
            return v.clone();
        }
        let name_ok = |n: &str| name_matchers.iter().all(|m| m.matches(n));
        let want = |family: &str| {
            // The usual selector names one metric: no name to format.
            if let Some(m) = name_matchers.iter().find(|m| m.op == MatchOp::Equal)
                && !m
                    .value
                    .strip_prefix(family)
                    .is_some_and(|rest| SUFFIXES.contains(&rest))
            {
                return false;
            }
            SUFFIXES.iter().any(|s| {
                if s.is_empty() {
                    name_ok(family)
                } else {
                    name_ok(&format!("{family}{s}"))
                }
            })
        };
        let samples: Vec<(Labels, f64)> = self
            .live
            .families_wanted(&want)
            .iter()
            .flat_map(|f| {
                f.samples.iter().filter_map(move |s| {
                    let name = s.name(&f.name);
                    name_ok(&name).then(|| (Labels::of_sample(&name, &s.labels), s.value))
                })
            })
            .collect();
        let v = Arc::new(samples);
        entry.by_names.insert(key, v.clone());
        v
    }
}

impl SeriesReader for LiveReader {
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
        let mut out = self.store.select(sel)?;
        let maxt = sel.maxt;
        if (maxt - now_ms()).abs() > NOW_TOLERANCE_MS {
            return Ok(out);
        }
        let names: Vec<&Matcher> = sel.matchers.iter().filter(|m| m.name == "__name__").collect();
        let live = self.live_at(maxt, &names);
        let mut index: HashMap<Labels, usize> = out.iter().enumerate().map(|(i, s)| (s.labels.clone(), i)).collect();
        for (labels, v) in live.iter() {
            if !sel.matchers.iter().all(|m| m.matches_labels(labels)) {
                continue;
            }
            sel.budget.charge(1)?;
            match index.get(labels) {
                Some(&i) => {
                    let s = &mut out[i];
                    if s.samples.last().is_none_or(|(t, _)| *t < maxt) {
                        s.samples.push((maxt, *v));
                    }
                }
                None => {
                    index.insert(labels.clone(), out.len());
                    out.push(SeriesData {
                        labels: labels.clone(),
                        samples: vec![(maxt, *v)],
                    });
                }
            }
        }
        Ok(out)
    }

    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError> {
        self.store.series(sel)
    }

    fn metadata(&self, metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        self.store.metadata(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Family, MetricType};
    use crate::series::{MatchOp, Matcher, ReadBudget};

    struct Fixed(Vec<Family>);
    impl MetricsSource for Fixed {
        fn families(&self) -> Vec<Family> {
            self.0.clone()
        }
    }

    struct History(Vec<SeriesData>);
    impl SeriesReader for History {
        fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
            let (m, mint, maxt) = (sel.matchers, sel.mint, sel.maxt);
            Ok(self
                .0
                .iter()
                .filter(|s| m.iter().all(|x| x.matches_labels(&s.labels)))
                .map(|s| SeriesData {
                    labels: s.labels.clone(),
                    samples: s
                        .samples
                        .iter()
                        .copied()
                        .filter(|(t, _)| *t >= mint && *t <= maxt)
                        .collect(),
                })
                .collect())
        }
        fn series(&self, _: &Selection) -> Result<Vec<Labels>, ReadError> {
            Ok(vec![])
        }
        fn metadata(&self, _: Option<&str>) -> Vec<(String, MetricMeta)> {
            vec![]
        }
    }

    fn reader(now: i64) -> LiveReader {
        let mut f = Family::new("req_total", "h", MetricType::Counter);
        f.push(&[("i", "a")], 50.0);
        f.push(&[("i", "b")], 7.0);
        let hist = History(vec![SeriesData {
            labels: Labels::of_sample("req_total", &[("i".into(), "a".into())]),
            samples: vec![(now - 2000, 10.0), (now - 1000, 20.0)],
        }]);
        LiveReader::new(Arc::new(hist), Arc::new(Fixed(vec![f])))
    }

    #[test]
    fn queries_about_now_get_the_live_value_appended() {
        let now = now_ms();
        let r = reader(now);
        let m = [Matcher::new(MatchOp::Equal, "__name__", "req_total").unwrap()];
        let out = r
            .select(&Selection::new(&m, now - 5000, now, &ReadBudget::unlimited()))
            .unwrap();
        let a = out.iter().find(|s| s.labels.get("i") == Some("a")).unwrap();
        assert_eq!(a.samples, vec![(now - 2000, 10.0), (now - 1000, 20.0), (now, 50.0)]);
        // A series only the live view has appears with its one sample.
        let b = out.iter().find(|s| s.labels.get("i") == Some("b")).unwrap();
        assert_eq!(b.samples, vec![(now, 7.0)]);
        // Matchers apply to live samples too.
        let m = [Matcher::new(MatchOp::Equal, "i", "b").unwrap()];
        assert_eq!(
            r.select(&Selection::new(&m, now - 5000, now, &ReadBudget::unlimited()))
                .unwrap()
                .len(),
            1
        );
    }

    /// A source that records which families it was asked to build.
    struct Recording(Vec<Family>, Mutex<Vec<String>>);
    impl MetricsSource for Recording {
        fn families(&self) -> Vec<Family> {
            self.0.clone()
        }
        fn families_wanted(&self, want: &dyn Fn(&str) -> bool) -> Vec<Family> {
            let f: Vec<Family> = self.0.iter().filter(|f| want(&f.name)).cloned().collect();
            self.1.lock().unwrap().extend(f.iter().map(|f| f.name.clone()));
            f
        }
    }

    #[test]
    fn only_the_selected_families_are_read_once_per_evaluation() {
        let mut req = Family::new("req_total", "h", MetricType::Counter);
        req.push(&[("i", "a")], 1.0);
        let mut lat = Family::new("lat_seconds", "h", MetricType::Histogram);
        lat.push_histogram(
            vec![("i".into(), "a".into())],
            &crate::metrics::HistogramValue::from_bucket_counts(&[0.1], &[3, 1], 0.5),
        );
        let src = Arc::new(Recording(vec![req, lat], Mutex::new(vec![])));
        let r = LiveReader::new(Arc::new(History(vec![])), src.clone());
        let now = now_ms();
        let sel = |m: &[Matcher]| {
            r.select(&Selection::new(m, now - 1000, now, &ReadBudget::unlimited()))
                .unwrap()
        };
        let bucket = [Matcher::new(MatchOp::Equal, "__name__", "lat_seconds_bucket").unwrap()];
        let out = sel(&bucket);
        // Only the histogram's buckets: not its _sum or _count, not req_total.
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|s| s.labels.name() == Some("lat_seconds_bucket")));
        assert_eq!(*src.1.lock().unwrap(), vec!["lat_seconds".to_string()]);
        // The same selection at the same time reads nothing again.
        sel(&bucket);
        assert_eq!(src.1.lock().unwrap().len(), 1);
        // Another metric is read once; a regex on the name reads what it matches.
        let req = [Matcher::new(MatchOp::Equal, "__name__", "req_total").unwrap()];
        assert_eq!(sel(&req).len(), 1);
        let re = [Matcher::new(MatchOp::Regex, "__name__", "lat_.*_count|req_total").unwrap()];
        let out = sel(&re);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            *src.1.lock().unwrap(),
            vec![
                "lat_seconds".to_string(),
                "req_total".into(),
                "req_total".into(),
                "lat_seconds".into()
            ]
        );
    }

    #[test]
    fn queries_about_the_past_are_history_only() {
        let now = now_ms();
        let r = reader(now);
        let m = [Matcher::new(MatchOp::Equal, "__name__", "req_total").unwrap()];
        let out = r
            .select(&Selection::new(
                &m,
                now - 60_000,
                now - 30_000,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        assert!(out.iter().all(|s| s.samples.is_empty()), "{out:?}");
    }
}
