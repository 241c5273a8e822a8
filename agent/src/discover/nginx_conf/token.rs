//! nginx's config syntax, split the way ngx_conf_read_token splits it:
//! words separated by blanks, `"…"` and `'…'` quoting, backslash escapes
//! (in and out of quotes), `#` comments to the end of the line (only where a
//! word may start), `;` ending a directive, `{` opening and `}` closing a
//! block, and `${var}` inside a word (its braces do not open a block).
use std::fmt;

/// One statement of a config file.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `words… ;` (`block` false) or `words… {` (`block` true). `line` is
    /// where the directive's first word is.
    Directive { words: Vec<String>, line: u32, block: bool },
    /// `}`.
    BlockEnd { line: u32 },
}

/// A syntax error at a line (nginx would refuse the file).
#[derive(Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u32,
    pub what: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// Splits a whole file into statements.
pub fn tokenize(text: &[u8]) -> Result<Vec<Item>, SyntaxError> {
    let mut t = Tokenizer { text, pos: 0, line: 1 };
    let mut out = Vec::new();
    while let Some(item) = t.next_item()? {
        out.push(item);
    }
    Ok(out)
}

struct Tokenizer<'a> {
    text: &'a [u8],
    pos: usize,
    line: u32,
}

fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

impl Tokenizer<'_> {
    fn bump(&mut self) -> Option<u8> {
        let c = *self.text.get(self.pos)?;
        self.pos += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, what: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: self.line,
            what: what.into(),
        }
    }

    /// The next statement; None at the end of the text.
    fn next_item(&mut self) -> Result<Option<Item>, SyntaxError> {
        let mut words: Vec<String> = Vec::new();
        let mut first_line = self.line;
        loop {
            // Between words: blanks, comments and the three terminators.
            let Some(c) = self.bump() else {
                return if words.is_empty() {
                    Ok(None)
                } else {
                    Err(self.err("unexpected end of file, expecting \";\" or \"}\""))
                };
            };
            match c {
                c if is_blank(c) => {}
                b'#' => {
                    while let Some(c) = self.bump() {
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                b';' | b'{' => {
                    if words.is_empty() {
                        return Err(self.err(format!("unexpected \"{}\"", c as char)));
                    }
                    return Ok(Some(Item::Directive {
                        words,
                        line: first_line,
                        block: c == b'{',
                    }));
                }
                b'}' => {
                    if !words.is_empty() {
                        return Err(self.err("unexpected \"}\""));
                    }
                    return Ok(Some(Item::BlockEnd { line: self.line }));
                }
                _ => {
                    if words.is_empty() {
                        first_line = self.line;
                    }
                    let (word, end) = self.word(c)?;
                    words.push(word);
                    match end {
                        WordEnd::Blank => {}
                        WordEnd::Semicolon | WordEnd::Brace => {
                            return Ok(Some(Item::Directive {
                                words,
                                line: first_line,
                                block: end == WordEnd::Brace,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// A word starting with `first`; consumes what ends it.
    fn word(&mut self, first: u8) -> Result<(String, WordEnd), SyntaxError> {
        let quote = matches!(first, b'"' | b'\'').then_some(first);
        let mut raw = Vec::new();
        let mut escaped = false;
        // After `$`, a `{` belongs to the word (`${var}`).
        let mut dollar = false;
        if quote.is_none() {
            self.pos -= 1;
        }
        loop {
            let Some(c) = self.bump() else {
                return match quote {
                    Some(_) => Err(self.err("unexpected end of file in a quoted string")),
                    None => Err(self.err("unexpected end of file, expecting \";\" or \"}\"")),
                };
            };
            if escaped {
                escaped = false;
                raw.push(c);
                continue;
            }
            if c == b'{' && dollar {
                raw.push(c);
                continue;
            }
            dollar = false;
            match c {
                b'\\' => {
                    escaped = true;
                    raw.push(c);
                }
                b'$' => {
                    dollar = true;
                    raw.push(c);
                }
                c if Some(c) == quote => {
                    // A closing quote must be followed by a blank, `;`, `{`
                    // or `)` (the end of an `if` condition).
                    let end = match self.bump() {
                        Some(c) if is_blank(c) || c == b')' => {
                            if c == b')' {
                                // Kept out of the word, as nginx does not
                                // treat it as a terminator: it starts the next.
                                self.pos -= 1;
                            }
                            WordEnd::Blank
                        }
                        Some(b';') => WordEnd::Semicolon,
                        Some(b'{') => WordEnd::Brace,
                        Some(c) => return Err(self.err(format!("unexpected \"{}\"", c as char))),
                        None => return Err(self.err("unexpected end of file, expecting \";\" or \"}\"")),
                    };
                    return Ok((unescape(&raw), end));
                }
                c if quote.is_none() && is_blank(c) => return Ok((unescape(&raw), WordEnd::Blank)),
                b';' if quote.is_none() => return Ok((unescape(&raw), WordEnd::Semicolon)),
                b'{' if quote.is_none() => return Ok((unescape(&raw), WordEnd::Brace)),
                c => raw.push(c),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum WordEnd {
    Blank,
    Semicolon,
    Brace,
}

/// nginx's escapes: `\"`, `\'` and `\\` stand for the character, `\t`, `\r`
/// and `\n` for the control character; any other backslash stays.
fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\'
            && let Some(&n) = raw.get(i + 1)
        {
            let rep = match n {
                b'"' | b'\'' | b'\\' => Some(n),
                b't' => Some(b'\t'),
                b'r' => Some(b'\r'),
                b'n' => Some(b'\n'),
                _ => None,
            };
            if let Some(r) = rep {
                out.push(r);
                i += 2;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
