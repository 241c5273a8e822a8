//! Keeping the store on disk and bounded: persisting completed blocks from
//! the head, WAL checkpoints, retention by time and size, redb compaction,
//! the unwritable state (disk full, read-only) and its recovery, and
//! `flush`/`close`. All of it runs with the writer lock held (the `&mut
//! Writer` argument), except `close`'s final compaction, when the store is no
//! longer shared.
use super::head::MemSeries;
use super::{BLOCK_MS, Store, WalFsync, Writer, chunk, dir_bytes, disk, lock, read, wal, write};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often a store in the unwritable state retries writing.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Store {
    pub(super) fn set_writable(&self, w: &mut Writer, ok: bool, why: &str) {
        if !ok {
            self.stats.write_errors.fetch_add(1, Relaxed);
        }
        if w.logged_writable != Some(ok) {
            w.logged_writable = Some(ok);
            if ok {
                info!(path = %self.dir.display(), "store: writing to disk");
            } else {
                error!(path = %self.dir.display(), error = %why, "store: cannot write to disk; keeping new samples in memory and retrying every second");
            }
        }
        w.writable = ok;
        self.stats.writable.store(ok, Relaxed);
        w.last_retry = Instant::now();
    }

    /// The whole head as WAL records (series, metadata, unpersisted samples).
    fn checkpoint_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        for (name, meta) in read(&self.meta).iter() {
            wal::encode(
                &mut buf,
                &wal::Record::Meta {
                    name: name.clone(),
                    meta: meta.clone(),
                },
            );
        }
        let series: Vec<Arc<MemSeries>> = read(&self.reg).by_id.values().cloned().collect();
        for s in series {
            let d = s.lock();
            let samples = d.samples_before(i64::MAX).unwrap_or_else(|e| {
                error!(series = %s.labels, error = %e, "store: head chunk undecodable (bug); dropped from checkpoint");
                Vec::new()
            });
            if d.on_disk && samples.is_empty() {
                continue;
            }
            wal::encode(
                &mut buf,
                &wal::Record::Series {
                    id: s.id,
                    labels: s.labels.clone(),
                },
            );
            if !samples.is_empty() {
                let recs = samples.iter().map(|&(t, v)| (s.id, t, v)).collect();
                wal::encode(&mut buf, &wal::Record::Samples(recs));
            }
        }
        buf
    }

    pub(super) fn checkpoint(&self, w: &mut Writer) -> Result<(), String> {
        let content = self.checkpoint_bytes();
        let keep_from = self.wal_keep_from(&w.wal_holds, w.wal.segment() + 1);
        w.wal
            .checkpoint(&content, keep_from)
            .map_err(|e| format!("WAL checkpoint: {e}"))?;
        w.meta_logged = read(&self.meta).clone().into_iter().collect();
        Ok(())
    }

    /// Writes samples older than `before` to redb as one chunk per series per
    /// block, then drops them from the head and checkpoints the WAL.
    fn persist(&self, w: &mut Writer, before: i64) -> Result<(), String> {
        let db = self.db().ok_or("block file not open")?;
        let series: Vec<Arc<MemSeries>> = read(&self.reg).by_id.values().cloned().collect();
        let mut batch = disk::PersistBatch {
            new_series: Vec::new(),
            chunks: Vec::new(),
            meta: Vec::new(),
        };
        let mut touched = Vec::new();
        for s in &series {
            let d = s.lock();
            let samples = d
                .samples_before(before)
                .map_err(|e| format!("head of {}: {e}", s.labels))?;
            if !d.on_disk {
                batch.new_series.push((s.id, s.labels.clone()));
            }
            if samples.is_empty() {
                continue;
            }
            // One chunk per block: deletion by retention is in whole blocks.
            for group in samples.chunk_by(|a, b| disk::block_of(a.0) == disk::block_of(b.0)) {
                batch.chunks.push((s.id, chunk::encode(group), group[0].0));
            }
            touched.push((s.clone(), samples[0].0, samples[samples.len() - 1].0));
        }
        if batch.chunks.is_empty() && batch.new_series.is_empty() {
            w.persisted_before = w.persisted_before.max(before);
            return Ok(());
        }
        batch.meta = read(&self.meta).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let blocks: BTreeSet<i64> = batch.chunks.iter().map(|c| disk::block_of(c.2)).collect();
        let bytes = disk::persist(&db, &self.dir, &batch)?;
        self.stats.stored_bytes.fetch_add(bytes, Relaxed);
        self.stats.blocks_persisted.fetch_add(blocks.len() as u64, Relaxed);
        for (id, _) in &batch.new_series {
            if let Some(s) = read(&self.reg).by_id.get(id) {
                s.lock().on_disk = true;
            }
        }
        for (s, mint, maxt) in touched {
            let mut d = s.lock();
            if let Err(e) = d.drop_before(before) {
                error!(series = %s.labels, error = %e, "store: head chunk undecodable (bug)");
            }
            d.disk = Some(d.disk.map_or((mint, maxt), |(a, b)| (a.min(mint), b.max(maxt))));
        }
        w.persisted_before = w.persisted_before.max(before);
        self.checkpoint(w)
    }

    /// Persists completed blocks (once the head is half a block past their
    /// end, like Prometheus) and applies retention.
    pub(super) fn maintain(&self, w: &mut Writer) {
        if self.read_only {
            return;
        }
        if !w.writable {
            if w.last_retry.elapsed() >= RETRY_EVERY {
                self.try_recover(w);
            }
            return;
        }
        if w.max_t == i64::MIN {
            return;
        }
        let before = disk::block_of(w.max_t.saturating_sub(BLOCK_MS / 2));
        if before > w.persisted_before {
            match self.persist(w, before) {
                Ok(()) => self.retention(w),
                Err(e) => self.set_writable(w, false, &e),
            }
        }
    }

    fn try_recover(&self, w: &mut Writer) {
        if self.read_only {
            return;
        }
        if self.db().is_none() {
            // redb refuses further use after an I/O error; reopen.
            self.open_db();
        }
        let res = match self.db() {
            None => Err("block file not open".to_string()),
            Some(_) => {
                let before = disk::block_of(w.max_t.saturating_sub(BLOCK_MS / 2));
                if w.max_t != i64::MIN && before > w.persisted_before {
                    self.persist(w, before)
                } else {
                    self.checkpoint(w)
                }
            }
        };
        match res {
            Ok(()) => {
                self.set_writable(w, true, "");
                self.retention(w);
            }
            Err(e) => {
                if e.contains("I/O") || e.contains("io") || e.contains("previous") {
                    // Force a reopen next time (redb poisons itself after an I/O error).
                    *write(&self.db) = None;
                }
                self.stats.write_errors.fetch_add(1, Relaxed);
                w.last_retry = Instant::now();
            }
        }
    }

    /// Deletes whole blocks older than the retention time, then oldest blocks
    /// while the directory is over `retention_size`.
    fn retention(&self, w: &mut Writer) {
        let Some(db) = self.db() else { return };
        let keep_ms = self.cfg.retention.as_duration().as_millis() as i64;
        let before = w.max_t.saturating_sub(keep_ms);
        let limit = self.cfg.retention_size.0;
        // Budget for chunk data: the limit minus what is not chunk data
        // (WAL, redb's own pages), measured.
        let max_bytes = (limit > 0).then(|| {
            let total = dir_bytes(&self.dir);
            let stored = self.stats.stored_bytes.load(Relaxed);
            let overhead = total.saturating_sub(stored);
            limit.saturating_sub(overhead)
        });
        let stored = self.stats.stored_bytes.load(Relaxed);
        match disk::delete_blocks(&db, &self.dir, before, max_bytes, stored) {
            Ok((0, _, _)) => {}
            Ok((n, freed, ids)) => {
                info!(blocks = n, bytes = freed, "store: retention deleted old blocks");
                self.stats.blocks_deleted.fetch_add(n, Relaxed);
                self.stats.stored_bytes.fetch_sub(freed.min(stored), Relaxed);
                let mut gone = Vec::new();
                for id in ids {
                    let Some(s) = read(&self.reg).by_id.get(&id).cloned() else {
                        continue;
                    };
                    let range = disk::range_of(&db, id).unwrap_or(None);
                    let mut d = s.lock();
                    d.disk = range;
                    if range.is_none() && d.head_mint().is_none() {
                        gone.push(s.clone());
                    }
                }
                if !gone.is_empty() {
                    let ids: Vec<u32> = gone.iter().map(|s| s.id).collect();
                    if disk::remove_series(&db, &ids).is_ok() {
                        let mut reg = write(&self.reg);
                        for s in gone {
                            reg.index.remove(s.id, &s.labels);
                            reg.by_id.remove(&s.id);
                            reg.by_labels.remove(&s.labels);
                            w.prev_ingest.remove(&s.id);
                        }
                        w.ingest_cache.clear();
                    }
                }
                // Give freed pages back to the filesystem when over the size limit.
                if limit > 0 && dir_bytes(&self.dir) > limit {
                    drop(db);
                    self.compact();
                }
            }
            Err(e) => warn!(error = %e, "store: retention failed; will retry"),
        }
    }

    fn compact(&self) {
        let mut slot = write(&self.db);
        if let Some(arc) = slot.take() {
            match Arc::try_unwrap(arc) {
                Ok(mut db) => {
                    if let Err(e) = db.compact() {
                        warn!(error = %e, "store: compaction failed");
                    }
                    *slot = Some(Arc::new(db));
                }
                Err(arc) => *slot = Some(arc), // a reader holds it; next time
            }
        }
    }

    /// Writes buffered WAL records and fsyncs them (if the disk allows).
    pub fn flush(&self) {
        let mut w = lock(&self.writer);
        self.commit_wal(&mut w);
        if w.writable
            && self.cfg.wal_fsync != WalFsync::Never
            && let Err(e) = w.wal.sync()
        {
            self.set_writable(&mut w, false, &format!("WAL fsync: {e}"));
        }
    }

    /// Persists the whole head (so a restart needs no WAL replay) and
    /// releases the directory lock when dropped.
    pub fn close(self) -> Result<(), String> {
        if self.read_only {
            return Ok(());
        }
        let mut w = lock(&self.writer);
        self.commit_wal(&mut w);
        if !w.writable {
            self.try_recover(&mut w);
        }
        if !w.writable {
            return Err("storage not writable; the head stays in the WAL as far as it was written".into());
        }
        self.persist(&mut w, i64::MAX)?;
        drop(w);
        // Hand pages freed by retention and copy-on-write back to the filesystem.
        self.compact();
        Ok(())
    }
}
