//! The `global:` section: Prometheus's `global.external_labels`.
//!
//! External labels name the agent (its node, cluster, region) to whatever
//! receives its data: they are added to every series `remote_write` sends
//! and to every alert sent to a notifier, unless the series or alert already
//! has that label (its own value wins), and they are `$externalLabels` in
//! rule templates. They are not added to the local store, /metrics or
//! queries, as in Prometheus.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::LabelName;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalConfig {
    /// Values may name environment variables (`${NODE_NAME}`), expanded when
    /// the file is loaded.
    pub external_labels: BTreeMap<LabelName, String>,
}

/// Expands `$NAME` and `${NAME}` in `value` from `env`, `$$` to `$`, as
/// Prometheus's `--enable-feature=expand-external-labels` does (Go's
/// `os.Expand`). Unlike Prometheus, which logs a warning and substitutes an
/// empty string, an unset or empty variable is an error: an empty external
/// label is no label, so every node would send the same series. A `$` not
/// followed by a name stays as it is; an unclosed `${` is an error.
pub fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(0) => return Err("`${}` names no environment variable".into()),
                Some(end) => (&braced[..end], end + 2),
                None => return Err("`${` without a closing `}`".into()),
            }
        } else if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
            continue;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
        } else {
            match env(name) {
                Some(v) if !v.is_empty() => out.push_str(&v),
                Some(_) => return Err(format!("environment variable {name} is empty")),
                None => return Err(format!("environment variable {name} is not set")),
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NODE_NAME" => Some("node-1".into()),
            "EMPTY" => Some(String::new()),
            "A_1" => Some("x".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_os_expand() {
        for (input, want) in [
            ("${NODE_NAME}", "node-1"),
            ("$NODE_NAME", "node-1"),
            ("n-${NODE_NAME}-z", "n-node-1-z"),
            ("$NODE_NAME.example", "node-1.example"),
            ("$A_1$A_1", "xx"),
            ("plain", "plain"),
            ("", ""),
            ("cost $$5", "cost $5"),
            ("$$NODE_NAME", "$NODE_NAME"),
            ("50$", "50$"),
            ("a $ b", "a $ b"),
        ] {
            assert_eq!(expand_env(input, &env).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unset_empty_and_malformed_are_errors() {
        assert_eq!(
            expand_env("${MISSING}", &env),
            Err("environment variable MISSING is not set".to_string())
        );
        assert_eq!(
            expand_env("x-$MISSING", &env),
            Err("environment variable MISSING is not set".to_string())
        );
        assert_eq!(
            expand_env("${EMPTY}", &env),
            Err("environment variable EMPTY is empty".to_string())
        );
        assert!(expand_env("${NODE_NAME", &env).unwrap_err().contains("closing"));
        assert!(expand_env("${}", &env).unwrap_err().contains("names no"));
    }
}
