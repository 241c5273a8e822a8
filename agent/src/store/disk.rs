//! Persisted blocks: chunk bytes in append-only files `chunks/<block start>`
//! (one per 2 h block), the index in redb (`blocks.redb`).
//!
//! Why not chunk bytes inside redb too: redb stores each value inline in a
//! B-tree leaf rounded up to a power-of-two number of pages, which cost +75 %
//! on top of 0.8 B/sample chunks (measured: 1.44 vs 0.82 B/sample for 24 h).
//! Files written once, fsynced, and only then referenced by a redb commit keep
//! redb's crash safety: a kill -9 before the commit leaves unreferenced bytes
//! at a file's end (harmless, freed with the block), never a dangling index
//! entry. Each chunk carries its own CRC, so corruption is found per chunk.
//!
//! redb tables:
//! - `series`: id → labels (answers queries for series no longer in the head);
//! - `chunks_v2`: (block start, id, chunk mint) → (maxt - mint, file offset,
//!   length). Block first: each persist appends keys past all existing ones
//!   and retention removes a prefix, so the B-tree stays dense; a read looks
//!   up its id in each block of its range;
//! - `blocks_v2`: block start → (chunk bytes, chunks), for the block list,
//!   deletion in whole blocks and size accounting;
//! - `meta`: metric name → type/help/unit.
//!
//! (Until chunk format 2 the index was `(id, mint)` plus a per-chunk
//! `(block, id, mint)` table: 72 key+value bytes per chunk in two B-trees
//! filled by mid-tree inserts, ~150 bytes of redb file per chunk. Now 36 bytes
//! in one append-ordered B-tree.)
use super::chunk;
use super::wal::{Record, encode};
use crate::series::{Labels, MetricMeta};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::{self, File};
use std::io::Write as _;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

const SERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("series");
const CHUNKS: TableDefinition<(i64, u32, i64), (u32, u64, u32)> = TableDefinition::new("chunks_v2");
pub const CHUNK_DIR: &str = "chunks";
const BLOCKS: TableDefinition<i64, (u64, u64)> = TableDefinition::new("blocks_v2");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub const BLOCK_MS: i64 = 2 * 3600 * 1000;

pub fn block_of(t: i64) -> i64 {
    t.div_euclid(BLOCK_MS) * BLOCK_MS
}

pub type DbResult<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// redb's default page cache (1 GiB) would dominate the agent's RSS; block
/// reads are mostly sequential whole chunks, so a small cache suffices.
const CACHE_BYTES: usize = 16 << 20;

pub fn open(path: &Path) -> DbResult<Database> {
    // Opened here, not by redb: redb would create it with the umask's mode.
    let file = crate::private_files::open_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    crate::private_files::tighten_file(&file).map_err(err)?;
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_file(file)
        .map_err(err)?;
    // Make sure all tables exist so readers never see "table does not exist".
    let w = db.begin_write().map_err(err)?;
    {
        w.open_table(SERIES).map_err(err)?;
        w.open_table(CHUNKS).map_err(err)?;
        w.open_table(BLOCKS).map_err(err)?;
        w.open_table(META).map_err(err)?;
    }
    w.commit().map_err(err)?;
    Ok(db)
}

/// Opens the index without writing to it. An index that was not closed
/// cleanly (agent killed) needs a repair, which writes: then a copy in an
/// unnamed temporary file (0600, gone when closed) is repaired and read.
pub fn open_read_only(path: &Path) -> DbResult<std::sync::Arc<dyn ReadableDatabase + Send + Sync>> {
    match Database::builder().set_cache_size(CACHE_BYTES).open_read_only(path) {
        Ok(db) => Ok(std::sync::Arc::new(db)),
        Err(redb::DatabaseError::RepairAborted) => {
            tracing::warn!(
                path = %path.display(),
                "the block index was not closed cleanly (agent killed?); reading a repaired temporary copy"
            );
            let copy = (|| {
                let mut tmp = tempfile::tempfile()?;
                std::io::copy(&mut File::open(path)?, &mut tmp)?;
                Ok::<_, std::io::Error>(tmp)
            })()
            .map_err(|e| format!("it needs a repair and a temporary copy failed: {e}"))?;
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create_file(copy)
                .map_err(|e| format!("repairing a temporary copy: {e}"))?;
            Ok(std::sync::Arc::new(db))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err("in use by a running ngxprobe".into()),
        Err(e) => Err(err(e)),
    }
}

/// Labels are stored in the WAL's series record format (one codec to test).
fn enc_labels(id: u32, labels: &Labels) -> Vec<u8> {
    let mut b = Vec::new();
    encode(
        &mut b,
        &Record::Series {
            id,
            labels: labels.clone(),
        },
    );
    b
}

fn dec_labels(b: &[u8]) -> Option<Labels> {
    match super::wal::parse(b) {
        (mut v, None) if v.len() == 1 => match v.pop() {
            Some(Record::Series { labels, .. }) => Some(labels),
            _ => None,
        },
        _ => None,
    }
}

fn enc_meta(name: &str, meta: &MetricMeta) -> Vec<u8> {
    let mut b = Vec::new();
    encode(
        &mut b,
        &Record::Meta {
            name: name.to_string(),
            meta: meta.clone(),
        },
    );
    b
}

fn dec_meta(b: &[u8]) -> Option<MetricMeta> {
    match super::wal::parse(b) {
        (mut v, None) if v.len() == 1 => match v.pop() {
            Some(Record::Meta { meta, .. }) => Some(meta),
            _ => None,
        },
        _ => None,
    }
}

/// A series found by `load`: id, labels, (mint, maxt) of its persisted data
/// if any.
pub type LoadedSeries = (u32, Labels, Option<(i64, i64)>);

/// What `load` found on disk.
#[derive(Default)]
pub struct Loaded {
    pub series: Vec<LoadedSeries>,
    pub meta: Vec<(String, MetricMeta)>,
    /// Unreadable entries (reported and skipped).
    pub corrupt: Vec<String>,
    pub stored_bytes: u64,
}

pub fn load(db: &dyn ReadableDatabase) -> DbResult<Loaded> {
    let r = db.begin_read().map_err(err)?;
    let series = r.open_table(SERIES).map_err(err)?;
    let chunks = r.open_table(CHUNKS).map_err(err)?;
    let blocks = r.open_table(BLOCKS).map_err(err)?;
    let meta = r.open_table(META).map_err(err)?;
    let mut out = Loaded::default();
    let mut ranges: std::collections::HashMap<u32, (i64, i64)> = Default::default();
    for c in chunks.iter().map_err(err)? {
        let (k, v) = c.map_err(err)?;
        let ((_, id, mint), (span, _, _)) = (k.value(), v.value());
        let maxt = mint.saturating_add(span as i64);
        ranges
            .entry(id)
            .and_modify(|r| *r = (r.0.min(mint), r.1.max(maxt)))
            .or_insert((mint, maxt));
    }
    for item in series.iter().map_err(err)? {
        let (k, v) = item.map_err(err)?;
        let id = k.value();
        let Some(labels) = dec_labels(v.value()).filter(|_| id <= u32::MAX as u64) else {
            out.corrupt.push(format!("series record {id}"));
            continue;
        };
        out.series.push((id as u32, labels, ranges.get(&(id as u32)).copied()));
    }
    for item in meta.iter().map_err(err)? {
        let (k, v) = item.map_err(err)?;
        match dec_meta(v.value()) {
            Some(m) => out.meta.push((k.value().to_string(), m)),
            None => out.corrupt.push(format!("metadata {}", k.value())),
        }
    }
    for item in blocks.iter().map_err(err)? {
        out.stored_bytes += item.map_err(err)?.1.value().0;
    }
    Ok(out)
}

/// One encoded chunk to persist: series id, chunk bytes, chunk mint.
pub type NewChunk = (u32, Vec<u8>, i64);

pub struct PersistBatch {
    pub new_series: Vec<(u32, Labels)>,
    pub chunks: Vec<NewChunk>,
    pub meta: Vec<(String, MetricMeta)>,
}

fn block_path(dir: &Path, block: i64) -> std::path::PathBuf {
    dir.join(CHUNK_DIR).join(format!("{block}"))
}

/// Appends the batch's chunks to their block files and fsyncs them, then
/// commits the index entries pointing at them.
pub fn persist(db: &Database, dir: &Path, b: &PersistBatch) -> DbResult<u64> {
    let cdir = dir.join(CHUNK_DIR);
    crate::private_files::create_dir_all(&cdir).map_err(err)?;
    let mut by_block: std::collections::BTreeMap<i64, Vec<&NewChunk>> = Default::default();
    for c in &b.chunks {
        by_block.entry(block_of(c.2)).or_default().push(c);
    }
    let mut placed = Vec::with_capacity(b.chunks.len()); // (id, mint, span, off, len)
    for (block, chunks) in &by_block {
        let path = block_path(dir, *block);
        let mut f = crate::private_files::open_options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let mut off = f.metadata().map_err(err)?.len();
        let mut buf = Vec::new();
        for (id, data, mint) in chunks {
            let maxt = chunk::header(data).map(|h| h.2).map_err(err)?;
            // A chunk lies within one block, so its span fits easily.
            let span = u32::try_from(maxt.wrapping_sub(*mint))
                .map_err(|_| format!("chunk of series {id} spans more than a block"))?;
            let len = u32::try_from(data.len()).map_err(|_| format!("chunk of series {id} too large"))?;
            placed.push((*id, *mint, span, off, len));
            off += data.len() as u64;
            buf.extend_from_slice(data);
        }
        f.write_all(&buf).map_err(err)?;
        f.sync_data().map_err(err)?;
    }
    File::open(&cdir).and_then(|d| d.sync_all()).map_err(err)?;
    let w = db.begin_write().map_err(err)?;
    let mut bytes = 0;
    {
        let mut series = w.open_table(SERIES).map_err(err)?;
        for (id, labels) in &b.new_series {
            series
                .insert(*id as u64, enc_labels(*id, labels).as_slice())
                .map_err(err)?;
        }
        let mut chunks = w.open_table(CHUNKS).map_err(err)?;
        let mut blocks = w.open_table(BLOCKS).map_err(err)?;
        let mut per_block: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
        for &(id, mint, span, off, len) in &placed {
            chunks
                .insert((block_of(mint), id, mint), (span, off, len))
                .map_err(err)?;
            let e = per_block.entry(block_of(mint)).or_default();
            e.0 += len as u64;
            e.1 += 1;
            bytes += len as u64;
        }
        for (block, (b, n)) in per_block {
            let old = blocks.get(block).map_err(err)?.map_or((0, 0), |v| v.value());
            blocks.insert(block, (old.0 + b, old.1 + n)).map_err(err)?;
        }
        let mut meta = w.open_table(META).map_err(err)?;
        for (name, m) in &b.meta {
            meta.insert(name.as_str(), enc_meta(name, m).as_slice()).map_err(err)?;
        }
    }
    w.commit().map_err(err)?;
    Ok(bytes)
}

/// Chunks of series `id` overlapping [mint, maxt], decoded. Corrupt chunks are
/// skipped and described in `corrupt`.
/// Reads chunks for many series under one redb read transaction, keeping
/// each block's file open across series: a 100-series query otherwise paid a
/// transaction and an open()/close() per series and block.
pub struct Reader<'a> {
    dir: &'a Path,
    chunks: redb::ReadOnlyTable<(i64, u32, i64), (u32, u64, u32)>,
    blocks: redb::ReadOnlyTable<i64, (u64, u64)>,
    /// Block start → its file, or why it could not be opened (reported for
    /// each chunk that needed it).
    files: std::collections::HashMap<i64, Result<File, String>>,
    buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    pub fn new(db: &dyn ReadableDatabase, dir: &'a Path) -> DbResult<Self> {
        let r = db.begin_read().map_err(err)?;
        Ok(Reader {
            dir,
            chunks: r.open_table(CHUNKS).map_err(err)?,
            blocks: r.open_table(BLOCKS).map_err(err)?,
            files: Default::default(),
            buf: Vec::new(),
        })
    }

    /// Calls `f(block, chunk mint, (offset, length))` for each persisted
    /// chunk of series `id` overlapping [mint, maxt], oldest first, until `f`
    /// returns `Break`. Reads only the index, never chunk data.
    fn each_chunk<B>(
        &self,
        id: u32,
        mint: i64,
        maxt: i64,
        mut f: impl FnMut(i64, i64, (u64, u32)) -> ControlFlow<B>,
    ) -> DbResult<ControlFlow<B>> {
        if mint > maxt {
            return Ok(ControlFlow::Continue(()));
        }
        // Blocks whose span [b, b + BLOCK_MS) reaches mint (no overflow at i64::MIN).
        for b in self
            .blocks
            .range(mint.saturating_sub(BLOCK_MS - 1)..=maxt)
            .map_err(err)?
        {
            let block = b.map_err(err)?.0.value();
            for c in self
                .chunks
                .range((block, id, i64::MIN)..=(block, id, maxt))
                .map_err(err)?
            {
                let (k, v) = c.map_err(err)?;
                let cmint = k.value().2;
                let (span, off, len) = v.value();
                if cmint.saturating_add(span as i64) < mint {
                    continue;
                }
                if let ControlFlow::Break(b) = f(block, cmint, (off, len)) {
                    return Ok(ControlFlow::Break(b));
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Whether series `id` has a persisted chunk overlapping [mint, maxt]
    /// (from the index alone).
    pub fn has_chunk(&self, id: u32, mint: i64, maxt: i64) -> DbResult<bool> {
        Ok(self
            .each_chunk(id, mint, maxt, |_, _, _| ControlFlow::Break(()))?
            .is_break())
    }

    /// Appends series `id`'s samples in [mint, maxt] to `out`; chunks that
    /// cannot be read or decoded are skipped and described in `corrupt`.
    /// `after_chunk(n)` is told how many samples each chunk added and stops
    /// the read with its error (the query's sample budget and deadline).
    pub fn read<E>(
        &mut self,
        id: u32,
        mint: i64,
        maxt: i64,
        out: &mut Vec<(i64, f64)>,
        corrupt: &mut Vec<String>,
        mut after_chunk: impl FnMut(usize) -> Result<(), E>,
    ) -> DbResult<Result<(), E>> {
        let mut locations = Vec::new();
        let _all: ControlFlow<()> = self.each_chunk(id, mint, maxt, |block, cmint, loc| {
            locations.push((block, cmint, loc));
            ControlFlow::Continue(())
        })?;
        for (block, cmint, (off, len)) in locations {
            let what = || format!("series {id} chunk at {cmint} in block file {block}");
            let dir = self.dir;
            let file = self.files.entry(block).or_insert_with(|| {
                let path = block_path(dir, block);
                File::open(&path).map_err(|e| format!("{}: {e}", path.display()))
            });
            let f = match file {
                Ok(f) => &*f,
                Err(e) => {
                    corrupt.push(format!("{}: {e}", what()));
                    continue;
                }
            };
            if len as u64 > (chunk::MAX_SAMPLES * 20) {
                corrupt.push(format!("{}: implausible length {len}", what()));
                continue;
            }
            self.buf.resize(len as usize, 0);
            if let Err(e) = f.read_exact_at(&mut self.buf, off) {
                corrupt.push(format!("{}: {e}", what()));
                continue;
            }
            let start = out.len();
            if let Err(e) = chunk::decode_range_into(&self.buf, mint, maxt, out) {
                out.truncate(start);
                corrupt.push(format!("{}: {e}", what()));
            }
            if let Err(e) = after_chunk(out.len() - start) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

/// Deletes whole blocks starting before `before` (retention by time), or the
/// oldest blocks until `max_bytes` of chunk data remain (retention by size).
/// Returns (blocks deleted, bytes freed, ids that lost chunks).
pub fn delete_blocks(
    db: &Database,
    dir: &Path,
    before: i64,
    max_bytes: Option<u64>,
    stored: u64,
) -> DbResult<(u64, u64, Vec<u32>)> {
    let w = db.begin_write().map_err(err)?;
    let (mut nblocks, mut freed, mut ids) = (0u64, 0u64, Vec::new());
    let mut gone_blocks = Vec::new();
    {
        let mut blocks = w.open_table(BLOCKS).map_err(err)?;
        let mut chunks = w.open_table(CHUNKS).map_err(err)?;
        // Oldest first.
        let mut list: Vec<(i64, u64)> = Vec::new();
        for item in blocks.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            list.push((k.value(), v.value().0));
        }
        for (b, bytes) in list {
            let over_size = max_bytes.is_some_and(|m| stored.saturating_sub(freed) > m);
            if b + BLOCK_MS > before && !over_size {
                break;
            }
            let mut keys = Vec::new();
            for c in chunks
                .range((b, 0u32, i64::MIN)..=(b, u32::MAX, i64::MAX))
                .map_err(err)?
            {
                keys.push(c.map_err(err)?.0.value());
            }
            for k in keys {
                chunks.remove(k).map_err(err)?;
                ids.push(k.1);
            }
            blocks.remove(b).map_err(err)?;
            freed += bytes;
            nblocks += 1;
            gone_blocks.push(b);
        }
    }
    w.commit().map_err(err)?;
    for b in gone_blocks {
        // Unreferenced now; a failure only leaves garbage, retried never.
        let _ = fs::remove_file(block_path(dir, b));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok((nblocks, freed, ids))
}

/// Removes a series with no data left anywhere.
pub fn remove_series(db: &Database, ids: &[u32]) -> DbResult<()> {
    let w = db.begin_write().map_err(err)?;
    {
        let mut series = w.open_table(SERIES).map_err(err)?;
        for &id in ids {
            series.remove(id as u64).map_err(err)?;
        }
    }
    w.commit().map_err(err)
}

/// (mint, maxt) of series `id`'s remaining persisted chunks: the first block
/// holding it from the oldest end and the first from the newest end (two
/// lookups for a series present throughout).
pub fn range_of(db: &Database, id: u32) -> DbResult<Option<(i64, i64)>> {
    let r = db.begin_read().map_err(err)?;
    let chunks = r.open_table(CHUNKS).map_err(err)?;
    let blocks = r.open_table(BLOCKS).map_err(err)?;
    let mut list = Vec::new();
    for b in blocks.iter().map_err(err)? {
        list.push(b.map_err(err)?.0.value());
    }
    let mut mint = None;
    for &b in &list {
        if let Some(c) = chunks.range((b, id, i64::MIN)..=(b, id, i64::MAX)).map_err(err)?.next() {
            mint = Some(c.map_err(err)?.0.value().2);
            break;
        }
    }
    let Some(mint) = mint else { return Ok(None) };
    for &b in list.iter().rev() {
        if let Some(c) = chunks
            .range((b, id, i64::MIN)..=(b, id, i64::MAX))
            .map_err(err)?
            .next_back()
        {
            let (k, v) = c.map_err(err)?;
            return Ok(Some((mint, k.value().2.saturating_add(v.value().0 as i64))));
        }
    }
    Ok(Some((mint, mint)))
}
