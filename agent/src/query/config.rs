//! `query:` config section (the query stage's): the engine's defaults and the
//! limits that keep the agent inside its memory budget whatever a client
//! sends. Names follow Prometheus's flags (`--query.max-concurrency`,
//! `--query.timeout`, `--query.max-samples`, `--query.lookback-delta`).
//!
//! The memory bound: a query holds at most `max_samples` samples (selected
//! and produced, counted as they are decoded), each costing at most
//! [`BYTES_PER_SAMPLE`] while held (the decoded sample, vector growth, its
//! result point and JSON text), and at most `max_concurrency` queries run at
//! once; queued requests hold at most their text. So the query stage needs at
//! most `max_concurrency × max_samples × BYTES_PER_SAMPLE` +
//! `(max_concurrency + max_queued) × 4 × max_query_length`: with the defaults
//! 4 × 1,000,000 × 40 B + 36 × 1 MiB ≈ 190 MiB worst case (an upper
//! bound; the `defaults_fit_the_memory_limit` test keeps it), inside the DaemonSet's 256 MiB with the agent's ~40 MiB base.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compat::PromDuration;

/// Upper bound of the memory one held sample costs a query (16 B decoded,
/// up to 2x vector growth, 16 B as a result point, ~40 B of JSON only for
/// output points, which are a subset); used only for the documentation of
/// the defaults and by the test that checks them.
#[cfg_attr(not(test), allow(dead_code))]
pub const BYTES_PER_SAMPLE: usize = 40;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Queries (query, query_range, series, labels, label values,
    /// format_query) evaluated at once; more wait in a queue (Prometheus:
    /// --query.max-concurrency, default 20).
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; beyond, 503 at once.
    pub max_queued: usize,
    /// Default and maximum time of one query, queue wait included
    /// (Prometheus: --query.timeout, default 2m).
    pub timeout: PromDuration,
    /// Samples one query may hold, counted while they are decoded
    /// (Prometheus: --query.max-samples, default 50,000,000).
    pub max_samples: usize,
    /// How far back an instant selector looks for a sample.
    pub lookback_delta: PromDuration,
    /// Deepest expression tree accepted (nesting of parentheses, calls,
    /// aggregations, subqueries and chains of operators), checked on the text
    /// before parsing. Sizes the stack of the thread a query runs on.
    pub max_depth: usize,
    /// Longest PromQL text (or match[] selector) accepted, in bytes; a
    /// request body may be 4x that (URL encoding triples a byte).
    pub max_query_length: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_concurrency: 4,
            max_queued: 32,
            timeout: PromDuration::from_secs(30),
            max_samples: 1_000_000,
            lookback_delta: PromDuration::from_secs(300),
            max_depth: 500,
            max_query_length: 256 * 1024,
        }
    }
}

impl QueryConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_concurrency", self.max_concurrency),
            ("max_samples", self.max_samples),
            ("max_depth", self.max_depth),
            ("max_query_length", self.max_query_length),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("query.{name} must be > 0"));
            }
        }
        if self.timeout.is_zero() {
            return Err("query.timeout must be > 0".into());
        }
        if self.lookback_delta.is_zero() {
            return Err("query.lookback_delta must be > 0".into());
        }
        // Beyond this the stack a query thread needs (see
        // `stack::query_stack_size`) stops being a sane reservation.
        if self.max_depth > super::stack::MAX_DEPTH_LIMIT {
            return Err(format!("query.max_depth must be <= {}", super::stack::MAX_DEPTH_LIMIT));
        }
        Ok(())
    }

    /// The engine's options for this section.
    pub fn options(&self) -> super::QueryOptions {
        super::QueryOptions {
            lookback_delta: self.lookback_delta.as_duration(),
            timeout: self.timeout.as_duration(),
            max_samples: self.max_samples,
            max_concurrency: self.max_concurrency,
            max_queued: self.max_queued,
            max_depth: self.max_depth,
            max_query_length: self.max_query_length,
            subquery_step: Duration::from_secs(60),
            max_points_per_series: 11_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults' worst case (every slot holding `max_samples`, every
    /// ticket holding a maximal body) fits the DaemonSet's 256 MiB with room
    /// for the agent's base (~40 MiB) and the store.
    #[test]
    fn defaults_fit_the_memory_limit() {
        let c = QueryConfig::default();
        c.validate().unwrap();
        let samples = c.max_concurrency * c.max_samples * BYTES_PER_SAMPLE;
        let bodies = (c.max_concurrency + c.max_queued) * 4 * c.max_query_length;
        assert!(samples + bodies < 200 << 20, "{} MiB", (samples + bodies) >> 20);
    }

    #[test]
    fn zero_and_oversized_limits_are_refused() {
        for (c, field) in [
            (
                QueryConfig {
                    max_concurrency: 0,
                    ..Default::default()
                },
                "max_concurrency",
            ),
            (
                QueryConfig {
                    max_depth: super::super::stack::MAX_DEPTH_LIMIT + 1,
                    ..Default::default()
                },
                "max_depth",
            ),
            (
                QueryConfig {
                    timeout: PromDuration::from_secs(0),
                    ..Default::default()
                },
                "timeout",
            ),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }
}
