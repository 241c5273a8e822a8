//! Values flowing between evaluator nodes.
//!
//! Instant vectors are kept dense over the evaluator's step grid: one
//! `Option<f64>` per step, so binary operators and aggregations index steps
//! directly instead of merging sparse point lists.
use crate::series::Labels;

/// One instant-vector series over the step grid (`vals.len() == steps`).
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: Labels,
    pub vals: Vec<Option<f64>>,
}

/// A range-vector series: raw (or subquery) samples, oldest first, in ms.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

#[derive(Clone, Debug)]
pub enum Value {
    /// One value per step.
    Scalar(Vec<f64>),
    Vector(Vec<Series>),
    /// Only produced for an instant query whose expression is a range vector.
    Matrix(Vec<RangeSeries>),
    String(String),
}

/// Step grid of an evaluation: `start, start+step, ..., <= end`.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Grid {
    pub fn steps(&self) -> usize {
        if self.step <= 0 || self.end < self.start {
            return 1;
        }
        ((self.end - self.start) / self.step) as usize + 1
    }
    pub fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }
}

impl Labels {
    /// Labels without `__name__`.
    pub fn without_name(&self) -> Labels {
        Labels(self.0.iter().filter(|(k, _)| k != "__name__").cloned().collect())
    }
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => {
                if value.is_empty() {
                    self.0.remove(i);
                } else {
                    self.0[i].1 = value.to_string();
                }
            }
            Err(i) => {
                if !value.is_empty() {
                    self.0.insert(i, (name.to_string(), value.to_string()));
                }
            }
        }
    }
    pub fn del(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }
    /// Keeps only the named labels.
    pub fn keep(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }
    /// Drops the named labels.
    pub fn drop_names(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| !names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }
}
