//! Bounds on what another process can make us export or log.
//!
//! Every label value discovery takes from a process (the config path in its
//! title, the path of its executable) is chosen by whoever started that
//! process. Values that are too long or carry characters no real path has are
//! refused (the instance is not tracked) rather than escaped: an escaped value
//! would no longer be the real path, could collide with another instance's,
//! and a real nginx never runs with such a path, so refusing is the honest
//! answer. Values that are merely unusual (spaces, `<`, `&`, non-ASCII
//! letters) are legal paths and pass; consumers that give such characters a
//! meaning (Slack markup in alert templates) must escape them themselves.

/// Longest label value taken from another process. Real config and binary
/// paths are far shorter; a longer one only inflates every series.
pub const MAX_LABEL_BYTES: usize = 256;

/// Longest excerpt of a foreign string (a process title) put in a log line.
const MAX_LOG_CHARS: usize = 120;

/// Why a label value taken from another process is refused.
pub(super) fn check_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(format!("{} bytes long (at most {MAX_LABEL_BYTES})", value.len()));
    }
    match value.chars().find(|&c| !is_label_char(c)) {
        Some(c) => Err(format!("contains the character {:?}", c)),
        None => Ok(()),
    }
}

/// Printable characters only: no control characters (newlines, ANSI escapes),
/// no replacement character (the bytes were not UTF-8, so the value would not
/// be the real path), and no invisible formatting characters that make a
/// value look like another one (bidi overrides, zero-width characters).
fn is_label_char(c: char) -> bool {
    !c.is_control()
        && c != char::REPLACEMENT_CHARACTER
        && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// A container id exactly as runtimes write it: 64 lowercase hex digits.
pub(super) fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A foreign string made safe for one log line: at most [`MAX_LOG_CHARS`]
/// characters (then "…"), quoted, with control characters escaped, so a
/// process title can neither forge log lines nor flood them.
pub fn log_excerpt(s: &str) -> String {
    let mut cut: String = s.chars().take(MAX_LOG_CHARS).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_paths_pass() {
        for ok in [
            "/etc/nginx/nginx.conf",
            "/srv/my site/nginx.conf",
            "/srv/café/n.conf",
            "/tmp/<!channel>.conf",
            "conf/nginx.conf",
        ] {
            assert_eq!(check_label(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        for bad in [
            String::new(),
            "/etc/a\nfake log line".into(),
            "/etc/\x1b[31mred".into(),
            "/etc/a\u{202e}fnoc.x".into(),
            "/etc/\u{fffd}.conf".into(),
            "/etc/zero\u{200b}width".into(),
            format!("/{}", "a".repeat(MAX_LABEL_BYTES)),
        ] {
            assert!(check_label(&bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(check_label(&format!("/{}", "a".repeat(MAX_LABEL_BYTES - 1))), Ok(()));
    }

    #[test]
    fn container_ids_are_64_lowercase_hex() {
        assert!(is_container_id(&"ab12".repeat(16)));
        assert!(!is_container_id(&"AB12".repeat(16)));
        assert!(!is_container_id(&"ab12".repeat(15)));
        assert!(!is_container_id(&format!("{}zz", "a".repeat(62))));
    }

    #[test]
    fn log_excerpt_escapes_and_bounds() {
        let title = format!(
            "nginx: master process\n2026-01-01 INFO forged\x1b[2J{}",
            "x".repeat(10_000)
        );
        let out = log_excerpt(&title);
        assert!(!out.contains('\n') && !out.contains('\x1b'), "{out}");
        assert!(out.contains("\\n") && out.contains("\\u{1b}"), "{out}");
        assert!(out.chars().count() < 2 * MAX_LOG_CHARS, "{} chars", out.chars().count());
        assert!(out.ends_with("…\""), "{out}");
        assert_eq!(log_excerpt("short"), "\"short\"");
    }
}
