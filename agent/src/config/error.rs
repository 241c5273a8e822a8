//! Config errors. Every problem with a file names FILE:LINE:COLUMN and the
//! dotted field path, so a user can fix a 200-line config from one message.
use std::fmt;
use std::path::PathBuf;

use super::locate::{common_message, dotted, error_location, locate, steps_from_path, take_unknown_field};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: config file not found", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: config file is empty (write at least one section, e.g. `web:`, or omit --config to run with the defaults)",
        path.display()
    )]
    Empty { path: PathBuf },

    /// YAML syntax error, unknown field, wrong type or invalid value.
    #[error("{0}")]
    Invalid(Box<InvalidField>),

    /// Fields that parse but do not make sense together (e.g. storage.interval 0s).
    #[error("{path}: {message}")]
    Semantic { path: std::path::PathBuf, message: String },

    /// A command-line flag that overrides a config field has a bad value.
    #[error("{field} (command-line override): {message}")]
    Override { field: &'static str, message: String },

    #[allow(dead_code)] // built by load_secret_file, used from alerting on
    #[error("{}: cannot read secret file: {source}", path.display())]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where in which file something is wrong, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub file: PathBuf,
    /// 1-based line and column, when the parser knows them.
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

impl InvalidField {
    /// Builds the error from serde-saphyr's error and the field path
    /// serde_path_to_error tracked, looking the path up in `text` for a
    /// precise position.
    pub(super) fn from_yaml(
        file: PathBuf,
        text: &str,
        err: &serde_saphyr::Error,
        path: Option<&serde_path_to_error::Path>,
    ) -> Self {
        let mut steps = steps_from_path(path, None);
        let mut message = bare_message(err);
        let mut anchor_key = false;
        // `discovery.intervall: unknown field, expected one of ...`
        if let Some((_, rest)) = take_unknown_field(&mut steps, &message) {
            message = format!("unknown field{rest}");
            anchor_key = true;
        }
        let position = locate(text, &steps, anchor_key)
            .filter(|_| !steps.is_empty())
            .or_else(|| error_location(err));
        InvalidField {
            file,
            position,
            field: dotted(&steps),
            message,
        }
    }
}

/// The error text without serde-saphyr's own " at line X column Y" suffix
/// (we print the position in the `FILE:LINE:COL` prefix instead).
fn bare_message(err: &serde_saphyr::Error) -> String {
    match err.without_snippet() {
        // serde-saphyr says just "invalid u32" for `max_seeded_connections: lots`.
        serde_saphyr::Error::Message { msg, .. } if integer_type(msg).is_some() => {
            format!("expected an integer ({})", integer_type(msg).unwrap_or_default())
        }
        other => common_message(other).unwrap_or_else(|| other.to_string()),
    }
}

/// `"invalid u32"` → `Some("u32")`.
fn integer_type(msg: &str) -> Option<&str> {
    let ty = msg.strip_prefix("invalid ")?;
    let digits = ty.strip_prefix('u').or_else(|| ty.strip_prefix('i'))?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(ty)
}
