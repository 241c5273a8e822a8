//! Small validated value types of the top-level config.
use serde_with::{DeserializeFromStr, SerializeDisplay};
use std::fmt;
use std::str::FromStr;

/// A Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__reserved`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, SerializeDisplay, DeserializeFromStr)]
pub struct LabelName(String);

impl LabelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabelName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name {s:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        if s.starts_with("__") {
            return Err(format!("invalid label name {s:?}: names starting with __ are reserved"));
        }
        Ok(LabelName(s.to_string()))
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
