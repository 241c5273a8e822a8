//! Small shared pieces: bounded polling, free ports, child-process guards,
//! /proc helpers, temp dirs, test serialisation, a watchdog, and what a test
//! does when a tool it needs is missing ([`require_tool`], [`skip_or_fail`]).
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// Outcome of one attempt of a bounded poll.
pub enum Poll<T> {
    Ready(T),
    /// Not yet; the string describes the state seen (reported on timeout).
    Pending(String),
}

/// Calls `f` every `interval` until it returns `Ready`, at most for `timeout`
/// (and at most `timeout / interval + 2` attempts). Errors from `f` count as
/// "pending" and the last one is reported on timeout.
pub fn poll<T>(what: &str, timeout: Duration, interval: Duration, mut f: impl FnMut() -> Result<Poll<T>>) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let max_attempts = (timeout.as_millis() / interval.as_millis().max(1)) as u64 + 2;
    let mut last = String::from("(no attempt finished)");
    for attempt in 1..=max_attempts {
        match f() {
            Ok(Poll::Ready(v)) => return Ok(v),
            Ok(Poll::Pending(s)) => last = s,
            Err(e) => last = format!("error: {e:#}"),
        }
        if Instant::now() >= deadline || attempt == max_attempts {
            break;
        }
        std::thread::sleep(interval);
    }
    bail!(
        "timed out after {:.1?} waiting for {what}; last state: {last}",
        start.elapsed()
    )
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that is free on both 127.0.0.1 and ::1 right now (found by
/// binding port 0) and that this process has not handed out before.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let l4 = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = l4.local_addr()?.port();
        if TcpListener::bind(("::1", port)).is_err() {
            continue;
        }
        let mut g = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free port on 127.0.0.1 and ::1")
}

// ---------------------------------------------------------------------------
// Child processes

/// PIDs of every child this test process started and has not reaped yet; the
/// watchdog kills them (and their descendants) if a test hangs.
static LIVE_CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn register(pid: i32) {
    LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}
fn unregister(pid: i32) {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// A started child process, killed by PID (SIGKILL) when dropped, also on panic.
pub struct ChildGuard {
    child: Option<Child>,
    pid: i32,
    name: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<ChildGuard> {
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id() as i32;
        register(pid);
        Ok(ChildGuard {
            child: Some(child),
            pid,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The name given to [`ChildGuard::spawn`] (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` if the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            None => bail!("{} already reaped", self.name),
            Some(c) => {
                let st = c.try_wait()?;
                if st.is_some() {
                    unregister(self.pid);
                }
                Ok(st)
            }
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        poll(
            &format!("{name} (pid {}) to exit", self.pid),
            timeout,
            Duration::from_millis(20),
            || {
                Ok(match self.try_wait()? {
                    Some(st) => Poll::Ready(st),
                    None => Poll::Pending("still running".into()),
                })
            },
        )
    }

    /// Sends `sig`, waits up to `grace` for the exit, then SIGKILLs.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(st)) = child.try_wait() {
            unregister(self.pid);
            self.child = None;
            return Some(st);
        }
        unsafe { libc::kill(self.pid, sig) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                unregister(self.pid);
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let st = child.wait().ok();
        unregister(self.pid);
        self.child = None;
        st
    }

    /// Waits for the process to exit by itself and returns its status with
    /// its resource usage (`wait4(2)`: CPU time, max RSS...). Polls every
    /// 5 ms; `check` runs between polls and an error from it ends the wait
    /// (the process is then killed on drop).
    pub fn wait_rusage(&mut self, mut check: impl FnMut() -> Result<()>) -> Result<(ExitStatus, libc::rusage)> {
        if self.child.is_none() {
            bail!("{} already reaped", self.name);
        }
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: a zeroed rusage is a valid out-parameter.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `pid` is our own child, not reaped yet (`child` is Some); the pointers are valid.
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == self.pid {
                // Reaped: forget the Child so that nothing signals a recycled pid.
                self.child = None;
                unregister(self.pid);
                use std::os::unix::process::ExitStatusExt as _;
                return Ok((ExitStatus::from_raw(status), ru));
            }
            if r < 0 {
                bail!("wait4({}): {}", self.name, std::io::Error::last_os_error());
            }
            check()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Takes the `Child` (e.g. to collect its piped output); the guard still
    /// kills the PID on drop if the process has not been reaped.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL, Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------
// /proc helpers

/// (ppid, state) of a process from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Sends SIGCONT to a process the test stopped (SIGSTOP), however the test
/// ends (drop, also on panic).
pub struct ResumeOnDrop(pub i32);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process of the test's own.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// True if the PID exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((_, st)) if st != 'Z' && st != 'X')
}

/// Live (non-zombie) children of `pid`, found by scanning /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((ppid, st)) = proc_stat(p)
            && ppid == pid
            && st != 'Z'
            && st != 'X'
        {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A process's resident memory and its peak (VmRSS, VmHWM), in KiB; zeros
/// when the process is gone.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The `p` quantile (0..=1) of `times`, nearest rank; zero when empty.
pub fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

/// Socket inodes open in a process (from /proc/PID/fd).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                && let Ok(i) = n.parse()
            {
                out.push(i);
            }
        }
    }
    out
}

/// TCP sockets of the calling thread's network namespace: inode → (local
/// port, state hex). (thread-self, not self: a thread moved into a test's
/// namespace sees that namespace's table.)
pub fn tcp_sockets() -> HashMap<u64, (u16, u8)> {
    let mut out = HashMap::new();
    for f in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in s.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let state = u8::from_str_radix(cols[3], 16).ok();
            let inode = cols[9].parse::<u64>().ok();
            if let (Some(port), Some(state), Some(inode)) = (port, state, inode)
                && inode != 0
            {
                out.insert(inode, (port, state));
            }
        }
    }
    out
}

/// TCP state LISTEN in /proc/net/tcp.
pub const TCP_LISTEN: u8 = 0x0A;

// ---------------------------------------------------------------------------
// Temp dirs

static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// A private directory under the system temp dir, removed on drop unless the
/// thread is panicking or NGXPROBE_E2E_KEEP is set (then its path is printed).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir().canonicalize().context("canonicalize temp dir")?;
        let path = base.join(format!(
            "ngxprobe-e2e-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            DIR_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(TempDir { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("NGXPROBE_E2E_KEEP").is_some() {
            eprintln!("[e2e] keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Missing tools

/// True when running under CI: `CI` is set to anything but "", "0" or "false".
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(v: Option<&str>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// A test cannot run because `what` is missing (a tool, a data set). Under
/// CI ([`in_ci`]) that is a failure: this panics with `what`. Elsewhere the
/// test is skipped: this prints `SKIP: <what>` and returns, and the caller
/// returns from the test.
pub fn skip_or_fail(what: &str) {
    assert!(
        !in_ci(),
        "{what} (CI is set, so a missing prerequisite fails the test instead of skipping it)"
    );
    eprintln!("SKIP: {what}");
}

/// Where the executable `tool` is: a path containing `/` is taken as is, a
/// bare name is looked up on PATH. When it is missing, [`skip_or_fail`]
/// (with `hint`, e.g. how to install it) and `None`:
/// `let Some(nginx) = require_tool("/usr/sbin/nginx", "apt-get install nginx") else { return };`
pub fn require_tool(tool: &str, hint: &str) -> Option<PathBuf> {
    let found = find_executable(tool);
    if found.is_none() {
        skip_or_fail(&format!("{tool} not found ({hint})"));
    }
    found
}

/// `tool` itself if it contains `/` and is a file, else the first `PATH`
/// entry that has a file of that name.
pub fn find_executable(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------------------
// Serialisation and watchdog

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests in one binary run one at a time: they share 2 cores and each one
/// measures exact deltas, so concurrent load would only add noise.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills everything this process started and aborts if a test runs longer
/// than its limit (every loop is bounded anyway; this is the last resort).
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
}

pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_string();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("[e2e] WATCHDOG: test {name} exceeded {limit:?}; killing children and aborting");
            let pids = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for pid in pids {
                for c in children_of(pid) {
                    unsafe { libc::kill(c, libc::SIGKILL) };
                }
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::process::abort();
        }
    });
    Watchdog { tx: Some(tx) }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        for (v, ci) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FALSE"), false),
            (Some("1"), true),
            (Some("true"), true),
            (Some("yes"), true),
        ] {
            assert_eq!(ci_value_means_ci(v), ci, "CI={v:?}");
        }
    }

    #[test]
    fn finds_executables() {
        assert_eq!(find_executable("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert!(find_executable("sh").is_some());
        assert_eq!(find_executable("/nonexistent/ngxprobe-tool"), None);
        assert_eq!(find_executable("ngxprobe-no-such-tool"), None);
    }

    #[test]
    fn wait_rusage_reaps_and_reports_cpu() {
        let mut g = ChildGuard::spawn(Command::new("/bin/sh").args(["-c", "exit 3"]), "sh").unwrap();
        let (st, _ru) = g.wait_rusage(|| Ok(())).unwrap();
        assert_eq!(st.code(), Some(3));
        assert!(g.wait_rusage(|| Ok(())).is_err(), "already reaped");
    }
}
