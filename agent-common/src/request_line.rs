//! Decoding an HTTP/1.x request line's method and protocol version from a
//! few bytes, for the socket probes' per-request records (plaintext
//! HTTP/1.x without the uprobe).
//!
//! Shared by the eBPF programs and the unit tests: fixed-size inputs, no
//! allocation, no unbounded loops. The values are nginx's own encodings
//! (`NGX_HTTP_GET` = 2, ..., `http_version` = major * 1000 + minor) so the
//! records are the uprobe's `RequestRecord` and user space treats both alike.

/// nginx's method bit for a method it does not know (`NGX_HTTP_UNKNOWN`).
pub const METHOD_UNKNOWN: u32 = 1;

/// `RequestRecord::http_version` when the version could not be read: the
/// request line's end was not within the bytes looked at (a long target, a
/// line split across reads) or it was not "HTTP/d.d". User space labels it
/// `_OTHER` and counts it; it is never guessed.
pub const VERSION_UNKNOWN: u32 = 0;

/// HTTP/0.9: a request line without a version ("GET /path").
pub const VERSION_0_9: u32 = 9;

/// Bytes of the request line's end handed to [`version_from_line_end`].
pub const LINE_TAIL: usize = 16;

/// Bytes of the request's start [`method_bit`] looks at (the longest method
/// and its space).
pub const METHOD_BYTES: usize = 10;

/// `s` (at most 8 bytes) as a little-endian u64, zero-padded: a compile-time
/// constant, so the eBPF programs compare against immediates and never load
/// a table (or a pointer) from .rodata, which the verifier rejects.
const fn pack(s: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() && i < 8 {
        v |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// Mask of the low `n` bytes (n <= 8).
const fn low(n: usize) -> u64 {
    if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
}

/// nginx's method bit for a request line starting with `head[..len]`
/// ([`METHOD_UNKNOWN`] for anything else, as nginx records it).
#[inline(always)]
pub fn method_bit(head: &[u8; METHOD_BYTES], len: usize) -> u32 {
    let w0 = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
    let w1 = u64::from(head[8]) | (u64::from(head[9]) << 8);
    method_of_words(w0, w1, len)
}

/// [`method_bit`] of a request line whose first 16 bytes are the
/// little-endian words `w0`, `w1`, of which `len` were read. The methods
/// are nginx's (ngx_http_request.h), each followed by its space.
#[inline(always)]
pub fn method_of_words(w0: u64, w1: u64, len: usize) -> u32 {
    macro_rules! short {
        ($name:literal, $bit:expr) => {
            if len >= $name.len() && w0 & const { low($name.len()) } == const { pack($name) } {
                return $bit;
            }
        };
    }
    short!(b"GET ", 0x2);
    short!(b"HEAD ", 0x4);
    short!(b"POST ", 0x8);
    short!(b"PUT ", 0x10);
    short!(b"DELETE ", 0x20);
    short!(b"MKCOL ", 0x40);
    short!(b"COPY ", 0x80);
    short!(b"MOVE ", 0x100);
    short!(b"OPTIONS ", 0x200);
    short!(b"LOCK ", 0x1000);
    short!(b"UNLOCK ", 0x2000);
    short!(b"PATCH ", 0x4000);
    short!(b"TRACE ", 0x8000);
    short!(b"CONNECT ", 0x1_0000);
    if len >= 9 && w0 == const { pack(b"PROPFIND") } && w1 & 0xff == u64::from(b' ') {
        return 0x400;
    }
    if len >= 10 && w0 == const { pack(b"PROPPATC") } && w1 & 0xffff == const { pack(b"H ") } {
        return 0x800;
    }
    METHOD_UNKNOWN
}

/// The protocol version of a request line from its last bytes: `tail`
/// holds the [`LINE_TAIL`] bytes ending with the line's `\n` (at
/// `tail[LINE_TAIL - 1]`), of which the last `avail` belong to the line.
/// " HTTP/M.m" before the (optional) CR gives M * 1000 + m; a line with no
/// "HTTP/" in its tail is HTTP/0.9; anything else (multi-digit versions,
/// garbage) is [`VERSION_UNKNOWN`].
#[inline(always)]
pub fn version_from_line_end(tail: &[u8; LINE_TAIL], avail: usize) -> u32 {
    let avail = if avail > LINE_TAIL { LINE_TAIL } else { avail };
    if avail == 0 || tail[LINE_TAIL - 1] != b'\n' {
        return VERSION_UNKNOWN;
    }
    // Index one past the version's last digit.
    let end = if avail >= 2 && tail[LINE_TAIL - 2] == b'\r' {
        LINE_TAIL - 2
    } else {
        LINE_TAIL - 1
    };
    // " HTTP/M.m": 9 bytes before `end`, all of them the line's.
    if end >= 9 && LINE_TAIL - (end - 9) <= avail {
        let v = end - 9;
        if tail[v] == b' '
            && tail[v + 1] == b'H'
            && tail[v + 2] == b'T'
            && tail[v + 3] == b'T'
            && tail[v + 4] == b'P'
            && tail[v + 5] == b'/'
            && tail[v + 6].is_ascii_digit()
            && tail[v + 7] == b'.'
            && tail[v + 8].is_ascii_digit()
        {
            return u32::from(tail[v + 6] - b'0') * 1000 + u32::from(tail[v + 8] - b'0');
        }
    }
    // "HTTP/" anywhere in the tail: a version, but not one read here.
    // (Constant indices, the line's start as a condition: the eBPF
    // verifier then need not follow one path per start.)
    let first = LINE_TAIL - avail;
    let mut i = 0;
    while i + 5 <= LINE_TAIL {
        if i >= first
            && tail[i] == b'H'
            && tail[i + 1] == b'T'
            && tail[i + 2] == b'T'
            && tail[i + 3] == b'P'
            && tail[i + 4] == b'/'
        {
            return VERSION_UNKNOWN;
        }
        i += 1;
    }
    VERSION_0_9
}

/// Bytes of nginx's read buffer [`line_of_words`] looks at: a request line
/// whose end is further gets VERSION_UNKNOWN (labelled `_OTHER`, counted).
pub const LINE_BYTES: usize = 128;
pub const LINE_WORDS: usize = LINE_BYTES / 8;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const NEWLINES: u64 = 0x0a0a_0a0a_0a0a_0a0a;

/// Method bit and http_version of the request line at the start of `words`
/// (the first LINE_BYTES of nginx's read buffer, little-endian words), of
/// which `ret` bytes were just read (bytes past it are stale: a '\n' there
/// does not count).
///
/// Written for the eBPF verifier: registers and constant indices only (no
/// byte is indexed by a value computed from the payload), so its cost stays
/// flat. The '\n' is found 8 bytes at a time, and the LINE_TAIL bytes
/// ending at it are shifted out of the (at most three) words around it.
#[inline(always)]
pub fn line_of_words(words: &[u64; LINE_WORDS], ret: u32) -> (u32, u32) {
    let method = method_of_words(words[0], words[1], ret as usize);
    // The words before the '\n' word (t0, t1), the '\n' word (t2), and the
    // '\n''s byte index in t2 (k); pos: its index in the buffer.
    let (mut t0, mut t1, mut t2, mut k) = (0u64, 0u64, 0u64, 0u64);
    let mut pos = u64::MAX;
    let mut prev2 = 0u64;
    let mut prev1 = 0u64;
    let mut w = 0;
    while w < LINE_WORDS {
        let word = words[w];
        let x = word ^ NEWLINES;
        // The lowest flagged byte is the first '\n' (borrows only run
        // upwards from a zero byte).
        let hits = x.wrapping_sub(ONES) & !x & HIGHS;
        if pos == u64::MAX && hits != 0 {
            k = lowest_byte(hits);
            pos = (w as u64) * 8 + k;
            t0 = prev2;
            t1 = prev1;
            t2 = word;
        }
        prev2 = prev1;
        prev1 = word;
        w += 1;
    }
    if pos >= u64::from(ret) {
        // No line end in what nginx read (or looked at): not guessed.
        return (method, VERSION_UNKNOWN);
    }
    // The LINE_TAIL bytes ending at the '\n' (byte 16 + k of t0:t1:t2),
    // as two words. Shifts stay below 64 (two steps where they could reach it).
    let sh = 8 * k;
    let lo = ((t0 >> sh) >> 8) | (t1 << (56 - sh));
    let hi = ((t1 >> sh) >> 8) | (t2 << (56 - sh));
    let lo = lo.to_le_bytes();
    let hi = hi.to_le_bytes();
    let tail = [
        lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7],
    ];
    let avail = if pos + 1 < LINE_TAIL as u64 {
        (pos + 1) as usize
    } else {
        LINE_TAIL
    };
    (method, version_from_line_end(&tail, avail))
}

/// Index (0..8) of the lowest byte of `hits` with its high bit set (`hits`
/// has only high bits set, and at least one): the lowest set bit, isolated,
/// times a constant whose byte j is 7 - j puts the index in the top byte.
#[inline(always)]
fn lowest_byte(hits: u64) -> u64 {
    let bit = hits & hits.wrapping_neg();
    (bit >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56
}

/// Bytes of a response's start [`status_of_head`] looks at.
pub const STATUS_HEAD: usize = 12;

/// The status of a response starting with `head` ("HTTP/1.x NNN"), or 0 if
/// it is not a status line. Interim (1xx) statuses are returned too.
#[inline(always)]
pub fn status_of_head(head: &[u8; STATUS_HEAD]) -> u16 {
    let h = head;
    let status_line = h[0] == b'H'
        && h[1] == b'T'
        && h[2] == b'T'
        && h[3] == b'P'
        && h[4] == b'/'
        && h[5] == b'1'
        && h[6] == b'.'
        && h[8] == b' '
        && h[9] >= b'1'
        && h[9] <= b'9'
        && h[10].is_ascii_digit()
        && h[11].is_ascii_digit();
    if !status_line {
        return 0;
    }
    u16::from(h[9] - b'0') * 100 + u16::from(h[10] - b'0') * 10 + u16::from(h[11] - b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(s: &[u8]) -> u32 {
        let mut head = [0u8; METHOD_BYTES];
        let n = s.len().min(METHOD_BYTES);
        head[..n].copy_from_slice(&s[..n]);
        method_bit(&head, s.len())
    }

    /// The tail as the eBPF side builds it: the LINE_TAIL bytes ending at
    /// the first '\n' of `line`, zero-padded in front.
    fn version(line: &[u8]) -> u32 {
        let e = line.iter().position(|c| *c == b'\n').expect("a line end");
        let mut tail = [0u8; LINE_TAIL];
        let avail = (e + 1).min(LINE_TAIL);
        tail[LINE_TAIL - avail..].copy_from_slice(&line[e + 1 - avail..=e]);
        version_from_line_end(&tail, avail)
    }

    #[test]
    fn methods_map_to_nginx_bits() {
        assert_eq!(method(b"GET / HTTP/1.1\r\n"), 0x2);
        assert_eq!(method(b"HEAD /x HTTP/1.0\r\n"), 0x4);
        assert_eq!(method(b"POST /"), 0x8);
        assert_eq!(method(b"PUT /"), 0x10);
        assert_eq!(method(b"DELETE /"), 0x20);
        assert_eq!(method(b"OPTIONS *"), 0x200);
        assert_eq!(method(b"PROPPATCH /"), 0x800);
        assert_eq!(method(b"PATCH /"), 0x4000);
        assert_eq!(method(b"CONNECT h:1"), 0x1_0000);
        assert_eq!(method(b"MKCOL /"), 0x40);
        assert_eq!(method(b"COPY /"), 0x80);
        assert_eq!(method(b"MOVE /"), 0x100);
        assert_eq!(method(b"PROPFIND /"), 0x400);
        assert_eq!(method(b"LOCK /"), 0x1000);
        assert_eq!(method(b"UNLOCK /"), 0x2000);
        assert_eq!(method(b"TRACE /"), 0x8000);
        assert_eq!(method(b"PROPFINDX /"), METHOD_UNKNOWN);
        assert_eq!(method(b"PROPPATCHX"), METHOD_UNKNOWN);
        assert_eq!(method(b"OPTIONS"), METHOD_UNKNOWN);
        // Prefixes of a known method are other methods to nginx.
        assert_eq!(method(b"GETX / HTTP/1.1"), METHOD_UNKNOWN);
        assert_eq!(method(b"PURGE /"), METHOD_UNKNOWN);
        assert_eq!(method(b"get / HTTP/1.1"), METHOD_UNKNOWN);
        // Too few bytes read to see the space: not guessed.
        assert_eq!(method(b"GET"), METHOD_UNKNOWN);
        assert_eq!(method(b""), METHOD_UNKNOWN);
    }

    #[test]
    fn versions_from_the_line_end() {
        assert_eq!(version(b"GET / HTTP/1.1\r\nHost: x\r\n"), 1001);
        assert_eq!(version(b"GET / HTTP/1.0\r\n"), 1000);
        assert_eq!(version(b"GET / HTTP/1.1\n"), 1001);
        assert_eq!(version(b"GET /a/very/long/path?with=query HTTP/1.1\r\n"), 1001);
        assert_eq!(version(b"GET / HTTP/2.0\r\n"), 2000);
        assert_eq!(version(b"GET /\r\n"), VERSION_0_9);
        assert_eq!(version(b"GET /index.html\r\n"), VERSION_0_9);
        assert_eq!(version(b"GET /long/path/without/version\r\n"), VERSION_0_9);
        // A version, but not one nginx would call d.d.
        assert_eq!(version(b"GET / HTTP/1.10\r\n"), VERSION_UNKNOWN);
        assert_eq!(version(b"GET / XHTTP/1.1\r\n"), VERSION_UNKNOWN);
    }

    fn words_of(buf: &[u8]) -> [u64; LINE_WORDS] {
        let mut w = [0u64; LINE_WORDS];
        for (i, b) in buf.iter().take(LINE_BYTES).enumerate() {
            w[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        w
    }

    #[test]
    fn request_lines_from_the_read_buffer() {
        let line = |s: &[u8]| line_of_words(&words_of(s), s.len() as u32);
        assert_eq!(line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (0x2, 1001));
        assert_eq!(line(b"HEAD /x HTTP/1.0\r\n\r\n"), (0x4, 1000));
        assert_eq!(line(b"GET /\r\n"), (0x2, VERSION_0_9));
        assert_eq!(line(b"GET / HTTP/1.1\r"), (0x2, VERSION_UNKNOWN));
        // Every line end position within the looked-at bytes, both line ends.
        for n in 0..(LINE_BYTES - 16) {
            for crlf in [true, false] {
                let mut s = b"POST /".to_vec();
                s.extend(std::iter::repeat_n(b'a', n));
                s.extend_from_slice(b" HTTP/1.1");
                if crlf {
                    s.push(b'\r');
                }
                s.extend_from_slice(b"\nHost: h\r\n\r\n");
                let want = if s.iter().position(|c| *c == b'\n').unwrap() < LINE_BYTES {
                    1001
                } else {
                    VERSION_UNKNOWN
                };
                assert_eq!(line(&s), (0x8, want), "n={n} crlf={crlf}");
            }
        }
        // Line end beyond the bytes read (stale buffer): not guessed.
        let w = words_of(b"GET / HTTP/1.1\r\n");
        assert_eq!(line_of_words(&w, 10), (0x2, VERSION_UNKNOWN));
        // A line longer than LINE_BYTES.
        let long = [b"GET /".as_slice(), &[b'x'; 200], b" HTTP/1.1\r\n"].concat();
        assert_eq!(line(&long), (0x2, VERSION_UNKNOWN));
        // Lines shorter than LINE_TAIL: nothing before the buffer counts.
        assert_eq!(line(b"GET /\n"), (0x2, VERSION_0_9));
        assert_eq!(line(b"\n"), (METHOD_UNKNOWN, VERSION_0_9));
    }

    #[test]
    fn statuses_from_status_lines() {
        let st = |s: &[u8; STATUS_HEAD]| status_of_head(s);
        assert_eq!(st(b"HTTP/1.1 200"), 200);
        assert_eq!(st(b"HTTP/1.0 404"), 404);
        assert_eq!(st(b"HTTP/1.1 100"), 100);
        assert_eq!(st(b"HTTP/1.1 503"), 503);
        assert_eq!(st(b"HTTP/2.0 200"), 0);
        assert_eq!(st(b"HTTP/1.1 2x0"), 0);
        assert_eq!(st(b"<html>\r\n<bod"), 0);
    }

    #[test]
    fn bytes_before_the_line_are_ignored() {
        // Stale bytes before a short line (as if the buffer held older data).
        let mut tail = *b"xx HTTP/1.1G /\r\n";
        assert_eq!(version_from_line_end(&tail, 5), VERSION_0_9);
        assert_eq!(version_from_line_end(&tail, 16), VERSION_UNKNOWN);
        tail[15] = b'x';
        assert_eq!(version_from_line_end(&tail, 16), VERSION_UNKNOWN);
        assert_eq!(version_from_line_end(&[0; LINE_TAIL], 0), VERSION_UNKNOWN);
    }
}
