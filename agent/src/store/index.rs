//! In-memory inverted index: label name → value → sorted series ids. Narrows
//! candidates; the caller still checks every matcher on the candidate's labels,
//! so the index only has to be a superset, never exact.
use crate::series::{Labels, MatchOp, Matcher};
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct Index {
    postings: HashMap<String, BTreeMap<String, Vec<u32>>>,
    all: Vec<u32>,
}

fn insert_sorted(v: &mut Vec<u32>, id: u32) {
    match v.last() {
        Some(&l) if l >= id => {
            if let Err(i) = v.binary_search(&id) {
                v.insert(i, id);
            }
        }
        _ => v.push(id),
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

impl Index {
    pub fn add(&mut self, id: u32, labels: &Labels) {
        insert_sorted(&mut self.all, id);
        for (k, v) in &labels.0 {
            let list = self
                .postings
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default();
            insert_sorted(list, id);
        }
    }

    pub fn remove(&mut self, id: u32, labels: &Labels) {
        self.all.retain(|&x| x != id);
        for (k, v) in &labels.0 {
            if let Some(vals) = self.postings.get_mut(k) {
                if let Some(list) = vals.get_mut(v) {
                    list.retain(|&x| x != id);
                    if list.is_empty() {
                        vals.remove(v);
                    }
                }
                if vals.is_empty() {
                    self.postings.remove(k);
                }
            }
        }
    }

    /// Candidate ids for a conjunction of matchers (sorted). Matchers that
    /// accept the empty string also accept series without the label, so they
    /// cannot narrow via postings; they are left to the final filter.
    pub fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut acc: Option<Vec<u32>> = None;
        for m in matchers.iter().filter(|m| !m.matches("")) {
            let mut ids: Vec<u32> = match (m.op, self.postings.get(&m.name)) {
                (_, None) => Vec::new(),
                (MatchOp::Equal, Some(vals)) => vals.get(&m.value).cloned().unwrap_or_default(),
                (_, Some(vals)) => vals
                    .iter()
                    .filter(|(v, _)| m.matches(v))
                    .flat_map(|(_, l)| l.iter().copied())
                    .collect(),
            };
            ids.sort_unstable();
            ids.dedup();
            acc = Some(match acc {
                None => ids,
                Some(a) => intersect(&a, &ids),
            });
            if acc.as_ref().is_some_and(|a| a.is_empty()) {
                break;
            }
        }
        acc.unwrap_or_else(|| self.all.clone())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(p: &[(&str, &str)]) -> Labels {
        Labels::new(p.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn matchers_narrow_and_empty_matching_ones_do_not() {
        let mut ix = Index::default();
        ix.add(1, &l(&[("__name__", "a"), ("code", "200")]));
        ix.add(2, &l(&[("__name__", "a"), ("code", "500")]));
        ix.add(3, &l(&[("__name__", "b")]));
        let m = |op, n, v| Matcher::new(op, n, v).unwrap();
        assert_eq!(ix.candidates(&[m(MatchOp::Equal, "__name__", "a")]), vec![1, 2]);
        assert_eq!(ix.candidates(&[m(MatchOp::Regex, "code", "5..")]), vec![2]);
        assert_eq!(ix.candidates(&[m(MatchOp::NotEqual, "code", "200")]), vec![1, 2, 3]);
        assert_eq!(ix.candidates(&[m(MatchOp::NotRegex, "code", "")]), vec![1, 2]);
        ix.remove(2, &l(&[("__name__", "a"), ("code", "500")]));
        assert_eq!(ix.candidates(&[m(MatchOp::Regex, "code", ".+")]), vec![1]);
        assert_eq!(ix.len(), 2);
    }
}
