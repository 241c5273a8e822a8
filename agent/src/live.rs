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
    series::{Labels, MetricMeta, ReadError, Selection, SeriesData, SeriesReader},
};

/// How far from the wall clock a query's end may be and still count as "now".
const NOW_TOLERANCE_MS: i64 = 2_000;

/// The probes' values read for one evaluation time.
type LiveSamples = Arc<Vec<(Labels, f64)>>;

pub struct LiveReader {
    store: Arc<dyn SeriesReader>,
    live: Arc<dyn MetricsSource>,
    /// Live samples read for one evaluation time, shared by all its queries.
    cache: Mutex<Option<(i64, LiveSamples)>>,
}

impl LiveReader {
    pub fn new(store: Arc<dyn SeriesReader>, live: Arc<dyn MetricsSource>) -> Self {
        LiveReader {
            store,
            live,
            cache: Mutex::new(None),
        }
    }

    fn live_at(&self, t: i64) -> Arc<Vec<(Labels, f64)>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ct, v)) = cache.as_ref()
            && *ct == t
        {
            return v.clone();
        }
        let samples: Vec<(Labels, f64)> = self
            .live
            .families()
            .iter()
            .flat_map(|f| {
                f.samples.iter().map(move |s| {
                    (
                        Labels::of_sample(&format!("{}{}", f.name, s.suffix), &s.labels),
                        s.value,
                    )
                })
            })
            .collect();
        let v = Arc::new(samples);
        *cache = Some((t, v.clone()));
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
        let live = self.live_at(maxt);
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
