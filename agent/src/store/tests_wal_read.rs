//! WAL cursors (remote_write's view of the store): every sample exactly once,
//! in order, across block persistence, checkpoints and restarts; unsent
//! segments are kept, up to the size cap.
use super::tests::{TempDir, cfg, metric, tick, value};
use super::*;
use std::collections::BTreeMap;

type Seen = BTreeMap<String, Vec<(i64, f64)>>;

/// Reads everything available in batches of `max`, committing each.
fn drain(s: &Store, c: &mut WalCursor, max: usize, seen: &mut Seen) -> u64 {
    let mut skipped = 0;
    loop {
        let b = c.read(s, max).unwrap();
        assert!(b.samples <= max);
        skipped += b.segments_skipped;
        for (l, samples) in &b.series {
            seen.entry(l.get("worker").unwrap().to_string())
                .or_default()
                .extend(samples);
        }
        s.commit_wal_cursor(c, b.end).unwrap();
        if b.samples == 0 {
            return skipped;
        }
    }
}

fn check_all(seen: &Seen, workers: usize, ticks: std::ops::RangeInclusive<i64>, step: i64) {
    assert_eq!(seen.len(), workers);
    for (w, got) in seen {
        let i: usize = w.parse().unwrap();
        let want: Vec<(i64, f64)> = ticks.clone().map(|k| (k * step, value(i, k * step))).collect();
        assert_eq!(got.len(), want.len(), "worker {w}: count");
        assert_eq!(got, &want, "worker {w}");
    }
}

#[test]
fn cursor_reads_every_sample_once_across_checkpoints_and_restarts() {
    let d = TempDir::new("walread");
    let step = 10_000;
    let n = 5 * 360; // 5 h at 10 s: two blocks persisted, two checkpoints
    let mut seen = Seen::new();
    {
        let s = Store::open(&cfg(&d.0)).unwrap();
        let mut c = s.wal_cursor("rw").unwrap();
        for k in 1..=n / 2 {
            s.ingest(&tick(7, k * step), k * step);
            if k % 97 == 0 {
                drain(&s, &mut c, 13, &mut seen);
            }
        }
        // Not drained since the last multiple of 97: the rest must survive the crash.
        s.flush();
        // Dropped without close: like kill -9 after the WAL write.
    }
    let s = Store::open(&cfg(&d.0)).unwrap();
    let mut c = s.wal_cursor("rw").unwrap();
    for k in n / 2 + 1..=n {
        s.ingest(&tick(7, k * step), k * step);
    }
    // The cursor lagged through two checkpoints (blocks persisted, head
    // samples dropped): everything still comes, from the segments kept for it.
    let kept = wal::segments(&d.0.join(WAL_DIR)).unwrap().len();
    assert_eq!(drain(&s, &mut c, 500, &mut seen), 0);
    check_all(&seen, 7, 1..=n, step);
    assert!(kept >= 2, "{kept} segments");
    let fams = s.self_families();
    assert_eq!(
        metric(&fams, "ngxprobe_store_wal_reader_segments_dropped_total", &[]),
        0.0
    );
    // Once read and committed, the next checkpoints delete the old segments
    // (the one the reader has not opened yet, holding a copy of the head, stays).
    let before = wal::segments(&d.0.join(WAL_DIR)).unwrap();
    s.close().unwrap();
    let s = Store::open(&cfg(&d.0)).unwrap();
    let after = wal::segments(&d.0.join(WAL_DIR)).unwrap();
    assert!(after.len() <= 2 && after[0] > before[0], "{before:?} -> {after:?}");
    // A restarted cursor resumes after what it committed: nothing new, nothing twice.
    let mut c = s.wal_cursor("rw").unwrap();
    let mut again = Seen::new();
    drain(&s, &mut c, 500, &mut again);
    assert!(again.is_empty(), "{again:?}");
    s.ingest(&tick(7, (n + 1) * step), (n + 1) * step);
    drain(&s, &mut c, 500, &mut again);
    check_all(&again, 7, n + 1..=n + 1, step);
    // A reader no longer configured stops holding the WAL.
    s.retain_wal_cursors(&[]);
    assert!(!d.0.join(WAL_DIR).join("readers").join("rw").exists());
}

#[test]
fn wal_kept_for_a_lagging_reader_is_capped() {
    let d = TempDir::new("walcap");
    let mut c0 = cfg(&d.0);
    c0.wal_reader_max_size = ByteSize(1);
    let s = Store::open(&c0).unwrap();
    let mut c = s.wal_cursor("slow").unwrap();
    let step = 10_000;
    for k in 1..=5 * 360 {
        s.ingest(&tick(3, k * step), k * step);
    }
    let fams = s.self_families();
    assert!(metric(&fams, "ngxprobe_store_wal_reader_segments_dropped_total", &[]) >= 1.0);
    let mut seen = Seen::new();
    assert!(drain(&s, &mut c, 1000, &mut seen) >= 1);
    // What is left is sent, in order, without duplicates.
    for got in seen.values() {
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(got.last().map(|x| x.0), Some(5 * 360 * step));
    }
}

#[test]
fn a_reader_that_never_delivered_still_holds_the_wal_across_restarts() {
    let d = TempDir::new("walnever");
    let step = 10_000;
    let n = 4 * 360; // past one block: persisted, head samples dropped, checkpointed
    {
        let s = Store::open(&cfg(&d.0)).unwrap();
        drop(s.wal_cursor("never").unwrap());
        for k in 1..=n {
            s.ingest(&tick(3, k * step), k * step);
        }
        s.close().unwrap();
    }
    let s = Store::open(&cfg(&d.0)).unwrap();
    let mut c = s.wal_cursor("never").unwrap();
    let mut seen = Seen::new();
    drain(&s, &mut c, 1000, &mut seen);
    check_all(&seen, 3, 1..=n, step);
    s.retain_wal_cursors(&["other".to_string()]);
    assert!(!d.0.join(WAL_DIR).join("readers").join("never").exists());
}
