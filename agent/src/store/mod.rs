//! Store stage: embedded time-series store (issue 3).
//!
//! Data flow: `ingest`/`append` → per-series head (raw open chunk, compressed
//! sealed chunks) + WAL record → every 2 h of data, samples older than the
//! previous block boundary are re-encoded as one chunk per series per block and
//! committed to redb (`blocks.redb`), then the WAL is checkpointed (a new
//! segment with the remaining head; older segments deleted).
//!
//! Locks (always taken in this order, never held across I/O by readers):
//! `writer` (one writer at a time: WAL order) → `reg` (series registry and
//! inverted index) → one series' head mutex. Readers take `reg` shared, copy
//! `Arc`s, release it, then lock each series only to copy chunk pointers.
//! Persisted data is read through redb MVCC read transactions.

pub mod chunk;
mod config;
mod disk;
mod head;
mod index;
mod rc;
#[cfg(test)]
mod tests;
mod wal;

pub use config::{ByteSize, StorageConfig, WalFsync};
pub use disk::BLOCK_MS;

use crate::metrics::{Family, MetricType};
use crate::series::{
    AppendError, Labels, Matcher, MetricKind, MetricMeta, ReadError, SeriesData, SeriesReader, SeriesWriter,
    stale_marker,
};
use head::MemSeries;
use index::Index;
use redb::Database;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

const DB_FILE: &str = "blocks.redb";
const WAL_DIR: &str = "wal";
const LOCK_FILE: &str = "LOCK";
/// How often a store in the unwritable state retries writing.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Appends between clock checks for the WAL flush deadline (keeps
/// `Instant::now()` off the per-sample path).
const APPEND_CLOCK_EVERY: u32 = 1024;
/// `append()` callers get their WAL written to the kernel at least this often.
const APPEND_FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory {path} is in use by another ngxprobe (pid {pid}); stop it or set storage.path to another directory"
    )]
    Locked { path: PathBuf, pid: String },
    #[error("storage: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid storage config: {0}")]
    Config(String),
}

/// What one `ingest` call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub appended: u64,
    pub out_of_order: u64,
    pub duplicate: u64,
    pub stale_markers: u64,
    pub new_series: u64,
    /// False while the disk refuses writes (data is kept in memory).
    pub writable: bool,
}

#[derive(Default)]
struct Stats {
    appended: AtomicU64,
    out_of_order: AtomicU64,
    duplicate: AtomicU64,
    stale_markers: AtomicU64,
    wal_truncations: AtomicU64,
    wal_corruptions: AtomicU64,
    write_errors: AtomicU64,
    corrupt_chunks: AtomicU64,
    blocks_persisted: AtomicU64,
    blocks_deleted: AtomicU64,
    stored_bytes: AtomicU64,
    writable: AtomicBool,
}

#[derive(Default)]
struct Registry {
    by_labels: HashMap<Labels, Arc<MemSeries>>,
    by_id: HashMap<u32, Arc<MemSeries>>,
    index: Index,
    next_id: u32,
}

struct Writer {
    wal: wal::WalWriter,
    writable: bool,
    /// State last logged, so disk trouble is logged once per change.
    logged_writable: Option<bool>,
    last_retry: Instant,
    last_sync: Instant,
    last_flush: Instant,
    appends_since_clock: u32,
    /// Series present in the previous `ingest` (for stale markers).
    prev_ingest: HashSet<u32>,
    /// Newest sample timestamp seen; drives block persistence and retention.
    max_t: i64,
    /// Everything before this was persisted.
    persisted_before: i64,
    /// Metadata as last written to the WAL, to log changes only.
    meta_logged: HashMap<String, MetricMeta>,
    /// family name → sample labels as given → series: lets `ingest` find a
    /// series without building and sorting a `Labels` (the hot path). Cleared
    /// when retention removes series.
    ingest_cache: HashMap<String, HashMap<Vec<(String, String)>, Arc<MemSeries>>>,
}

pub struct Store {
    dir: PathBuf,
    cfg: StorageConfig,
    _lock: File,
    reg: RwLock<Registry>,
    meta: RwLock<BTreeMap<String, MetricMeta>>,
    writer: Mutex<Writer>,
    db: RwLock<Option<Arc<Database>>>,
    stats: Stats,
}

/// Threads one select may decode with (at most; see `Store::select`).
const MAX_READ_THREADS: usize = 4;
/// Below this many series per thread, a thread costs more than it saves.
const SERIES_PER_READ_THREAD: usize = 8;

fn read_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_READ_THREADS)
    })
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Takes an exclusive `flock` on `<dir>/LOCK` (released by the kernel when
/// the process dies, so a kill -9 never leaves a stale lock behind).
fn take_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open lock file", &path))?;
    // SAFETY: flock on a valid, owned fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim().to_string();
            return Err(StoreError::Locked {
                path: dir.to_path_buf(),
                pid: if pid.is_empty() { "unknown".into() } else { pid },
            });
        }
        return Err(StoreError::Io {
            what: "cannot lock",
            path,
            source: e,
        });
    }
    // Best effort: the pid is only for the error message of a second agent.
    let _ = f
        .set_len(0)
        .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Ok(f)
}

fn meta_of(f: &Family) -> MetricMeta {
    MetricMeta {
        kind: match f.kind {
            MetricType::Counter => MetricKind::Counter,
            MetricType::Gauge => MetricKind::Gauge,
            MetricType::Untyped => MetricKind::Unknown,
        },
        help: f.help.clone(),
        unit: String::new(),
    }
}

/// Total size of regular files under `p` (bytes), for size retention and the
/// bytes-on-disk metric.
pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Store {
    /// Opens (creating if needed) the data directory: takes the lock, loads
    /// the persisted index, replays the WAL (truncating a torn tail) and
    /// checkpoints it. Disk errors after the lock leave the store running
    /// from memory (unwritable) rather than failing the agent.
    pub fn open(cfg: &StorageConfig) -> Result<Store, StoreError> {
        cfg.validate().map_err(StoreError::Config)?;
        let dir = cfg.path.clone();
        fs::create_dir_all(&dir).map_err(io_err("cannot create data directory", &dir))?;
        let lock_file = take_lock(&dir)?;
        let wal_dir = dir.join(WAL_DIR);
        let store = Store {
            dir: dir.clone(),
            cfg: cfg.clone(),
            _lock: lock_file,
            reg: RwLock::new(Registry::default()),
            meta: RwLock::new(BTreeMap::new()),
            writer: Mutex::new(Writer {
                wal: wal::WalWriter::detached(&wal_dir, 0),
                writable: false,
                logged_writable: None,
                last_retry: Instant::now(),
                last_sync: Instant::now(),
                last_flush: Instant::now(),
                appends_since_clock: 0,
                prev_ingest: HashSet::new(),
                max_t: i64::MIN,
                persisted_before: i64::MIN,
                meta_logged: HashMap::new(),
                ingest_cache: HashMap::new(),
            }),
            db: RwLock::new(None),
            stats: Stats::default(),
        };
        store.open_db();
        store.load_db();
        store.replay_wal(&wal_dir);
        let mut w = lock(&store.writer);
        match store.checkpoint(&mut w) {
            Ok(()) => store.set_writable(&mut w, true, ""),
            Err(e) => store.set_writable(&mut w, false, &e),
        }
        store.maintain(&mut w);
        drop(w);
        Ok(store)
    }

    /// Opens redb; a file redb refuses (corrupt beyond its repair) is moved
    /// aside so the agent keeps running with an empty history.
    fn open_db(&self) -> bool {
        let path = self.dir.join(DB_FILE);
        let db = match disk::open(&path) {
            Ok(db) => Some(db),
            Err(e) if path.exists() && fs::metadata(&path).is_ok_and(|m| m.len() > 0) && !e.contains("os error") => {
                let aside = self.dir.join(format!("{DB_FILE}.corrupt-{}", std::process::id()));
                error!(path = %path.display(), error = %e, aside = %aside.display(), "store: block file unreadable, moved aside; starting with empty history");
                self.stats.corrupt_chunks.fetch_add(1, Relaxed);
                fs::rename(&path, &aside).ok().and_then(|()| disk::open(&path).ok())
            }
            Err(e) => {
                error!(path = %path.display(), error = %e, "store: cannot open block file; keeping history in memory only");
                None
            }
        };
        let ok = db.is_some();
        *write(&self.db) = db.map(Arc::new);
        ok
    }

    fn db(&self) -> Option<Arc<Database>> {
        read(&self.db).clone()
    }

    fn load_db(&self) {
        let Some(db) = self.db() else { return };
        let loaded = match disk::load(&db) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "store: cannot read block index; persisted history unavailable");
                return;
            }
        };
        for c in &loaded.corrupt {
            warn!(what = %c, "store: corrupt entry in block file, skipped");
        }
        self.stats
            .corrupt_chunks
            .fetch_add(loaded.corrupt.len() as u64, Relaxed);
        self.stats.stored_bytes.store(loaded.stored_bytes, Relaxed);
        let mut reg = write(&self.reg);
        let mut max_t = i64::MIN;
        for (id, labels, range) in loaded.series {
            if reg.by_labels.contains_key(&labels) || reg.by_id.contains_key(&id) {
                continue;
            }
            let s = Arc::new(MemSeries::new(id, labels.clone()));
            {
                let mut d = s.lock();
                d.on_disk = true;
                d.disk = range;
                d.last_t = range.map(|r| r.1);
                max_t = max_t.max(range.map_or(i64::MIN, |r| r.1));
            }
            reg.index.add(id, &labels);
            reg.by_id.insert(id, s.clone());
            reg.by_labels.insert(labels, s);
            reg.next_id = reg.next_id.max(id.saturating_add(1));
        }
        drop(reg);
        *write(&self.meta) = loaded.meta.into_iter().collect();
        let mut w = lock(&self.writer);
        w.max_t = w.max_t.max(max_t);
    }

    fn replay_wal(&self, wal_dir: &Path) {
        if let Err(e) = fs::create_dir_all(wal_dir) {
            error!(dir = %wal_dir.display(), error = %e, "store: cannot create WAL directory");
            return;
        }
        let rep = match wal::replay(wal_dir) {
            Ok(r) => r,
            Err(e) => {
                error!(dir = %wal_dir.display(), error = %e, "store: cannot read WAL; samples since the last block are lost");
                return;
            }
        };
        if let Some((seg, off, dropped)) = rep.torn {
            warn!(
                segment = seg,
                offset = off,
                bytes = dropped,
                "store: torn WAL tail truncated at last good record (interrupted write)"
            );
            self.stats.wal_truncations.fetch_add(1, Relaxed);
        }
        for (seg, off) in &rep.corrupt {
            warn!(
                segment = seg,
                offset = off,
                "store: corrupt WAL record, rest of segment skipped"
            );
            self.stats.wal_corruptions.fetch_add(1, Relaxed);
        }
        let mut w = lock(&self.writer);
        w.wal = wal::WalWriter::detached(wal_dir, rep.last_segment);
        let mut ids: HashMap<u32, Arc<MemSeries>> = read(&self.reg).by_id.clone();
        let mut max_t = w.max_t;
        for rec in rep.records {
            match rec {
                wal::Record::Series { id, labels } => {
                    let mut reg = write(&self.reg);
                    match (reg.by_labels.get(&labels).cloned(), reg.by_id.contains_key(&id)) {
                        (Some(s), _) => {
                            ids.insert(id, s);
                        }
                        (None, false) => {
                            let s = Arc::new(MemSeries::new(id, labels.clone()));
                            reg.index.add(id, &labels);
                            reg.by_id.insert(id, s.clone());
                            reg.by_labels.insert(labels, s.clone());
                            reg.next_id = reg.next_id.max(id.saturating_add(1));
                            ids.insert(id, s);
                        }
                        (None, true) => warn!(id, "store: WAL series id clashes with another series, skipped"),
                    }
                }
                wal::Record::Samples(v) => {
                    for (id, t, val) in v {
                        if let Some(s) = ids.get(&id) {
                            // Already persisted or replayed twice: rejected, fine.
                            if s.append(t, val).is_ok() {
                                max_t = max_t.max(t);
                            }
                        }
                    }
                }
                wal::Record::SamplesAt { t, samples } => {
                    for (id, val) in samples {
                        if let Some(s) = ids.get(&id)
                            && s.append(t, val).is_ok()
                        {
                            max_t = max_t.max(t);
                        }
                    }
                }
                wal::Record::Meta { name, meta } => {
                    write(&self.meta).insert(name, meta);
                }
            }
        }
        w.max_t = max_t;
    }

    fn set_writable(&self, w: &mut Writer, ok: bool, why: &str) {
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

    fn checkpoint(&self, w: &mut Writer) -> Result<(), String> {
        let content = self.checkpoint_bytes();
        w.wal.checkpoint(&content).map_err(|e| format!("WAL checkpoint: {e}"))?;
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
    fn maintain(&self, w: &mut Writer) {
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
    fn commit_wal(&self, w: &mut Writer) {
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
                let cached = w.ingest_cache.get(&f.name).and_then(|c| c.get(&s.labels)).cloned();
                let series = match cached {
                    Some(series) => series,
                    None => {
                        let labels = Labels::new(
                            std::iter::once(("__name__".to_string(), f.name.clone()))
                                .chain(s.labels.iter().filter(|(k, _)| k != "__name__").cloned()),
                        );
                        let series = self.series_for(&mut w, &labels, &mut rep.new_series);
                        w.ingest_cache
                            .entry(f.name.clone())
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

    /// Series matching all matchers (pre-filtered by the inverted index).
    fn matching(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let reg = read(&self.reg);
        reg.index
            .candidates(matchers)
            .into_iter()
            .filter_map(|id| reg.by_id.get(&id))
            .filter(|s| matchers.iter().all(|m| m.matches_labels(&s.labels)))
            .cloned()
            .collect()
    }

    /// Whether a series may have data in [mint, maxt] (from chunk ranges).
    fn in_range(s: &MemSeries, mint: i64, maxt: i64) -> bool {
        let d = s.lock();
        let disk = d.disk.is_some_and(|(a, b)| b >= mint && a <= maxt);
        let head = d
            .head_mint()
            .is_some_and(|a| a <= maxt && d.last_t.is_some_and(|b| b >= mint));
        disk || head
    }

    /// Samples of `series` in [mint, maxt] (head and disk), plus the
    /// descriptions of corrupt chunks skipped on the way.
    fn read_series(
        &self,
        series: &[Arc<MemSeries>],
        mint: i64,
        maxt: i64,
    ) -> Result<(Vec<SeriesData>, Vec<String>), ReadError> {
        let db = self.db();
        let mut reader = match db.as_deref() {
            Some(db) => Some(disk::Reader::new(db, &self.dir).map_err(ReadError::Io)?),
            None => None,
        };
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for s in series {
            // Head first, then disk: a persist running meanwhile moves data
            // head → disk, never the other way, so nothing is missed.
            let snap = s.snapshot(mint, maxt);
            let mut samples = Vec::new();
            if let (Some((a, b)), Some(reader)) = (snap.disk, reader.as_mut())
                && b >= mint
                && a <= maxt
            {
                reader
                    .read(s.id, mint, maxt, &mut samples, &mut corrupt)
                    .map_err(ReadError::Io)?;
            }
            for c in &snap.sealed {
                let start = samples.len();
                if let Err(e) = chunk::decode_range_into(&c.bytes, mint, maxt, &mut samples) {
                    samples.truncate(start);
                    corrupt.push(format!("head chunk of {}: {e}", s.labels));
                }
            }
            samples.extend(snap.open);
            samples.retain(|x| x.0 >= mint && x.0 <= maxt);
            if !samples.is_sorted_by(|a, b| a.0 < b.0) {
                samples.sort_by_key(|x| x.0);
                samples.dedup_by_key(|x| x.0);
            }
            if !samples.is_empty() {
                out.push(SeriesData {
                    labels: s.labels.clone(),
                    samples,
                });
            }
        }
        Ok((out, corrupt))
    }

    fn report_corrupt(&self, corrupt: &[String]) {
        if !corrupt.is_empty() {
            self.stats.corrupt_chunks.fetch_add(corrupt.len() as u64, Relaxed);
            for c in corrupt.iter().take(5) {
                warn!(what = %c, "store: corrupt chunk skipped");
            }
        }
    }
}

impl SeriesReader for Store {
    /// Corrupt chunks are skipped (logged and counted in
    /// ngxprobe_store_corrupt_chunks_total); the rest of the data is returned.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<SeriesData>, ReadError> {
        let series = self.matching(matchers);
        // Decoding is the cost of a big select (the range coder trades CPU for
        // 3x fewer bytes than Gorilla), so many series are decoded by up to
        // read_threads() threads, each over a contiguous slice (the answer
        // keeps the index's order). Small selects stay on the caller's thread,
        // and so does a slice whose thread the OS refuses to start.
        let threads = read_threads().min(series.len() / SERIES_PER_READ_THREAD).max(1);
        let parts: Vec<Result<(Vec<SeriesData>, Vec<String>), ReadError>> = if threads == 1 {
            vec![self.read_series(&series, mint, maxt)]
        } else {
            let per = series.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let mut slices = series.chunks(per);
                let first = slices.next().unwrap_or(&[]);
                let spawned: Vec<_> = slices
                    .map(|part| {
                        let job = move || self.read_series(part, mint, maxt);
                        std::thread::Builder::new()
                            .name("store-read".into())
                            .spawn_scoped(scope, job)
                            .map_err(|_| part)
                    })
                    .collect();
                let mut parts = vec![self.read_series(first, mint, maxt)];
                for h in spawned {
                    parts.push(match h {
                        Ok(h) => h
                            .join()
                            .unwrap_or_else(|_| Err(ReadError::Io("store read thread panicked".into()))),
                        Err(part) => self.read_series(part, mint, maxt),
                    });
                }
                parts
            })
        };
        let (mut out, mut corrupt) = (Vec::new(), Vec::new());
        for p in parts {
            let (o, c) = p?;
            out.extend(o);
            corrupt.extend(c);
        }
        self.report_corrupt(&corrupt);
        Ok(out)
    }

    fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, ReadError> {
        let mut names = BTreeSet::new();
        for s in self.matching(matchers) {
            if Self::in_range(&s, mint, maxt) {
                names.extend(s.labels.0.iter().map(|(k, _)| k.clone()));
            }
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(&self, name: &str, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<String>, ReadError> {
        let mut vals = BTreeSet::new();
        for s in self.matching(matchers) {
            if let Some(v) = s.labels.get(name)
                && Self::in_range(&s, mint, maxt)
            {
                vals.insert(v.to_string());
            }
        }
        Ok(vals.into_iter().collect())
    }

    fn metadata(&self, metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        let m = read(&self.meta);
        match metric {
            Some(n) => m.get(n).map(|v| vec![(n.to_string(), v.clone())]).unwrap_or_default(),
            None => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
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
