//! PromQL string literals as Go reads them, where that differs from
//! promql-parser.
//!
//! Go's `\xNN` and octal `\NNN` escapes are single *bytes*, so `"\xff"` is a
//! string that is not valid UTF-8 — and therefore not a valid label name in
//! Prometheus 3.x (`label_replace(x, "\xff", ...)` fails). promql-parser turns
//! each such escape into the char U+00NN instead (`"\xff"` → "ÿ", a valid
//! name; `"\xc3\xbf"` → "Ã¿" where Go has "ÿ"). We re-read the query's
//! literals with Go's rules and give each AST string literal that differs
//! Go's value — decoded lossily, so bytes that are not UTF-8 become U+FFFD,
//! which the label functions reject as Prometheus does.
use promql_parser::parser::Expr;

/// For every quoted literal in `q` that Go reads differently from
/// promql-parser: (promql-parser's value, Go's value as UTF-8, lossy).
fn go_literals(q: &str) -> Vec<(String, String)> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                // A comment runs to the end of the line.
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'`' => {
                // Raw string: no escapes, the text is UTF-8 already.
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            quote @ (b'"' | b'\'') => {
                let (end, go, parser) = read_quoted(b, i + 1, quote);
                if go != parser.as_bytes() {
                    out.push((parser, String::from_utf8_lossy(&go).into_owned()));
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// Reads a quoted literal starting after its opening quote. Returns the index
/// after the closing quote, the bytes as Go decodes them and the string as
/// promql-parser decodes it (byte escapes become U+00NN chars). Malformed
/// escapes are passed through: the parser has already accepted this query.
fn read_quoted(b: &[u8], mut i: usize, quote: u8) -> (usize, Vec<u8>, String) {
    let (mut go, mut parser) = (Vec::new(), String::new());
    let hex = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    while i < b.len() && b[i] != quote {
        if b[i] != b'\\' || i + 1 >= b.len() {
            // Copy one UTF-8 char (the query is a &str, so it is whole).
            let len = utf8_len(b[i]);
            let end = (i + len).min(b.len());
            go.extend_from_slice(&b[i..end]);
            parser.push_str(std::str::from_utf8(&b[i..end]).unwrap_or(""));
            i = end;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        let simple = match c {
            b'a' => Some(0x07u8),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'\'' | b'"' => Some(c),
            _ => None,
        };
        if let Some(v) = simple {
            go.push(v);
            parser.push(v as char);
            continue;
        }
        let (n, radix) = match c {
            b'x' => (2, 16),
            b'u' => (4, 16),
            b'U' => (8, 16),
            b'0'..=b'7' => (2, 8),
            _ => (0, 0),
        };
        let digits = if c.is_ascii_digit() {
            b.get(i - 1..i + n)
        } else {
            b.get(i..i + n)
        };
        let v = match (radix, digits) {
            (16, Some(d)) => hex(d),
            (8, Some(d)) => std::str::from_utf8(d).ok().and_then(|s| u32::from_str_radix(s, 8).ok()),
            _ => None,
        };
        let Some(v) = v else { continue };
        i += n;
        match c {
            b'x' | b'0'..=b'7' => {
                // One byte in Go; char U+00NN in promql-parser.
                go.push(v as u8);
                parser.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
            }
            _ => {
                let ch = char::from_u32(v).unwrap_or('\u{FFFD}');
                let mut buf = [0u8; 4];
                go.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                parser.push(ch);
            }
        }
    }
    (i + 1, go, parser)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Gives string literals Go's value (see the module comment). A no-op for
/// queries without escapes.
pub fn apply_go_bytes(q: &str, e: &mut Expr) {
    if !q.contains('\\') {
        return;
    }
    let bad = go_literals(q);
    if !bad.is_empty() {
        rewrite(e, &bad);
    }
}

fn rewrite(e: &mut Expr, bad: &[(String, String)]) {
    match e {
        Expr::StringLiteral(s) => {
            if let Some((_, lossy)) = bad.iter().find(|(p, _)| *p == s.val) {
                s.val = lossy.clone();
            }
        }
        Expr::Aggregate(a) => {
            rewrite(&mut a.expr, bad);
            if let Some(p) = a.param.as_mut() {
                rewrite(p, bad);
            }
        }
        Expr::Unary(u) => rewrite(&mut u.expr, bad),
        Expr::Binary(b) => {
            rewrite(&mut b.lhs, bad);
            rewrite(&mut b.rhs, bad);
        }
        Expr::Paren(p) => rewrite(&mut p.expr, bad),
        Expr::Subquery(s) => rewrite(&mut s.expr, bad),
        Expr::Call(c) => {
            for a in c.args.args.iter_mut() {
                rewrite(a, bad);
            }
        }
        Expr::NumberLiteral(_) | Expr::VectorSelector(_) | Expr::MatrixSelector(_) | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst_of(q: &str) -> String {
        let mut e = promql_parser::parser::parse(q).unwrap();
        apply_go_bytes(q, &mut e);
        let Expr::Call(c) = e else { panic!("not a call: {q}") };
        let Expr::StringLiteral(s) = c.args.args[1].as_ref() else {
            panic!("arg 1 not a string")
        };
        s.val.clone()
    }

    #[test]
    fn byte_escapes_follow_go() {
        // Not UTF-8 in Go: the value carries U+FFFD.
        assert_eq!(dst_of(r#"label_replace(x, "\xff", "", "src", "(.*)")"#), "\u{FFFD}");
        assert_eq!(dst_of(r#"label_replace(x, '\377', "", "src", "(.*)")"#), "\u{FFFD}");
        // Two byte escapes that form UTF-8 are "ÿ", as in Go.
        assert_eq!(dst_of(r#"label_replace(x, "\xc3\xbf", "", "src", "(.*)")"#), "ÿ");
        // \u escapes are chars in both.
        assert_eq!(dst_of(r#"label_replace(x, "\u00ff", "", "src", "(.*)")"#), "ÿ");
        // ASCII \x and no escapes: untouched.
        assert_eq!(dst_of(r#"label_replace(x, "a\x41", "", "src", "(.*)")"#), "aA");
        assert_eq!(dst_of(r#"label_replace(x, `\xff`, "", "src", "(.*)")"#), r"\xff");
    }

    #[test]
    fn scanner_skips_comments_and_raw_strings() {
        assert!(go_literals("x # \"\\xff\"\n").is_empty());
        assert!(go_literals(r#"x{a=`\xff`}"#).is_empty());
        assert_eq!(
            go_literals(r#"x{a="\"\xff"}"#),
            vec![("\"\u{ff}".to_string(), "\"\u{FFFD}".to_string())]
        );
    }
}
