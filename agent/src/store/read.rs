//! The read path (`SeriesReader`): series matching via the inverted index,
//! then head and persisted chunks per series, decoded on up to a few threads
//! for big selects. Every decoded chunk is charged to the query's
//! `ReadBudget` (samples and deadline) before the next is read. Listing
//! series and labels reads only the index and chunk time ranges. Corrupt
//! chunks are skipped, logged and counted, never fatal.
use super::head::MemSeries;
use super::{Store, chunk, disk, read};
use crate::series::{Labels, Matcher, MetricMeta, ReadBudget, ReadError, Selection, SeriesData, SeriesReader};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::warn;

/// Threads one select may decode with (at most; see `Store::select`).
const MAX_READ_THREADS: usize = 4;
/// Below this many series per thread, a thread costs more than it saves.
const SERIES_PER_READ_THREAD: usize = 8;

/// Samples read, and descriptions of the corrupt chunks skipped on the way.
type Decoded = (Vec<SeriesData>, Vec<String>);

fn read_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_READ_THREADS)
    })
}

impl Store {
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

    /// A reader of the persisted blocks (one redb read transaction), if any.
    fn disk_reader(&self) -> Result<Option<disk::Reader<'_>>, ReadError> {
        match self.reader_db() {
            Some(db) => disk::Reader::new(&*db, &self.dir).map(Some).map_err(ReadError::Io),
            None => Ok(None),
        }
    }

    /// Whether a series has a chunk (head or persisted) overlapping
    /// [mint, maxt], like Prometheus's series API: from chunk time ranges,
    /// without decoding. The persisted range's ends are chunk bounds, so the
    /// index is only consulted when the query range lies strictly inside it.
    fn has_chunk_in(s: &MemSeries, mint: i64, maxt: i64, disk: Option<&disk::Reader>) -> Result<bool, ReadError> {
        let overlaps = |a: i64, b: i64| b >= mint && a <= maxt;
        let persisted = {
            let d = s.lock();
            let open = match (d.open.first(), d.open.last()) {
                (Some(f), Some(l)) => overlaps(f.0, l.0),
                _ => false,
            };
            if open || d.sealed.iter().any(|c| overlaps(c.mint, c.maxt)) {
                return Ok(true);
            }
            d.disk
        };
        match persisted {
            Some((a, b)) if overlaps(a, b) => {
                let inside = |t: i64| (mint..=maxt).contains(&t);
                if inside(a) || inside(b) {
                    return Ok(true);
                }
                match disk {
                    Some(r) => r.has_chunk(s.id, mint, maxt).map_err(ReadError::Io),
                    None => Ok(false),
                }
            }
            _ => Ok(false),
        }
    }

    /// Samples of `series` in [mint, maxt] (head and disk), plus the
    /// descriptions of corrupt chunks skipped on the way.
    fn read_series(
        &self,
        series: &[Arc<MemSeries>],
        mint: i64,
        maxt: i64,
        budget: &ReadBudget,
    ) -> Result<Decoded, ReadError> {
        let mut reader = self.disk_reader()?;
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for s in series {
            budget.check_deadline()?;
            // Head first, then disk: a persist running meanwhile moves data
            // head → disk, never the other way, so nothing is missed.
            let snap = s.snapshot(mint, maxt);
            let mut samples = Vec::new();
            if let (Some((a, b)), Some(reader)) = (snap.disk, reader.as_mut())
                && b >= mint
                && a <= maxt
            {
                let charge = |n| {
                    self.stats.chunks_decoded.fetch_add(1, Relaxed);
                    budget.charge_and_check(n)
                };
                reader
                    .read(s.id, mint, maxt, &mut samples, &mut corrupt, charge)
                    .map_err(ReadError::Io)??;
            }
            for c in &snap.sealed {
                let start = samples.len();
                if let Err(e) = chunk::decode_range_into(&c.bytes, mint, maxt, &mut samples) {
                    samples.truncate(start);
                    corrupt.push(format!("head chunk of {}: {e}", s.labels));
                }
                self.stats.chunks_decoded.fetch_add(1, Relaxed);
                budget.charge_and_check(samples.len() - start)?;
            }
            budget.charge(snap.open.len())?;
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
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
        let Selection {
            matchers,
            mint,
            maxt,
            budget,
        } = *sel;
        let series = self.matching(matchers);
        // Decoding is the cost of a big select (the range coder trades CPU for
        // 3x fewer bytes than Gorilla), so many series are decoded by up to
        // read_threads() threads, each over a contiguous slice (the answer
        // keeps the index's order). Small selects stay on the caller's thread,
        // and so does a slice whose thread the OS refuses to start.
        let threads = read_threads().min(series.len() / SERIES_PER_READ_THREAD).max(1);
        let parts: Vec<Result<Decoded, ReadError>> = if threads == 1 {
            vec![self.read_series(&series, mint, maxt, budget)]
        } else {
            let per = series.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let mut slices = series.chunks(per);
                let first = slices.next().unwrap_or(&[]);
                let spawned: Vec<_> = slices
                    .map(|part| {
                        let job = move || self.read_series(part, mint, maxt, budget);
                        std::thread::Builder::new()
                            .name("store-read".into())
                            .spawn_scoped(scope, job)
                            .map_err(|_| part)
                    })
                    .collect();
                let mut parts = vec![self.read_series(first, mint, maxt, budget)];
                for h in spawned {
                    parts.push(match h {
                        Ok(h) => h
                            .join()
                            .unwrap_or_else(|_| Err(ReadError::Io("store read thread panicked".into()))),
                        Err(part) => self.read_series(part, mint, maxt, budget),
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

    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError> {
        let disk = self.disk_reader()?;
        let mut out = Vec::new();
        for (i, s) in self.matching(sel.matchers).into_iter().enumerate() {
            if i % 256 == 0 {
                sel.budget.check_deadline()?;
            }
            if Self::has_chunk_in(&s, sel.mint, sel.maxt, disk.as_ref())? {
                out.push(s.labels.clone());
            }
        }
        Ok(out)
    }

    fn metadata(&self, metric: Option<&str>) -> Vec<(String, MetricMeta)> {
        let m = read(&self.meta);
        match metric {
            Some(n) => m.get(n).map(|v| vec![(n.to_string(), v.clone())]).unwrap_or_default(),
            None => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}
