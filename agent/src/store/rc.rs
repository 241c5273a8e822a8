//! Adaptive binary range coder (the LZMA design: 32-bit range, carry
//! propagation through a cache byte) and the integer models the chunk codec
//! builds on it.
//!
//! Why not Gorilla's fixed bit buckets: per-second nginx data is dominated by
//! long runs (regular timestamps, idle counters, flat gauges) where a fixed code
//! still pays >= 1 bit per sample, and by noisy counter increments whose
//! distribution an adaptive model learns to within a few percent of its
//! entropy.
//!
//! Probabilities (format version 2): 16-bit, with a per-context adaptation
//! rate that starts at 1/2 and halves as the context sees more bits, down to
//! 2^-RATE_LIMIT (a cheap approximation of counting, KT-style). LZMA's fixed
//! 11-bit / shift-5 model forgets everything older than ~32 bits, which on
//! stationary noise (counter increments) costs ~0.02 bit per coded decision,
//! ~0.2 bit per sample; and it cannot go below ~0.02 bit for a certain bit
//! (a regular timestamp tick), where this model reaches ~0.003.

const PROB_BITS: u32 = 16;
const PROB_ONE: u32 = 1 << PROB_BITS;
const PROB_INIT: u16 = 1 << (PROB_BITS - 1);
/// Slowest adaptation: 1/256 per bit once a context has seen ~256 bits.
const RATE_LIMIT: u8 = 8;
const TOP: u32 = 1 << 24;

/// One adaptive binary context: P(bit = 0) in 1/65536 and how many bits it
/// has seen (capped), which sets its adaptation rate.
#[derive(Clone, Copy)]
pub struct Prob {
    p: u16,
    n: u16,
}

/// Adaptation shift after `n` observations: floor(log2(n + 2)), capped.
const fn rate_table() -> [u8; 512] {
    let mut t = [0u8; 512];
    let mut n = 0;
    while n < 512 {
        let mut s = 0u8;
        while (1usize << (s + 1)) <= n + 2 {
            s += 1;
        }
        t[n] = if s > RATE_LIMIT { RATE_LIMIT } else { s };
        n += 1;
    }
    t
}
static RATE: [u8; 512] = rate_table();
const N_CAP: u16 = 511;

impl Default for Prob {
    fn default() -> Self {
        Prob { p: PROB_INIT, n: 0 }
    }
}

impl Prob {
    #[inline(always)]
    fn bound(&self, range: u32) -> u32 {
        (range >> PROB_BITS) * self.p as u32
    }

    /// Adapts toward `bit`. Steps of at least 1, so a certain bit keeps
    /// getting cheaper (down to 1/65536) instead of stalling where the shifted
    /// gap truncates to 0 (at 255/65536 with shift 8: ~0.0056 bit per regular
    /// timestamp). p stays within [1, 65535]: the shift is >= 1, so a step is
    /// at most half the gap and neither end is reached (both symbols keep
    /// range). Both directions are computed and one is selected by mask: on
    /// noisy data the bits are coin flips, and a branch on `bit` mispredicted
    /// on about half of them in the decoder's hot loop.
    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let s = RATE[self.n as usize];
        let p = self.p as u32;
        let down = if p > 1 { (p >> s).max(1) } else { 0 };
        let up = if p < PROB_ONE - 1 {
            ((PROB_ONE - p) >> s).max(1)
        } else {
            0
        };
        let mask = (bit as u32).wrapping_neg();
        self.p = ((p + up) & !mask | (p.wrapping_sub(down)) & mask) as u16;
        self.n += (self.n < N_CAP) as u16;
    }
}

pub struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    /// The first byte LZMA's encoder emits is always 0 (the code value is a
    /// fraction below 1); it is not written and the decoder assumes it.
    skip_first: bool,
    start: usize,
    pub out: Vec<u8>,
}

impl Encoder {
    pub fn new(out: Vec<u8>) -> Self {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            skip_first: true,
            start: out.len(),
            out,
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                if self.skip_first {
                    // Always 0 + no carry: nothing can carry into it.
                    self.skip_first = false;
                } else {
                    self.out.push(temp.wrapping_add(carry));
                }
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    #[inline]
    pub fn bit(&mut self, p: &mut Prob, bit: bool) {
        let bound = p.bound(self.range);
        if !bit {
            self.range = bound;
        } else {
            self.low += bound as u64;
            self.range -= bound;
        }
        p.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Equiprobable bits, most significant first.
    pub fn direct(&mut self, v: u64, n: u32) {
        for i in (0..n).rev() {
            self.range >>= 1;
            if (v >> i) & 1 == 1 {
                self.low += self.range as u64;
            }
            while self.range < TOP {
                self.range <<= 8;
                self.shift_low();
            }
        }
    }

    /// Flushes with the fewest bytes: any code value in [low, low + range)
    /// decodes the same, so pick the one with the most trailing zero bytes
    /// (range >= 2^24, so a multiple of 2^24 is always in it) and drop those
    /// zeros; the decoder reads missing bytes as zeros.
    pub fn finish(mut self) -> Vec<u8> {
        self.low = (self.low + 0xFF_FFFF) & !0xFF_FFFF;
        for _ in 0..5 {
            self.shift_low();
        }
        let mut dropped = 0;
        while dropped < 4 && self.out.len() > self.start && self.out.last() == Some(&0) {
            self.out.pop();
            dropped += 1;
        }
        self.out
    }
}

/// Never panics on bad input: reading past the end yields zero bytes and sets
/// `overrun`, which the chunk decoder turns into a corruption error.
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
    pub overrun: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let mut d = Decoder {
            data,
            pos: 0,
            range: u32::MAX,
            code: 0,
            overrun: false,
        };
        // The encoder's always-zero first byte is implied.
        for _ in 0..4 {
            d.code = (d.code << 8) | d.byte() as u32;
        }
        d
    }

    #[inline]
    fn byte(&mut self) -> u8 {
        match self.data.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                *b
            }
            None => {
                // The encoder drops at most 4 trailing zero bytes, so a
                // correct stream never reads further than that past the end.
                self.pos += 1;
                if self.pos > self.data.len() + 4 {
                    self.overrun = true;
                }
                0
            }
        }
    }

    /// Branch-free on the decoded bit: on noisy data (timestamp jitter,
    /// counter increments) the bits are close to coin flips, and a
    /// mispredicted branch per bit was most of the decoding time.
    #[inline(always)]
    pub fn bit(&mut self, p: &mut Prob) -> bool {
        let bound = p.bound(self.range);
        let bit = self.code >= bound;
        let mask = (bit as u32).wrapping_neg();
        self.code -= bound & mask;
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        p.update(bit);
        self.normalize();
        bit
    }

    #[inline(always)]
    fn normalize(&mut self) {
        // At most one byte per coded bit in practice (range >= 2^24 after a
        // byte, and a bit takes at most 16 bits of it), so a loop that usually
        // runs zero times.
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
    }

    pub fn direct(&mut self, n: u32) -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            self.range >>= 1;
            let b = self.code >= self.range;
            self.code -= self.range & (b as u32).wrapping_neg();
            v = (v << 1) | b as u64;
            self.normalize();
        }
        v
    }
}

/// A 6-bit value (0..=63) coded MSB first through a binary tree of contexts.
#[derive(Clone)]
pub struct Tree6([Prob; 64]);

impl Default for Tree6 {
    fn default() -> Self {
        Tree6([Prob::default(); 64])
    }
}

impl Tree6 {
    pub fn enc(&mut self, e: &mut Encoder, v: u32) {
        let mut m = 1usize;
        for i in (0..6).rev() {
            let b = (v >> i) & 1 == 1;
            e.bit(&mut self.0[m], b);
            m = (m << 1) | b as usize;
        }
    }

    pub fn dec(&mut self, d: &mut Decoder) -> u32 {
        let mut m = 1usize;
        for _ in 0..6 {
            let b = d.bit(&mut self.0[m]);
            m = (m << 1) | b as usize;
        }
        (m - 64) as u32
    }
}

/// Bits below the leading one that are modelled (per bit length); the rest,
/// noise for any data this store sees, are sent as equiprobable bits.
const TOP_BITS: u32 = 3;

/// Signed integer model: zero flag (conditioned on whether the previous value
/// was zero), bit length of the zigzagged value through a tree, the
/// `TOP_BITS` bits below the leading one modelled per length, the rest direct.
#[derive(Clone)]
pub struct IntModel {
    zero: [Prob; 2],
    len: Tree6,
    top: Box<[[Prob; 1 << TOP_BITS]; 64]>,
    prev_zero: usize,
}

impl Default for IntModel {
    fn default() -> Self {
        IntModel {
            zero: [Prob::default(); 2],
            len: Tree6::default(),
            top: Box::new([[Prob::default(); 1 << TOP_BITS]; 64]),
            prev_zero: 1,
        }
    }
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

impl IntModel {
    pub fn enc(&mut self, e: &mut Encoder, v: i64) {
        let z = zigzag(v);
        e.bit(&mut self.zero[self.prev_zero], z != 0);
        if z == 0 {
            self.prev_zero = 1;
            return;
        }
        self.prev_zero = 0;
        let n = 64 - z.leading_zeros(); // 1..=64
        self.len.enc(e, n - 1);
        let rest = n - 1; // bits below the leading one
        let modeled = rest.min(TOP_BITS);
        let ctx = &mut self.top[(n - 1) as usize];
        let mut m = 1usize;
        for i in 0..modeled {
            let b = (z >> (rest - 1 - i)) & 1 == 1;
            e.bit(&mut ctx[m], b);
            m = (m << 1) | b as usize;
        }
        let low = rest - modeled;
        if low > 0 {
            e.direct(z & ((1u64 << low) - 1), low);
        }
    }

    pub fn dec(&mut self, d: &mut Decoder) -> i64 {
        if !d.bit(&mut self.zero[self.prev_zero]) {
            self.prev_zero = 1;
            return 0;
        }
        self.prev_zero = 0;
        let n = self.len.dec(d) + 1;
        let rest = n - 1;
        let modeled = rest.min(TOP_BITS);
        let ctx = &mut self.top[(n - 1) as usize];
        let mut m = 1usize;
        for _ in 0..modeled {
            let b = d.bit(&mut ctx[m]);
            m = (m << 1) | b as usize;
        }
        // m holds a leading 1 followed by the modelled bits.
        let mut z = m as u64;
        let low = rest - modeled;
        if low > 0 {
            z = (z << low) | d.direct(low);
        }
        unzigzag(z)
    }
}

pub fn new_prob() -> Prob {
    Prob::default()
}
