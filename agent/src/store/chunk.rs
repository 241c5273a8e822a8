//! Chunk codec: one series' samples (strictly increasing ms timestamps, f64
//! values) compressed into a self-checking byte string.
//!
//! Layout (format version 2): `ver u8 | mode u8 | count uvarint |
//! first_t zz-varint | last_t - first_t zz-varint | mode parameters |
//! range-coded payload | crc32(all before) u32le`.
//!
//! Mode parameters: `INT`: `scale u8 | predictor u8 | param zz-varint`;
//! `FLOAT`: `step f64le`; `XOR`: none.
//!
//! Timestamps: delta-of-delta residuals, range coded (a regular 1 s tick
//! costs ~0.003 bit).
//! Values, the cheapest of (chosen per chunk by a cost estimate from the
//! residuals' bit-length histogram, which tracks the range coder's output to
//! within ~1 %):
//! - `INT`: when (almost) all values are decimals with <= 9 fraction digits
//!   (counters, byte counts, CPU seconds in 0.01 steps), they are scaled to
//!   integers and coded as residuals of one predictor: previous + mean delta
//!   (counters with independent increments, random walks), previous + previous
//!   delta (steady rates), or a constant level (noisy gauges around a mean).
//!   Values that are not exact decimals (NaN, stale markers, ±Inf, -0.0) are
//!   escaped and stored raw, so nothing is lost.
//! - `FLOAT`: the value's bit pattern minus that of the prediction `previous +
//!   step` (step = the chunk's mean increment, or 0), i.e. the error in units
//!   in the last place. For full-precision float counters (a histogram `_sum`)
//!   this pays log2 of the noise in ulps, where XOR pays the whole changed
//!   mantissa tail plus its carries (~5 bits more per sample).
//! - `XOR`: Gorilla's XOR with the previous value, with leading-zero count and
//!   significant width range coded instead of sent in fixed fields.
//!
//! Format version 1 (LZMA-style 11-bit probabilities) was only ever written by
//! pre-release builds; it is rejected with an explicit error.
use super::rc::{Decoder, Encoder, IntModel, Prob, Tree6, new_prob, zigzag};

const VERSION: u8 = 2;
const MODE_XOR: u8 = 0;
const MODE_INT: u8 = 1;
const MODE_FLOAT: u8 = 2;
/// INT predictors.
const PRED_DELTA: u8 = 0;
const PRED_DOD: u8 = 1;
const PRED_LEVEL: u8 = 2;
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

fn check_version(v: u8) -> Result<(), ChunkError> {
    match v {
        VERSION => Ok(()),
        1 => Err(ChunkError(
            "chunk format version 1 (written by a pre-release build) is no longer readable".into(),
        )),
        v => Err(ChunkError(format!(
            "unknown chunk format version {v} (written by a newer ngxprobe?)"
        ))),
    }
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
    put_uvarint(out, zigzag(v));
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

/// FLOAT mode's prediction (bit pattern) for the value after `prev`. Only
/// finite sums are used: IEEE 754 addition of finite operands is exact-
/// rounded and the same everywhere, while NaN results have no portable bit
/// pattern. Anything else predicts `prev` itself.
#[inline]
fn float_pred(prev: f64, step: f64) -> u64 {
    if step != 0.0 && prev.is_finite() {
        let p = prev + step;
        if p.is_finite() {
            return p.to_bits();
        }
    }
    prev.to_bits()
}

/// Estimated bits for coding `zz` (zigzagged residuals) with `IntModel`:
/// entropy of the bit-length distribution plus the bits below the leading one.
/// Cheap (one histogram), and ranks predictors the way the coder would.
struct CostEst {
    hist: [u32; 65],
    raw: u64,
}

impl Default for CostEst {
    fn default() -> Self {
        CostEst { hist: [0; 65], raw: 0 }
    }
}

impl CostEst {
    #[inline]
    fn add(&mut self, zz: u64) {
        let n = 64 - zz.leading_zeros();
        self.hist[n as usize] += 1;
        self.raw += n.saturating_sub(1) as u64;
    }

    fn bits(&self) -> f64 {
        let total: u32 = self.hist.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let t = total as f64;
        let h: f64 = self
            .hist
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| c as f64 * (t / c as f64).log2())
            .sum();
        h + self.raw as f64
    }
}

/// Bit-length histogram entropy for XOR mode (zero flag, leading zeros,
/// width) plus its raw mantissa bits.
fn xor_cost(samples: &[(i64, f64)]) -> f64 {
    let (mut lz, mut sig) = ([0u32; 65], [0u32; 65]);
    let (mut raw, mut nz, mut prev) = (0u64, 0u32, 0u64);
    for s in samples {
        let x = s.1.to_bits() ^ prev;
        prev = s.1.to_bits();
        if x != 0 {
            nz += 1;
            let l = x.leading_zeros();
            let w = 64 - l - x.trailing_zeros();
            lz[l as usize] += 1;
            sig[w as usize] += 1;
            raw += w.saturating_sub(2) as u64;
        }
    }
    let ent = |h: &[u32]| -> f64 {
        let t: u32 = h.iter().sum();
        h.iter()
            .filter(|&&c| c > 0)
            .map(|&c| c as f64 * (t as f64 / c as f64).log2())
            .sum()
    };
    let n = samples.len() as u32;
    ent(&[nz, n - nz]) + ent(&lz) + ent(&sig) + raw as f64
}

/// How values are coded in one chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Xor,
    Int { k: u8, pred: u8, param: i64 },
    Float { step: f64 },
}

fn choose(samples: &[(i64, f64)]) -> Plan {
    let n = samples.len();
    if n == 0 {
        return Plan::Xor;
    }
    // Smallest scale where at most 1/8 of the values need escaping.
    let scale = SCALES.into_iter().find(|&k| {
        let mut misses = 0;
        for s in samples {
            if scaled(s.1, k).is_none() {
                misses += 1;
                if misses * 8 > n {
                    return false;
                }
            }
        }
        true
    });
    if let Some(k) = scale {
        let ints: Vec<i64> = samples.iter().filter_map(|s| scaled(s.1, k)).collect();
        let (mut sum_d, mut sum_x) = (0i128, 0i128);
        for w in ints.windows(2) {
            sum_d += w[1].wrapping_sub(w[0]) as i128;
        }
        for &x in &ints {
            sum_x += x as i128;
        }
        let bias = if ints.len() > 1 {
            (sum_d / (ints.len() - 1) as i128) as i64
        } else {
            0
        };
        let level = if ints.is_empty() {
            0
        } else {
            (sum_x / ints.len() as i128) as i64
        };
        let (mut c_delta, mut c_dod, mut c_level) = (CostEst::default(), CostEst::default(), CostEst::default());
        let (mut prev_x, mut prev_dx) = (0i64, 0i64);
        for &x in &ints {
            let dx = x.wrapping_sub(prev_x);
            c_delta.add(zigzag(dx.wrapping_sub(bias)));
            c_dod.add(zigzag(dx.wrapping_sub(prev_dx)));
            c_level.add(zigzag(x.wrapping_sub(level)));
            prev_x = x;
            prev_dx = dx;
        }
        let cands = [
            (c_delta.bits(), PRED_DELTA, bias),
            (c_dod.bits(), PRED_DOD, 0),
            (c_level.bits(), PRED_LEVEL, level),
        ];
        let best = cands.iter().fold(cands[0], |a, &b| if b.0 < a.0 { b } else { a });
        return Plan::Int {
            k,
            pred: best.1,
            param: best.2,
        };
    }
    // Floats: mean finite increment as the step.
    let (mut sum, mut cnt) = (0.0f64, 0u32);
    for w in samples.windows(2) {
        let d = w[1].1 - w[0].1;
        if d.is_finite() {
            sum += d;
            cnt += 1;
        }
    }
    let step = if cnt > 0 && (sum / cnt as f64).is_finite() {
        sum / cnt as f64
    } else {
        0.0
    };
    let float_cost = |step: f64| {
        let mut c = CostEst::default();
        let mut prev = 0.0f64;
        for s in samples {
            c.add(zigzag(
                (s.1.to_bits() as i64).wrapping_sub(float_pred(prev, step) as i64),
            ));
            prev = s.1;
        }
        c.bits()
    };
    let mut best = (xor_cost(samples), Plan::Xor);
    for st in [0.0, step] {
        let c = float_cost(st);
        if c < best.0 {
            best = (c, Plan::Float { step: st });
        }
        if step == 0.0 {
            break;
        }
    }
    best.1
}

/// Encodes samples (any i64 timestamps round-trip, though the store only
/// passes strictly increasing ones).
pub fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
    encode_with(samples, choose(samples))
}

fn encode_with(samples: &[(i64, f64)], plan: Plan) -> Vec<u8> {
    let n = samples.len();
    let first_t = samples.first().map_or(0, |s| s.0);
    let last_t = samples.last().map_or(0, |s| s.0);
    let mut out = Vec::with_capacity(32 + n);
    out.push(VERSION);
    out.push(match plan {
        Plan::Xor => MODE_XOR,
        Plan::Int { .. } => MODE_INT,
        Plan::Float { .. } => MODE_FLOAT,
    });
    put_uvarint(&mut out, n as u64);
    put_ivarint(&mut out, first_t);
    put_ivarint(&mut out, last_t.wrapping_sub(first_t));
    match plan {
        Plan::Xor => {}
        Plan::Int { k, pred, param } => {
            out.push(k);
            out.push(pred);
            put_ivarint(&mut out, param);
        }
        Plan::Float { step } => out.extend_from_slice(&step.to_bits().to_le_bytes()),
    }

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
    let mut prev_v = 0.0f64;
    for (i, &(t, v)) in samples.iter().enumerate() {
        if i > 0 {
            let d = t.wrapping_sub(prev_t);
            tm.enc(&mut e, d.wrapping_sub(prev_d));
            prev_d = d;
        }
        prev_t = t;
        match plan {
            Plan::Xor => {
                let x = v.to_bits() ^ prev_v.to_bits();
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
            Plan::Float { step } => {
                vm.enc(
                    &mut e,
                    (v.to_bits() as i64).wrapping_sub(float_pred(prev_v, step) as i64),
                );
            }
            Plan::Int { k, pred, param } => {
                let s = scaled(v, k);
                e.bit(&mut exc[prev_exc], s.is_none());
                prev_exc = s.is_none() as usize;
                match s {
                    None => e.direct(v.to_bits(), 64),
                    Some(x) => {
                        let dx = x.wrapping_sub(prev_x);
                        let r = match pred {
                            PRED_DELTA => dx.wrapping_sub(param),
                            PRED_DOD => dx.wrapping_sub(prev_dx),
                            _ => x.wrapping_sub(param),
                        };
                        vm.enc(&mut e, r);
                        prev_x = x;
                        prev_dx = dx;
                    }
                }
            }
        }
        prev_v = v;
    }
    let mut out = e.finish();
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Header fields readable without decoding: (count, first t, last t).
pub fn header(data: &[u8]) -> Result<(u64, i64, i64), ChunkError> {
    if data.len() < 6 {
        return Err(corrupt("short chunk"));
    }
    check_version(data[0])?;
    let mut pos = 2;
    let n = get_uvarint(data, &mut pos).ok_or_else(|| corrupt("bad count"))?;
    let mint = get_ivarint(data, &mut pos).ok_or_else(|| corrupt("bad mint"))?;
    let span = get_ivarint(data, &mut pos).ok_or_else(|| corrupt("bad maxt"))?;
    Ok((n, mint, mint.wrapping_add(span)))
}

pub fn decode(data: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let mut out = Vec::new();
    decode_into(data, &mut out)?;
    Ok(out)
}

/// Appends the decoded samples to `out`. Checks the CRC first, so a bit flip
/// anywhere is reported instead of decoding garbage; every header field is
/// validated too, so a chunk with a valid CRC but impossible contents (a bug,
/// or a chunk from a future version) is an error, never a panic.
pub fn decode_into(data: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
    decode_range_into(data, i64::MIN, i64::MAX, out)
}

/// Appends the samples with `mint <= t <= maxt`. The payload is sequential,
/// so samples before `mint` are decoded and dropped, but decoding stops at
/// the first sample after `maxt`: a query window ending mid-chunk (the usual
/// case for "the last hour") pays only for the part up to its end.
pub fn decode_range_into(data: &[u8], mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
    if data.len() < 6 {
        return Err(corrupt("short chunk"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(corrupt("checksum mismatch"));
    }
    check_version(body[0])?;
    let mode = body[1];
    let mut pos = 2;
    let n = get_uvarint(body, &mut pos).ok_or_else(|| corrupt("bad count"))?;
    if n > MAX_SAMPLES {
        return Err(corrupt("sample count too large"));
    }
    let first_t = get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad mint"))?;
    let last_t = first_t.wrapping_add(get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad maxt"))?);
    let plan = match mode {
        MODE_XOR => Plan::Xor,
        MODE_INT => {
            let k = *body.get(pos).ok_or_else(|| corrupt("bad scale"))?;
            let pred = *body.get(pos + 1).ok_or_else(|| corrupt("bad predictor"))?;
            pos += 2;
            if k as usize >= POW10.len() {
                return Err(corrupt("bad scale"));
            }
            if pred > PRED_LEVEL {
                return Err(corrupt("unknown predictor"));
            }
            let param = get_ivarint(body, &mut pos).ok_or_else(|| corrupt("bad predictor parameter"))?;
            Plan::Int { k, pred, param }
        }
        MODE_FLOAT => {
            let b: [u8; 8] = body
                .get(pos..pos + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("bad step"))?;
            pos += 8;
            let step = f64::from_le_bytes(b);
            if !step.is_finite() {
                return Err(corrupt("bad step"));
            }
            Plan::Float { step }
        }
        _ => return Err(corrupt("unknown value mode")),
    };
    let mut d = Decoder::new(body.get(pos..).ok_or_else(|| corrupt("short chunk"))?);
    let mut tm = IntModel::default();
    let mut vm = IntModel::default();
    let (mut lz_tree, mut sig_tree) = (Tree6::default(), Tree6::default());
    let mut xor_zero: [Prob; 2] = [new_prob(); 2];
    let mut xor_prev_zero = 0usize;
    let mut exc = [new_prob(); 2];
    let mut prev_exc = 0usize;
    let (mut t, mut prev_d) = (first_t, 0i64);
    let (mut prev_x, mut prev_dx) = (0i64, 0i64);
    let mut prev_v = 0.0f64;
    if first_t > maxt || last_t < mint {
        return Ok(());
    }
    out.reserve(n as usize);
    for i in 0..n {
        if i > 0 {
            let dd = tm.dec(&mut d);
            prev_d = prev_d.wrapping_add(dd);
            t = t.wrapping_add(prev_d);
        }
        let v = match plan {
            Plan::Xor => {
                let mut bits = prev_v.to_bits();
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
                    bits ^= x;
                } else {
                    xor_prev_zero = 0;
                }
                f64::from_bits(bits)
            }
            Plan::Float { step } => {
                let r = vm.dec(&mut d);
                f64::from_bits((float_pred(prev_v, step) as i64).wrapping_add(r) as u64)
            }
            Plan::Int { k, pred, param } => {
                let is_exc = d.bit(&mut exc[prev_exc]);
                prev_exc = is_exc as usize;
                if is_exc {
                    f64::from_bits(d.direct(64))
                } else {
                    let r = vm.dec(&mut d);
                    let x = match pred {
                        PRED_DELTA => prev_x.wrapping_add(r.wrapping_add(param)),
                        PRED_DOD => prev_x.wrapping_add(r.wrapping_add(prev_dx)),
                        _ => r.wrapping_add(param),
                    };
                    prev_dx = x.wrapping_sub(prev_x);
                    prev_x = x;
                    unscale(x, k)
                }
            }
        };
        if d.overrun {
            return Err(corrupt("payload truncated"));
        }
        prev_v = v;
        if t > maxt {
            // Timestamps strictly increase: nothing later is wanted.
            return Ok(());
        }
        if t >= mint {
            out.push((t, v));
        }
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
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
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

    /// Every value coding, forced regardless of what `choose` would pick.
    fn plan() -> impl Strategy<Value = Plan> {
        prop_oneof![
            Just(Plan::Xor),
            (0usize..SCALES.len(), 0u8..=PRED_LEVEL, any::<i64>()).prop_map(|(k, pred, param)| Plan::Int {
                k: SCALES[k],
                pred,
                param
            }),
            (0usize..SCALES.len(), 0u8..=PRED_LEVEL, -1000i64..1000).prop_map(|(k, pred, param)| Plan::Int {
                k: SCALES[k],
                pred,
                param
            }),
            prop_oneof![
                Just(0.0),
                Just(f64::MAX),
                Just(-f64::MAX),
                Just(5e-324),
                Just(-0.0),
                -1e6f64..1e6,
                any::<f64>().prop_filter("finite", |f| f.is_finite())
            ]
            .prop_map(|step| Plan::Float { step }),
        ]
    }

    /// Re-seals a hand-edited body with a valid CRC.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    fn float_sum(n: usize, seed: u64) -> Vec<(i64, f64)> {
        let (mut r, mut acc) = (seed | 1, 12345.678);
        (0..n)
            .map(|i| {
                for _ in 0..8 {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    acc += (r >> 11) as f64 / (1u64 << 53) as f64 * 1.8;
                }
                (1_700_000_000_000 + i as i64 * 1000, acc)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn roundtrip_every_plan(ts in prop::collection::vec(prop_oneof![any::<i64>(), 0i64..10_000_000], 0..200),
                                vs in prop::collection::vec(special(), 200), p in plan()) {
            let mut ts = ts;
            ts.sort_unstable();
            let s: Vec<(i64, f64)> = ts.iter().zip(&vs).map(|(&t, &v)| (t, v)).collect();
            let dec = decode(&encode_with(&s, p)).unwrap();
            prop_assert!(same(&s, &dec), "{p:?}: {s:?} != {dec:?}");
        }

        #[test]
        fn window_decode_is_the_filtered_full_decode(n in 0usize..400, gaps in prop::collection::vec(1i64..5000, 400),
                                                    vs in prop::collection::vec(special(), 400), p in plan(),
                                                    a in -1000i64..2_000_000, len in -10i64..2_000_000) {
            let mut t = 0;
            let s: Vec<(i64, f64)> = (0..n).map(|i| { t += gaps[i]; (t, vs[i]) }).collect();
            let data = encode_with(&s, p);
            let (mint, maxt) = (a, a + len);
            let mut got = vec![(0, 1.5)]; // appends, keeps what was there
            decode_range_into(&data, mint, maxt, &mut got).unwrap();
            let want: Vec<(i64, f64)> = [(0, 1.5)].into_iter().chain(s.iter().copied().filter(|x| x.0 >= mint && x.0 <= maxt)).collect();
            prop_assert!(same(&want, &got), "{p:?} [{mint}, {maxt}]: {want:?} != {got:?}");
        }

        #[test]
        fn roundtrip_float_mode_specials(start in -1e12f64..1e12, incs in prop::collection::vec((0.0f64..10.0, 0u8..30), 1..500)) {
            // A float counter with NaN, stale markers, ±Inf, -0.0, resets and
            // exponent crossings, in FLOAT mode with its own mean step.
            let mut acc = start;
            let s: Vec<(i64, f64)> = incs.iter().enumerate().map(|(i, &(inc, ev))| {
                acc = if ev == 0 { 0.0 } else { acc + inc };
                let v = match ev { 1 => stale_marker(), 2 => f64::NAN, 3 => f64::INFINITY, 4 => f64::NEG_INFINITY, 5 => -0.0, 6 => f64::MAX, _ => acc };
                (i as i64 * 1000, v)
            }).collect();
            let enc = encode(&s);
            prop_assert!(same(&s, &decode(&enc).unwrap()));
            for step in [0.0, 1.5, f64::MAX] {
                let dec = decode(&encode_with(&s, Plan::Float { step })).unwrap();
                prop_assert!(same(&s, &dec), "step {}", step);
            }
        }

        #[test]
        fn corruption_in_every_plan_is_reported(seed in any::<u64>(), p in plan(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let s = float_sum(300, seed);
            let mut enc = encode_with(&s, p);
            let i = flip.index(enc.len());
            enc[i] ^= 1 << bit;
            prop_assert!(decode(&enc).is_err());
            prop_assert!(decode(&enc[..i]).is_err());
        }

        #[test]
        fn garbage_with_valid_crc_never_panics(body in prop::collection::vec(any::<u8>(), 0..200), mode in 0u8..4, pred in 0u8..4) {
            // Past the CRC, everything must still be validated.
            let mut b = vec![VERSION, mode];
            b.extend_from_slice(&body);
            if b.len() > 6 && mode == MODE_INT {
                b[5] = pred;
            }
            let _ = decode(&reseal(b));
        }
    }

    #[test]
    fn versions_and_impossible_headers_are_errors() {
        let s: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64)).collect();
        let enc = encode(&s);
        assert_eq!(enc[0], VERSION);
        let mut body = enc[..enc.len() - 4].to_vec();
        body[0] = 1;
        let e = decode(&reseal(body.clone())).unwrap_err().0;
        assert!(e.contains("version 1"), "{e}");
        assert!(header(&reseal(body.clone())).is_err());
        body[0] = 3;
        let e = decode(&reseal(body)).unwrap_err().0;
        assert!(e.contains("unknown chunk format version 3"), "{e}");
        // Header fields: mode, scale, predictor, step.
        let hdr_len = |enc: &[u8]| {
            let mut pos = 2;
            get_uvarint(enc, &mut pos).unwrap();
            get_ivarint(enc, &mut pos).unwrap();
            get_ivarint(enc, &mut pos).unwrap();
            pos
        };
        let int = encode_with(
            &s,
            Plan::Int {
                k: 0,
                pred: PRED_DELTA,
                param: 1,
            },
        );
        let at = hdr_len(&int);
        for (off, val, what) in [
            (1, 7u8, "unknown value mode"),
            (at, 10, "bad scale"),
            (at + 1, 3, "unknown predictor"),
        ] {
            let mut b = int[..int.len() - 4].to_vec();
            if off == 1 {
                b[1] = val
            } else {
                b[off] = val
            }
            let e = decode(&reseal(b)).unwrap_err().0;
            assert!(e.contains(what), "{e}");
        }
        let fl = encode_with(&s, Plan::Float { step: 1.0 });
        let at = hdr_len(&fl);
        for bad in [f64::NAN, f64::INFINITY] {
            let mut b = fl[..fl.len() - 4].to_vec();
            b[at..at + 8].copy_from_slice(&bad.to_bits().to_le_bytes());
            assert!(decode(&reseal(b)).unwrap_err().0.contains("bad step"));
        }
        // Header cut inside the step.
        assert!(decode(&reseal(fl[..at + 3].to_vec())).is_err());
    }

    #[test]
    fn predictors_are_picked_by_the_data() {
        // Float counter: FLOAT with a step, and clearly below XOR.
        let s = float_sum(7200, 7);
        let p = choose(&s);
        assert!(matches!(p, Plan::Float { step } if step > 0.0), "{p:?}");
        let (f, x) = (encode(&s).len(), encode_with(&s, Plan::Xor).len());
        assert!(f * 100 < x * 92, "float {f} vs xor {x}");
        // Noisy gauge around a mean (3 decimals): constant level.
        let mut r = 99u64;
        let g: Vec<(i64, f64)> = (0..7200)
            .map(|i| {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (i * 1000, (25 + (r >> 58) as i64) as f64 / 1000.0)
            })
            .collect();
        assert!(
            matches!(
                choose(&g),
                Plan::Int {
                    k: 3,
                    pred: PRED_LEVEL,
                    param: 56
                }
            ),
            "{:?}",
            choose(&g)
        );
        // Steady rate with tiny jitter: delta with its mean as bias.
        let c: Vec<(i64, f64)> = (0..7200)
            .map(|i| (i * 1000, (i * 1000 + (i * 7919) % 3) as f64))
            .collect();
        assert!(
            matches!(
                choose(&c),
                Plan::Int {
                    k: 0,
                    pred: PRED_DELTA,
                    param: 1000
                }
            ),
            "{:?}",
            choose(&c)
        );
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
