//! Bounded recursion: promql-parser, the evaluator, `Drop` of the syntax tree
//! and the formatter all recurse once per level of the expression tree, and a
//! stack overflow aborts the process (no `catch_unwind` can stop it). So the
//! depth a query's tree *could* have is bounded on the raw text, before
//! anything recurses, and a query runs on a thread whose stack is sized for
//! that bound ([`query_stack_size`]).
//!
//! The bound, computed in one pass without recursion: every bracket group
//! `(`, `[`, `{` is a level; inside a group, each operator token (binary or
//! unary, `and`/`or`/`unless`/`atan2`) and each postfix `[` (range or
//! subquery) may add one more. A group's bound is 1 + its operators + its
//! deepest child group's bound. It never undercounts the tree (each tree
//! level on a root-to-leaf path needs its own bracket or operator token) and
//! overcounts little for real queries (a number's sign or a label list count
//! as levels).

/// The most `query.max_depth` may be set to: `query_stack_size` of it is
/// already 2 MiB + 80 MiB of reserved (not resident) stack in a debug build.
pub const MAX_DEPTH_LIMIT: usize = 10_000;

/// Stack bytes reserved per level of `max_depth`. Measured (stack high-water
/// mark of parse + evaluation + drop, per bound level, on the deepest-per-level
/// shapes: nested calls, aggregations, subqueries, operator chains): at most
/// ~2.1 KiB in a release build and ~15 KiB in a debug build; these keep a 3x
/// margin (the `deep_queries_fit_half_the_stack` test checks half of it).
const STACK_PER_LEVEL: usize = if cfg!(debug_assertions) { 48 << 10 } else { 8 << 10 };
/// Fixed part: the frames around the recursion (API handler, store reads,
/// regex compilation, JSON encoding).
const STACK_BASE: usize = 2 << 20;

/// Stack size of a thread that parses and evaluates queries up to `max_depth`.
pub fn query_stack_size(max_depth: usize) -> usize {
    STACK_BASE + max_depth.min(MAX_DEPTH_LIMIT) * STACK_PER_LEVEL
}

/// An error naming the limit when `q`'s tree could be deeper than `max_depth`.
pub fn check_depth(q: &str, max_depth: usize) -> Result<(), String> {
    match depth_bound(q, max_depth) {
        Some(d) if d <= max_depth => Ok(()),
        _ => Err(format!(
            "parse error: expression nested too deeply: more than {max_depth} levels of brackets and operators (query.max_depth)"
        )),
    }
}

struct Group {
    /// `{` groups hold label matchers: their `=`, `!=` are not operators.
    braces: bool,
    ops: usize,
    deepest_child: usize,
}

impl Group {
    fn new(braces: bool) -> Self {
        Group {
            braces,
            ops: 0,
            deepest_child: 0,
        }
    }
    fn bound(&self) -> usize {
        1 + self.ops + self.deepest_child
    }
}

/// The bound described in the module doc, or None as soon as it is certain
/// to pass `stop` (so a hostile text costs one short scan and no memory).
pub fn depth_bound(q: &str, stop: usize) -> Option<usize> {
    let b = q.as_bytes();
    let mut stack = vec![Group::new(false)];
    // Σ (1 + operators so far) over the open groups: a lower bound of the
    // final answer, so passing `stop` ends the scan.
    let mut path = 1usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let braces = stack.last().is_some_and(|g| g.braces);
        let mut op = false;
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                // A `[` after an operand wraps it: a range or subquery node.
                op = c == b'[';
                stack.push(Group::new(c == b'{'));
                path += 1;
            }
            b')' | b']' | b'}' => {
                if stack.len() > 1
                    && let Some(g) = stack.pop()
                    && let Some(parent) = stack.last_mut()
                {
                    path -= 1 + g.ops;
                    parent.deepest_child = parent.deepest_child.max(g.bound());
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!' => {
                // Two-character operators (`==`, `!=`, `<=`, `>=`) count once.
                let second_of_two = c == b'=' && i > 0 && matches!(b[i - 1], b'=' | b'!' | b'<' | b'>');
                op = !braces && !second_of_two;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_' || b[i + 1] == b':') {
                    i += 1;
                }
                let word = &q[start..=i];
                op = !braces
                    && ["and", "or", "unless", "atan2"]
                        .iter()
                        .any(|k| word.eq_ignore_ascii_case(k));
            }
            _ => {}
        }
        if op {
            // The operator belongs to the group it appears in (a `[` to the
            // group around it, pushed just above).
            let at = if c == b'[' { stack.len() - 2 } else { stack.len() - 1 };
            stack[at].ops += 1;
            path += 1;
        }
        if path > stop {
            return None;
        }
        i += 1;
    }
    while stack.len() > 1
        && let Some(g) = stack.pop()
        && let Some(parent) = stack.last_mut()
    {
        parent.deepest_child = parent.deepest_child.max(g.bound());
    }
    let d = stack.first()?.bound();
    (d <= stop).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(q: &str) -> Option<usize> {
        depth_bound(q, 1_000_000)
    }

    #[test]
    fn bounds_real_queries_closely() {
        assert_eq!(bound("up"), Some(1));
        assert_eq!(bound("sum(rate(x[5m]))"), Some(5));
        assert_eq!(bound("a + b * c"), Some(3));
        assert_eq!(bound(r#"x{a="(((",b!="1+2"} # ((((("#), Some(2));
        assert_eq!(bound("a == b and c >= d"), Some(4));
        assert_eq!(bound("max_over_time((x)[5m:1m])"), Some(4));
    }

    #[test]
    fn never_below_the_tree_depth() {
        // Operator chains are as deep as they are long.
        let chain = format!("1{}", "+1".repeat(300));
        assert_eq!(bound(&chain), Some(301));
        let unary = format!("{}1", "-".repeat(300));
        assert_eq!(bound(&unary), Some(301));
        let nested = format!("{}x{}", "abs(".repeat(300), ")".repeat(300));
        assert_eq!(bound(&nested), Some(301));
    }

    /// The largest `n` for which `shape(n)` passes the depth check.
    fn deepest(shape: &dyn Fn(usize) -> String, max_depth: usize) -> String {
        let (mut lo, mut hi) = (1, max_depth + 1);
        assert!(check_depth(&shape(lo), max_depth).is_ok());
        assert!(check_depth(&shape(hi), max_depth).is_err());
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if check_depth(&shape(mid), max_depth).is_ok() {
                lo = mid
            } else {
                hi = mid
            }
        }
        shape(lo)
    }

    /// The deepest accepted query of each recursive shape parses, evaluates,
    /// formats and drops on half the stack [`query_stack_size`] reserves:
    /// the per-level figure keeps its margin as the parser and evaluator
    /// change.
    #[test]
    fn deep_queries_fit_half_the_stack() {
        use crate::query::{QueryConfig, instant_query_expr, parse_limited};
        use crate::series::{Labels, MemStore};
        let max_depth = QueryConfig::default().max_depth;
        type Shape = Box<dyn Fn(usize) -> String>;
        let shapes: [(&str, Shape); 7] = [
            ("parens", Box::new(|n| format!("{}x{}", "(".repeat(n), ")".repeat(n)))),
            ("calls", Box::new(|n| format!("{}x{}", "abs(".repeat(n), ")".repeat(n)))),
            (
                "aggregations",
                Box::new(|n| format!("{}x{}", "sum by (a) (".repeat(n), ")".repeat(n))),
            ),
            (
                "subqueries",
                Box::new(|n| format!("{}x{}", "max_over_time((".repeat(n), ")[1m:1m])".repeat(n))),
            ),
            ("chain", Box::new(|n| format!("x{}", " + x".repeat(n)))),
            ("unary", Box::new(|n| format!("{}x", "-".repeat(n)))),
            ("set operators", Box::new(|n| format!("x{}", " or x".repeat(n)))),
        ];
        let queries: Vec<(&str, String)> = shapes.iter().map(|(name, f)| (*name, deepest(f, max_depth))).collect();
        let half = query_stack_size(max_depth) / 2;
        let run = std::thread::Builder::new().stack_size(half).spawn(move || {
            let store = MemStore::new();
            let x = Labels::new([
                ("__name__".to_string(), "x".to_string()),
                ("a".to_string(), "1".to_string()),
            ]);
            for k in 0..=10 {
                store.insert(&x, k * 60_000, k as f64);
            }
            for (name, q) in queries {
                let e = parse_limited(&q, max_depth, usize::MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
                let eo = crate::query::EvalOpts {
                    deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(20)),
                    ..Default::default()
                };
                let r = instant_query_expr(&store, &e, 600_000, &eo);
                assert!(r.is_ok(), "{name}: {:?}", r.err());
                assert!(!e.prettify().is_empty());
                drop(e);
            }
        });
        run.unwrap().join().unwrap();
    }

    #[test]
    fn deep_text_stops_early_and_names_the_limit() {
        let deep = format!("{}1{}", "(".repeat(60_000), ")".repeat(60_000));
        assert_eq!(depth_bound(&deep, 500), None);
        let e = check_depth(&deep, 500).unwrap_err();
        assert!(e.contains("500") && e.contains("query.max_depth"), "{e}");
        // Unbalanced input still gets a bound (the parser reports the error).
        assert!(check_depth("((((", 500).is_ok());
        assert!(check_depth("))))", 500).is_ok());
        let flat = format!("x{}", " or x".repeat(2_000));
        assert!(check_depth(&flat, 500).is_err());
    }
}
