//! The sampler: everything /metrics shows goes into the store every
//! `storage.interval`, at timestamps aligned to the interval (regular
//! timestamps compress to almost nothing).
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::Store;
use crate::compat::time::now_ms;
use crate::metrics::MetricsSource;
use crate::worker::Worker;

/// Starts the sampler on a thread named `sampler`.
pub fn spawn(store: Arc<Store>, source: Arc<dyn MetricsSource>, interval: Duration) -> std::io::Result<Worker> {
    let step = i64::try_from(interval.as_millis()).unwrap_or(1000).max(1);
    Worker::spawn_thread("sampler", move |stop| {
        loop {
            let now = now_ms();
            let next = (now / step + 1) * step;
            if stop.wait_timeout(Duration::from_millis((next - now).max(0) as u64)) {
                return;
            }
            let report = store.ingest(&source.families(), next);
            debug!(?report, "sampled into the store");
        }
    })
}
