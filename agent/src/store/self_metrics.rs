//! The store's self-metrics (ngxprobe_store_*): series and head size, samples
//! appended and rejected, WAL and disk trouble, retention, bytes on disk.
//! Named `self_metrics` to keep it apart from `crate::metrics`, whose
//! `Family` it returns.
use super::{DB_FILE, Store, WAL_DIR, dir_bytes, disk, read};
use crate::metrics::{Family, MetricType};
use std::fs;
use std::sync::atomic::Ordering::Relaxed;

impl Store {
    /// ngxprobe_store_* self-metrics.
    pub fn self_families(&self) -> Vec<Family> {
        let st = &self.stats;
        let mut out = Vec::new();
        let mut one = |name: &str, help: &str, kind: MetricType, v: f64| {
            let mut f = Family::new(name, help, kind);
            f.push(&[], v);
            out.push(f);
        };
        let (nseries, head_chunks, head_bytes) = {
            let reg = read(&self.reg);
            let (mut c, mut b) = (0usize, 0usize);
            for s in reg.by_id.values() {
                let d = s.lock();
                c += d.sealed.len() + usize::from(!d.open.is_empty());
                b += d.head_bytes();
            }
            (reg.by_id.len(), c, b)
        };
        one(
            "ngxprobe_store_series",
            "Series known to the store (head and persisted).",
            MetricType::Gauge,
            nseries as f64,
        );
        one(
            "ngxprobe_store_head_chunks",
            "Chunks held in memory (sealed and open).",
            MetricType::Gauge,
            head_chunks as f64,
        );
        one(
            "ngxprobe_store_head_bytes",
            "Approximate memory used by head chunks.",
            MetricType::Gauge,
            head_bytes as f64,
        );
        one(
            "ngxprobe_store_samples_appended_total",
            "Samples appended (including stale markers).",
            MetricType::Counter,
            st.appended.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_stale_markers_total",
            "Stale markers written for series that disappeared.",
            MetricType::Counter,
            st.stale_markers.load(Relaxed) as f64,
        );
        let mut rej = Family::new(
            "ngxprobe_store_samples_rejected_total",
            "Samples rejected and not stored.",
            MetricType::Counter,
        );
        rej.push(&[("reason", "out_of_order")], st.out_of_order.load(Relaxed) as f64);
        rej.push(&[("reason", "duplicate")], st.duplicate.load(Relaxed) as f64);
        out.push(rej);
        let mut one = |name: &str, help: &str, kind: MetricType, v: f64| {
            let mut f = Family::new(name, help, kind);
            f.push(&[], v);
            out.push(f);
        };
        one(
            "ngxprobe_store_wal_truncations_total",
            "Torn WAL tails truncated at the last good record on startup.",
            MetricType::Counter,
            st.wal_truncations.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_wal_corruptions_total",
            "Corrupt WAL segments skipped on startup.",
            MetricType::Counter,
            st.wal_corruptions.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_wal_reader_segments_dropped_total",
            "WAL segments deleted before remote_write had sent them, because the WAL kept for it exceeded storage.wal_reader_max_size.",
            MetricType::Counter,
            st.wal_reader_segments_dropped.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_write_errors_total",
            "Failed writes to the WAL or block file (disk full, read-only...).",
            MetricType::Counter,
            st.write_errors.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_writable",
            "1 when the store writes to disk, 0 while it keeps new data in memory only.",
            MetricType::Gauge,
            if st.writable.load(Relaxed) { 1.0 } else { 0.0 },
        );
        one(
            "ngxprobe_store_corrupt_chunks_total",
            "Corrupt chunks or index entries found and skipped.",
            MetricType::Counter,
            st.corrupt_chunks.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_chunks_decoded_total",
            "Chunks (head and persisted) decoded to answer queries and rules; listing series and labels decodes none.",
            MetricType::Counter,
            st.chunks_decoded.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_blocks_persisted_total",
            "Block-series chunk groups written to disk.",
            MetricType::Counter,
            st.blocks_persisted.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_store_blocks_deleted_total",
            "Blocks deleted by retention (time or size).",
            MetricType::Counter,
            st.blocks_deleted.load(Relaxed) as f64,
        );
        let mut bytes = Family::new(
            "ngxprobe_store_bytes",
            "Bytes on disk in the data directory.",
            MetricType::Gauge,
        );
        bytes.push(
            &[("kind", "index")],
            fs::metadata(self.dir.join(DB_FILE)).map_or(0, |m| m.len()) as f64,
        );
        bytes.push(&[("kind", "blocks")], dir_bytes(&self.dir.join(disk::CHUNK_DIR)) as f64);
        bytes.push(&[("kind", "wal")], dir_bytes(&self.dir.join(WAL_DIR)) as f64);
        bytes.push(&[("kind", "chunks")], st.stored_bytes.load(Relaxed) as f64);
        out.push(bytes);
        out
    }
}
