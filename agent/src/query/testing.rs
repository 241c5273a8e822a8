//! A small in-memory [`SeriesReader`] for tests (the real store replaces it).
use std::sync::RwLock;

use crate::series::{Labels, Matcher, MetricMeta, ReadError, SeriesData, SeriesReader};

#[derive(Default)]
pub struct MemSeries {
    series: RwLock<Vec<SeriesData>>,
}

impl MemSeries {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds one sample; samples of a series must arrive in time order.
    pub fn add(&self, labels: &Labels, t: i64, v: f64) {
        let mut s = self.series.write().unwrap();
        match s.iter_mut().find(|x| &x.labels == labels) {
            Some(x) => {
                match x.samples.binary_search_by_key(&t, |p| p.0) {
                    Ok(i) => x.samples[i].1 = v,
                    Err(i) => x.samples.insert(i, (t, v)),
                }
            }
            None => s.push(SeriesData { labels: labels.clone(), samples: vec![(t, v)] }),
        }
    }
    pub fn clear(&self) {
        self.series.write().unwrap().clear();
    }
}

impl SeriesReader for MemSeries {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<SeriesData>, ReadError> {
        let s = self.series.read().unwrap();
        Ok(s.iter()
            .filter(|x| matchers.iter().all(|m| m.matches_labels(&x.labels)))
            .filter_map(|x| {
                let a = x.samples.partition_point(|p| p.0 < mint);
                let b = x.samples.partition_point(|p| p.0 <= maxt);
                (a < b).then(|| SeriesData { labels: x.labels.clone(), samples: x.samples[a..b].to_vec() })
            })
            .collect())
    }
    fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, ReadError> {
        let mut out: Vec<String> =
            self.select(matchers, mint, maxt)?.into_iter().flat_map(|s| s.labels.0.into_iter().map(|(k, _)| k)).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
    fn label_values(&self, name: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, ReadError> {
        let mut out: Vec<String> =
            self.select(matchers, mint, maxt)?.into_iter().filter_map(|s| s.labels.get(name).map(str::to_string)).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
    fn metadata(&self, _metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        vec![]
    }
}
