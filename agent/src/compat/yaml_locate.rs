//! Finds the line/column of a field path in YAML text, and shapes the
//! pieces of a YAML error message (path, position) the same way for every
//! file ngxprobe reads: the agent config, alertmanager.yml, rule files.
//!
//! serde-saphyr attaches positions to syntax and type errors, but not to
//! errors raised by our own value parsers (durations, addresses), and for an
//! unknown field it points at the enclosing mapping. So after a failed parse
//! we re-read the text into a tree of spanned keys and values and look the
//! failing path up.
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// `Step::Key` of a `&str`.
pub fn key(s: &str) -> Step {
    Step::Key(s.to_string())
}

/// `discovery.interval`, `receivers[0].name`.
pub fn dotted(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The field path serde_path_to_error tracked, up to the first segment it
/// could not read. `transparent` names a map key that is not part of the
/// user's path (e.g. `value` of a `Spanned<T>`) and is skipped.
pub fn steps_from_path(path: Option<&serde_path_to_error::Path>, transparent: Option<&str>) -> Vec<Step> {
    use serde_path_to_error::Segment;
    let mut steps = Vec::new();
    for segment in path.into_iter().flat_map(|p| p.iter()) {
        match segment {
            Segment::Map { key } if Some(key.as_str()) == transparent => {}
            Segment::Map { key } | Segment::Enum { variant: key } => steps.push(Step::Key(key.clone())),
            Segment::Seq { index } => steps.push(Step::Index(*index)),
            // A key that could not be read: the path ends at its parent.
            Segment::Unknown => break,
        }
    }
    steps
}

/// serde says "unknown field `intervall`, expected one of `a`, `b`": the name
/// belongs in the path. Appends it to `steps` (unless already last) and
/// returns it with the rest of the message without backticks
/// (`, expected one of a, b`); `None` for any other message.
pub fn take_unknown_field<'m>(steps: &mut Vec<Step>, message: &'m str) -> Option<(&'m str, String)> {
    let (name, rest) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))?;
    if steps.last() != Some(&Step::Key(name.to_string())) {
        steps.push(Step::Key(name.to_string()));
    }
    Some((name, rest.replace('`', "")))
}

/// The message of the serde-saphyr errors every YAML reader words alike
/// (free-form messages, early end of input, wrong node kind), without
/// serde-saphyr's " at line X column Y" suffix; `None` for the other kinds.
pub fn common_message(err: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error as E;
    Some(match err.without_snippet() {
        E::Message { msg, .. } | E::HookError { msg, .. } => msg.clone(),
        E::Eof { .. } => "unexpected end of input".to_string(),
        E::Unexpected { expected, .. } => match *expected {
            "mapping start" => "expected a mapping (key: value pairs)".to_string(),
            "sequence start" => "expected a list".to_string(),
            other => format!("expected {other}"),
        },
        _ => return None,
    })
}

/// serde-saphyr's own position of an error, 1-based (line, column).
pub fn error_location(err: &serde_saphyr::Error) -> Option<(u64, u64)> {
    err.location().map(|loc| position(&loc))
}

/// 1-based (line, column) of `path` in `text`, if the text is valid YAML and
/// the whole path exists: of the final mapping key when `anchor_key` (for
/// "unknown field"), else of the value.
pub fn locate(text: &str, path: &[Step], anchor_key: bool) -> Option<(u64, u64)> {
    let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
    let found = walk(&root, path);
    (found.depth == path.len()).then(|| found.position(anchor_key))
}

/// Like [`locate`], but when only a prefix of `path` exists, the position of
/// the deepest step found (its key, or the item for a list index).
pub fn locate_nearest(text: &str, path: &[Step], anchor_key: bool) -> Option<(u64, u64)> {
    let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
    let found = walk(&root, path);
    match found.depth {
        d if d == path.len() => Some(found.position(anchor_key)),
        0 => None,
        _ => Some(found.position(true)),
    }
}

/// How far a path was found, and where it ended.
struct Found<'a> {
    /// Steps of the path that exist.
    depth: usize,
    node: &'a Spanned<Node>,
    /// The key of the last step found, when that step was a mapping key.
    key: Option<(u64, u64)>,
}

impl Found<'_> {
    fn position(&self, anchor_key: bool) -> (u64, u64) {
        match (anchor_key, self.key) {
            (true, Some(key)) => key,
            _ => position(&self.node.referenced),
        }
    }
}

fn walk<'a>(root: &'a Spanned<Node>, path: &[Step]) -> Found<'a> {
    let mut found = Found {
        depth: 0,
        node: root,
        key: None,
    };
    for step in path {
        match (&found.node.value, step) {
            (Node::Map(entries), Step::Key(name)) => {
                let Some((key, value)) = entries.iter().find(|(k, _)| k.value == *name) else {
                    break;
                };
                found.key = Some(position(&key.referenced));
                found.node = value;
            }
            (Node::Seq(items), Step::Index(i)) => {
                let Some(item) = items.get(*i) else { break };
                found.key = None;
                found.node = item;
            }
            _ => break,
        }
        found.depth += 1;
    }
    found
}

fn position(loc: &serde_saphyr::Location) -> (u64, u64) {
    (loc.line(), loc.column())
}

/// A YAML document reduced to its shape and positions.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "web:\n  listen_address: \":1\"\ndiscovery:\n  interval: 1s\n  intervall: 2s\nlist:\n  - a\n  - b: 1\n";

    #[test]
    fn finds_keys_and_values() {
        assert_eq!(locate(TEXT, &[key("discovery"), key("intervall")], true), Some((5, 3)));
        assert_eq!(locate(TEXT, &[key("discovery"), key("interval")], false), Some((4, 13)));
        assert_eq!(locate(TEXT, &[key("web"), key("listen_address")], false), Some((2, 19)));
        assert_eq!(
            locate(TEXT, &[key("list"), Step::Index(1), key("b")], true),
            Some((8, 5))
        );
        assert_eq!(locate(TEXT, &[key("nope")], true), None);
        assert_eq!(locate("a: [", &[key("a")], true), None);
    }

    #[test]
    fn nearest_falls_back_to_the_deepest_parent() {
        let path = [key("discovery"), key("nope")];
        assert_eq!(locate(TEXT, &path, true), None);
        assert_eq!(locate_nearest(TEXT, &path, true), Some((3, 1)));
        assert_eq!(
            locate_nearest(TEXT, &[key("list"), Step::Index(5)], false),
            Some((6, 1))
        );
        assert_eq!(
            locate_nearest(TEXT, &[key("list"), Step::Index(0), key("x")], false),
            Some((7, 5))
        );
        assert_eq!(locate_nearest(TEXT, &[key("nope")], true), None);
        assert_eq!(
            locate_nearest(TEXT, &[key("discovery"), key("interval")], false),
            locate(TEXT, &[key("discovery"), key("interval")], false)
        );
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(
            dotted(&[key("receivers"), Step::Index(0), key("name")]),
            "receivers[0].name"
        );
        assert_eq!(dotted(&[Step::Index(2), key("a")]), "[2].a");
        assert_eq!(dotted(&[]), "");
    }
}
