//! Store tests: behaviour through the public API, restarts, corruption,
//! retention, a SIGKILL crash loop and a real full disk (tmpfs).
use super::maintain::RETRY_EVERY;
use super::*;
use crate::metrics::{Family, MetricType};
use crate::series::{
    AppendError, Labels, MatchOp, Matcher, MetricKind, ReadBudget, Selection, SeriesData, SeriesReader as _,
    SeriesWriter as _, is_stale_marker,
};
use std::fs::OpenOptions;
use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ngxprobe-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        path: dir.to_path_buf(),
        ..StorageConfig::default()
    }
}

pub(super) fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
    Matcher::new(op, n, v).unwrap()
}

fn fam(name: &str, kind: MetricType, samples: &[(&[(&str, &str)], f64)]) -> Family {
    let mut f = Family::new(name, &format!("help of {name}"), kind);
    for (l, v) in samples {
        f.push(l, *v);
    }
    f
}

pub(super) fn metric(fams: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    fams.iter()
        .find(|f| f.name == name)
        .and_then(|f| {
            f.samples.iter().find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
        })
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no metric {name} {labels:?}"))
}

pub(super) fn all(store: &Store, name: &str) -> Vec<SeriesData> {
    store
        .select(&Selection::new(
            &[m(MatchOp::Equal, "__name__", name)],
            i64::MIN,
            i64::MAX,
            &ReadBudget::unlimited(),
        ))
        .unwrap()
}

/// Synthetic tick: `n` counter series whose value depends only on (i, t).
pub(super) fn tick(n: usize, t: i64) -> Vec<Family> {
    let mut f = Family::new("req_total", "Requests.", MetricType::Counter);
    for i in 0..n {
        f.push_owned(vec![("worker".into(), i.to_string())], value(i, t));
    }
    vec![f]
}

pub(super) fn value(i: usize, t: i64) -> f64 {
    let k = t / 1000;
    (k * (i as i64 + 1) + (k * 7919 + i as i64) % 13) as f64
}

#[test]
fn ingest_select_stale_rejects_and_metadata() {
    let d = TempDir::new("basic");
    let s = Store::open(&cfg(&d.0)).unwrap();
    let both: &[(&[(&str, &str)], f64)] = &[(&[("code", "200")], 1.0), (&[("code", "500")], 2.0)];
    let r = s.ingest(&[fam("http_total", MetricType::Counter, both)], 1000);
    assert_eq!((r.appended, r.new_series, r.stale_markers), (2, 2, 0));
    // code=500 disappears: stale marker at the next ingest.
    let r = s.ingest(
        &[fam("http_total", MetricType::Counter, &[(&[("code", "200")], 3.0)])],
        2000,
    );
    assert_eq!((r.appended, r.stale_markers), (1, 1));
    // Same timestamp again: duplicate; older: out of order. Neither stored.
    let r = s.ingest(
        &[fam("http_total", MetricType::Counter, &[(&[("code", "200")], 9.0)])],
        2000,
    );
    assert_eq!(r.duplicate, 1);
    assert_eq!(
        s.append(
            &Labels::new([("__name__".into(), "http_total".into()), ("code".into(), "200".into())]),
            1500,
            7.0
        ),
        Err(AppendError::OutOfOrder)
    );
    let got = s
        .select(&Selection::new(
            &[
                m(MatchOp::Equal, "__name__", "http_total"),
                m(MatchOp::Regex, "code", "5.."),
            ],
            0,
            10_000,
            &ReadBudget::unlimited(),
        ))
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples[0], (1000, 2.0));
    assert!(is_stale_marker(got[0].samples[1].1) && got[0].samples[1].0 == 2000);
    let ok = s
        .select(&Selection::new(
            &[m(MatchOp::NotEqual, "code", "500")],
            0,
            10_000,
            &ReadBudget::unlimited(),
        ))
        .unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].samples, vec![(1000, 1.0), (2000, 3.0)]);
    // Range restriction.
    assert_eq!(
        s.select(&Selection::new(
            &[m(MatchOp::Equal, "code", "200")],
            1500,
            2500,
            &ReadBudget::unlimited()
        ))
        .unwrap()[0]
            .samples,
        vec![(2000, 3.0)]
    );
    assert!(
        s.select(&Selection::new(
            &[m(MatchOp::Equal, "code", "200")],
            3000,
            4000,
            &ReadBudget::unlimited()
        ))
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        s.label_names(&Selection::new(&[], 0, 10_000, &ReadBudget::unlimited()))
            .unwrap(),
        vec!["__name__", "code"]
    );
    assert_eq!(
        s.label_values("code", &Selection::new(&[], 0, 10_000, &ReadBudget::unlimited()))
            .unwrap(),
        vec!["200", "500"]
    );
    assert_eq!(s.metadata(Some("http_total"))[0].1.kind, MetricKind::Counter);
    let fams = s.self_families();
    assert_eq!(
        metric(
            &fams,
            "ngxprobe_store_samples_rejected_total",
            &[("reason", "duplicate")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &fams,
            "ngxprobe_store_samples_rejected_total",
            &[("reason", "out_of_order")]
        ),
        1.0
    );
    assert_eq!(metric(&fams, "ngxprobe_store_writable", &[]), 1.0);
    assert_eq!(metric(&fams, "ngxprobe_store_series", &[]), 2.0);
}

#[test]
fn second_agent_is_refused_and_wal_replays() {
    let d = TempDir::new("lock");
    let s = Store::open(&cfg(&d.0)).unwrap();
    for k in 1..=500 {
        s.ingest(&tick(5, k * 1000), k * 1000);
    }
    match Store::open(&cfg(&d.0)) {
        Err(e @ StoreError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("in use by another ngxprobe") && msg.contains(&std::process::id().to_string()),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second open of a locked directory succeeded"),
    }
    drop(s); // no close: the head only exists in the WAL
    let s = Store::open(&cfg(&d.0)).unwrap();
    let got = all(&s, "req_total");
    assert_eq!(got.len(), 5);
    for sd in &got {
        let i: usize = sd.labels.get("worker").unwrap().parse().unwrap();
        assert_eq!(sd.samples.len(), 500);
        assert!(sd.samples.iter().all(|&(t, v)| v == value(i, t)));
    }
    assert_eq!(s.metadata(Some("req_total")).len(), 1);
}

#[test]
fn blocks_persist_wal_stays_small_and_reopen_reads_everything() {
    let d = TempDir::new("persist");
    let s = Store::open(&cfg(&d.0)).unwrap();
    let step = 10_000;
    let n = 6 * 360; // 6 h at 10 s
    for k in 1..=n {
        s.ingest(&tick(20, k * step), k * step);
    }
    let fams = s.self_families();
    assert!(metric(&fams, "ngxprobe_store_blocks_persisted_total", &[]) >= 2.0);
    // The WAL holds at most ~1.5 blocks plus a checkpoint, not 6 h.
    let wal = metric(&fams, "ngxprobe_store_bytes", &[("kind", "wal")]);
    assert!(wal < (20.0 * 3.0 * 360.0 * 12.0), "wal {wal} bytes");
    // Reads across head and disk see every sample exactly once.
    let check = |s: &Store| {
        let got = all(s, "req_total");
        assert_eq!(got.len(), 20);
        for sd in &got {
            let i: usize = sd.labels.get("worker").unwrap().parse().unwrap();
            assert_eq!(sd.samples.len(), n as usize, "{}", sd.labels);
            assert!(
                sd.samples
                    .iter()
                    .enumerate()
                    .all(|(j, &(t, v))| t == (j as i64 + 1) * step && v == value(i, t))
            );
        }
        // A window starting and ending inside chunks (decoding stops at its
        // end), over 20 series (decoded on several threads where there are
        // cores): the same series in the same order, exactly the samples in it.
        let (a, b) = (47 * 60_000 + 1, 4 * 3_600_000 + 13 * 60_000);
        let win = s
            .select(&Selection::new(
                &[m(MatchOp::Equal, "__name__", "req_total")],
                a,
                b,
                &ReadBudget::unlimited(),
            ))
            .unwrap();
        assert_eq!(
            win.iter().map(|x| &x.labels).collect::<Vec<_>>(),
            got.iter().map(|x| &x.labels).collect::<Vec<_>>()
        );
        for (w, full) in win.iter().zip(&got) {
            let want: Vec<(i64, f64)> = full.samples.iter().copied().filter(|x| x.0 >= a && x.0 <= b).collect();
            assert_eq!(w.samples, want, "{}", w.labels);
        }
    };
    check(&s);
    drop(s);
    let s = Store::open(&cfg(&d.0)).unwrap();
    check(&s);
    s.close().unwrap();
    let s = Store::open(&cfg(&d.0)).unwrap();
    check(&s);
    // Appends continue after the persisted range.
    assert!(s.ingest(&tick(20, (n + 1) * step), (n + 1) * step).appended == 20);
}

#[test]
fn torn_wal_tail_is_truncated_and_counted() {
    let d = TempDir::new("torn");
    let s = Store::open(&cfg(&d.0)).unwrap();
    for k in 1..=100 {
        s.ingest(&tick(3, k * 1000), k * 1000);
    }
    drop(s);
    let wal_dir = d.0.join(WAL_DIR);
    let last = *wal::segments(&wal_dir).unwrap().last().unwrap();
    let path = wal::segment_path(&wal_dir, last);
    let len = fs::metadata(&path).unwrap().len();
    // Tear the last record in half, as a kill during write(2) would.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let s = Store::open(&cfg(&d.0)).unwrap();
    assert_eq!(
        metric(&s.self_families(), "ngxprobe_store_wal_truncations_total", &[]),
        1.0
    );
    for sd in all(&s, "req_total") {
        assert_eq!(sd.samples.len(), 99, "only the torn tick is lost");
    }
    // And appending works after the truncation.
    assert_eq!(s.ingest(&tick(3, 101_000), 101_000).appended, 3);
}

#[test]
fn corrupt_chunk_is_reported_and_skipped() {
    let d = TempDir::new("corrupt");
    let s = Store::open(&cfg(&d.0)).unwrap();
    let step = 60_000;
    for k in 1..=8 * 60 {
        s.ingest(&tick(2, k * step), k * step);
    }
    s.close().unwrap();
    // Damage one persisted chunk in the oldest block file.
    {
        let cdir = d.0.join(disk::CHUNK_DIR);
        let mut files: Vec<PathBuf> = fs::read_dir(&cdir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut bytes = fs::read(&files[0]).unwrap();
        let mid = bytes.len() / 4;
        bytes[mid] ^= 0xff;
        fs::write(&files[0], bytes).unwrap();
    }
    let s = Store::open(&cfg(&d.0)).unwrap();
    let got = all(&s, "req_total");
    let lens: Vec<usize> = got.iter().map(|g| g.samples.len()).collect();
    assert_eq!(got.len(), 2);
    assert!(lens.contains(&(8 * 60)), "undamaged series complete: {lens:?}");
    assert!(
        lens.iter().any(|&l| l < 8 * 60 && l > 0),
        "damaged series keeps its other blocks: {lens:?}"
    );
    assert!(metric(&s.self_families(), "ngxprobe_store_corrupt_chunks_total", &[]) >= 1.0);
}

#[test]
fn retention_by_time_deletes_whole_old_blocks() {
    let d = TempDir::new("ret");
    let mut c = cfg(&d.0);
    c.retention = crate::compat::PromDuration::from_secs(5 * 3600);
    let s = Store::open(&c).unwrap();
    let step = 30_000;
    let n = 12 * 120; // 12 h
    for k in 1..=n {
        s.ingest(&tick(4, k * step), k * step);
    }
    let got = all(&s, "req_total");
    let oldest = got.iter().map(|g| g.samples[0].0).min().unwrap();
    let newest = n * step;
    // Everything newer than retention is kept; older goes in whole blocks.
    assert!(oldest > newest - 5 * 3600 * 1000 - BLOCK_MS, "oldest {oldest}");
    assert!(oldest <= newest - 5 * 3600 * 1000, "kept too little: oldest {oldest}");
    assert_eq!(oldest % BLOCK_MS, 0, "deletion is by whole blocks");
    assert!(metric(&s.self_families(), "ngxprobe_store_blocks_deleted_total", &[]) >= 3.0);
    for g in &got {
        assert!(g.samples.windows(2).all(|w| w[1].0 - w[0].0 == step), "no holes");
    }
}

#[test]
fn retention_by_size_keeps_directory_under_limit() {
    let d = TempDir::new("size");
    let mut c = cfg(&d.0);
    c.retention_size = ByteSize(1 << 20);
    let s = Store::open(&c).unwrap();
    let step = 1000;
    let mut f = Family::new("noise", "Incompressible.", MetricType::Gauge);
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut over = 0;
    for k in 1..=30 * 3600 / 2 {
        f.samples.clear();
        for i in 0..10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.push(&[("i", &i.to_string())], f64::from_bits(x >> 2));
        }
        s.ingest(std::slice::from_ref(&f), k * step);
        if k % 3600 == 0 && dir_bytes(&d.0) > (1 << 20) + (1 << 20) / 2 {
            over += 1;
        }
    }
    let fams = s.self_families();
    assert!(metric(&fams, "ngxprobe_store_blocks_deleted_total", &[]) >= 1.0);
    assert!(over <= 3, "directory above 1.5x the limit at {over} checks");
    let got = s
        .select(&Selection::new(
            &[m(MatchOp::Equal, "__name__", "noise")],
            i64::MIN,
            i64::MAX,
            &ReadBudget::unlimited(),
        ))
        .unwrap();
    assert!(got[0].samples[0].0 > 1000, "oldest data deleted");
}

// ---- crash test -------------------------------------------------------------

const CHILD_ENV: &str = "NGXPROBE_STORE_CRASH_CHILD";
const CRASH_SERIES: usize = 30;
const CRASH_STEP: i64 = 20_000; // 20 s: a block is persisted every 360 ticks

/// The crash test checks that nothing acknowledged is lost, so retention must
/// not delete anything however far the child gets: at 20 s per tick, the
/// default 15 d are reached after 64 800 ticks, which a fast child writes
/// within the test's 24 rounds.
fn crash_cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        retention: crate::compat::PromDuration::from_secs(100 * 365 * 24 * 3600),
        ..cfg(dir)
    }
}

/// Writer side of the crash test; only does something when re-executed by
/// `sigkill_during_ingest_loses_nothing_acknowledged`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let s = Store::open(&crash_cfg(Path::new(&dir))).unwrap();
    let last = all(&s, "req_total")
        .iter()
        .filter_map(|g| g.samples.last().map(|x| x.0))
        .max()
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {last}").unwrap();
    out.flush().unwrap();
    for k in 1..=200_000 {
        let t = last + k * CRASH_STEP;
        s.ingest(&tick(CRASH_SERIES, t), t);
        // ingest() has written the WAL to the kernel: acknowledged.
        writeln!(out, "ok {t}").unwrap();
        out.flush().unwrap();
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(super) struct KillOnDrop(pub(super) std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the test binary `exe`'s `test` alone as a child (the writer side of
/// crash tests), told its data directory by `env_var`, stdout piped.
pub(super) fn spawn_test_child(
    exe: &std::path::Path,
    test: &str,
    env_var: &str,
    data: &std::path::Path,
) -> std::io::Result<KillOnDrop> {
    Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env_var, data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
}

#[test]
fn sigkill_during_ingest_loses_nothing_acknowledged() {
    let d = TempDir::new("crash");
    let data = d.0.join("data");
    // Run a private copy: a concurrent `cargo build` may replace or delete the
    // test binary on disk while this test runs; /proc/self/exe still reaches it.
    let exe = d.0.join("crash-child-exe");
    fs::copy("/proc/self/exe", &exe)
        .unwrap_or_else(|e| panic!("cannot copy the test binary for the writer child: {e}"));
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut acked = 0i64;
    let rounds = 24;
    for round in 0..rounds {
        let mut child = spawn_test_child(&exe, "store::tests::crash_child", CHILD_ENV, &data).unwrap_or_else(|e| {
            panic!(
                "cannot re-run the test binary {} as the writer child: {e}",
                exe.display()
            )
        });
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<i64>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                // With --nocapture the harness's "test ... " prefix may share
                // the first line.
                if let Some(t) = line.strip_prefix("ok ") {
                    let _ = tx.send(t.parse().unwrap_or(0));
                } else if let Some(i) = line.find("start ") {
                    let _ = tx.send(-line[i + 6..].trim().parse::<i64>().unwrap_or(0) - 1);
                }
            }
        });
        // Wait for the child to open the store (bounded), then kill it at a
        // random point: 0-600 ms into ingest, which crosses block persists and
        // WAL checkpoints.
        let start = rx.recv_timeout(Duration::from_secs(60)).expect("child did not start");
        let resumed = -start - 1;
        assert!(
            resumed >= acked,
            "round {round}: child resumed at {resumed}, acknowledged {acked}"
        );
        std::thread::sleep(Duration::from_millis(rng.next() % 600));
        let pid = child.0.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.0.wait();
        reader.join().unwrap();
        while let Ok(t) = rx.try_recv() {
            if t > 0 {
                acked = acked.max(t);
            }
        }
        // Reopen: must succeed and hold every acknowledged sample.
        let s = Store::open(&crash_cfg(&data)).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let got = all(&s, "req_total");
        if acked > 0 {
            assert_eq!(got.len(), CRASH_SERIES, "round {round}");
        }
        for g in &got {
            let i: usize = g.labels.get("worker").unwrap().parse().unwrap();
            let want = (acked / CRASH_STEP) as usize;
            assert!(
                g.samples.len() >= want,
                "round {round}: {} has {} samples, {want} acknowledged",
                g.labels,
                g.samples.len()
            );
            for (j, &(t, v)) in g.samples.iter().enumerate() {
                assert_eq!(
                    t,
                    (j as i64 + 1) * CRASH_STEP,
                    "round {round}: hole or duplicate in {}",
                    g.labels
                );
                assert_eq!(v, value(i, t), "round {round}: wrong value");
            }
        }
        let fams = s.self_families();
        assert_eq!(
            metric(&fams, "ngxprobe_store_corrupt_chunks_total", &[]),
            0.0,
            "round {round}"
        );
        assert_eq!(
            metric(&fams, "ngxprobe_store_wal_corruptions_total", &[]),
            0.0,
            "round {round}"
        );
        drop(s);
    }
    assert!(acked > 0, "the child never acknowledged a sample");
}

// ---- disk full --------------------------------------------------------------

struct Tmpfs(PathBuf);
impl Tmpfs {
    fn mount(p: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(p).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(p)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(p.to_path_buf()),
            Ok(o) => panic!(
                "disk-full test needs root to mount a tmpfs: mount failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("disk-full test needs mount(8): {e}"),
        }
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_keeps_serving_from_memory_and_resumes() {
    let d = TempDir::new("full");
    let mnt = d.0.join("mnt");
    let fs_guard = Tmpfs::mount(&mnt, "4m");
    let data = mnt.join("data");
    let s = Store::open(&cfg(&data)).unwrap();
    let mut t = 0;
    let ingest = |s: &Store, t: &mut i64| {
        *t += 1000;
        s.ingest(&tick(20, *t), *t)
    };
    for _ in 0..100 {
        assert!(ingest(&s, &mut t).writable);
    }
    // Fill the filesystem.
    let filler = mnt.join("filler");
    {
        let mut f = File::create(&filler).unwrap();
        let buf = vec![0u8; 64 << 10];
        while f.write_all(&buf).is_ok() {}
        let _ = f.sync_all();
    }
    let mut full_at = None;
    for k in 0..20_000 {
        let r = ingest(&s, &mut t);
        assert_eq!(r.appended, 20, "samples are still accepted into memory");
        if !r.writable {
            full_at = Some(k);
            break;
        }
    }
    assert!(full_at.is_some(), "never noticed the full disk");
    for _ in 0..50 {
        assert!(!ingest(&s, &mut t).writable);
    }
    let fams = s.self_families();
    assert_eq!(metric(&fams, "ngxprobe_store_writable", &[]), 0.0);
    assert!(metric(&fams, "ngxprobe_store_write_errors_total", &[]) >= 1.0);
    // Queries are served from memory, including samples written while full.
    let got = all(&s, "req_total");
    assert!(got.iter().all(|g| g.samples.last().unwrap().0 == t));
    // Space returns: writing resumes within the retry period.
    fs::remove_file(&filler).unwrap();
    // Poll (bounded: a few retry periods) until an ingest finds the disk writable.
    let deadline = std::time::Instant::now() + RETRY_EVERY * 6;
    let mut resumed = false;
    while std::time::Instant::now() < deadline {
        if ingest(&s, &mut t).writable {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(resumed, "did not resume writing after space returned");
    assert_eq!(metric(&s.self_families(), "ngxprobe_store_writable", &[]), 1.0);
    drop(s);
    // Nothing accepted during the outage was lost across a restart.
    let s = Store::open(&cfg(&data)).unwrap();
    for g in all(&s, "req_total") {
        assert_eq!(g.samples.len() as i64, t / 1000, "{}", g.labels);
    }
    drop(s);
    drop(fs_guard);
}

/// A store with 6 h of 20 series at 10 s (blocks persisted, head in
/// memory), plus `gappy`: data in hours 0-1, 3-4 and 5-6 only.
fn six_hours(tag: &str) -> (TempDir, Store) {
    let d = TempDir::new(tag);
    let s = Store::open(&cfg(&d.0)).unwrap();
    let step = 10_000;
    for k in 1..=6 * 360 {
        let t = k * step;
        let mut fams = tick(20, t);
        let hour = (t - 1) / 3_600_000;
        if matches!(hour, 0 | 3 | 5) {
            fams.push(fam("gappy", MetricType::Gauge, &[(&[], 1.0)]));
        }
        s.ingest(&fams, t);
    }
    assert!(metric(&s.self_families(), "ngxprobe_store_blocks_persisted_total", &[]) >= 2.0);
    (d, s)
}

fn decoded(s: &Store) -> f64 {
    metric(&s.self_families(), "ngxprobe_store_chunks_decoded_total", &[])
}

#[test]
fn sample_budget_stops_a_select_while_decoding() {
    let (_d, s) = six_hours("budget");
    let sel = [m(MatchOp::Equal, "__name__", "req_total")];
    let before = decoded(&s);
    let full = s
        .select(&Selection::new(&sel, i64::MIN, i64::MAX, &ReadBudget::unlimited()))
        .unwrap();
    let total: usize = full.iter().map(|x| x.samples.len()).sum();
    assert_eq!(total, 20 * 6 * 360);
    let all_chunks = decoded(&s) - before;
    // 5% of the samples: refused, and after decoding a few chunks, not all.
    let before = decoded(&s);
    let budget = ReadBudget::new(total / 20, None);
    let r = s.select(&Selection::new(&sel, i64::MIN, i64::MAX, &budget));
    assert!(matches!(r, Err(crate::series::ReadError::TooManySamples)), "{r:?}");
    let partial = decoded(&s) - before;
    assert!(
        partial < all_chunks / 2.0,
        "decoded {partial} of {all_chunks} chunks before stopping"
    );
    // A deadline already passed stops the select before it decodes anything.
    let before = decoded(&s);
    let past = ReadBudget::new(usize::MAX, Some(std::time::Instant::now()));
    let r = s.select(&Selection::new(&sel, i64::MIN, i64::MAX, &past));
    assert!(matches!(r, Err(crate::series::ReadError::Timeout)), "{r:?}");
    assert_eq!(decoded(&s), before);
}

#[test]
fn series_and_labels_come_from_the_index_without_decoding() {
    let (_d, s) = six_hours("index");
    let b = ReadBudget::unlimited();
    let before = decoded(&s);
    let everything = s.series(&Selection::new(&[], i64::MIN, i64::MAX, &b)).unwrap();
    assert_eq!(everything.len(), 21);
    assert_eq!(
        s.label_values("worker", &Selection::new(&[], i64::MIN, i64::MAX, &b))
            .unwrap()
            .len(),
        20
    );
    assert_eq!(
        s.label_names(&Selection::new(&[], i64::MIN, i64::MAX, &b)).unwrap(),
        vec!["__name__", "worker"]
    );
    let gappy = [m(MatchOp::Equal, "__name__", "gappy")];
    let h = 3_600_000;
    // Persisted chunks cover hours 0-1 and 3-4, the head 4-6: ranges at the
    // edges of the persisted span, in a gap inside it and inside a persisted
    // chunk (the redb index answers), in the head, after everything.
    assert_eq!(s.series(&Selection::new(&gappy, 0, h / 2, &b)).unwrap().len(), 1);
    assert_eq!(
        s.series(&Selection::new(&gappy, 3 * h / 2, 5 * h / 2, &b))
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        s.series(&Selection::new(&gappy, 3 * h + h / 5, 3 * h + h / 3, &b))
            .unwrap()
            .len(),
        1
    );
    // No sample in 4h12m-4h30m, but the head chunk that starts with the
    // stale marker at 4h+10s spans it: listed, as Prometheus does (its series
    // API works at chunk granularity too).
    assert_eq!(
        s.series(&Selection::new(&gappy, 4 * h + h / 5, 4 * h + h / 2, &b))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.series(&Selection::new(&gappy, 5 * h + h / 2, 5 * h + h / 2, &b))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.series(&Selection::new(&gappy, 6 * h + 1, 7 * h, &b)).unwrap().len(),
        0
    );
    assert_eq!(s.series(&Selection::new(&[], 7 * h, 8 * h, &b)).unwrap().len(), 0);
    assert_eq!(decoded(&s), before, "listing decoded chunks");
    // The same answer select gives, which does decode.
    let selected = s.select(&Selection::new(&gappy, 3 * h / 2, 5 * h / 2, &b)).unwrap();
    assert!(selected.is_empty());
    assert_eq!(
        s.select(&Selection::new(&gappy, 3 * h + h / 5, 3 * h + h / 3, &b))
            .unwrap()
            .len(),
        1
    );
    assert!(decoded(&s) > before);
}

/// A histogram's samples are series of their own names (`_bucket` per `le`,
/// `_sum`, `_count`), kept apart although _sum and _count share labels.
#[test]
fn ingest_histogram_stores_bucket_sum_and_count() {
    let d = TempDir::new("histogram");
    let s = Store::open(&cfg(&d.0)).unwrap();
    let mut f = Family::new("rtt_seconds", "RTT", MetricType::Histogram);
    let h = crate::metrics::HistogramValue {
        buckets: vec![(0.5, 1), (1.0, 2)],
        sum: 1.5,
        count: 3,
    };
    f.push_histogram(vec![("conf_path".into(), "/c".into())], &h);
    let r = s.ingest(std::slice::from_ref(&f), 1000);
    assert_eq!((r.appended, r.new_series), (5, 5));
    let one = |name: &str, extra: &[(&str, &str)]| {
        let mut ms = vec![m(MatchOp::Equal, "__name__", name)];
        ms.extend(extra.iter().map(|(k, v)| m(MatchOp::Equal, k, v)));
        let got = s
            .select(&Selection::new(&ms, 0, 10_000, &ReadBudget::unlimited()))
            .unwrap();
        assert_eq!(got.len(), 1, "{name} {extra:?}");
        got[0].samples[0].1
    };
    assert_eq!(one("rtt_seconds_sum", &[]), 1.5);
    assert_eq!(one("rtt_seconds_count", &[]), 3.0);
    assert_eq!(one("rtt_seconds_bucket", &[("le", "1")]), 2.0);
    assert_eq!(one("rtt_seconds_bucket", &[("le", "+Inf")]), 3.0);
    // The same scrape again a second later: no new series.
    assert_eq!(s.ingest(&[f], 2000).new_series, 0);
}

#[test]
fn histograms_are_stored_as_bucket_sum_and_count_series() {
    let d = TempDir::new("histogram");
    let s = Store::open(&cfg(&d.0)).unwrap();
    let mut f = Family::new("req_seconds", "Request time", MetricType::Histogram);
    f.push_histogram(
        vec![("code".into(), "200".into())],
        &crate::metrics::HistogramValue::from_bucket_counts(&[0.1, 1.0], &[3, 1, 0], 0.75),
    );
    let r = s.ingest(&[f], 1000);
    assert_eq!((r.appended, r.new_series), (5, 5));
    assert_eq!(all(&s, "req_seconds_bucket").len(), 3);
    assert_eq!(all(&s, "req_seconds_sum")[0].samples, vec![(1000, 0.75)]);
    assert_eq!(all(&s, "req_seconds_count")[0].samples, vec![(1000, 4.0)]);
    assert_eq!(s.metadata(Some("req_seconds"))[0].1.kind, MetricKind::Histogram);
}
