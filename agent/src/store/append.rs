//! The write path: `ingest` (one scrape of /metrics, with staleness markers)
//! and `SeriesWriter::append`/`set_metadata`. New series and metadata are
//! logged to the WAL buffer under the writer lock, which orders WAL records;
//! `commit_wal` writes the buffer out per the fsync policy.
use super::head::MemSeries;
use super::{IngestReport, Store, WalFsync, Writer, lock, read, wal, write};
use crate::metrics::{Family, MetricType};
use crate::series::{AppendError, Labels, MetricKind, MetricMeta, SeriesWriter, stale_marker};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Appends between clock checks for the WAL flush deadline (keeps
/// `Instant::now()` off the per-sample path).
const APPEND_CLOCK_EVERY: u32 = 1024;
/// `append()` callers get their WAL written to the kernel at least this often.
const APPEND_FLUSH_EVERY: Duration = Duration::from_millis(100);

fn meta_of(f: &Family) -> MetricMeta {
    MetricMeta {
        kind: match f.kind {
            MetricType::Counter => MetricKind::Counter,
            MetricType::Gauge => MetricKind::Gauge,
            MetricType::Untyped => MetricKind::Unknown,
            MetricType::Histogram => MetricKind::Histogram,
        },
        help: f.help.clone(),
        unit: String::new(),
    }
}

impl Store {
    /// Series for `labels`, created (and logged to the WAL) if new. Caller
    /// holds the writer lock, which orders WAL records.
    fn series_for(&self, w: &mut Writer, labels: &Labels, created: &mut u64) -> Arc<MemSeries> {
        if let Some(s) = read(&self.reg).by_labels.get(labels) {
            return s.clone();
        }
        let mut reg = write(&self.reg);
        if let Some(s) = reg.by_labels.get(labels) {
            return s.clone();
        }
        let id = reg.next_id;
        reg.next_id += 1;
        let s = Arc::new(MemSeries::new(id, labels.clone()));
        reg.index.add(id, labels);
        reg.by_id.insert(id, s.clone());
        reg.by_labels.insert(labels.clone(), s.clone());
        if w.writable {
            wal::encode(
                &mut w.wal.buf,
                &wal::Record::Series {
                    id,
                    labels: labels.clone(),
                },
            );
        }
        *created += 1;
        s
    }

    fn note_meta(&self, w: &mut Writer, name: &str, meta: MetricMeta) {
        if w.meta_logged.get(name) == Some(&meta) {
            return;
        }
        write(&self.meta).insert(name.to_string(), meta.clone());
        if w.writable {
            wal::encode(
                &mut w.wal.buf,
                &wal::Record::Meta {
                    name: name.to_string(),
                    meta: meta.clone(),
                },
            );
        }
        w.meta_logged.insert(name.to_string(), meta);
    }

    /// Writes buffered WAL records to the kernel (fsync per policy).
    pub(super) fn commit_wal(&self, w: &mut Writer) {
        w.last_flush = Instant::now();
        if !w.writable {
            w.wal.buf.clear();
            return;
        }
        let sync = match self.cfg.wal_fsync {
            WalFsync::Always => true,
            WalFsync::Interval => w.last_sync.elapsed() >= self.cfg.wal_fsync_interval.as_duration(),
            WalFsync::Never => false,
        };
        match w.wal.flush(sync) {
            Ok(()) => {
                if sync {
                    w.last_sync = Instant::now();
                }
            }
            Err(e) => self.set_writable(w, false, &format!("WAL write: {e}")),
        }
    }

    /// Samples one scrape of everything on /metrics at `t_ms`: each sample
    /// becomes series `name{labels}`; series present in the previous ingest
    /// but absent now get a stale marker at `t_ms` (Prometheus' scrape
    /// staleness). `t_ms` should be the tick time aligned to
    /// `storage.interval` (regular timestamps compress to ~0 bits).
    pub fn ingest(&self, families: &[Family], t_ms: i64) -> IngestReport {
        let mut w = lock(&self.writer);
        let mut rep = IngestReport::default();
        let mut cur = HashSet::with_capacity(w.prev_ingest.len());
        let mut batch: Vec<(u32, f64)> = Vec::with_capacity(w.prev_ingest.len());
        for f in families {
            self.note_meta(&mut w, &f.name, meta_of(f));
            for s in &f.samples {
                // A histogram's samples are series `<name>_bucket`, `_sum`, `_count`.
                let name: std::borrow::Cow<'_, str> = if s.suffix.is_empty() {
                    f.name.as_str().into()
                } else {
                    format!("{}{}", f.name, s.suffix).into()
                };
                let cached = w
                    .ingest_cache
                    .get(name.as_ref())
                    .and_then(|c| c.get(&s.labels))
                    .cloned();
                let series = match cached {
                    Some(series) => series,
                    None => {
                        let labels = Labels::new(
                            std::iter::once(("__name__".to_string(), name.to_string()))
                                .chain(s.labels.iter().filter(|(k, _)| k != "__name__").cloned()),
                        );
                        let series = self.series_for(&mut w, &labels, &mut rep.new_series);
                        w.ingest_cache
                            .entry(name.to_string())
                            .or_default()
                            .insert(s.labels.clone(), series.clone());
                        series
                    }
                };
                cur.insert(series.id);
                match series.append(t_ms, s.value) {
                    Ok(()) => {
                        batch.push((series.id, s.value));
                        rep.appended += 1;
                    }
                    Err(AppendError::Duplicate) => rep.duplicate += 1,
                    Err(_) => rep.out_of_order += 1,
                }
            }
        }
        let gone: Vec<u32> = w.prev_ingest.iter().filter(|id| !cur.contains(id)).copied().collect();
        if !gone.is_empty() {
            let reg = read(&self.reg);
            for id in gone {
                if let Some(s) = reg.by_id.get(&id)
                    && s.append(t_ms, stale_marker()).is_ok()
                {
                    batch.push((id, stale_marker()));
                    rep.stale_markers += 1;
                }
            }
        }
        w.prev_ingest = cur;
        if w.writable && !batch.is_empty() {
            wal::encode(
                &mut w.wal.buf,
                &wal::Record::SamplesAt {
                    t: t_ms,
                    samples: batch,
                },
            );
        }
        if rep.appended + rep.stale_markers > 0 {
            w.max_t = w.max_t.max(t_ms);
        }
        self.commit_wal(&mut w);
        self.maintain(&mut w);
        self.stats.appended.fetch_add(rep.appended + rep.stale_markers, Relaxed);
        self.stats.stale_markers.fetch_add(rep.stale_markers, Relaxed);
        self.stats.out_of_order.fetch_add(rep.out_of_order, Relaxed);
        self.stats.duplicate.fetch_add(rep.duplicate, Relaxed);
        rep.writable = w.writable;
        rep
    }
}

impl SeriesWriter for Store {
    fn append(&self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
        let mut w = lock(&self.writer);
        let mut created = 0;
        let s = self.series_for(&mut w, labels, &mut created);
        let res = s.append(t, v);
        match &res {
            Ok(()) => {
                self.stats.appended.fetch_add(1, Relaxed);
                if is_stale(v) {
                    self.stats.stale_markers.fetch_add(1, Relaxed);
                }
                if w.writable {
                    wal::encode_sample(&mut w.wal.buf, s.id, t, v);
                }
                if t > w.max_t {
                    w.max_t = t;
                }
            }
            Err(AppendError::Duplicate) => {
                self.stats.duplicate.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.stats.out_of_order.fetch_add(1, Relaxed);
            }
        }
        w.appends_since_clock += 1;
        if w.appends_since_clock >= APPEND_CLOCK_EVERY || w.wal.buf.len() >= 1 << 20 {
            w.appends_since_clock = 0;
            if w.last_flush.elapsed() >= APPEND_FLUSH_EVERY || w.wal.buf.len() >= 1 << 20 {
                self.commit_wal(&mut w);
            }
            self.maintain(&mut w);
        }
        if res.is_ok() && !w.writable {
            return Ok(()); // kept in memory; the error is reported by metrics and logs
        }
        res
    }

    fn set_metadata(&self, metric: &str, meta: MetricMeta) {
        let mut w = lock(&self.writer);
        self.note_meta(&mut w, metric, meta);
    }
}

fn is_stale(v: f64) -> bool {
    crate::series::is_stale_marker(v)
}
