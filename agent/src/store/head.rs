//! In-memory head of one series: the open chunk as raw samples (appends are a
//! push, no bit fiddling on the hot path) and sealed chunks, compressed and
//! immutable, shared with readers by `Arc` so a query copies pointers, not data.
use super::chunk;
use crate::series::{AppendError, Labels};
use std::sync::{Arc, Mutex, MutexGuard};

/// Samples per head chunk: 4 min at 1 s. Small enough that the raw open
/// chunk costs <= 3.8 KiB per series, large enough to compress well.
pub const CHUNK_SAMPLES: usize = 240;

pub struct Sealed {
    pub mint: i64,
    pub maxt: i64,
    pub bytes: Vec<u8>,
}

#[derive(Default)]
pub struct HeadData {
    pub sealed: Vec<Arc<Sealed>>,
    pub open: Vec<(i64, f64)>,
    /// Newest accepted timestamp, persisted or not (orders appends).
    pub last_t: Option<i64>,
    /// Range covered by this series' persisted chunks.
    pub disk: Option<(i64, i64)>,
    /// Whether `series` table on disk knows this series.
    pub on_disk: bool,
}

pub struct MemSeries {
    pub id: u32,
    pub labels: Labels,
    data: Mutex<HeadData>,
}

/// A reader's copy of a series' head: sealed chunk pointers and the open
/// samples in range.
pub struct HeadSnapshot {
    pub sealed: Vec<Arc<Sealed>>,
    pub open: Vec<(i64, f64)>,
    pub disk: Option<(i64, i64)>,
}

impl MemSeries {
    pub fn new(id: u32, labels: Labels) -> Self {
        MemSeries {
            id,
            labels,
            data: Mutex::new(HeadData::default()),
        }
    }

    /// Poisoning only means another thread panicked mid-append; the data is
    /// still a valid (possibly one-sample-short) head, so keep going.
    pub fn lock(&self) -> MutexGuard<'_, HeadData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, t: i64, v: f64) -> Result<(), AppendError> {
        let mut d = self.lock();
        d.append(t, v)
    }

    pub fn snapshot(&self, mint: i64, maxt: i64) -> HeadSnapshot {
        let d = self.lock();
        HeadSnapshot {
            sealed: d
                .sealed
                .iter()
                .filter(|c| c.maxt >= mint && c.mint <= maxt)
                .cloned()
                .collect(),
            open: d.open.iter().filter(|s| s.0 >= mint && s.0 <= maxt).copied().collect(),
            disk: d.disk,
        }
    }
}

impl HeadData {
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), AppendError> {
        match self.last_t {
            Some(l) if t < l => return Err(AppendError::OutOfOrder),
            Some(l) if t == l => return Err(AppendError::Duplicate),
            _ => {}
        }
        self.last_t = Some(t);
        self.open.push((t, v));
        if self.open.len() >= CHUNK_SAMPLES {
            self.seal();
        }
        Ok(())
    }

    pub fn seal(&mut self) {
        if let (Some(f), Some(l)) = (self.open.first(), self.open.last()) {
            let (mint, maxt) = (f.0, l.0);
            let bytes = chunk::encode(&self.open);
            self.sealed.push(Arc::new(Sealed { mint, maxt, bytes }));
            self.open.clear();
        }
    }

    /// All head samples with t < `before`, decoded (head chunks were written
    /// by this process, so a decode error means a bug; it is reported).
    pub fn samples_before(&self, before: i64) -> Result<Vec<(i64, f64)>, chunk::ChunkError> {
        let mut out = Vec::new();
        for c in self.sealed.iter().filter(|c| c.mint < before) {
            chunk::decode_into(&c.bytes, &mut out)?;
        }
        out.extend(self.open.iter().copied());
        out.retain(|s| s.0 < before);
        Ok(out)
    }

    /// Drops head samples with t < `before` (after they were persisted).
    pub fn drop_before(&mut self, before: i64) -> Result<(), chunk::ChunkError> {
        let mut keep: Vec<Arc<Sealed>> = Vec::new();
        for c in self.sealed.drain(..) {
            if c.maxt < before {
                continue;
            }
            if c.mint >= before {
                keep.push(c);
                continue;
            }
            let rest: Vec<(i64, f64)> = chunk::decode(&c.bytes)?.into_iter().filter(|s| s.0 >= before).collect();
            if let (Some(f), Some(l)) = (rest.first(), rest.last()) {
                keep.push(Arc::new(Sealed {
                    mint: f.0,
                    maxt: l.0,
                    bytes: chunk::encode(&rest),
                }));
            }
        }
        self.sealed = keep;
        self.open.retain(|s| s.0 >= before);
        Ok(())
    }

    pub fn head_mint(&self) -> Option<i64> {
        self.sealed
            .first()
            .map(|c| c.mint)
            .or_else(|| self.open.first().map(|s| s.0))
    }

    pub fn head_bytes(&self) -> usize {
        self.sealed.iter().map(|c| c.bytes.len() + 48).sum::<usize>() + self.open.capacity() * 16
    }
}
