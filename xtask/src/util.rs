//! Small helpers shared by the xtask commands: paths, running commands,
//! interrupts, /proc CPU and memory readers, medians. Processes, nginx, HTTP
//! and temp dirs come from the end-to-end harness (`ngxprobe_e2e`).
use anyhow::{Context as _, Result, anyhow, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory (CARGO_TARGET_DIR when set, else <root>/target).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The release agent binary (`cargo xtask build` output).
pub fn agent_bin() -> PathBuf {
    target_dir().join("release").join("ngxprobe")
}

/// The cargo that runs xtask (so the same toolchain builds everything).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Renders a command line for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdout/stderr (stdin closed); fails on non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({})", describe(status));
    }
    Ok(())
}

/// Runs a command and returns its stdout (None when it cannot start or fails).
pub fn output_ok<I, S>(program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds an executable on PATH (or checks a path containing `/`).
pub use ngxprobe_e2e::util::find_executable as which;

// ---------------------------------------------------------------- interrupts

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM into a flag, so long-running loops return an error and
/// every guard's Drop runs (processes killed, sysctls restored, temp dirs removed).
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small steps, returning early with an error when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------- /proc

/// Fields of /proc/PID/stat after the `(comm)` field: [0] = state, [1] = ppid, ...
/// (so field N of proc(5), 1-based, is at index N - 3).
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 1..)?.split_whitespace().collect())
}

/// utime + stime of a process, in microseconds.
pub fn cpu_time_us(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let f = stat_fields(&stat).ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    // utime = field 14, stime = field 15.
    let ticks = num(14 - 3)? + num(15 - 3)?;
    Ok(ticks * 1e6 / clock_ticks())
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A process's resident memory (KiB), from /proc/PID/status: VmRSS and
/// its parts. File pages are the executable's and libraries' mapped pages
/// (and BPF ring buffers, mapped from the kernel); anonymous pages are the
/// heap and stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

/// See [`Rss`]; `None` when the process is gone.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        shmem: field("RssShmem:")?,
    })
}

/// Median of a non-empty slice (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
