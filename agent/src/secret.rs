//! Secrets (webhook URLs, API keys, passwords) that must never reach logs,
//! config dumps or error messages. Only [`Secret::expose`] reveals the value.
//! A leaf: any stage whose config section holds a secret uses this type.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// A `*_file` secret that could not be read (names the file, never the value).
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot read secret file: {source}", path.display())]
pub struct SecretFileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What Display, Debug and serialization print instead of the value.
pub const REDACTED: &str = "<secret>";

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value: call this only where the secret is used (HTTP request).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// `url` with its user-info (`user:pass@`, which HTTP clients turn into
/// basic auth) replaced by `<secret>`: for metric labels and logs, which
/// must never carry credentials. Works on bare `user:pass@host:port` too.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{REDACTED}@{}", &url[..start], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Reads a secret from a file (`*_file` fields, Kubernetes secret mounts).
/// Surrounding whitespace is trimmed, as Prometheus does, so the trailing
/// newline of `echo URL > file` doesn't end up in the secret.
pub fn load_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError {
        path: path.to_path_buf(),
        source,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretFileError {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file is empty"),
        });
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let s = Secret::new("https://hooks.slack.com/services/T0/B0/XYZ");
        assert_eq!(format!("{s}"), "<secret>");
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"<secret>\""));
        assert_eq!(s.expose(), "https://hooks.slack.com/services/T0/B0/XYZ");
    }

    #[test]
    fn redacts_url_user_info() {
        for (url, want) in [
            (
                "http://user:pass@am.example:9093/api/v2/alerts",
                "http://<secret>@am.example:9093/api/v2/alerts",
            ),
            ("https://token@am.example/x?y=1", "https://<secret>@am.example/x?y=1"),
            ("user:p%40ss@10.0.0.1:9093", "<secret>@10.0.0.1:9093"),
            ("http://a:b@c@host/", "http://<secret>@host/"),
            // '@' after the authority is not user-info.
            ("http://host:9093/path@x?q=a@b", "http://host:9093/path@x?q=a@b"),
            (
                "http://am.example:9093/api/v2/alerts",
                "http://am.example:9093/api/v2/alerts",
            ),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn deserializes_the_real_value() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap_or_default();
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn loads_trimmed_secret_file() {
        let dir = std::env::temp_dir().join(format!("ngxprobe-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("api_url");
        std::fs::write(&file, "  https://example.invalid/hook\n").unwrap();
        let secret = load_secret_file(&file).unwrap();
        assert_eq!(secret.expose(), "https://example.invalid/hook");

        std::fs::write(&file, "\n").unwrap();
        let empty = load_secret_file(&file).unwrap_err().to_string();
        assert!(empty.contains("api_url") && empty.contains("empty"), "{empty}");

        let missing = load_secret_file(&dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        // The error names the file but never contains the secret.
        assert!(!missing.contains("example.invalid"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
