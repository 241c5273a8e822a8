//! Reading the WAL from outside the store: named cursors (one per
//! remote_write endpoint) that hand out every sample the store logged, in WAL
//! order, with its series' labels, and remember where they are.
//!
//! A cursor's position (segment, frame offset, samples of that frame already
//! handed out) is committed by its owner after the data was delivered, and
//! persisted atomically in `wal/readers/<name>`. The store keeps every WAL
//! segment from the oldest committed position on when it checkpoints, across
//! restarts too (the positions are read at open), up to
//! `storage.wal_reader_max_size`: past it the oldest segments are deleted
//! anyway and the cursor jumps over them (counted).
//!
//! Each segment starts with a checkpoint: a copy of the head, i.e. samples an
//! earlier segment already held. Samples of one series are strictly
//! increasing in time in the WAL (the head rejects the rest), so a cursor
//! skips every sample at or before the newest one it handed out for that
//! series; after a restart it rebuilds that by scanning its segment up to the
//! position. Nothing is sent twice and nothing is skipped.
use super::{Store, WAL_DIR, lock, read, wal};
use crate::private_files;
use crate::series::Labels;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

const READERS_DIR: &str = "readers";
/// Read buffer per batch read (allocated per read: the queue polls when idle).
const READ_BUF: usize = 64 << 10;

/// Where a cursor is: the frame at `offset` of `segment`, of which the first
/// `skip` samples were handed out already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalPosition {
    pub segment: u64,
    pub offset: u64,
    pub skip: u32,
}

impl WalPosition {
    fn encode(&self) -> String {
        format!("{} {} {}\n", self.segment, self.offset, self.skip)
    }

    fn parse(s: &str) -> Option<WalPosition> {
        let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
        let p = WalPosition {
            segment: it.next()?.ok()?,
            offset: it.next()?.ok()?,
            skip: u32::try_from(it.next()?.ok()?).ok()?,
        };
        it.next().is_none().then_some(p)
    }
}

/// Samples read from the WAL, grouped by series (in WAL order within each).
#[derive(Debug, Default)]
pub struct WalBatch {
    pub series: Vec<(Labels, Vec<(i64, f64)>)>,
    pub samples: usize,
    /// Where the next read starts; commit it once the batch was delivered.
    pub end: WalPosition,
    /// Segments deleted before this cursor read them (over the size cap), or
    /// the rest of a segment skipped at a corrupt record.
    pub segments_skipped: u64,
    /// Samples whose series is unknown (its record lost with a corrupt segment).
    pub unknown_series: u64,
}

/// A named reader of the store's WAL. Its position is held by the store
/// from the time it is opened.
pub struct WalCursor {
    name: String,
    dir: PathBuf,
    pos: WalPosition,
    labels: HashMap<u32, Labels>,
    /// Newest timestamp handed out per series (skips checkpoint copies).
    newest: HashMap<u32, i64>,
}

/// Reader names become file names: anything else is hashed.
fn file_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if plain {
        return name.to_string();
    }
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn readers_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join(READERS_DIR)
}

/// Committed positions of every reader (file name → position), read at open.
pub(super) fn load_holds(wal_dir: &Path) -> BTreeMap<String, WalPosition> {
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(readers_dir(wal_dir)) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(n) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if n.ends_with(".tmp") {
            continue;
        }
        match fs::read_to_string(e.path())
            .ok()
            .as_deref()
            .and_then(WalPosition::parse)
        {
            Some(p) => {
                out.insert(n, p);
            }
            None => tracing::warn!(file = %e.path().display(), "store: unreadable WAL reader position, ignored"),
        }
    }
    out
}

/// Writes `pos` to `dir/name` atomically (temp file, fsync, rename, fsync dir).
fn persist(dir: &Path, name: &str, pos: WalPosition) -> io::Result<()> {
    private_files::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = private_files::open_options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(pos.encode().as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Result of reading one frame header + payload at a position.
enum Frame {
    Ok(wal::Record, u64),
    /// End of data, or a frame still being written.
    End,
    Corrupt,
}

fn next_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut hdr = [0u8; 8];
    match read_full(r, &mut hdr)? {
        0 => return Ok(Frame::End),
        8 => {}
        _ => return Ok(Frame::End),
    }
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len > wal::MAX_RECORD {
        return Ok(Frame::Corrupt);
    }
    let mut payload = vec![0u8; len as usize];
    if read_full(r, &mut payload)? < payload.len() {
        return Ok(Frame::End);
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Frame::Corrupt);
    }
    Ok(match wal::decode_payload(&payload) {
        Some(rec) => Frame::Ok(rec, 8 + u64::from(len)),
        None => Frame::Corrupt,
    })
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The samples of a sample record, in order.
fn samples_of(rec: &wal::Record) -> Vec<(u32, i64, f64)> {
    match rec {
        wal::Record::Samples(v) => v.clone(),
        wal::Record::SamplesAt { t, samples } => samples.iter().map(|&(id, v)| (id, *t, v)).collect(),
        _ => Vec::new(),
    }
}

impl WalCursor {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn position(&self) -> WalPosition {
        self.pos
    }

    /// Reads up to about `max_samples` samples (whole frames are split at
    /// `max_samples`) from the position on, without moving it: call
    /// [`Store::commit_wal_cursor`] with `batch.end` once delivered. Reading
    /// again without committing continues after this batch.
    pub fn read(&mut self, store: &Store, max_samples: usize) -> io::Result<WalBatch> {
        let max_samples = max_samples.max(1);
        let mut batch = WalBatch::default();
        let mut index: HashMap<u32, usize> = HashMap::new();
        // Newest timestamps handed out by this batch: applied only if the
        // read succeeds (an I/O error must not make a retry skip them).
        let mut fresh: HashMap<u32, i64> = HashMap::new();
        let mut pos = self.pos;
        loop {
            let segs = wal::segments(&self.dir)?;
            let Some(&first) = segs.first() else {
                break;
            };
            if pos.segment < first || !segs.contains(&pos.segment) {
                // Deleted before we read it (size cap), or a fresh cursor.
                let next = segs.iter().copied().find(|&n| n > pos.segment).unwrap_or(first);
                // A segment read to its end may go; a gap means unread data went.
                if pos != WalPosition::default() && next > pos.segment + 1 {
                    batch.segments_skipped += next - pos.segment - 1;
                }
                pos = WalPosition {
                    segment: next,
                    offset: 0,
                    skip: 0,
                };
            }
            let last = segs.last().copied() == Some(pos.segment);
            let mut f = File::open(wal::segment_path(&self.dir, pos.segment))?;
            f.seek(SeekFrom::Start(pos.offset))?;
            let mut r = BufReader::with_capacity(READ_BUF, f);
            let mut full = false;
            let mut done_segment = false;
            loop {
                match next_frame(&mut r)? {
                    Frame::Ok(rec, len) => {
                        if let wal::Record::Series { id, labels } = &rec {
                            self.labels.insert(*id, labels.clone());
                        }
                        let all = samples_of(&rec);
                        let start = pos.skip as usize;
                        let mut taken = start;
                        for &(id, t, v) in all.iter().skip(start) {
                            if batch.samples >= max_samples {
                                full = true;
                                break;
                            }
                            taken += 1;
                            let newest = fresh.get(&id).or_else(|| self.newest.get(&id));
                            if newest.is_some_and(|&n| t <= n) {
                                continue;
                            }
                            let Some(labels) = self.labels_of(store, id) else {
                                batch.unknown_series += 1;
                                continue;
                            };
                            fresh.insert(id, t);
                            let i = *index.entry(id).or_insert_with(|| {
                                batch.series.push((labels, Vec::new()));
                                batch.series.len() - 1
                            });
                            batch.series[i].1.push((t, v));
                            batch.samples += 1;
                        }
                        if taken < all.len() {
                            pos.skip = taken as u32;
                            break;
                        }
                        pos.offset += len;
                        pos.skip = 0;
                        if batch.samples >= max_samples {
                            full = true;
                            break;
                        }
                    }
                    Frame::End => {
                        done_segment = !last;
                        break;
                    }
                    Frame::Corrupt => {
                        if !last {
                            tracing::warn!(
                                segment = pos.segment,
                                offset = pos.offset,
                                "store: corrupt WAL record; WAL reader skips the rest of the segment"
                            );
                            batch.segments_skipped += 1;
                            done_segment = true;
                        }
                        break;
                    }
                }
            }
            if full || !done_segment {
                break;
            }
            let Some(next) = segs.iter().copied().find(|&n| n > pos.segment) else {
                break;
            };
            pos = WalPosition {
                segment: next,
                offset: 0,
                skip: 0,
            };
        }
        batch.end = pos;
        self.pos = pos;
        self.newest.extend(fresh);
        Ok(batch)
    }

    fn labels_of(&mut self, store: &Store, id: u32) -> Option<Labels> {
        if let Some(l) = self.labels.get(&id) {
            return Some(l.clone());
        }
        let l = read(&store.reg).by_id.get(&id).map(|s| s.labels.clone())?;
        self.labels.insert(id, l.clone());
        Some(l)
    }

    /// After a restart: learns labels and the newest sample per series from
    /// the start of the position's segment up to the position.
    fn rebuild(&mut self) -> io::Result<()> {
        let path = wal::segment_path(&self.dir, self.pos.segment);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut r = BufReader::with_capacity(READ_BUF, f);
        let mut off = 0u64;
        while off <= self.pos.offset {
            let Frame::Ok(rec, len) = next_frame(&mut r)? else {
                break;
            };
            if let wal::Record::Series { id, labels } = &rec {
                self.labels.insert(*id, labels.clone());
            }
            let n = match off == self.pos.offset {
                true => self.pos.skip as usize,
                false => usize::MAX,
            };
            for (id, t, _) in samples_of(&rec).into_iter().take(n) {
                let e = self.newest.entry(id).or_insert(t);
                *e = (*e).max(t);
            }
            off += len;
        }
        Ok(())
    }
}

impl Store {
    fn wal_dir(&self) -> PathBuf {
        self.dir.join(WAL_DIR)
    }

    /// Opens the named WAL reader at its committed position (or the oldest
    /// segment if it has none) and holds its segments from now on.
    pub fn wal_cursor(&self, name: &str) -> io::Result<WalCursor> {
        let key = file_name(name);
        let dir = self.wal_dir();
        let mut w = lock(&self.writer);
        let pos = match w.wal_holds.get(&key) {
            Some(p) => *p,
            None => {
                let first = wal::segments(&dir)?.first().copied().unwrap_or(0);
                let p = WalPosition {
                    segment: first,
                    offset: 0,
                    skip: 0,
                };
                // Saved at once: a reader that never delivers still holds the
                // WAL across a restart.
                if !self.read_only {
                    persist(&readers_dir(&dir), &key, p)?;
                }
                w.wal_holds.insert(key.clone(), p);
                p
            }
        };
        drop(w);
        let mut c = WalCursor {
            name: key,
            dir,
            pos,
            labels: HashMap::new(),
            newest: HashMap::new(),
        };
        c.rebuild()?;
        Ok(c)
    }

    /// Records that `cursor` delivered everything before `pos`: persisted, so
    /// a restart resumes there, and older segments may go at the next
    /// checkpoint.
    pub fn commit_wal_cursor(&self, cursor: &WalCursor, pos: WalPosition) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        persist(&readers_dir(&self.wal_dir()), &cursor.name, pos)?;
        lock(&self.writer).wal_holds.insert(cursor.name.clone(), pos);
        Ok(())
    }

    /// Forgets the positions of readers not named (an endpoint removed from
    /// the config must not hold the WAL forever).
    pub fn retain_wal_cursors(&self, names: &[String]) {
        let keep: Vec<String> = names.iter().map(|n| file_name(n)).collect();
        let dir = readers_dir(&self.wal_dir());
        let mut w = lock(&self.writer);
        let gone: Vec<String> = w.wal_holds.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for k in gone {
            w.wal_holds.remove(&k);
            if !self.read_only {
                let _ = fs::remove_file(dir.join(&k));
            }
        }
    }

    /// The oldest segment a checkpoint keeps: the oldest held one, unless
    /// the held segments exceed `wal_reader_max_size` (then the oldest go).
    pub(super) fn wal_keep_from(&self, holds: &BTreeMap<String, WalPosition>, next: u64) -> u64 {
        let dir = self.wal_dir();
        // A reader at the end of a segment the writer has left needs it no more.
        let needed = |p: &WalPosition| {
            let len = fs::metadata(wal::segment_path(&dir, p.segment)).map_or(0, |m| m.len());
            match p.skip == 0 && p.offset >= len {
                true => p.segment + 1,
                false => p.segment,
            }
        };
        let Some(oldest) = holds.values().map(needed).min() else {
            return next;
        };
        let cap = self.cfg.wal_reader_max_size.0;
        let Ok(segs) = wal::segments(&dir) else {
            return oldest;
        };
        let held: Vec<(u64, u64)> = segs
            .iter()
            .filter(|&&n| n >= oldest && n < next)
            .map(|&n| (n, fs::metadata(wal::segment_path(&dir, n)).map_or(0, |m| m.len())))
            .collect();
        let mut total: u64 = held.iter().map(|h| h.1).sum();
        let mut keep = oldest;
        for (n, size) in held {
            if cap == 0 || total <= cap {
                break;
            }
            total -= size;
            keep = n + 1;
            self.stats.wal_reader_segments_dropped.fetch_add(1, Relaxed);
        }
        if keep > oldest {
            tracing::warn!(
                keep_from = keep,
                "store: WAL kept for remote_write exceeds storage.wal_reader_max_size; oldest unsent segments deleted"
            );
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_roundtrip_and_names_are_safe() {
        let p = WalPosition {
            segment: 12,
            offset: 3456,
            skip: 7,
        };
        assert_eq!(WalPosition::parse(&p.encode()), Some(p));
        assert_eq!(WalPosition::parse("1 2"), None);
        assert_eq!(WalPosition::parse("1 2 3 4"), None);
        assert_eq!(file_name("prod-mimir"), "prod-mimir");
        let h = file_name("../etc/passwd");
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
