//! Write-ahead log: numbered segment files of CRC-framed records.
//!
//! Frame: `len u32le | crc32(payload) u32le | payload`. A checkpoint starts a
//! new segment holding the whole head (series, metadata, unpersisted samples),
//! fsyncs it, then deletes older segments, so the WAL never grows past about
//! one block of data plus one checkpoint. Replay is idempotent: samples at or
//! before a series' newest known timestamp are skipped.
use super::chunk::{get_uvarint, put_uvarint};
use super::rc::{unzigzag, zigzag};
use crate::series::{Labels, MetricKind, MetricMeta};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const REC_SERIES: u8 = 1;
const REC_SAMPLES: u8 = 2;
const REC_SAMPLES_AT: u8 = 3;
const REC_META: u8 = 4;
/// Larger frames can only come from corruption; refusing them bounds memory.
pub(super) const MAX_RECORD: u32 = 64 << 20;

#[derive(Debug, PartialEq)]
pub enum Record {
    Series {
        id: u32,
        labels: Labels,
    },
    /// Individually timestamped samples: (series id, t, v).
    Samples(Vec<(u32, i64, f64)>),
    /// One ingest tick: all samples share `t`.
    SamplesAt {
        t: i64,
        samples: Vec<(u32, f64)>,
    },
    Meta {
        name: String,
        meta: MetricMeta,
    },
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_uvarint(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn get_str(d: &[u8], p: &mut usize) -> Option<String> {
    let n = get_uvarint(d, p)? as usize;
    let end = p.checked_add(n)?;
    let s = std::str::from_utf8(d.get(*p..end)?).ok()?.to_string();
    *p = end;
    Some(s)
}

fn get_f64(d: &[u8], p: &mut usize) -> Option<f64> {
    let b: [u8; 8] = d.get(*p..*p + 8)?.try_into().ok()?;
    *p += 8;
    Some(f64::from_bits(u64::from_le_bytes(b)))
}

fn kind_code(k: MetricKind) -> u8 {
    match k {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
        MetricKind::Summary => 3,
        MetricKind::Unknown => 4,
    }
}

fn code_kind(c: u8) -> MetricKind {
    match c {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        3 => MetricKind::Summary,
        _ => MetricKind::Unknown,
    }
}

/// Appends one framed record to `buf`.
pub fn encode(buf: &mut Vec<u8>, rec: &Record) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    match rec {
        Record::Series { id, labels } => {
            buf.push(REC_SERIES);
            put_uvarint(buf, *id as u64);
            put_uvarint(buf, labels.0.len() as u64);
            for (k, v) in &labels.0 {
                put_str(buf, k);
                put_str(buf, v);
            }
        }
        Record::Samples(s) => {
            buf.push(REC_SAMPLES);
            put_uvarint(buf, s.len() as u64);
            for (id, t, v) in s {
                put_uvarint(buf, *id as u64);
                put_uvarint(buf, zigzag(*t));
                buf.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        Record::SamplesAt { t, samples } => {
            buf.push(REC_SAMPLES_AT);
            put_uvarint(buf, zigzag(*t));
            put_uvarint(buf, samples.len() as u64);
            for (id, v) in samples {
                put_uvarint(buf, *id as u64);
                buf.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        Record::Meta { name, meta } => {
            buf.push(REC_META);
            put_str(buf, name);
            buf.push(kind_code(meta.kind));
            put_str(buf, &meta.help);
            put_str(buf, &meta.unit);
        }
    }
    finish_frame(buf, start);
}

/// Writes one sample as a record without building a `Record` (hot path).
pub fn encode_sample(buf: &mut Vec<u8>, id: u32, t: i64, v: f64) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.push(REC_SAMPLES);
    buf.push(1);
    put_uvarint(buf, id as u64);
    put_uvarint(buf, zigzag(t));
    buf.extend_from_slice(&v.to_bits().to_le_bytes());
    finish_frame(buf, start);
}

fn finish_frame(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - 8) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn decode_payload(d: &[u8]) -> Option<Record> {
    let mut p = 1;
    let rec = match *d.first()? {
        REC_SERIES => {
            let id = u32::try_from(get_uvarint(d, &mut p)?).ok()?;
            let n = get_uvarint(d, &mut p)? as usize;
            let mut pairs = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                pairs.push((get_str(d, &mut p)?, get_str(d, &mut p)?));
            }
            Record::Series {
                id,
                labels: Labels::new(pairs),
            }
        }
        REC_SAMPLES => {
            let n = get_uvarint(d, &mut p)? as usize;
            let mut s = Vec::with_capacity(n.min(d.len()));
            for _ in 0..n {
                let id = u32::try_from(get_uvarint(d, &mut p)?).ok()?;
                let t = unzigzag(get_uvarint(d, &mut p)?);
                s.push((id, t, get_f64(d, &mut p)?));
            }
            Record::Samples(s)
        }
        REC_SAMPLES_AT => {
            let t = unzigzag(get_uvarint(d, &mut p)?);
            let n = get_uvarint(d, &mut p)? as usize;
            let mut s = Vec::with_capacity(n.min(d.len()));
            for _ in 0..n {
                let id = u32::try_from(get_uvarint(d, &mut p)?).ok()?;
                s.push((id, get_f64(d, &mut p)?));
            }
            Record::SamplesAt { t, samples: s }
        }
        REC_META => {
            let name = get_str(d, &mut p)?;
            let kind = code_kind(*d.get(p)?);
            p += 1;
            let help = get_str(d, &mut p)?;
            let unit = get_str(d, &mut p)?;
            Record::Meta {
                name,
                meta: MetricMeta { kind, help, unit },
            }
        }
        _ => return None,
    };
    (p == d.len()).then_some(rec)
}

/// Parses records from a segment's bytes; returns them and the offset of the
/// first bad or incomplete frame, if any.
pub fn parse(data: &[u8]) -> (Vec<Record>, Option<usize>) {
    let mut out = Vec::new();
    let mut p = 0;
    while p < data.len() {
        let Some(hdr) = data.get(p..p + 8) else {
            return (out, Some(p));
        };
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        if len > MAX_RECORD {
            return (out, Some(p));
        }
        let Some(payload) = data.get(p + 8..p + 8 + len as usize) else {
            return (out, Some(p));
        };
        if crc32fast::hash(payload) != crc {
            return (out, Some(p));
        }
        match decode_payload(payload) {
            Some(r) => out.push(r),
            None => return (out, Some(p)),
        }
        p += 8 + len as usize;
    }
    (out, None)
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}"))
}

/// Segment numbers present in `dir`, ascending.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records: Vec<Record>,
    /// Torn tail of the last segment, truncated: (segment, offset, bytes dropped).
    pub torn: Option<(u64, usize, usize)>,
    /// Corrupt frames in older segments (rest of that segment skipped).
    pub corrupt: Vec<(u64, usize)>,
    pub last_segment: u64,
}

/// Reads every segment in order; `repair` truncates a torn tail of the last
/// one (a read-only store only reports it).
pub fn replay(dir: &Path, repair: bool) -> io::Result<ReplayReport> {
    let segs = segments(dir)?;
    let mut rep = ReplayReport::default();
    for (i, &n) in segs.iter().enumerate() {
        let path = segment_path(dir, n);
        let data = fs::read(&path)?;
        let (recs, bad) = parse(&data);
        rep.records.extend(recs);
        rep.last_segment = n;
        if let Some(off) = bad {
            if i + 1 == segs.len() {
                if repair {
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(off as u64)?;
                    f.sync_all()?;
                }
                rep.torn = Some((n, off, data.len() - off));
            } else {
                rep.corrupt.push((n, off));
            }
        }
    }
    Ok(rep)
}

/// The open segment. Records are buffered in memory and written with one
/// `write(2)` per flush, so a failed write never leaves a half-buffered frame
/// behind in a userspace buffer.
pub struct WalWriter {
    dir: PathBuf,
    seg: u64,
    file: Option<File>,
    pub buf: Vec<u8>,
}

impl WalWriter {
    /// A writer with no file (the WAL could not be opened: disk full or
    /// read-only). Every flush fails until a checkpoint succeeds.
    pub fn detached(dir: &Path, seg: u64) -> Self {
        WalWriter {
            dir: dir.to_path_buf(),
            seg,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Writes the buffer to the kernel; fsyncs too when `sync`. On error the
    /// buffered records are dropped (the caller is in the degraded state and
    /// will checkpoint the whole head when writing works again).
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        let res = match self.file.as_mut() {
            None => Err(io::Error::other("WAL segment not open")),
            Some(f) => f
                .write_all(&self.buf)
                .and_then(|()| if sync { f.sync_data() } else { Ok(()) }),
        };
        self.buf.clear();
        res
    }

    /// Starts segment `seg + 1` holding `content` (the whole head), fsyncs it,
    /// then removes older segments, except those from `keep_from` on (WAL
    /// readers such as remote_write have not read them yet).
    pub fn checkpoint(&mut self, content: &[u8], keep_from: u64) -> io::Result<()> {
        let next = self.seg + 1;
        let path = segment_path(&self.dir, next);
        let res = (|| {
            let mut f = crate::private_files::open_options()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?;
            f.write_all(content)?;
            f.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
            Ok::<_, io::Error>(f)
        })();
        let f = match res {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        for n in segments(&self.dir)? {
            if n < next.min(keep_from) {
                fs::remove_file(segment_path(&self.dir, n))?;
            }
        }
        self.file = Some(f);
        self.seg = next;
        self.buf.clear();
        Ok(())
    }

    /// The segment being written.
    pub fn segment(&self) -> u64 {
        self.seg
    }

    pub fn sync(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.sync_data(),
            None => Err(io::Error::other("WAL segment not open")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_torn_tail_is_detected() {
        let recs = vec![
            Record::Series {
                id: 7,
                labels: Labels::new([("__name__".into(), "m".into()), ("a".into(), "b".into())]),
            },
            Record::SamplesAt {
                t: 1000,
                samples: vec![(7, 1.5), (8, f64::INFINITY)],
            },
            Record::Samples(vec![(7, -5, 2.0)]),
            Record::Meta {
                name: "m".into(),
                meta: MetricMeta {
                    kind: MetricKind::Counter,
                    help: "h".into(),
                    unit: "".into(),
                },
            },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            encode(&mut buf, r);
        }
        encode_sample(&mut buf, 9, 3, 4.0);
        let (got, bad) = parse(&buf);
        assert_eq!(bad, None);
        assert_eq!(&got[..4], &recs[..]);
        assert_eq!(got[4], Record::Samples(vec![(9, 3, 4.0)]));
        for cut in 0..buf.len() {
            let (got, bad) = parse(&buf[..cut]);
            assert!(got.len() <= 5);
            if bad.is_none() {
                // Only a cut exactly on a frame boundary parses cleanly.
                assert!(got.len() < 5);
            }
        }
        let mut flipped = buf.clone();
        flipped[20] ^= 0x40;
        assert!(parse(&flipped).1.is_some());
    }
}
