//! Store stage: embedded time-series store.
//!
//! Data flow: `ingest`/`append` → per-series head (raw open chunk, compressed
//! sealed chunks) + WAL record. Once the newest sample is half a block (1 h)
//! past a 2 h block boundary, the head's samples before that boundary are
//! re-encoded as one chunk per series per block, appended to the block's chunk
//! file (`chunks/<block start>`) and fsynced, and only then indexed in redb
//! (`blocks.redb`: series labels, chunk locations, block sizes, metadata) in
//! one commit; then the WAL is checkpointed (a new segment with the remaining
//! head; older segments deleted). Retention deletes whole blocks; `close`
//! persists the whole head. The on-disk layout is described in `disk`.
//!
//! Files, by job (like Prometheus' tsdb: db / head_append / head_read /
//! compact): this one holds the `Store` and its shared state; `open` (lock
//! file, redb, WAL replay), `append` (the write path), `maintain`
//! (persistence, retention, compaction, the unwritable state, flush/close),
//! `read` (queries), `self_metrics` (ngxprobe_store_*). Below them: `head`
//! (in-memory series), `index` (inverted index), `wal`, `disk` (blocks),
//! `chunk` + `rc` (the chunk codec), `config`.
//!
//! Locks (always taken in this order, never held across I/O by readers):
//! `writer` (one writer at a time: WAL order) → `reg` (series registry and
//! inverted index) → one series' head mutex. `meta` (metric metadata) and `db`
//! (the redb handle) are leaves: nothing else is locked while one is held.
//! Readers take `reg` shared, copy `Arc`s, release it, then lock each series
//! only to copy chunk pointers and the open chunk's samples in range. The
//! persisted index is read through a redb MVCC read transaction, chunk bytes
//! by `pread` from the block files.

mod append;
pub mod chunk;
mod config;
mod disk;
mod head;
mod index;
mod maintain;
mod open;
mod rc;
mod read;
pub mod sampler;
mod self_metrics;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_files;
#[cfg(test)]
mod tests_wal_read;
mod wal;
mod wal_read;

pub use config::{ByteSize, StorageConfig, WalFsync};
pub use disk::BLOCK_MS;
pub use wal_read::{WalBatch, WalCursor, WalPosition};

use crate::series::{Labels, MetricMeta};
use head::MemSeries;
use index::Index;
use redb::{Database, ReadableDatabase};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

const DB_FILE: &str = "blocks.redb";
const WAL_DIR: &str = "wal";

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
    /// Chunks (head and persisted) decoded for readers.
    chunks_decoded: AtomicU64,
    blocks_persisted: AtomicU64,
    blocks_deleted: AtomicU64,
    stored_bytes: AtomicU64,
    /// WAL segments deleted before every WAL reader had read them (size cap).
    wal_reader_segments_dropped: AtomicU64,
    writable: AtomicBool,
}

#[derive(Default)]
struct Registry {
    by_labels: HashMap<Labels, Arc<MemSeries>>,
    by_id: HashMap<u32, Arc<MemSeries>>,
    index: Index,
    next_id: u32,
}

/// family name → sample labels as given → series.
type IngestCache = HashMap<String, HashMap<Vec<(String, String)>, Arc<MemSeries>>>;

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
    ingest_cache: IngestCache,
    /// Committed positions of WAL readers (remote_write): checkpoints keep
    /// the segments they have not read.
    wal_holds: BTreeMap<String, WalPosition>,
}

pub struct Store {
    dir: PathBuf,
    cfg: StorageConfig,
    /// The data directory's lock: exclusive for the agent, shared for a
    /// read-only store (so no agent starts writing meanwhile).
    _lock: Option<File>,
    /// Opened by `open_read_only`: nothing is ever written, created or
    /// deleted in the data directory.
    read_only: bool,
    /// The index a read-only store reads (`db` stays empty then).
    read_db: Option<Arc<dyn ReadableDatabase + Send + Sync>>,
    reg: RwLock<Registry>,
    meta: RwLock<BTreeMap<String, MetricMeta>>,
    writer: Mutex<Writer>,
    db: RwLock<Option<Arc<Database>>>,
    stats: Stats,
}

impl Store {
    /// The index to write to (none in a read-only store).
    fn db(&self) -> Option<Arc<Database>> {
        read(&self.db).clone()
    }

    /// The index to read from.
    fn reader_db(&self) -> Option<Arc<dyn ReadableDatabase + Send + Sync>> {
        match &self.read_db {
            Some(db) => Some(db.clone()),
            None => self.db().map(|db| db as Arc<dyn ReadableDatabase + Send + Sync>),
        }
    }
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

/// Total size of regular files under `p` (bytes), for size retention and the
/// bytes-on-disk metric.
fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
