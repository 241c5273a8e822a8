//! The agent under test: `$NGXPROBE_BIN --web.listen-address 127.0.0.1:<port>`.
use crate::clients::http_get;
use crate::metrics_text::{AgentView, Scrape};
use crate::util::{self, ChildGuard, Poll, TempDir, poll};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_BIN: &str = "/work/main/target/release/ngxprobe";

/// `$NGXPROBE_BIN`, else the release build in this workspace.
pub fn binary_path() -> PathBuf {
    std::env::var_os("NGXPROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN))
}

pub struct Agent {
    child: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts the agent and waits (bounded) for `GET /readyz` → 200.
    /// Fails (never skips) if the binary is missing.
    pub fn start() -> Result<Agent> {
        Self::start_with(&binary_path())
    }

    /// Starts the agent binary at `bin` (see [`Agent::start`]).
    pub fn start_with(bin: &std::path::Path) -> Result<Agent> {
        let bin = bin.to_path_buf();
        if !bin.is_file() {
            bail!(
                "ngxprobe binary not found at {} — build it (`cargo xtask build` or \
                 `cargo build --release -p ngxprobe`) or point NGXPROBE_BIN at it",
                bin.display()
            );
        }
        let dir = TempDir::new("agent")?;
        let log = dir.path().join("agent.log");
        let port = util::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        // A private store directory: one agent per data dir (the store locks it).
        cmd.arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--storage.path")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = ChildGuard::spawn(&mut cmd, "ngxprobe")?;
        let mut a = Agent {
            child,
            addr,
            log,
            _dir: dir,
        };
        let t0 = Instant::now();
        let addr = a.addr;
        let r = poll(
            "ngxprobe GET /readyz == 200",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                if let Some(st) = a.child.try_wait()? {
                    bail!("ngxprobe exited with {st}");
                }
                let (status, body) = http_get(addr, "/readyz")?;
                Ok(if status == 200 {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&body)
                    ))
                })
            },
        );
        if let Err(e) = r {
            bail!("{e:#}\nagent log:\n{}", util::tail(&a.log, 40));
        }
        eprintln!(
            "[e2e] agent pid {} ready on {} after {:?}",
            a.pid(),
            a.addr,
            t0.elapsed()
        );
        Ok(a)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Stops the agent: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.child.stop(libc::SIGTERM, Duration::from_secs(5));
    }

    /// Stops this agent (SIGTERM, SIGKILL after 5 s) and starts a new one
    /// in its place (new port), waiting for /readyz.
    pub fn restart(&mut self) -> Result<()> {
        let st = self.child.stop(libc::SIGTERM, Duration::from_secs(5));
        eprintln!("[e2e] agent pid {} stopped: {st:?}", self.pid());
        *self = Agent::start()?;
        Ok(())
    }

    pub fn scrape(&self) -> Result<Scrape> {
        scrape(self.addr)
    }

    pub fn view(&self, conf_path: &str) -> Result<AgentView> {
        self.scrape()?.view(conf_path)
    }

    /// Waits (bounded) until `nginx_up{conf_path} == 1` and all families are
    /// present for that instance.
    pub fn wait_instance_up(&self, conf_path: &str) -> Result<AgentView> {
        let t0 = Instant::now();
        let v = poll(
            &format!("nginx_up{{conf_path={conf_path:?}}} == 1"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let s = self.scrape()?;
                match s.view(conf_path) {
                    Ok(v) if v.up == 1 => Ok(Poll::Ready(v)),
                    Ok(v) => Ok(Poll::Pending(format!("{v:?}"))),
                    Err(e) => Ok(Poll::Pending(format!("{e:#}"))),
                }
            },
        )
        .with_context(|| format!("agent log:\n{}", util::tail(&self.log, 30)))?;
        eprintln!("[e2e] agent sees {conf_path} up after {:?}", t0.elapsed());
        Ok(v)
    }

    pub fn log_tail(&self, n: usize) -> String {
        util::tail(&self.log, n)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[e2e] agent log tail:\n{}", self.log_tail(30));
        }
        self.child.stop(libc::SIGTERM, Duration::from_secs(5));
    }
}

/// `GET /metrics` from an agent at `addr`, parsed.
pub fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!(
            "GET /metrics: status {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Scrape::parse(String::from_utf8(body).context("/metrics is not UTF-8")?)
}
