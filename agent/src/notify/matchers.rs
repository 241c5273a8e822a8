//! Label matchers as Alertmanager writes them: `severity="critical"`,
//! `instance=~"web-.*"`, `{a="b", c!="d"}`, and the legacy `match` /
//! `match_re` maps of routes and inhibit rules.
use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::compat::quote::go_quote;
pub use crate::series::is_valid_label_name as valid_label_name;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One `name op value` matcher. Regexes are fully anchored, as in Alertmanager.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("invalid regular expression {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// A missing label matches like the empty string (Prometheus semantics).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match (self.op, &self.re) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }
}

impl fmt::Display for Matcher {
    /// `name="value"` with the value quoted Go-style (Alertmanager's String()).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), go_quote(&self.value))
    }
}

/// Parses one entry of a `matchers:` list: one or more comma-separated
/// matchers, optionally in braces.
pub fn parse_matchers(input: &str) -> Result<Vec<Matcher>, String> {
    let mut s = input.trim();
    if let Some(inner) = s.strip_prefix('{') {
        s = inner
            .strip_suffix('}')
            .ok_or_else(|| format!("{input:?}: missing closing '}}'"))?
            .trim();
    } else if s.ends_with('}') {
        return Err(format!("{input:?}: missing opening '{{'"));
    }
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.trim().is_empty() {
        let (m, after) = parse_one(rest).map_err(|e| format!("bad matcher {input:?}: {e}"))?;
        out.push(m);
        let after = after.trim_start();
        rest = match after.strip_prefix(',') {
            Some(r) => r,
            None if after.is_empty() => after,
            None => return Err(format!("bad matcher {input:?}: expected ',' before {after:?}")),
        };
    }
    if out.is_empty() {
        return Err(format!("bad matcher {input:?}: empty"));
    }
    Ok(out)
}

/// One matcher at the start of `s`; returns it and the unparsed rest.
fn parse_one(s: &str) -> Result<(Matcher, &str), String> {
    let s = s.trim_start();
    let name_len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..name_len];
    if name.is_empty() {
        return Err("expected a label name".into());
    }
    let rest = s[name_len..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (MatchOp::Regex, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (MatchOp::Equal, r)
    } else {
        return Err(format!("expected one of =, !=, =~, !~ after {name:?}"));
    };
    let rest = rest.trim_start();
    let (value, rest) = if let Some(body) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                c => value.push(c),
            }
        }
        let end = end.ok_or("missing closing quote")?;
        (value, &body[end..])
    } else {
        let end = rest.find(',').unwrap_or(rest.len());
        let raw = rest[..end].trim();
        if raw.contains('"') {
            return Err(format!("unbalanced quotes in {raw:?}"));
        }
        (raw.to_string(), &rest[end..])
    };
    Ok((Matcher::new(name, op, &value)?, rest))
}

/// A `matchers:` list entry as written in YAML, validated while parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct MatcherList(pub String, pub Vec<Matcher>);

impl<'de> Deserialize<'de> for MatcherList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let m = parse_matchers(&s).map_err(serde::de::Error::custom)?;
        Ok(MatcherList(s, m))
    }
}

impl Serialize for MatcherList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A `match_re` value, validated while parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct RegexString(pub String);

impl<'de> Deserialize<'de> for RegexString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&format!("^(?:{s})$"))
            .map_err(|e| serde::de::Error::custom(format!("invalid regular expression {s:?}: {e}")))?;
        Ok(RegexString(s))
    }
}

impl Serialize for RegexString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_alertmanager_matcher_syntax() {
        let m = parse_matchers(r#"{severity="critical", instance=~"web-.*"}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert!(all_match(
            &m,
            &labels(&[("severity", "critical"), ("instance", "web-1")])
        ));
        assert!(!all_match(
            &m,
            &labels(&[("severity", "critical"), ("instance", "xweb-1")])
        ));
        let m = parse_matchers("alertname = Watchdog").unwrap();
        assert_eq!(m[0].value, "Watchdog");
        let m = parse_matchers(r#"team!~"a|b""#).unwrap();
        assert!(m[0].matches(&labels(&[])));
        assert!(!m[0].matches(&labels(&[("team", "a")])));
        assert_eq!(m[0].to_string(), r#"team!~"a|b""#);
        for bad in ["", "foo", "=bar", "a=~\"(\"", "{a=b", "a=\"b", "1a=b"] {
            assert!(parse_matchers(bad).is_err(), "{bad:?} should fail");
        }
    }
}
