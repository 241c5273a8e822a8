//! What the agent costs processes that are not nginx: `dd bs=1` (syscalls
//! on no socket: our hooks never fire) and a loopback TCP ping-pong between
//! two xtask processes (sockets, but not nginx's: the programs run and exit
//! early). Also the sysctl guard the benchmark switches bpf_stats with.
use crate::util::{self, check_interrupted, sleep};
use anyhow::{Context as _, Result, bail};
use ngxprobe_e2e::util::ChildGuard;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Sets a sysctl for its lifetime; the previous value is written back on drop
/// (also on errors and Ctrl-C, which the benchmark turns into an error).
pub struct SysctlGuard {
    path: &'static str,
    previous: String,
}

impl SysctlGuard {
    pub fn set(path: &'static str, value: &str) -> Result<Self> {
        let previous = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_string();
        std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
        Ok(SysctlGuard { path, previous })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.previous) {
            eprintln!(
                "xtask: could not restore {} to {}: {e} — restore it by hand!",
                self.path, self.previous
            );
        }
    }
}

fn rusage_cpu_s(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of `dd if=/dev/zero of=/dev/null bs=1 count=N` (2N syscalls).
pub fn dd_cpu(count: u64) -> Result<f64> {
    let mut cmd = Command::new("dd");
    cmd.args([
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1",
        &format!("count={count}"),
        "status=none",
    ])
    .stdin(Stdio::null());
    let (st, ru) = ChildGuard::spawn(&mut cmd, "dd")?.wait_rusage(check_interrupted)?;
    if !st.success() {
        bail!("dd failed ({})", util::describe(st));
    }
    Ok(rusage_cpu_s(&ru))
}

#[derive(clap::Args)]
pub struct PingPongArgs {
    /// `server` (writes its port to --port-file, echoes one connection) or `client`.
    role: String,
    #[arg(long)]
    port_file: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Pin to this CPU (both sides on one CPU: steadier than cross-CPU wakeups).
    #[arg(long)]
    cpu: Option<usize>,
}

/// CPU µs (client + server) per round trip of a 1-byte loopback TCP ping-pong
/// between two xtask processes.
pub fn ping_pong_cpu(dir: &Path, count: u64) -> Result<f64> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let port_file = dir.join("ping-pong.port");
    let _ = std::fs::remove_file(&port_file);
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let cpu = (cpus - 1).to_string();
    let spawn = |role: &str| {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "ping-pong",
            role,
            "--cpu",
            &cpu,
            "--count",
            &count.to_string(),
            "--port-file",
        ])
        .arg(&port_file)
        .stdin(Stdio::null());
        ChildGuard::spawn(&mut cmd, &format!("ping-pong {role}"))
    };
    let mut server = spawn("server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&port_file).is_ok_and(|s| s.ends_with('\n')) {
        if let Some(st) = server.try_wait()? {
            bail!("ping-pong server exited early ({})", util::describe(st));
        }
        if Instant::now() > deadline {
            bail!("ping-pong server did not start");
        }
        sleep(Duration::from_millis(10))?;
    }
    let (cst, cru) = spawn("client")?.wait_rusage(check_interrupted)?;
    let (sst, sru) = server.wait_rusage(check_interrupted)?;
    if !cst.success() || !sst.success() {
        bail!(
            "ping-pong failed (client {}, server {})",
            util::describe(cst),
            util::describe(sst)
        );
    }
    Ok((rusage_cpu_s(&cru) + rusage_cpu_s(&sru)) * 1e6 / count as f64)
}

/// Entry point of the hidden `ping-pong` subcommand.
pub fn ping_pong(args: PingPongArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu);
    }
    match args.role.as_str() {
        "server" => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let tmp = args.port_file.with_extension("tmp");
            std::fs::write(&tmp, format!("{port}\n"))?;
            std::fs::rename(&tmp, &args.port_file)?;
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            loop {
                match s.read(&mut b)? {
                    0 => return Ok(()),
                    _ => s.write_all(&b)?,
                }
            }
        }
        "client" => {
            let port: u16 = std::fs::read_to_string(&args.port_file)?.trim().parse()?;
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            let mut b = [7u8; 1];
            for _ in 0..args.count {
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
            }
            Ok(())
        }
        other => bail!("unknown ping-pong role {other:?} (server|client)"),
    }
}

/// Best effort: a cpuset may forbid the CPU, then the process just runs unpinned.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET/sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
