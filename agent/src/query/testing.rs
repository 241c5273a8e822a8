//! Test readers: the real store in a temporary directory ([`TempStore`],
//! [`SwapStore`]). The in-memory one is [`crate::series::MemStore`].
use std::{
    path::PathBuf,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{
    compat::PromDuration,
    series::{AppendError, Labels, MetricMeta, ReadError, Selection, SeriesData, SeriesReader, SeriesWriter},
    store::{StorageConfig, Store, WalFsync},
};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ngxprobe-query-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Store settings for tests: no fsync, retention long enough that test data
/// at any timestamp (promqltest loads start at 0) is never deleted.
pub fn test_storage_config(path: PathBuf) -> StorageConfig {
    StorageConfig {
        path,
        retention: PromDuration::from_secs(100 * 365 * 86_400),
        wal_fsync: WalFsync::Never,
        ..StorageConfig::default()
    }
}

/// The real store in a fresh temporary directory (deleted on drop).
pub struct TempStore {
    // Field order matters: the store (and its lock file) goes before the dir.
    pub store: Store,
    _dir: TempDir,
}

impl TempStore {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let store = Store::open(&test_storage_config(dir.0.clone())).unwrap_or_else(|e| panic!("Store::open: {e}"));
        TempStore { store, _dir: dir }
    }
}

/// A sample the store refused while loading test data.
#[derive(Debug)]
pub struct Refused {
    pub labels: Labels,
    pub t: i64,
    pub err: AppendError,
}

/// The real store, replaced by an empty one (new temp dir) on [`SwapStore::clear`],
/// for runners whose reader must stay the same object across `clear`.
pub struct SwapStore {
    tag: String,
    cur: RwLock<TempStore>,
    refused: Mutex<Vec<Refused>>,
}

impl SwapStore {
    pub fn new(tag: &str) -> Self {
        SwapStore {
            tag: tag.to_string(),
            cur: RwLock::new(TempStore::new(tag)),
            refused: Mutex::new(vec![]),
        }
    }
    /// Drops the current store and its directory; opens an empty one.
    pub fn clear(&self) {
        let fresh = TempStore::new(&self.tag);
        // The old store and its directory are dropped here.
        *self.cur.write().unwrap() = fresh;
    }
    /// Appends through `SeriesWriter::append`; refusals are recorded.
    pub fn add(&self, labels: &Labels, t: i64, v: f64) {
        if let Err(err) = self.cur.read().unwrap().store.append(labels, t, v) {
            self.refused.lock().unwrap().push(Refused {
                labels: labels.clone(),
                t,
                err,
            });
        }
    }
    pub fn take_refused(&self) -> Vec<Refused> {
        std::mem::take(&mut *self.refused.lock().unwrap())
    }
}

impl SeriesReader for SwapStore {
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
        self.cur.read().unwrap().store.select(sel)
    }
    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError> {
        self.cur.read().unwrap().store.series(sel)
    }
    fn metadata(&self, metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        self.cur.read().unwrap().store.metadata(metric)
    }
}
