//! Finds the line/column of a field path in YAML text.
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

/// Which position of the final step is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The mapping key (for "unknown field").
    Key,
    /// The value (for "invalid value").
    Value,
}

/// 1-based (line, column) of `path` in `text`, if the text is valid YAML and
/// the path exists.
pub fn locate(text: &str, path: &[Step], anchor: Anchor) -> Option<(u64, u64)> {
    let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
    let mut node = &root;
    let mut key_position = None;
    for step in path {
        match (&node.value, step) {
            (Node::Map(entries), Step::Key(name)) => {
                let (key, value) = entries.iter().find(|(k, _)| k.value == *name)?;
                key_position = Some(position(&key.referenced));
                node = value;
            }
            (Node::Seq(items), Step::Index(i)) => {
                node = items.get(*i)?;
                key_position = None;
            }
            _ => return None,
        }
    }
    match (anchor, key_position) {
        (Anchor::Key, Some(key)) => Some(key),
        _ => Some(position(&node.referenced)),
    }
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

    const TEXT: &str = "web:\n  listen_address: \":1\"\ndiscovery:\n  interval: 1s\n  intervall: 2s\nlist:\n  - a\n  - b: 1\n";

    fn key(s: &str) -> Step {
        Step::Key(s.to_string())
    }

    #[test]
    fn finds_keys_and_values() {
        assert_eq!(
            locate(TEXT, &[key("discovery"), key("intervall")], Anchor::Key),
            Some((5, 3))
        );
        assert_eq!(
            locate(TEXT, &[key("discovery"), key("interval")], Anchor::Value),
            Some((4, 13))
        );
        assert_eq!(
            locate(TEXT, &[key("web"), key("listen_address")], Anchor::Value),
            Some((2, 19))
        );
        assert_eq!(
            locate(TEXT, &[key("list"), Step::Index(1), key("b")], Anchor::Key),
            Some((8, 5))
        );
        assert_eq!(locate(TEXT, &[key("nope")], Anchor::Key), None);
        assert_eq!(locate("a: [", &[key("a")], Anchor::Key), None);
    }
}
