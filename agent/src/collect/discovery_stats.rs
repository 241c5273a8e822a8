//! Discovery's own statistics: scans, errors by kind, refusals by reason,
//! and what is new since the previous scan (only that is counted as a
//! refusal and logged, so a flood of fake processes neither inflates the
//! counter every second nor floods the log).
use std::collections::{BTreeMap, HashSet, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::discover::{Refusal, RefusalReason, ScanOutcome};

/// New refusals and errors listed per scan; the rest are only counted (a
/// flood of fake processes must not flood the log too).
const LIST_LIMIT: usize = 20;

#[derive(Debug, Default)]
pub struct DiscoveryStats {
    pub scans: u64,
    /// Errors by kind ([`crate::discover::DiscoverError::kind`], or `probe`).
    pub errors: BTreeMap<&'static str, u64>,
    /// Failed reads of an instance's counter slot, at scrape time.
    pub slot_read_errors: AtomicU64,
    /// Things refused by discovery, each counted when it starts being refused.
    pub refused: BTreeMap<RefusalReason, u64>,
    pub last_duration: Duration,
    /// Fingerprints of what the previous scan refused, and the (pid, kind)
    /// of its unreadable processes.
    refused_before: HashSet<u64>,
    unreadable_before: HashSet<(u32, &'static str)>,
}

/// What a scan refused or could not read that the previous one did not.
/// Every string is safe to log (foreign values escaped).
#[derive(Debug, Default)]
pub struct ScanNews {
    /// At most [`LIST_LIMIT`].
    pub refused: Vec<Refusal>,
    /// Newly refused things beyond those in `refused`.
    pub refused_unlisted: usize,
    /// "pid N: error", at most [`LIST_LIMIT`].
    pub unreadable: Vec<String>,
    pub unreadable_unlisted: usize,
    /// The agent ran out of file descriptors during this scan.
    pub fd_limit: bool,
}

fn fingerprint(r: &Refusal) -> u64 {
    let mut h = DefaultHasher::new();
    (r.reason, &r.subject).hash(&mut h);
    h.finish()
}

impl DiscoveryStats {
    pub fn count_error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn count_refusal(&mut self, reason: RefusalReason) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// Counts a scan's refusals (those not refused by the previous scan) and
    /// errors (every one: each is a failed read), taking the refusals out of
    /// `outcome`, and returns what is new.
    pub fn note_scan(&mut self, outcome: &mut ScanOutcome) -> ScanNews {
        let mut news = ScanNews::default();
        let mut refused_now = HashSet::with_capacity(outcome.refused.len());
        for r in outcome.refused.drain(..) {
            let fp = fingerprint(&r);
            if refused_now.insert(fp) && !self.refused_before.contains(&fp) {
                self.count_refusal(r.reason);
                if news.refused.len() < LIST_LIMIT {
                    news.refused.push(r);
                } else {
                    news.refused_unlisted += 1;
                }
            }
        }
        self.refused_before = refused_now;

        let mut unreadable_now = HashSet::with_capacity(outcome.errors.len());
        for e in &outcome.errors {
            let kind = e.error.kind();
            self.count_error(kind);
            news.fd_limit |= e.error.is_fd_limit();
            if unreadable_now.insert((e.pid, kind)) && !self.unreadable_before.contains(&(e.pid, kind)) {
                if news.unreadable.len() < LIST_LIMIT {
                    news.unreadable.push(format!("pid {}: {}", e.pid, e.error));
                } else {
                    news.unreadable_unlisted += 1;
                }
            }
        }
        self.unreadable_before = unreadable_now;
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{DiscoverError, ProcError};
    use std::io;

    fn refusal(reason: RefusalReason, subject: &str) -> Refusal {
        Refusal {
            reason,
            subject: subject.into(),
            detail: "d".into(),
        }
    }

    fn outcome(refused: &[Refusal], errors: &[(u32, i32)]) -> ScanOutcome {
        ScanOutcome {
            instances: vec![],
            refused: refused.to_vec(),
            errors: errors
                .iter()
                .map(|&(pid, errno)| ProcError {
                    pid,
                    error: DiscoverError::Io {
                        path: format!("/proc/{pid}/exe").into(),
                        source: io::Error::from_raw_os_error(errno),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn refusals_counted_and_listed_once_while_they_last() {
        let mut s = DiscoveryStats::default();
        let a = refusal(RefusalReason::NotNginx, "pid 1");
        let b = refusal(RefusalReason::BadLabel, "pid 2");
        let news = s.note_scan(&mut outcome(&[a.clone(), b.clone()], &[]));
        assert_eq!(news.refused.len(), 2);
        for _ in 0..5 {
            assert!(
                s.note_scan(&mut outcome(&[a.clone(), b.clone()], &[]))
                    .refused
                    .is_empty()
            );
        }
        assert_eq!(s.refused[&RefusalReason::NotNginx], 1);
        // Gone for a scan, then back: a new refusal.
        s.note_scan(&mut outcome(std::slice::from_ref(&b), &[]));
        let news = s.note_scan(&mut outcome(&[a.clone(), b.clone()], &[]));
        assert_eq!(news.refused, vec![a]);
        assert_eq!(s.refused[&RefusalReason::NotNginx], 2);
        assert_eq!(s.refused[&RefusalReason::BadLabel], 1);
    }

    #[test]
    fn floods_are_counted_in_full_but_listed_in_part() {
        let mut s = DiscoveryStats::default();
        let flood: Vec<Refusal> = (0..300)
            .map(|i| refusal(RefusalReason::NotNginx, &format!("pid {i}")))
            .collect();
        let news = s.note_scan(&mut outcome(&flood, &[]));
        assert_eq!(
            (news.refused.len(), news.refused_unlisted),
            (LIST_LIMIT, 300 - LIST_LIMIT)
        );
        assert_eq!(s.refused[&RefusalReason::NotNginx], 300);
    }

    #[test]
    fn errors_counted_by_kind_listed_on_change_fd_limit_flagged() {
        let mut s = DiscoveryStats::default();
        let news = s.note_scan(&mut outcome(&[], &[(7, libc::EMFILE), (8, libc::EIO)]));
        assert!(news.fd_limit);
        assert_eq!(news.unreadable.len(), 2);
        let news = s.note_scan(&mut outcome(&[], &[(8, libc::EIO)]));
        assert!(!news.fd_limit && news.unreadable.is_empty());
        assert_eq!(s.errors["fd_limit"], 1);
        assert_eq!(s.errors["io"], 2);
    }
}
