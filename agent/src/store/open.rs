//! Opening a store: the data directory's lock file, the redb index (moved
//! aside when redb refuses it), the persisted series, and WAL replay. This
//! runs once, before the store is shared, so start-up recovery reads in one
//! place; only `open_db` is used again later (`maintain` reopens redb after
//! an I/O error).
//!
//! The directory and every file in it are private (`private_files`: 0700,
//! 0600). `open_read_only` (for `ngxprobe query --data-dir`) reads the same
//! data without writing, creating, truncating or deleting anything there.
use super::head::MemSeries;
use super::{
    DB_FILE, Registry, Stats, StorageConfig, Store, StoreError, WAL_DIR, Writer, disk, lock, read, wal, wal_read, write,
};
use crate::private_files;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tracing::{error, warn};

const LOCK_FILE: &str = "LOCK";

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
    let mut f = private_files::open_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open lock file", &path))?;
    if let Err(e) = private_files::tighten_file(&f) {
        warn!(path = %path.display(), error = %e, "store: cannot make the lock file private");
    }
    flock(&mut f, libc::LOCK_EX, dir, &path)?;
    // Best effort: the pid is only for the error message of a second agent.
    let _ = f
        .set_len(0)
        .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Ok(f)
}

/// Takes a shared `flock` on `<dir>/LOCK` if there is one, opened read-only:
/// fails while an agent writes the directory, and keeps one from starting
/// while the store is read.
fn share_lock(dir: &Path) -> Result<Option<File>, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open lock file", &path)(e)),
    };
    flock(&mut f, libc::LOCK_SH, dir, &path)?;
    Ok(Some(f))
}

fn flock(f: &mut File, how: libc::c_int, dir: &Path, path: &Path) -> Result<(), StoreError> {
    // SAFETY: flock on a valid, owned fd.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
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
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the data directory: takes the lock, loads
    /// the persisted index, replays the WAL (truncating a torn tail) and
    /// checkpoints it. Disk errors after the lock leave the store running
    /// from memory (unwritable) rather than failing the agent.
    pub fn open(cfg: &StorageConfig) -> Result<Store, StoreError> {
        cfg.validate().map_err(StoreError::Config)?;
        let dir = cfg.path.clone();
        private_files::create_dir_all(&dir).map_err(io_err("cannot create data directory", &dir))?;
        private_files::log_dir_check(&dir, &private_files::secure_dir(&dir, LOCK_FILE));
        let lock_file = take_lock(&dir)?;
        let wal_dir = dir.join(WAL_DIR);
        let store = Store::new(cfg, Some(lock_file), false, None);
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

    /// Opens a stopped agent's data directory to read it (`ngxprobe query
    /// --data-dir`): no lock file, directory or WAL segment is created, no
    /// torn WAL tail truncated, no checkpoint or block written, nothing
    /// deleted, so it works on a read-only directory and leaves it as found.
    /// Fails while an agent is using the directory.
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        if !dir.is_dir() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
            return Err(io_err("no data directory at", dir)(missing));
        }
        let shared_lock = share_lock(dir)?;
        let cfg = StorageConfig {
            path: dir.to_path_buf(),
            ..StorageConfig::default()
        };
        let db_path = dir.join(DB_FILE);
        let read_db = match db_path.exists() {
            true => Some(disk::open_read_only(&db_path).map_err(|e| {
                let e = std::io::Error::other(format!("{e}; stop the agent, or query it with --addr"));
                io_err("cannot read the block index", &db_path)(e)
            })?),
            false => None,
        };
        let store = Store::new(&cfg, shared_lock, true, read_db);
        store.load_db();
        let wal_dir = dir.join(WAL_DIR);
        if wal_dir.is_dir() {
            store.replay_wal(&wal_dir);
        }
        Ok(store)
    }

    /// A store with nothing loaded yet; `read_only` when no agent owns it.
    fn new(
        cfg: &StorageConfig,
        lock_file: Option<File>,
        read_only: bool,
        read_db: Option<Arc<dyn redb::ReadableDatabase + Send + Sync>>,
    ) -> Store {
        let wal_dir = cfg.path.join(WAL_DIR);
        Store {
            dir: cfg.path.clone(),
            cfg: cfg.clone(),
            _lock: lock_file,
            read_only,
            read_db,
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
                wal_holds: wal_read::load_holds(&wal_dir),
            }),
            db: RwLock::new(None),
            stats: Stats::default(),
        }
    }

    /// Opens redb; a file redb refuses (corrupt beyond its repair) is moved
    /// aside so the agent keeps running with an empty history.
    pub(super) fn open_db(&self) -> bool {
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

    fn load_db(&self) {
        let Some(db) = self.reader_db() else { return };
        let loaded = match disk::load(&*db) {
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
        if !self.read_only
            && let Err(e) = private_files::create_dir_all(wal_dir)
        {
            error!(dir = %wal_dir.display(), error = %e, "store: cannot create WAL directory");
            return;
        }
        let rep = match wal::replay(wal_dir, !self.read_only) {
            Ok(r) => r,
            Err(e) => {
                error!(dir = %wal_dir.display(), error = %e, "store: cannot read WAL; samples since the last block are lost");
                return;
            }
        };
        if let Some((seg, off, dropped)) = rep.torn {
            let what = match self.read_only {
                true => "store: torn WAL tail ignored (read-only: left as it is)",
                false => "store: torn WAL tail truncated at last good record (interrupted write)",
            };
            warn!(segment = seg, offset = off, bytes = dropped, "{what}");
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
}
