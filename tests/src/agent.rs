//! The agent under test: `$NGXPROBE_BIN --web.listen-address 127.0.0.1:<port>`.
use crate::clients::{get_json, http_get};
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

/// How to start the agent ([`Agent::start_opts`]); the default is what
/// [`Agent::start`] does.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Binary (default [`binary_path`]).
    pub bin: Option<PathBuf>,
    /// YAML text for `--config` (written to `<agent dir>/config.yml`).
    pub config: Option<String>,
    /// `--storage.path` (default: `<agent dir>/data`, a fresh store).
    pub storage_path: Option<PathBuf>,
    /// More arguments, after the others.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the agent process.
    pub env: Vec<(String, String)>,
    /// A command that runs the agent, e.g. `["setpriv", "--bounding-set", "-bpf", "--"]`:
    /// the agent's path and arguments follow it.
    pub wrapper: Vec<String>,
    /// The agent serves https (`--web.config.file`): /readyz is probed with
    /// curl over TLS with these arguments (`--cacert`, client certificate).
    pub https_probe: Vec<String>,
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
        Self::start_opts(&AgentOptions {
            bin: Some(bin.to_path_buf()),
            ..Default::default()
        })
    }

    /// Starts the agent with `yaml` as its `--config` file (written into the
    /// agent's temp dir). `--web.listen-address` and `--storage.path` are still
    /// passed on the command line and override the file.
    pub fn start_with_config(yaml: &str) -> Result<Agent> {
        Self::start_opts(&AgentOptions {
            config: Some(yaml.to_string()),
            ..Default::default()
        })
    }

    /// Starts the agent as `opts` says and waits (bounded) for /readyz → 200.
    pub fn start_opts(opts: &AgentOptions) -> Result<Agent> {
        let bin = opts.bin.clone().unwrap_or_else(binary_path);
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
        let mut cmd = match opts.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if let Some(yaml) = &opts.config {
            let conf = dir.path().join("config.yml");
            std::fs::write(&conf, yaml)?;
            cmd.arg("--config").arg(conf);
        }
        // A private store directory unless the caller brings one: one agent
        // per data dir (the store locks it).
        let data = opts.storage_path.clone().unwrap_or_else(|| dir.path().join("data"));
        cmd.arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--storage.path")
            .arg(data)
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
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
                let (status, body) = match opts.https_probe.is_empty() {
                    true => http_get(addr, "/readyz")?,
                    false => curl_https(addr, "/readyz", &opts.https_probe)?,
                };
                Ok(if status == 200 {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("status {status}: {}", String::from_utf8_lossy(&body)))
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

    /// `Some(status)` if the agent has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILLs the agent (no shutdown code runs) and reaps it.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        self.child.stop(libc::SIGKILL, Duration::from_secs(5))
    }

    /// Path of the agent's log file (stdout and stderr).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// `GET path` on the agent, expecting 200 and a JSON body.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        get_json(self.addr, path)
    }

    /// `GET /api/v1/query?query=<promql>` → `data` (status must be "success").
    pub fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let v = self.get_json(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        if v["status"] != "success" {
            bail!("query {promql:?}: {v}");
        }
        Ok(v["data"].clone())
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

    /// Runs `ngxprobe diagnose --since <since>` against this agent until its
    /// report has every line of `want` (the store samples once a second, so
    /// a finding appears once the event is in it), bounded; returns the
    /// report. diagnose exits 1 when it names a problem.
    pub fn diagnose_until(&self, since: &str, want: &[String]) -> Result<String> {
        let url = format!("http://{}", self.addr());
        util::poll(
            "ngxprobe diagnose to name the problems",
            Duration::from_secs(15),
            Duration::from_millis(300),
            || {
                let out = std::process::Command::new(binary_path())
                    .args(["diagnose", "--since", since, "--url", &url])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok(
                    if out.status.code() == Some(1) && want.iter().all(|w| text.lines().any(|l| l == w)) {
                        util::Poll::Ready(text)
                    } else {
                        util::Poll::Pending(format!(
                            "{}: {text}{}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    },
                )
            },
        )
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

/// `GET /metrics` from an agent (or any Prometheus exporter) at `addr`, parsed.
/// `GET https://127.0.0.1:PORT{path}` with curl and `args` (TLS material,
/// `-u user:password`): (status, body). A failed handshake is an error
/// carrying curl's exit code and message.
pub fn curl_https(addr: SocketAddr, path: &str, args: &[String]) -> Result<(u16, Vec<u8>)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {path}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    let text = out.stdout;
    let split = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&text[split..])
        .trim()
        .parse()
        .context("curl status")?;
    Ok((status, text[..split].to_vec()))
}

pub fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics: status {status}: {}", String::from_utf8_lossy(&body));
    }
    Scrape::parse(String::from_utf8(body).context("/metrics is not UTF-8")?)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
