//! Adaptive binary range coder (the LZMA design: 11-bit probabilities, shift-5
//! adaptation, carry propagation through a cache byte) and the integer models
//! the chunk codec builds on it.
//!
//! Why not Gorilla's fixed bit buckets: per-second nginx data is dominated by
//! long runs (regular timestamps, idle counters, flat gauges) where a fixed code
//! still pays >= 1 bit per sample, and by noisy counter increments whose
//! distribution an adaptive model learns to within a few percent of its
//! entropy. A run of zero residuals costs ~0.02 bits per sample here.

const PROB_BITS: u32 = 11;
const PROB_INIT: u16 = 1 << (PROB_BITS - 1);
const MOVE_BITS: u32 = 5;
const TOP: u32 = 1 << 24;

pub struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    pub out: Vec<u8>,
}

impl Encoder {
    pub fn new(out: Vec<u8>) -> Self {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out,
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
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
    pub fn bit(&mut self, p: &mut u16, bit: bool) {
        let bound = (self.range >> PROB_BITS) * (*p as u32);
        if !bit {
            self.range = bound;
            *p += ((1 << PROB_BITS) - *p) >> MOVE_BITS;
        } else {
            self.low += bound as u64;
            self.range -= bound;
            *p -= *p >> MOVE_BITS;
        }
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

    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
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
        for _ in 0..5 {
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
                // The encoder's flush writes 4 bytes beyond the last needed
                // one, so a correct stream never reads more than that.
                self.pos += 1;
                if self.pos > self.data.len() + 4 {
                    self.overrun = true;
                }
                0
            }
        }
    }

    #[inline]
    pub fn bit(&mut self, p: &mut u16) -> bool {
        let bound = (self.range >> PROB_BITS) * (*p as u32);
        let bit = if self.code < bound {
            self.range = bound;
            *p += ((1 << PROB_BITS) - *p) >> MOVE_BITS;
            false
        } else {
            self.code -= bound;
            self.range -= bound;
            *p -= *p >> MOVE_BITS;
            true
        };
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
        bit
    }

    pub fn direct(&mut self, n: u32) -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            self.range >>= 1;
            let b = if self.code >= self.range {
                self.code -= self.range;
                1
            } else {
                0
            };
            v = (v << 1) | b;
            while self.range < TOP {
                self.range <<= 8;
                self.code = (self.code << 8) | self.byte() as u32;
            }
        }
        v
    }
}

/// A 6-bit value (0..=63) coded MSB first through a binary tree of contexts.
#[derive(Clone)]
pub struct Tree6([u16; 64]);

impl Default for Tree6 {
    fn default() -> Self {
        Tree6([PROB_INIT; 64])
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

/// Signed integer model: zero flag (conditioned on whether the previous value
/// was zero), bit length of the zigzagged value through a tree, the three bits
/// below the leading one modelled per length, the rest direct.
#[derive(Clone)]
pub struct IntModel {
    zero: [u16; 2],
    len: Tree6,
    top: Box<[[u16; 8]; 64]>,
    prev_zero: usize,
}

impl Default for IntModel {
    fn default() -> Self {
        IntModel {
            zero: [PROB_INIT; 2],
            len: Tree6::default(),
            top: Box::new([[PROB_INIT; 8]; 64]),
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
        let modeled = rest.min(3);
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
        let modeled = rest.min(3);
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

pub fn new_prob() -> u16 {
    PROB_INIT
}
