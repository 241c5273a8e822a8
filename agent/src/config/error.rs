//! Config errors. Every problem with a file names FILE:LINE:COLUMN and the
//! dotted field path, so a user can fix a 200-line config from one message.
use std::path::PathBuf;

use crate::compat::InvalidField;

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
}
