//! An in-memory series store (reader and writer) for `ngxprobe test rules`
//! and tests; the agent uses the real store (store/).
use std::{collections::BTreeMap, sync::RwLock};

use super::{AppendError, Labels, MetricMeta, ReadError, Selection, SeriesData, SeriesReader, SeriesWriter};

#[derive(Default)]
pub struct MemStore {
    series: RwLock<BTreeMap<Labels, Vec<(i64, f64)>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a sample anywhere in time (test input), replacing one at the same time.
    pub fn insert(&self, labels: &Labels, t: i64, v: f64) {
        let mut s = self.series.write().unwrap_or_else(|e| e.into_inner());
        let x = s.entry(labels.clone()).or_default();
        match x.binary_search_by_key(&t, |p| p.0) {
            Ok(i) => x[i].1 = v,
            Err(i) => x.insert(i, (t, v)),
        }
    }

    pub fn all(&self) -> Vec<SeriesData> {
        let s = self.series.read().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .map(|(l, v)| SeriesData {
                labels: l.clone(),
                samples: v.clone(),
            })
            .collect()
    }
}

impl SeriesWriter for MemStore {
    fn append(&self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
        let mut s = self.series.write().unwrap_or_else(|e| e.into_inner());
        let x = s.entry(labels.clone()).or_default();
        if let Some(&(lt, lv)) = x.last() {
            if t < lt {
                return Err(AppendError::OutOfOrder);
            }
            if t == lt {
                return if lv.to_bits() == v.to_bits() {
                    Ok(())
                } else {
                    Err(AppendError::Duplicate)
                };
            }
        }
        x.push((t, v));
        Ok(())
    }
    fn set_metadata(&self, _metric: &str, _meta: MetricMeta) {}
}

impl MemStore {
    /// Matching series and the index range of their samples in the
    /// selection's range.
    fn in_range<'a>(
        series: &'a BTreeMap<Labels, Vec<(i64, f64)>>,
        sel: &'a Selection,
    ) -> impl Iterator<Item = (&'a Labels, &'a [(i64, f64)])> + 'a {
        let (mint, maxt) = (sel.mint, sel.maxt);
        series
            .iter()
            .filter(|(l, _)| sel.matchers.iter().all(|m| m.matches_labels(l)))
            .filter_map(move |(l, x)| {
                let a = x.partition_point(|p| p.0 < mint);
                let b = x.partition_point(|p| p.0 <= maxt);
                (a < b).then(|| (l, &x[a..b]))
            })
    }
}

impl SeriesReader for MemStore {
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
        let s = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (labels, samples) in Self::in_range(&s, sel) {
            sel.budget.charge_and_check(samples.len())?;
            out.push(SeriesData {
                labels: labels.clone(),
                samples: samples.to_vec(),
            });
        }
        Ok(out)
    }
    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError> {
        sel.budget.check_deadline()?;
        let s = self.series.read().unwrap_or_else(|e| e.into_inner());
        Ok(Self::in_range(&s, sel).map(|(l, _)| l.clone()).collect())
    }
    fn metadata(&self, _metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        vec![]
    }
}
