//! What the first bytes nginx reads on a connection say about its protocol.
//!
//! Shared by the eBPF programs (which call it on at most [`FIRST_BYTES`]
//! bytes of the connection's first read) and the unit tests. Bounded: one
//! pass over a fixed-size array, no allocation, no recursion.
use crate::{UNPARSED_HTTP2, UNPARSED_NONE, UNPARSED_OTHER, UNPARSED_TLS};

/// Bytes of the first read that are looked at.
pub const FIRST_BYTES: usize = 16;

/// The HTTP/2 connection preface's first 16 bytes ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").
const H2_PREFACE: [u8; FIRST_BYTES] = *b"PRI * HTTP/2.0\r\n";

/// Bytes of the preface that tell it from an HTTP/1.x request line: "PRI *"
/// (a method "PRI" followed by a space is still a possible request line).
const H2_PREFACE_DECISIVE: usize = 5;

/// Not a reason but a verdict of [`classify_first_bytes`]: the bytes are a
/// PROXY protocol header (v1 "PROXY ", or v2's 12-byte signature), which a
/// load balancer puts before the client's own bytes. What follows decides.
pub const PROXY_HEADER: u8 = 0x80;

const PROXY_V1: &[u8; 6] = b"PROXY ";
const PROXY_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Classifies the first `len` bytes of `head` (bytes past `len` are ignored):
/// UNPARSED_TLS for a TLS record header (content type 20..=23, version 3.x:
/// a ClientHello on a new connection, any record on one found open at
/// start), UNPARSED_HTTP2 for the h2c preface, UNPARSED_NONE while the bytes
/// can be the start of an HTTP/1.x request line as nginx parses it (optional
/// CR/LF, a method of `A-Z _ -`, spaces, then `/` or a scheme letter), and
/// UNPARSED_OTHER for anything else; [`PROXY_HEADER`] for a PROXY protocol
/// header. Too few bytes to tell count as HTTP/1.x: a request line may
/// arrive a byte at a time.
#[inline(always)]
pub fn classify_first_bytes(head: &[u8; FIRST_BYTES], len: usize) -> u8 {
    let n = if len > FIRST_BYTES { FIRST_BYTES } else { len };
    if n == 0 {
        return UNPARSED_NONE;
    }
    if (20..=23).contains(&head[0]) && (n < 2 || head[1] == 3) && (n < 3 || head[2] <= 4) {
        return UNPARSED_TLS;
    }
    if n >= H2_PREFACE_DECISIVE && prefix_matches(head, n, &H2_PREFACE) {
        return UNPARSED_HTTP2;
    }
    if (n >= PROXY_V1.len() && starts_with(head, PROXY_V1)) || (n >= PROXY_V2.len() && starts_with(head, PROXY_V2)) {
        return PROXY_HEADER;
    }
    if request_line_start(head, n) {
        UNPARSED_NONE
    } else {
        UNPARSED_OTHER
    }
}

#[inline(always)]
fn prefix_matches(head: &[u8; FIRST_BYTES], n: usize, want: &[u8; FIRST_BYTES]) -> bool {
    let mut same = true;
    let mut i = 0;
    while i < FIRST_BYTES {
        if i < n && head[i] != want[i] {
            same = false;
        }
        i += 1;
    }
    same
}

#[inline(always)]
fn starts_with<const N: usize>(head: &[u8; FIRST_BYTES], want: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N && i < FIRST_BYTES {
        if head[i] != want[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// nginx's method characters (ngx_http_parse_request_line, sw_method).
#[inline(always)]
fn is_method_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c == b'_' || c == b'-'
}

/// True if `head[..n]` can begin an HTTP/1.x request line.
#[inline(always)]
fn request_line_start(head: &[u8; FIRST_BYTES], n: usize) -> bool {
    // 0: before the method (CR/LF skipped, as nginx does); 1: in the method;
    // 2: spaces after it.
    let mut state = 0u8;
    let mut i = 0;
    while i < FIRST_BYTES {
        if i >= n {
            return true;
        }
        let c = head[i];
        if state == 0 {
            if is_method_char(c) {
                state = 1;
            } else if c != b'\r' && c != b'\n' {
                return false;
            }
        } else if state == 1 {
            if c == b' ' {
                state = 2;
            } else if !is_method_char(c) {
                return false;
            }
        } else if c != b' ' {
            // The request target: origin form ("/...") or absolute form ("http://...").
            return c == b'/' || c.is_ascii_alphabetic();
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(bytes: &[u8]) -> u8 {
        let mut head = [0u8; FIRST_BYTES];
        let n = bytes.len().min(FIRST_BYTES);
        head[..n].copy_from_slice(&bytes[..n]);
        classify_first_bytes(&head, bytes.len())
    }

    #[test]
    fn request_lines_are_http1() {
        for r in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /echo HTTP/1.1\r\n",
            b"GET http://x/ HTTP/1.1\r\n",
            b"\r\nGET / HTTP/1.0\r\n",
            b"M-SEARCH  /x",
            b"PROPFINDVERYLONGMETHODNAME /",
            // Too short to tell: a header may come a byte at a time.
            b"G",
            b"GE",
            b"PRI",
            b"PRI ",
        ] {
            assert_eq!(classify(r), UNPARSED_NONE, "{:?}", String::from_utf8_lossy(r));
        }
        assert_eq!(classify(b""), UNPARSED_NONE);
    }

    #[test]
    fn tls_records_are_tls() {
        // ClientHello record header as OpenSSL reads it (5 bytes), TLS 1.0..1.3 versions.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), UNPARSED_TLS);
        assert_eq!(classify(&[0x16, 0x03, 0x03, 0x00, 0x40]), UNPARSED_TLS);
        // Application data on a connection found open at start.
        assert_eq!(classify(&[0x17, 0x03, 0x03, 0x00, 0x20]), UNPARSED_TLS);
        assert_eq!(classify(&[0x16]), UNPARSED_TLS);
        // Not a TLS version: not TLS, and not HTTP either.
        assert_eq!(classify(&[0x16, 0x05, 0x01, 0x00, 0x10]), UNPARSED_OTHER);
    }

    #[test]
    fn h2_preface_is_http2() {
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), UNPARSED_HTTP2);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), UNPARSED_HTTP2);
        assert_eq!(classify(b"PRI *"), UNPARSED_HTTP2);
    }

    #[test]
    fn proxy_protocol_headers_defer_the_verdict() {
        assert_eq!(classify(b"PROXY TCP4 127.0.0.1 127.0.0.1 5 6\r\n"), PROXY_HEADER);
        assert_eq!(classify(b"PROXY UNKNOWN\r\n"), PROXY_HEADER);
        assert_eq!(classify(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"), PROXY_HEADER);
        // Too short to be sure: a method named PROXY is possible.
        assert_eq!(classify(b"PROXY"), UNPARSED_NONE);
        // A truncated v2 signature is not HTTP.
        assert_eq!(classify(b"\r\n\r\n\0\r\nQU"), UNPARSED_OTHER);
    }

    #[test]
    fn anything_else_is_other() {
        for r in [
            &b"get / HTTP/1.1\r\n"[..],
            b"GET\t/",
            b"GET *",
            b"\x00\x01\x02",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x80\x2e\x01\x03\x01",
            b"{\"json\": 1}",
        ] {
            assert_eq!(classify(r), UNPARSED_OTHER, "{:?}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn bytes_past_len_are_ignored() {
        let mut head = [b'x'; FIRST_BYTES];
        head[..4].copy_from_slice(b"GET ");
        assert_eq!(classify_first_bytes(&head, 4), UNPARSED_NONE);
        assert_eq!(classify_first_bytes(&head, 5), UNPARSED_NONE);
        head[4] = b'\x01';
        assert_eq!(classify_first_bytes(&head, 4), UNPARSED_NONE);
        assert_eq!(classify_first_bytes(&head, 5), UNPARSED_OTHER);
    }
}
