//! Chunk codec: one series' samples (strictly increasing ms timestamps, f64
//! values) compressed into a self-checking byte string.
//!
//! Layout: `ver u8 | mode u8 | count uvarint | first_t zz-varint | last_t zz-varint
//! | scale u8 | bias zz-varint | range-coded payload | crc32(all before) u32le`.
//!
//! Timestamps: delta-of-delta residuals, range coded (regular 1 s ticks cost
//! ~0.02 bit each instead of Gorilla's 1 bit).
//! Values, the better of:
//! - `INT_*`: when (almost) all values are decimals with <= 9 fraction digits
//!   (counters, byte counts, CPU seconds in 0.01 steps), they are scaled to
//!   integers and coded as residuals of a delta-with-bias (counters with
//!   independent increments) or delta-of-delta predictor, whichever is
//!   smaller on this chunk. Values that are not exact decimals (NaN, stale
//!   markers, ±Inf, -0.0) are escaped and stored raw, so nothing is lost.
//! - `XOR`: Gorilla's XOR with the previous value, with leading-zero count and
//!   significant width range coded instead of sent in fixed fields.
use super::rc::{Decoder, Encoder, IntModel, Tree6, new_prob};

const VERSION: u8 = 1;
const MODE_XOR: u8 = 0;
const MODE_INT_DELTA: u8 = 1;
const MODE_INT_DOD: u8 = 2;
/// Guards allocations when a corrupted header claims a huge count.
pub const MAX_SAMPLES: u64 = 1 << 22;
const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const SCALES: [u8; 7] = [0, 1, 2, 3, 4, 6, 9];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt chunk: {0}")]
pub struct ChunkError(pub String);

fn corrupt(s: &str) -> ChunkError {
    ChunkError(s.to_string())
}

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_uvarint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, super::rc::zigzag(v));
}

fn get_ivarint(data: &[u8], pos: &mut usize) -> Option<i64> {
    get_uvarint(data, pos).map(super::rc::unzigzag)
}

/// The integer a value scales to at 10^k, if decoding gives back the same bits.
fn scaled(v: f64, k: u8) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let p = POW10[k as usize];
    let x = (v * p).round();
    if x.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let x = x as i64;
    ((x as f64 / p).to_bits() == v.to_bits()).then_some(x)
}

fn unscale(x: i64, k: u8) -> f64 {
    x as f64 / POW10[k as usize]
}

/// Encodes samples (any i64 timestamps round-trip, though the store only
/// passes strictly increasing ones).
pub fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
    let n = samples.len();
    // Pick the smallest scale where at most 1/8 of the values need escaping.
    let mut scale = None;
    for k in SCALES {
        let misses = samples.iter().filter(|s| scaled(s.1, k).is_none()).count();
        if n > 0 && misses * 8 <= n {
            scale = Some(k);
            break;
        }
    }
    let (mode, k, bias) = match scale {
        None => (MODE_XOR, 0u8, 0i64),
        Some(k) => {
            let ints: Vec<i64> = samples.iter().filter_map(|s| scaled(s.1, k)).collect();
            let deltas: Vec<i64> = ints.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
            let bias = if deltas.is_empty() {
                0
            } else {
                let sum: i128 = deltas.iter().map(|&d| d as i128).sum();
                (sum / deltas.len() as i128) as i64
            };
            let cost = |r: i64| 64 - super::rc::zigzag(r).leading_zeros();
            let c_delta: u64 = deltas.iter().map(|&d| cost(d.wrapping_sub(bias)) as u64).sum();
            let c_dod: u64 = deltas.windows(2).map(|w| cost(w[1].wrapping_sub(w[0])) as u64).sum::<u64>()
                + deltas.first().map_or(0, |&d| cost(d) as u64);
            if c_dod < c_delta { (MODE_INT_DOD, k, 0) } else { (MODE_INT_DELTA, k, bias) }
        }
    };

    let mut out = Vec::with_capacity(32 + n);
    out.push(VERSION);
    out.push(mode);
    put_uvarint(&mut out, n as u64);
    put_ivarint(&mut out, samples.first().map_or(0, |s| s.0));
    put_ivarint(&mut out, samples.last().map_or(0, |s| s.0));
    out.push(k);
    put_ivarint(&mut out, bias);

    let mut e = Encoder::new(out);
    let mut tm = IntModel::default();
    let mut vm = IntModel::default();
    let (mut lz_tree, mut sig_tree) = (Tree6::default(), Tree6::default());
    let mut xor_zero = [new_prob(); 2];
    let mut xor_prev_zero = 0usize;
    let mut exc = [new_prob(); 2];
    let mut prev_exc = 0usize;
    let (mut prev_t, mut prev_d) = (0i64, 0i64);
    let (mut prev_x, mut prev_dx) = (0i64, 0i64);
    let mut prev_bits = 0u64;
    for (i, &(t, v)) in samples.iter().enumerate() {
        if i > 0 {
            let d = t.wrapping_sub(prev_t);
            tm.enc(&mut e, d.wrapping_sub(prev_d));
            prev_d = d;
        }
        prev_t = t;
        match mode {
            MODE_XOR => {
                let x = v.to_bits() ^ prev_bits;
                prev_bits = v.to_bits();
                e.bit(&mut xor_zero[xor_prev_zero], x != 0);
                xor_prev_zero = (x != 0) as usize;
                if x != 0 {
                    let lz = x.leading_zeros();
                    let tz = x.trailing_zeros();
                    let sig = 64 - lz - tz;
                    lz_tree.enc(&mut e, lz);
                    sig_tree.enc(&mut e, sig - 1);
                    if sig >= 2 {
                        e.direct((x >> (tz + 1)) & ((1u64 << (sig - 2)) - 1), sig - 2);
                    }
                }
            }
            _ => {
                let s = scaled(v, k);
                e.bit(&mut exc[prev_exc], s.is_none());
                prev_exc = s.is_none() as usize;
                match s {
                    None => e.direct(v.to_bits(), 64),
                    Some(x) => {
                        let dx = x.wrapping_sub(prev_x);
                        let r = if mode == MODE_INT_DELTA { dx.wrapping_sub(bias) } else { dx.wrapping_sub(prev_dx) };
                        vm.enc(&mut e, r);
                        prev_x = x;
                        prev_dx = dx;
                    }
                }
            }
        }
    }
    let mut out = e.finish();
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Header fields readable without decoding: (count, first t, last t).
pub fn header(data: &[u8]) -> Result<(u64, i64, i64), ChunkError> {
    if data.len() < 6 || data[0] != VERSION {
        return Err(corrupt("bad version or short chunk"));
    }
    let mut pos = 2;
    let n = get_uvarint(data, &mut pos).ok_or_else(|| corrupt("bad count"))?;
    let mint = get_ivarint(data, &mut pos).ok_or_else(|| corrupt("bad mint"))?;
    let maxt = get_ivarint(data, &mut pos).ok_or_else(|| corrupt("bad maxt"))?;
    Ok((n, mint, maxt))
}

pub fn decode(data: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let mut out = Vec::new();
    decode_into(data, &mut out)?;
    Ok(out)
}

/// Appends the decoded samples to `out`. Checks the CRC first, so a bit flip
/// anywhere is reported instead of decoding garbage.
pub fn decode_into(data: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
    if data.len() < 10 {
        return Err(corrupt("short chunk"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(corrupt("checksum mismatch"));
    }
    if body[0] != VERSION {
        return Err(corrupt("unknown version"));
    }
    let mode = body[1];
    if mode > MODE_INT_DOD {
        return Err(corrupt("unknown value mode"));
    }
    let mut pos = 2;
    let n = get_uvarint(body, &mut pos).ok_or_else(|| corrupt("bad count"))?;
    if n > MAX_SAMPLES {
        return Err(corrupt("sample count too large"));
    }
    let first_t = get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad mint"))?;
    let last_t = get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad maxt"))?;
    let k = *body.get(pos).ok_or_else(|| corrupt("bad scale"))?;
    pos += 1;
    if k as usize >= POW10.len() {
        return Err(corrupt("bad scale"));
    }
    let bias = get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad bias"))?;
    let mut d = Decoder::new(&body[pos..]);
    let mut tm = IntModel::default();
    let mut vm = IntModel::default();
    let (mut lz_tree, mut sig_tree) = (Tree6::default(), Tree6::default());
    let mut xor_zero = [new_prob(); 2];
    let mut xor_prev_zero = 0usize;
    let mut exc = [new_prob(); 2];
    let mut prev_exc = 0usize;
    let (mut t, mut prev_d) = (first_t, 0i64);
    let (mut prev_x, mut prev_dx) = (0i64, 0i64);
    let mut prev_bits = 0u64;
    out.reserve(n as usize);
    for i in 0..n {
        if i > 0 {
            let dd = tm.dec(&mut d);
            prev_d = prev_d.wrapping_add(dd);
            t = t.wrapping_add(prev_d);
        }
        let v = match mode {
            MODE_XOR => {
                if d.bit(&mut xor_zero[xor_prev_zero]) {
                    xor_prev_zero = 1;
                    let lz = lz_tree.dec(&mut d);
                    let sig = sig_tree.dec(&mut d) + 1;
                    if lz + sig > 64 {
                        return Err(corrupt("bad xor width"));
                    }
                    let tz = 64 - lz - sig;
                    let x = if sig >= 2 {
                        ((1u64 << (sig - 1)) | (d.direct(sig - 2) << 1) | 1) << tz
                    } else {
                        1u64 << tz
                    };
                    prev_bits ^= x;
                } else {
                    xor_prev_zero = 0;
                }
                f64::from_bits(prev_bits)
            }
            _ => {
                let is_exc = d.bit(&mut exc[prev_exc]);
                prev_exc = is_exc as usize;
                if is_exc {
                    f64::from_bits(d.direct(64))
                } else {
                    let r = vm.dec(&mut d);
                    let dx = if mode == MODE_INT_DELTA { r.wrapping_add(bias) } else { r.wrapping_add(prev_dx) };
                    let x = prev_x.wrapping_add(dx);
                    prev_x = x;
                    prev_dx = dx;
                    unscale(x, k)
                }
            }
        };
        if d.overrun {
            return Err(corrupt("payload truncated"));
        }
        out.push((t, v));
    }
    if n > 0 && t != last_t {
        return Err(corrupt("last timestamp mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::stale_marker;
    use proptest::prelude::*;

    fn same(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    fn special() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(stale_marker()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(5e-324),
            any::<f64>(),
            (-1_000_000i64..1_000_000).prop_map(|x| x as f64),
            (-1_000_000i64..1_000_000).prop_map(|x| x as f64 / 100.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn roundtrip_arbitrary(ts in prop::collection::vec(any::<i64>(), 0..300),
                               vs in prop::collection::vec(special(), 300)) {
            let s: Vec<(i64, f64)> = ts.iter().zip(&vs).map(|(&t, &v)| (t, v)).collect();
            let enc = encode(&s);
            let dec = decode(&enc).unwrap();
            prop_assert!(same(&s, &dec), "{s:?} != {dec:?}");
        }

        #[test]
        fn roundtrip_counters_with_resets(start in -10_000_000_000_000i64..10_000_000_000_000,
                                          steps in prop::collection::vec((1i64..5000, 0u64..2000, 0u8..40), 1..2000)) {
            // Irregular intervals, noisy increments, occasional resets and stale markers.
            let (mut t, mut c) = (start, 0u64);
            let mut s = Vec::new();
            for (dt, inc, ev) in steps {
                t += dt;
                c = if ev == 0 { 0 } else { c + inc };
                let v = if ev == 1 { stale_marker() } else if ev == 2 { f64::NAN } else { c as f64 };
                s.push((t, v));
            }
            let dec = decode(&encode(&s)).unwrap();
            prop_assert!(same(&s, &dec));
        }

        #[test]
        fn roundtrip_huge_and_negative_deltas(ts in prop::collection::vec(prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>(), -3i64..3], 1..100),
                                              vs in prop::collection::vec(any::<f64>(), 100)) {
            let s: Vec<(i64, f64)> = ts.iter().zip(&vs).map(|(&t, &v)| (t, v)).collect();
            prop_assert!(same(&s, &decode(&encode(&s)).unwrap()));
        }

        #[test]
        fn corruption_is_reported_not_panicking(s in prop::collection::vec((0i64..1000, -100.0f64..100.0), 1..200),
                                                flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let s: Vec<(i64, f64)> = s.iter().enumerate().map(|(i, &(t, v))| (i as i64 * 1000 + t, v)).collect();
            let mut enc = encode(&s);
            let i = flip.index(enc.len());
            enc[i] ^= 1 << bit;
            prop_assert!(decode(&enc).is_err());
            // Truncation too.
            prop_assert!(decode(&enc[..i]).is_err());
        }
    }

    #[test]
    fn regular_counter_is_dense() {
        let mut c = 0.0;
        let s: Vec<(i64, f64)> = (0..7200)
            .map(|i| {
                c += 100.0 + ((i * 7919) % 13) as f64;
                (1_700_000_000_000 + i * 1000, c)
            })
            .collect();
        let enc = encode(&s);
        assert!(enc.len() < 7200, "{} bytes", enc.len());
        let flat: Vec<(i64, f64)> = (0..7200).map(|i| (i * 1000, 3.0)).collect();
        assert!(encode(&flat).len() < 100, "{}", encode(&flat).len());
        assert!(same(&decode(&encode(&flat)).unwrap(), &flat));
    }
}
