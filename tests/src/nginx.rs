//! A private nginx instance (Debian's /usr/sbin/nginx, or $NGINX_BIN) on
//! loopback, run as a child process with its own prefix in a temp dir.
//!
//! Layout of the instance:
//! * main server on `127.0.0.1:<main_port>` and `[::1]:<main_port>`: static
//!   files from `<dir>/html` (`index.html` ≈600 bytes, `big.bin` 10 MB unless
//!   [`NginxOptions::big_file`] is off) with sendfile on; `/nosendfile/`
//!   aliases the same files with sendfile off;
//!   `location = /echo { return 200 "ok\n"; }`.
//! * with [`NginxOptions::tls`]: a server on `127.0.0.1:<tls_port>` with
//!   `ssl http2` (self-signed certificate made with `openssl` in `<dir>/tls`),
//!   same files.
//! * with [`NginxOptions::h2c`]: a server on `127.0.0.1:<h2c_port>` with
//!   `http2` and no TLS (HTTP/2 with prior knowledge only), same files.
//! * with [`NginxOptions::proxy_protocol`]: two servers that expect a PROXY
//!   protocol header first (`listen ... proxy_protocol`), one with TLS, one
//!   plain, same files.
//! * oracle server on `127.0.0.1:<oracle_port>`: `location = /stub { stub_status; }`.
//!   It belongs to the same instance, so its connections and requests are
//!   counted by nginx and by ngxprobe alike.
use crate::netns::NetnsRef;
use crate::oracle::{self, StubStatus};
use crate::util::{
    self, ChildGuard, Poll, TCP_LISTEN, TempDir, children_of, cmdline, poll, socket_inodes, tcp_sockets,
};
use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const BIG_FILE_SIZE: u64 = 10 * 1024 * 1024;
pub const INDEX_SIZE: usize = 600;

#[derive(Clone, Debug)]
pub struct NginxOptions {
    pub worker_processes: u32,
    /// Used in the temp dir name, to tell instances apart in logs.
    pub tag: String,
    /// The nginx binary (default [`nginx_bin`]).
    pub bin: Option<PathBuf>,
    /// `keepalive_requests` (default 100000).
    pub keepalive_requests: u64,
    /// Write `html/big.bin` (10 MB; default on). Benchmarks that only serve
    /// `index.html` turn it off.
    pub big_file: bool,
    /// Run nginx as this (uid, gid) instead of root; its directory is
    /// chowned to it first.
    pub user: Option<(u32, u32)>,
    /// Add a TLS server (`listen ... ssl http2`, see the module doc).
    pub tls: bool,
    /// Add an h2c server (`listen ... http2`, no TLS).
    pub h2c: bool,
    /// Add two servers behind the PROXY protocol (`listen ... proxy_protocol`):
    /// one with TLS, one plain.
    pub proxy_protocol: bool,
    /// Run nginx in this network namespace (a test's [`crate::netns::Netns`]):
    /// its readiness checks and [`Nginx::oracle`] then connect from inside
    /// it; clients of the test use [`Nginx::in_netns`].
    pub netns: Option<NetnsRef>,
    /// `backlog=N` on the main server's listen lines (nginx's default is
    /// 511, capped by net.core.somaxconn).
    pub backlog: Option<u32>,
    /// Raw config appended inside `http { }` (extra servers of a test).
    pub extra_http: String,
    /// Write an access log (`access.log` in the instance's directory, format
    /// [`ACCESS_LOG_FORMAT`]) instead of `access_log off`: the oracle of
    /// per-request metrics.
    pub access_log: bool,
    /// Extra `location` blocks (raw nginx config) in the main server.
    pub main_locations: String,
    /// Start the master inside this cgroup directory (its pid is written to
    /// `cgroup.procs` before it execs nginx, so the workers are born there).
    pub cgroup: Option<PathBuf>,
}

/// Fields of the access log written with `access_log: true`, space-separated
/// in this order.
pub const ACCESS_LOG_FORMAT: &str = "$status $request_method $server_protocol $request_time $request_length $bytes_sent $body_bytes_sent $scheme $server_port";

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            worker_processes: 1,
            tag: "nginx".into(),
            bin: None,
            keepalive_requests: 100_000,
            big_file: true,
            user: None,
            tls: false,
            h2c: false,
            proxy_protocol: false,
            netns: None,
            backlog: None,
            extra_http: String::new(),
            access_log: false,
            main_locations: String::new(),
            cgroup: None,
        }
    }
}

impl NginxOptions {
    pub fn workers(n: u32) -> Self {
        NginxOptions {
            worker_processes: n,
            ..Default::default()
        }
    }
}

pub fn nginx_bin() -> PathBuf {
    std::env::var_os("NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

pub struct Nginx {
    // Field order = drop order: the process goes before its directory.
    master: ChildGuard,
    dir: TempDir,
    opts: NginxOptions,
    bin: PathBuf,
    conf: PathBuf,
    main_port: u16,
    oracle_port: u16,
    tls_port: Option<u16>,
    h2c_port: Option<u16>,
    /// (TLS, plain) servers behind the PROXY protocol.
    proxy_ports: Option<(u16, u16)>,
}

impl Nginx {
    /// Starts nginx and waits (bounded) until both servers answer and all
    /// workers are up. Retries with fresh ports if a port was taken meanwhile.
    pub fn start(opts: NginxOptions) -> Result<Nginx> {
        let bin = opts.bin.clone().unwrap_or_else(nginx_bin);
        if !bin.exists() {
            bail!(
                "nginx binary {} not found (install Debian's nginx or set NGINX_BIN)",
                bin.display()
            );
        }
        let mut last_err = None;
        for _attempt in 0..3 {
            match Self::try_start(&opts, &bin) {
                Ok(n) => return Ok(n),
                Err(e) => {
                    eprintln!("[e2e] nginx start failed, retrying with new ports: {e:#}");
                    last_err = Some(e)
                }
            }
        }
        Err(last_err.unwrap())
    }

    fn try_start(opts: &NginxOptions, bin: &Path) -> Result<Nginx> {
        let dir = TempDir::new(&opts.tag)?;
        let d = dir.path();
        let main_port = util::free_port()?;
        let oracle_port = util::free_port()?;
        write_site(d, opts.big_file)?;
        let tls_port = if opts.tls { Some(util::free_port()?) } else { None };
        let h2c_port = if opts.h2c { Some(util::free_port()?) } else { None };
        let proxy_ports = if opts.proxy_protocol {
            Some((util::free_port()?, util::free_port()?))
        } else {
            None
        };
        let mut extra = String::new();
        if opts.tls || opts.proxy_protocol {
            let tls = d.join("tls");
            std::fs::create_dir_all(&tls)?;
            crate::protocol_clients::self_signed_cert(&tls.join("cert.pem"), &tls.join("key.pem"))?;
        }
        if let Some(port) = tls_port {
            // HTTP/1.1 and HTTP/2 (ALPN) over TLS.
            extra.push_str(&server_block(d, port, "ssl http2", "tls"));
        }
        if let Some(port) = h2c_port {
            // HTTP/2 with prior knowledge, no TLS.
            extra.push_str(&server_block(d, port, "http2", "h2c"));
        }
        if let Some((tls, plain)) = proxy_ports {
            extra.push_str(&server_block(d, tls, "ssl http2 proxy_protocol", "tls"));
            extra.push_str(&server_block(d, plain, "proxy_protocol", "proxied"));
        }
        let conf = d.join("nginx.conf");
        let extra = format!("{extra}{}", opts.extra_http);
        std::fs::write(&conf, config_with(d, opts, main_port, oracle_port, &extra))?;
        let mut cmd = match (&opts.netns, &opts.cgroup) {
            (Some(ns), _) => ns.command(bin)?,
            // exec keeps the pid: the master is the process that joined.
            (None, Some(cg)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                    .arg(cg)
                    .arg(bin);
                c
            }
            (None, None) => Command::new(bin),
        };
        cmd.arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("stdout.log"))?)
            .stderr(std::fs::File::create(d.join("stderr.log"))?);
        if let Some((uid, gid)) = opts.user {
            chown_tree(d, uid, gid)?;
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let master = ChildGuard::spawn(&mut cmd, "nginx")?;
        let mut n = Nginx {
            master,
            dir,
            opts: opts.clone(),
            bin: bin.to_path_buf(),
            conf,
            main_port,
            oracle_port,
            tls_port,
            h2c_port,
            proxy_ports,
        };
        n.wait_ready()?;
        Ok(n)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let mut addrs = vec![self.main_addr(), self.main_addr_v6(), self.oracle_addr()];
        addrs.extend(self.tls_addr());
        addrs.extend(self.h2c_addr());
        if let Some((tls, plain)) = self.proxy_addrs() {
            addrs.extend([tls, plain]);
        }
        let want = self.opts.worker_processes as usize;
        let res = poll(
            "nginx to listen and start its workers",
            Duration::from_secs(10),
            Duration::from_millis(25),
            || {
                if let Some(st) = self.master.try_wait()? {
                    bail!("nginx exited with {st}");
                }
                let oracle_addr = self.oracle_addr();
                let reached = self.in_netns(|| -> Result<Option<String>> {
                    for &a in &addrs {
                        if let Err(e) = TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                            return Ok(Some(format!("connect {a}: {e}")));
                        }
                    }
                    Ok(None)
                })??;
                if let Some(pending) = reached {
                    return Ok(Poll::Pending(pending));
                }
                let w = self.worker_pids();
                if w.len() != want {
                    return Ok(Poll::Pending(format!("{} workers, want {want}", w.len())));
                }
                self.in_netns(|| oracle::fetch(oracle_addr))??;
                Ok(Poll::Ready(()))
            },
        );
        res.with_context(|| {
            format!(
                "nginx did not become ready; error.log:\n{}\nstderr:\n{}",
                util::tail(&self.dir.path().join("error.log"), 20),
                util::tail(&self.dir.path().join("stderr.log"), 20)
            )
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// Absolute path of the `-c` config: the `conf_path` label ngxprobe uses.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }
    /// The access log (with [`NginxOptions::access_log`]).
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
    pub fn conf_label(&self) -> String {
        self.conf.to_string_lossy().into_owned()
    }
    pub fn main_port(&self) -> u16 {
        self.main_port
    }
    pub fn oracle_port(&self) -> u16 {
        self.oracle_port
    }
    pub fn main_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.main_port))
    }
    pub fn main_addr_v6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.main_port))
    }
    pub fn oracle_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.oracle_port))
    }
    /// The TLS server's address (with [`NginxOptions::tls`]).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }
    /// The h2c server's address (with [`NginxOptions::h2c`]).
    pub fn h2c_addr(&self) -> Option<SocketAddr> {
        self.h2c_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }
    /// The (TLS, plain) servers behind the PROXY protocol (with
    /// [`NginxOptions::proxy_protocol`]).
    pub fn proxy_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.proxy_ports.map(|(t, p)| {
            (
                SocketAddr::from(([127, 0, 0, 1], t)),
                SocketAddr::from(([127, 0, 0, 1], p)),
            )
        })
    }
    /// `http://127.0.0.1:<main_port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.main_port)
    }
    /// `http://[::1]:<main_port><path>`
    pub fn url_v6(&self, path: &str) -> String {
        format!("http://[::1]:{}{path}", self.main_port)
    }
    pub fn master_pid(&self) -> i32 {
        self.master.pid()
    }
    pub fn worker_processes(&self) -> u32 {
        self.opts.worker_processes
    }

    /// Current (non-zombie) worker processes, excluding ones shutting down
    /// after a reload.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid())
            .into_iter()
            .filter(|p| {
                let c = cmdline(*p);
                c.contains("worker process") && !c.contains("shutting down")
            })
            .collect()
    }

    /// Every live child of the master (workers, also those shutting down).
    pub fn all_children(&self) -> Vec<i32> {
        children_of(self.master_pid())
    }

    /// Reads stub_status once (from inside the instance's network namespace).
    pub fn oracle(&self) -> Result<StubStatus> {
        let a = self.oracle_addr();
        self.in_netns(|| oracle::fetch(a))?
    }

    /// The network namespace nginx runs in ([`NginxOptions::netns`]).
    pub fn netns(&self) -> Option<&NetnsRef> {
        self.opts.netns.as_ref()
    }

    /// Runs `f` where nginx's addresses are reachable: on a thread inside
    /// its network namespace ([`NginxOptions::netns`]), else right here.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        match &self.opts.netns {
            Some(ns) => ns.run(f),
            None => Ok(f()),
        }
    }

    /// Ground truth from the kernel: TCP connections (not listeners) that
    /// nginx processes hold open right now, from /proc/PID/fd and /proc/net/tcp{,6}.
    pub fn open_connections(&self) -> usize {
        let socks = self.in_netns(tcp_sockets).unwrap_or_default();
        let mut inodes = HashSet::new();
        let mut pids = self.all_children();
        pids.push(self.master_pid());
        for p in pids {
            for i in socket_inodes(p) {
                if let Some((_, state)) = socks.get(&i)
                    && *state != TCP_LISTEN
                {
                    inodes.insert(i);
                }
            }
        }
        inodes.len()
    }

    /// `nginx -s reload` (signals the master through the pid file), then waits
    /// (bounded) until a full new set of workers runs. Returns the new worker pids.
    pub fn reload(&self) -> Result<Vec<i32>> {
        let old: HashSet<i32> = self.worker_pids().into_iter().collect();
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-s")
            .arg("reload")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut g = ChildGuard::spawn(&mut cmd, "nginx -s reload")?;
        let st = g.wait_timeout(Duration::from_secs(10))?;
        if !st.success() {
            bail!(
                "nginx -s reload failed: {st}; error.log:\n{}",
                util::tail(&d.join("error.log"), 10)
            );
        }
        let want = self.opts.worker_processes as usize;
        let new = poll(
            "new workers after reload",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let now = self.worker_pids();
                let new: Vec<i32> = now.iter().copied().filter(|p| !old.contains(p)).collect();
                Ok(if new.len() == want {
                    Poll::Ready(new)
                } else {
                    Poll::Pending(format!("workers {now:?}, old {old:?}"))
                })
            },
        )?;
        // Old workers finish their in-flight requests and close idle
        // keep-alive connections, then exit.
        poll(
            "old workers to exit after reload",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let left: Vec<i32> = self.all_children().into_iter().filter(|p| old.contains(p)).collect();
                Ok(if left.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("old workers still running: {left:?}"))
                })
            },
        )?;
        Ok(new)
    }

    /// SIGKILLs one worker and waits (bounded) until the master has respawned
    /// it. Returns the killed pid.
    pub fn kill_worker(&self) -> Result<i32> {
        let before = self.worker_pids();
        let victim = *before.first().context("no worker to kill")?;
        if unsafe { libc::kill(victim, libc::SIGKILL) } != 0 {
            bail!("kill({victim}, SIGKILL): {}", std::io::Error::last_os_error());
        }
        let want = self.opts.worker_processes as usize;
        poll(
            "master to respawn the killed worker",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let now = self.worker_pids();
                Ok(if now.len() == want && !now.contains(&victim) {
                    Poll::Ready(victim)
                } else {
                    Poll::Pending(format!("workers {now:?}, killed {victim}"))
                })
            },
        )
    }

    pub fn error_log_tail(&self, n: usize) -> String {
        util::tail(&self.dir.path().join("error.log"), n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Workers do not die with the master: collect them first, then kill
        // the master (ChildGuard) and every child by PID.
        let kids = self.all_children();
        if std::thread::panicking() {
            eprintln!(
                "[e2e] nginx {} error.log tail:\n{}",
                self.conf.display(),
                self.error_log_tail(15)
            );
        }
        self.master.stop(libc::SIGKILL, Duration::from_secs(5));
        for k in kids {
            unsafe { libc::kill(k, libc::SIGKILL) };
        }
        // A kept directory (failed test) keeps its logs, not the 10 MB file.
        let _ = std::fs::remove_file(self.dir.path().join("html/big.bin"));
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn write_site(d: &Path, big_file: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let html = d.join("html");
    std::fs::create_dir_all(&html)?;
    std::fs::create_dir_all(d.join("tmp"))?;
    std::fs::create_dir_all(d.join("logs"))?;
    for p in [html.as_path(), &d.join("tmp"), &d.join("logs")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut index = String::from("<!DOCTYPE html>\n<html><head><title>ngxprobe e2e</title></head><body>\n");
    while index.len() < INDEX_SIZE - 16 {
        index.push_str("<p>ngxprobe e2e test page</p>\n");
    }
    index.push_str("</body></html>\n");
    std::fs::write(html.join("index.html"), index.as_bytes())?;
    std::fs::set_permissions(html.join("index.html"), std::fs::Permissions::from_mode(0o644))?;
    if !big_file {
        return Ok(());
    }
    // Deterministic, incompressible-ish content.
    let mut big = Vec::with_capacity(BIG_FILE_SIZE as usize);
    let mut x: u32 = 0x1234_5678;
    while big.len() < BIG_FILE_SIZE as usize {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(&x.to_le_bytes());
    }
    big.truncate(BIG_FILE_SIZE as usize);
    std::fs::write(html.join("big.bin"), &big)?;
    std::fs::set_permissions(html.join("big.bin"), std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

pub fn config_text(d: &Path, opts: &NginxOptions, main_port: u16, oracle_port: u16) -> String {
    config_with(d, opts, main_port, oracle_port, "")
}

/// A server block on 127.0.0.1:`port` serving the test's html/, with
/// `params` after the address on its listen line; with `ssl` among them,
/// the test's self-signed certificate.
fn server_block(d: &Path, port: u16, params: &str, name: &str) -> String {
    let d = d.display();
    let certs = if params.split_whitespace().any(|p| p == "ssl") {
        format!("\n        ssl_certificate {d}/tls/cert.pem;\n        ssl_certificate_key {d}/tls/key.pem;")
    } else {
        String::new()
    };
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port} {params};
        server_name {name};{certs}
        root {d}/html;
        index index.html;
    }}
"#
    )
}

/// [`config_text`] with `extra` server blocks inside `http { }`.
fn config_with(d: &Path, opts: &NginxOptions, main_port: u16, oracle_port: u16, extra: &str) -> String {
    let d = d.display();
    let workers = opts.worker_processes;
    let backlog = opts.backlog.map(|b| format!(" backlog={b}")).unwrap_or_default();
    let keepalive_requests = opts.keepalive_requests;
    let access_log = if opts.access_log {
        format!("log_format ngxprobe_red '{ACCESS_LOG_FORMAT}';\n    access_log {d}/access.log ngxprobe_red;")
    } else {
        "access_log off;".to_string()
    };
    let main_locations = &opts.main_locations;
    format!(
        r#"# ngxprobe e2e instance (generated)
daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    {access_log}
    keepalive_timeout 65;
    keepalive_requests {keepalive_requests};
    sendfile on;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    server {{
        listen 127.0.0.1:{main_port}{backlog};
        listen [::1]:{main_port}{backlog};
        server_name main;
        root {d}/html;
        index index.html;

        location / {{
        }}
        location /nosendfile/ {{
            sendfile off;
            alias {d}/html/;
        }}
        location = /echo {{
            return 200 "ok\n";
        }}
{main_locations}
    }}

    server {{
        listen 127.0.0.1:{oracle_port};
        server_name oracle;
        location = /stub {{
            stub_status;
        }}
    }}
{extra}}}
"#
    )
}
