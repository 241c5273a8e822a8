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

/// Formats a float the way Prometheus's JSON API and Go's
/// `strconv.FormatFloat(f, 'f', -1, 64)` do (shortest repr, no exponent).
pub fn format_value(v: f64) -> String {
    let mut s = String::new();
    push_value(&mut s, v);
    s
}

/// Appends [`format_value`]`(v)` without allocating. Digits come from
/// serde_json's float writer (Ryū: shortest round-trip digits, ties to even,
/// exactly as Go's shortest formatting — Rust's `Display` rounds some exact
/// ties the other way, e.g. -1519218211223713.25 → Go/Prometheus "…713.2",
/// Display "…713.3"); Ryū's exponent form is rewritten as plain decimal and
/// "2.0" becomes Go's "2".
pub fn push_value(o: &mut String, v: f64) {
    if v.is_nan() {
        o.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        o.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    let start = o.len();
    // SAFETY: serde_json writes ASCII only, so the String stays UTF-8.
    let res = serde_json::to_writer(unsafe { o.as_mut_vec() }, &v);
    if res.is_err() {
        o.truncate(start);
        o.push_str(&format!("{v}"));
        return;
    }
    let written = &o[start..];
    if let Some(e) = written.find('e') {
        let plain = expand_exponent(&written[..e], written[e + 1..].parse().unwrap_or(0));
        o.truncate(start);
        o.push_str(&plain);
    } else if written.ends_with(".0") {
        o.truncate(o.len() - 2);
    }
}

/// `mantissa`e`exp` (mantissa like "-1.25") as plain decimal.
fn expand_exponent(mantissa: &str, exp: i32) -> String {
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let int_len = m.find('.').unwrap_or(m.len()) as i32;
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let pos = int_len + exp;
    let mut out = String::with_capacity(digits.len() + pos.unsigned_abs() as usize + 3);
    if neg {
        out.push('-');
    }
    if pos <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-pos) as usize));
        out.push_str(digits);
    } else if pos as usize >= digits.len() {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', pos as usize - digits.len()));
    } else {
        out.push_str(&digits[..pos as usize]);
        out.push('.');
        out.push_str(&digits[pos as usize..]);
    }
    out
}
