//! The one YAML loader: every file ngxprobe reads (its config, alertmanager.yml,
//! rule files, rule unit tests) is parsed here, so every bad file gets the
//! same kind of error — FILE:LINE:COLUMN, the dotted field path, a message
//! without the parser's own position suffix.
//!
//! serde-saphyr knows *where* a syntax or type error is; serde_path_to_error
//! knows *which field* failed; [`yaml_locate`](super::yaml_locate) finds the
//! position of that field in the text when the parser could not.
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

pub use super::yaml_locate::{Step, dotted, key, locate, locate_nearest};
use super::yaml_locate::{common_message, error_location, steps_from_path, take_unknown_field};

/// Where in which file something is wrong, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(u64, u64)>,
    /// Dotted path such as `discovery.interval`; empty for the document itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A YAML document that did not deserialize: which field, and why.
#[derive(Debug, Clone)]
pub struct YamlError {
    /// Path to the failing field; for an unknown field, ending in its name.
    pub steps: Vec<Step>,
    /// The parser's message without its " at line X column Y" suffix, worded
    /// alike for every file ("expected a list", "expected an integer (u32)").
    pub message: String,
    /// For "unknown field `x`, expected one of `a`, `b`": the name `x` and the
    /// rest of the message without backticks (", expected one of a, b").
    pub unknown_field: Option<(String, String)>,
    /// The parser's own position of the error.
    parser_position: Option<(u64, u64)>,
}

impl YamlError {
    /// Position of the failing field in `text` (its key for an unknown field),
    /// else where the parser stopped.
    pub fn position(&self, text: &str) -> Option<(u64, u64)> {
        locate(text, &self.steps, self.unknown_field.is_some())
            .filter(|_| !self.steps.is_empty())
            .or(self.parser_position)
    }

    /// Like [`position`](Self::position), but when only a prefix of the path
    /// exists in the text, the position of the deepest part found.
    pub fn position_nearest(&self, text: &str) -> Option<(u64, u64)> {
        locate_nearest(text, &self.steps, self.unknown_field.is_some())
            .filter(|_| !self.steps.is_empty())
            .or(self.parser_position)
    }

    /// `discovery.interval`, `groups[0].rules[1].expr`.
    pub fn field(&self) -> String {
        dotted(&self.steps)
    }

    /// The error in `file`, located in `text`, with the message as given.
    pub fn in_file(&self, file: PathBuf, text: &str) -> InvalidField {
        InvalidField {
            file,
            position: self.position(text),
            field: self.field(),
            message: self.message.clone(),
        }
    }
}

/// Deserializes `text` into `T`, tracking the field path. `transparent` names
/// a map key that is not part of the user's path (e.g. `value` of a
/// `serde_saphyr::Spanned<T>`) and is left out of it.
pub fn from_str<T: DeserializeOwned>(text: &str, transparent: Option<&str>) -> Result<T, YamlError> {
    let options = serde_saphyr::Options {
        // Positions are printed by the caller as FILE:LINE:COL; snippets would
        // make multi-line errors.
        with_snippet: false,
        ..serde_saphyr::Options::default()
    };
    let mut field_path: Option<serde_path_to_error::Path> = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|err| {
            field_path = Some(err.path().clone());
            err.into_inner()
        })
    });
    result.map_err(|err| {
        let mut steps = steps_from_path(field_path.as_ref(), transparent);
        let message = bare_message(&err);
        let unknown_field =
            take_unknown_field(&mut steps, &message).map(|(name, rest)| (name.to_string(), rest.to_string()));
        YamlError {
            steps,
            message,
            unknown_field,
            parser_position: error_location(&err),
        }
    })
}

/// A file of only comments, blank lines and document markers configures
/// nothing; that is almost always a mistake (wrong file, failed templating).
pub fn has_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|line| !(line.is_empty() || line.starts_with('#') || line == "---" || line == "..."))
}

/// The error text without serde-saphyr's own " at line X column Y" suffix
/// (the caller prints the position in front instead).
fn bare_message(err: &serde_saphyr::Error) -> String {
    if let serde_saphyr::Error::Message { msg, .. } = err.without_snippet()
        && let Some(ty) = integer_type(msg)
    {
        // serde-saphyr says just "invalid u32" for `max_seeded_connections: lots`.
        return format!("expected an integer ({ty})");
    }
    common_message(err).unwrap_or_else(|| {
        let s = err.without_snippet().to_string();
        match s.find(" at line ") {
            Some(i) => s[..i].to_string(),
            None => s,
        }
    })
}

/// `"invalid u32"` → `Some("u32")`.
fn integer_type(msg: &str) -> Option<&str> {
    let ty = msg.strip_prefix("invalid ")?;
    let digits = ty.strip_prefix('u').or_else(|| ty.strip_prefix('i'))?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields are only deserialized
    struct Doc {
        outer: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
        #[serde(default)]
        names: Vec<String>,
    }

    #[test]
    fn names_field_and_position() {
        let text = "outer:\n  count: lots\n";
        let e = from_str::<Doc>(text, None)
            .err()
            .map(|e| e.in_file("f.yml".into(), text));
        let e = e.map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("f.yml:2:10: outer.count: expected an integer (u32)"));
    }

    #[test]
    fn unknown_field_points_at_its_key() {
        let text = "outer:\n  count: 1\n  nmaes: [a]\n";
        let Err(e) = from_str::<Doc>(text, None) else {
            panic!("an unknown field must fail");
        };
        assert_eq!(e.field(), "outer.nmaes");
        assert_eq!(e.unknown_field.as_ref().map(|u| u.0.as_str()), Some("nmaes"));
        assert_eq!(e.position(text), Some((3, 3)));
    }

    #[test]
    fn content_check() {
        assert!(!has_content("# nothing\n---\n\n"));
        assert!(has_content("web: {}\n"));
    }
}
