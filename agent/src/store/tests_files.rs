//! The data directory's files: private modes, and read-only opening that
//! leaves a stopped (or killed) agent's directory exactly as it found it,
//! on a read-only bind mount too.
use super::tests::{TempDir, all, cfg, spawn_test_child, tick};
use super::*;
use crate::series::SeriesData;
use std::fs::OpenOptions;
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::Command;
use std::time::Duration;

const CHILD_ENV: &str = "NGXPROBE_STORE_READ_ONLY_CHILD";
/// One minute per tick, 5 h: blocks [0, 2h) and [2h, 4h) persisted, the rest in the WAL.
const STEP: i64 = 60_000;
const TICKS: i64 = 300;
const SERIES: usize = 4;

fn ingest_history(s: &Store) {
    for k in 1..=TICKS {
        s.ingest(&tick(SERIES, k * STEP), k * STEP);
    }
}

/// Every entry under `dir`: (path, mode, size, mtime, content checksum).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, i64, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).expect("read_dir").filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let meta = e.metadata().expect("metadata");
            let sum = match meta.is_dir() {
                true => {
                    stack.push(e.path());
                    0
                }
                false => crc32fast::hash(&fs::read(e.path()).expect("read")),
            };
            let mode = meta.permissions().mode();
            out.push((
                e.path(),
                mode,
                meta.len(),
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                sum,
            ));
        }
    }
    out.push((
        dir.to_path_buf(),
        fs::metadata(dir).map_or(0, |m| m.permissions().mode()),
        0,
        0,
        0,
    ));
    out
}

/// `dir` bind-mounted read-only onto itself; unmounted when dropped.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(dir: &Path) -> ReadOnlyBind {
        let run = |args: &[&str]| {
            let out = Command::new("mount").args(args).arg(dir).arg(dir).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!(
                    "read-only test needs root to bind-mount {}: mount {args:?} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => panic!("read-only test needs mount(8): {e}"),
            }
        };
        run(&["--bind"]);
        let guard = ReadOnlyBind(dir.to_path_buf());
        run(&["-o", "remount,bind,ro"]);
        guard
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writer side of the killed-agent test; only does something when
/// re-executed by `read_only_open_of_a_killed_agents_directory_writes_nothing`.
#[test]
fn read_only_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let s = Store::open(&cfg(Path::new(&dir))).expect("open");
    ingest_history(&s);
    s.flush();
    println!("ready");
    let _ = std::io::stdout().flush();
    // Killed here; bounded in case the parent died first.
    std::thread::sleep(Duration::from_secs(120));
}

fn assert_full_history(got: &[SeriesData]) {
    assert_eq!(got.len(), SERIES);
    for sd in got {
        let ts: Vec<i64> = sd.samples.iter().map(|x| x.0).collect();
        let want: Vec<i64> = (1..=TICKS).map(|k| k * STEP).collect();
        assert_eq!(ts, want, "{}", sd.labels);
    }
}

#[test]
fn read_only_open_of_a_killed_agents_directory_writes_nothing() {
    let d = TempDir::new("ro");
    let data = d.0.join("data");
    // A private copy of the test binary: a concurrent build may replace it.
    let exe = d.0.join("child-exe");
    fs::copy("/proc/self/exe", &exe).expect("copy the test binary");
    let mut child = spawn_test_child(&exe, "store::tests_files::read_only_child", CHILD_ENV, &data)
        .expect("start the writer child");
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("child wrote its history");
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.0.wait();
    let _ = reader.join();
    // Killed mid-write too: a torn record at the WAL's end.
    let wal_dir = data.join(WAL_DIR);
    let last = *wal::segments(&wal_dir).expect("segments").last().expect("a segment");
    OpenOptions::new()
        .append(true)
        .open(wal::segment_path(&wal_dir, last))
        .and_then(|mut f| f.write_all(&[0x20, 0, 0, 0, 1, 2]))
        .expect("tear the WAL");
    let before = snapshot(&data);
    // The index was not closed: reading it needs a repair, which writes.
    assert!(
        matches!(
            redb::ReadOnlyDatabase::open(data.join(DB_FILE)),
            Err(redb::DatabaseError::RepairAborted)
        ),
        "expected an index that needs repair"
    );

    // Read-only mount: any write would fail, so the store must need none.
    {
        let _ro = ReadOnlyBind::new(&data);
        assert!(
            fs::write(data.join("probe"), "x").is_err(),
            "the bind mount is not read-only"
        );
        let s = Store::open_read_only(&data).unwrap_or_else(|e| panic!("read-only open: {e}"));
        assert_full_history(&all(&s, "req_total"));
        // Readers that would have been writers: all of them do nothing.
        s.flush();
        s.close().expect("close");
    }
    // Writable directory: reading it must still change nothing.
    let s = Store::open_read_only(&data).unwrap_or_else(|e| panic!("read-only open: {e}"));
    assert_full_history(&all(&s, "req_total"));
    drop(s);
    assert_eq!(snapshot(&data), before, "the data directory changed");

    // And the agent itself then opens it as usual (repairs, truncates).
    let s = Store::open(&cfg(&data)).expect("writable open");
    assert_full_history(&all(&s, "req_total"));
}

#[test]
fn read_only_open_refuses_a_directory_in_use_and_creates_none() {
    let d = TempDir::new("ro-busy");
    let data = d.0.join("data");
    let s = Store::open(&cfg(&data)).expect("open");
    s.ingest(&tick(1, 1000), 1000);
    let err = Store::open_read_only(&data).map(|_| ()).map_err(|e| e.to_string());
    assert!(
        matches!(&err, Err(e) if e.contains("in use by another ngxprobe")),
        "{err:?}"
    );
    drop(s);
    let missing = d.0.join("missing");
    let err = Store::open_read_only(&missing).map(|_| ()).map_err(|e| e.to_string());
    assert!(matches!(&err, Err(e) if e.contains("no data directory")), "{err:?}");
    assert!(!missing.exists(), "a read-only open created the directory");
}

#[test]
fn data_directory_and_every_file_in_it_are_private() {
    let d = TempDir::new("private");
    let data = d.0.join("data");
    let s = Store::open(&cfg(&data)).expect("open");
    ingest_history(&s);
    s.flush();
    s.close().expect("close");
    let entries = snapshot(&data);
    let files = entries.iter().filter(|e| e.1 & 0o170000 == 0o100000).count();
    // LOCK, blocks.redb, a WAL segment, three block files.
    assert!(files >= 6, "{entries:?}");
    for (path, mode, ..) in &entries {
        let want = if mode & 0o170000 == 0o040000 { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o7777, want, "{}", path.display());
    }

    // A directory an older version left open to everybody is tightened
    // when reopened (it holds ngxprobe's LOCK: it is ours).
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).expect("chmod");
    let lock = data.join("LOCK");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).expect("chmod");
    let s = Store::open(&cfg(&data)).expect("reopen");
    assert_eq!(
        fs::metadata(&data).map(|m| m.permissions().mode() & 0o7777).ok(),
        Some(0o700)
    );
    assert_eq!(
        fs::metadata(&lock).map(|m| m.permissions().mode() & 0o7777).ok(),
        Some(0o600)
    );
    drop(s);
}
