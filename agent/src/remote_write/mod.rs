//! remote_write stage: sends everything the store logs, in Prometheus
//! remote-write 1.0 (protobuf + snappy), to any number of endpoints
//! configured like Prometheus' `remote_write:`.
//!
//! Each endpoint reads the store's WAL through its own named cursor
//! ([`crate::store::WalCursor`]: the store's only interface to this stage),
//! so the queue is the WAL: a receiver outage or an agent restart loses
//! nothing, and sending resumes at the committed position. The store keeps
//! unsent WAL segments up to `storage.wal_reader_max_size`.
//! Self-metrics are shaped like Prometheus' `prometheus_remote_storage_*`.
pub mod config;
mod queue;
pub mod wire;

pub use config::{RemoteWriteConfig, validate};

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::metrics::{Family, MetricType};
use crate::store::Store;
use crate::worker::Worker;
use queue::Endpoint;

/// The configured endpoints.
pub struct RemoteWrite {
    endpoints: Vec<Arc<Endpoint>>,
}

impl RemoteWrite {
    /// Builds the endpoints' HTTP clients and opens their WAL cursors; the
    /// store forgets cursors of endpoints no longer configured.
    /// `external_labels` (sorted by name) go on every series sent that lacks them.
    pub fn start(
        cfgs: &[RemoteWriteConfig],
        external_labels: &[(String, String)],
        store: &Arc<Store>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(RemoteWrite, Vec<Worker>), String> {
        let mut endpoints = Vec::new();
        let mut cursors = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let e =
                Endpoint::new(c.clone(), external_labels.to_vec()).map_err(|e| format!("remote_write[{i}]: {e}"))?;
            let cursor = store
                .wal_cursor(&e.name)
                .map_err(|err| format!("remote_write[{i}]: cannot open the WAL reader: {err}"))?;
            cursors.push(cursor);
            endpoints.push(Arc::new(e));
        }
        let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
        store.retain_wal_cursors(&names);
        let mut workers = Vec::new();
        for (e, cursor) in endpoints.iter().zip(cursors) {
            let (e2, st) = (e.clone(), store.clone());
            workers.push(Worker::spawn_task(
                &format!("remote_write {}", e.name),
                runtime,
                move |stop| async move { e2.run(st, cursor, stop).await },
            ));
        }
        Ok((RemoteWrite { endpoints }, workers))
    }

    /// ngxprobe_remote_storage_* families, labelled remote_name and url.
    pub fn self_families(&self) -> Vec<Family> {
        type Get = fn(&queue::Stats) -> f64;
        let defs: [(&str, &str, MetricType, Get); 12] = [
            (
                "ngxprobe_remote_storage_samples_total",
                "Samples delivered to the remote storage.",
                MetricType::Counter,
                |s| s.samples.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_samples_failed_total",
                "Samples that failed to send for good (HTTP 4xx other than a retried 429); not resent.",
                MetricType::Counter,
                |s| s.failed.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_samples_retried_total",
                "Samples in batches that failed to send and were retried (network error, 5xx, 429).",
                MetricType::Counter,
                |s| s.retried.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_samples_dropped_total",
                "Samples read from the WAL and not sent: dropped by write_relabel_configs, or of an unknown series.",
                MetricType::Counter,
                |s| s.dropped.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_samples_pending",
                "Samples read from the WAL and waiting to be sent.",
                MetricType::Gauge,
                |s| s.pending.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_bytes_total",
                "Compressed request bytes sent (every attempt).",
                MetricType::Counter,
                |s| s.bytes.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_sent_batch_duration_seconds_sum",
                "Total time spent in send attempts (seconds).",
                MetricType::Counter,
                |s| s.batch_micros.load(Relaxed) as f64 / 1e6,
            ),
            (
                "ngxprobe_remote_storage_sent_batch_duration_seconds_count",
                "Send attempts.",
                MetricType::Counter,
                |s| s.batches.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_highest_timestamp_in_seconds",
                "Newest sample timestamp this queue read from the WAL (seconds since the epoch).",
                MetricType::Gauge,
                |s| s.highest_read_ms.load(Relaxed) as f64 / 1000.0,
            ),
            (
                "ngxprobe_remote_storage_queue_highest_sent_timestamp_seconds",
                "Newest sample timestamp delivered by this queue (seconds since the epoch).",
                MetricType::Gauge,
                |s| s.highest_sent_ms.load(Relaxed) as f64 / 1000.0,
            ),
            (
                "ngxprobe_remote_storage_wal_segments_skipped_total",
                "WAL segments (or their rest, at a corrupt record) skipped before this queue read them.",
                MetricType::Counter,
                |s| s.segments_skipped.load(Relaxed) as f64,
            ),
            (
                "ngxprobe_remote_storage_shards",
                "Shards sending (always 1: in WAL order, so no series is ever sent out of order).",
                MetricType::Gauge,
                |_| 1.0,
            ),
        ];
        defs.iter()
            .map(|(name, help, kind, get)| {
                let mut f = Family::new(name, help, *kind);
                for e in &self.endpoints {
                    f.push(&[("remote_name", &e.name), ("url", &e.url_label)], get(&e.stats));
                }
                f
            })
            .collect()
    }
}
