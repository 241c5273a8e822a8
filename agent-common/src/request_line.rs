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

/// (method + space, nginx's bit): the methods nginx knows (ngx_http_request.h).
const METHODS: [(&[u8], u32); 16] = [
    (b"GET ", 0x2),
    (b"HEAD ", 0x4),
    (b"POST ", 0x8),
    (b"PUT ", 0x10),
    (b"DELETE ", 0x20),
    (b"MKCOL ", 0x40),
    (b"COPY ", 0x80),
    (b"MOVE ", 0x100),
    (b"OPTIONS ", 0x200),
    (b"PROPFIND ", 0x400),
    (b"PROPPATCH ", 0x800),
    (b"LOCK ", 0x1000),
    (b"UNLOCK ", 0x2000),
    (b"PATCH ", 0x4000),
    (b"TRACE ", 0x8000),
    (b"CONNECT ", 0x1_0000),
];

/// Bytes of the request's start [`method_bit`] looks at (the longest method
/// and its space).
pub const METHOD_BYTES: usize = 10;

/// nginx's method bit for a request line starting with `head[..len]`
/// ([`METHOD_UNKNOWN`] for anything else, as nginx records it).
#[inline(always)]
pub fn method_bit(head: &[u8; METHOD_BYTES], len: usize) -> u32 {
    let mut m = 0;
    while m < METHODS.len() {
        let (name, bit) = METHODS[m];
        if name.len() <= len && starts_with(head, name) {
            return bit;
        }
        m += 1;
    }
    METHOD_UNKNOWN
}

#[inline(always)]
fn starts_with(head: &[u8; METHOD_BYTES], name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() && i < METHOD_BYTES {
        if head[i] != name[i] {
            return false;
        }
        i += 1;
    }
    true
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
    let mut i = LINE_TAIL - avail;
    while i + 5 <= LINE_TAIL {
        if tail[i] == b'H' && tail[i + 1] == b'T' && tail[i + 2] == b'T' && tail[i + 3] == b'P' && tail[i + 4] == b'/'
        {
            return VERSION_UNKNOWN;
        }
        i += 1;
    }
    VERSION_0_9
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
