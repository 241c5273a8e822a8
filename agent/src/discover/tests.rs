//! Discovery against real nginx processes started by the tests (needs root
//! and /usr/sbin/nginx; skipped with a message when nginx is missing, a
//! failure under CI).
use super::tcp_table;
use super::{DiscoveryConfig, Instance, Listener, RefusalReason, ScanOutcome, Scanner, existing_conns};
use ngxprobe_e2e::util::require_tool;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

fn proc_root() -> &'static Path {
    Path::new("/proc")
}

/// One scan of the real /proc. Other nginx instances on this machine (other
/// tests) share our network namespace: caps high enough to never refuse ours.
fn scan_host() -> ScanOutcome {
    let cfg = DiscoveryConfig {
        max_instances_per_netns: NonZeroU32::MAX,
        ..DiscoveryConfig::default()
    };
    Scanner::new(&cfg).scan().expect("scan")
}

/// nginx is installed; otherwise the test is skipped (a failure under CI).
fn nginx_available() -> bool {
    require_tool(NGINX, "apt-get install nginx").is_some()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ngxprobe-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_port(addr: IpAddr) -> u16 {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// A child process and its process group (nginx workers, a USR2-upgraded
/// master), always killed on drop, also when an assertion failed.
struct ChildGuard {
    child: Child,
    /// The child only launches nginx and exits; nginx lives on in the
    /// child's process group, which keeps the group id from being reused.
    launcher: bool,
    // Declared after `child` so the directory outlives the process on drop.
    _dir: TempDir,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM to the pid only (nginx: fast shutdown of master and workers),
    /// then waits for it to be reaped. Returns false on timeout.
    fn terminate(&mut self) -> bool {
        // SAFETY: plain kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        wait_until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_))))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // While the child is unreaped (or, for a launcher, while nginx still
        // runs in its group) the group id = child pid (process_group(0)) is
        // ours and cannot have been reused.
        let unreaped = matches!(self.child.try_wait(), Ok(None));
        if unreaped || self.launcher {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
        }
        if unreaped {
            let _ = self.child.wait();
        }
    }
}

fn wait_until(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nginx_conf(listens: &[String]) -> String {
    let listens: String = listens.iter().map(|l| format!("listen {l}; ")).collect();
    format!(
        "worker_processes 2;\nevents {{}}\nhttp {{\n access_log off;\n \
         client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;\n \
         uwsgi_temp_path uwsgi; scgi_temp_path scgi;\n \
         server {{ {listens} location / {{ return 204; }} }}\n}}\n"
    )
}

/// Starts nginx in the foreground with a config in a temp dir. `wrap` runs
/// it through another command that execs it (same pid), e.g. `unshare`.
fn start_nginx(tag: &str, listens: &[String], wrap: Option<&[&str]>) -> (ChildGuard, String) {
    let dir = TempDir::new(tag);
    let conf = dir.0.join("nginx.conf");
    fs::write(&conf, nginx_conf(listens)).expect("write nginx.conf");
    let prefix = format!("{}/", dir.0.display());
    let globals = format!("daemon off; pid {}/nginx.pid; error_log stderr;", dir.0.display());
    let conf = conf.display().to_string();
    let nginx_argv = [NGINX, "-p", &prefix, "-c", &conf, "-g", &globals];
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).args(nginx_argv);
            c
        }
        None => {
            let mut c = Command::new(NGINX);
            c.args(&nginx_argv[1..]);
            c
        }
    };
    let pid_file = dir.0.join("nginx.pid");
    cmd.env("NGX_PIDFILE", pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    let child = cmd.spawn().expect("spawn nginx");
    (
        ChildGuard {
            child,
            launcher: false,
            _dir: dir,
        },
        conf,
    )
}

/// Waits for the pid file and for a LISTEN socket on `port` in the network
/// namespace of the pid it names; returns that pid (the master).
fn wait_listening(guard: &mut ChildGuard, conf: &str, port: u16) -> u32 {
    let pid_file = Path::new(conf).with_file_name("nginx.pid");
    let mut pid = 0;
    let ready = wait_until(STARTUP_DEADLINE, || {
        pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid != 0 && listens_on(pid, port)
    });
    assert!(
        ready,
        "nginx did not come up: launcher exit status {:?}",
        guard.child.try_wait()
    );
    pid
}

fn listens_on(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|t| {
        fs::read_to_string(format!("/proc/{pid}/net/{t}"))
            .is_ok_and(|text| tcp_table::parse_table(&text).any(|r| r.is_listen() && r.local_port == port))
    })
}

fn instances_with_conf(conf: &str) -> Vec<Instance> {
    scan_host()
        .instances
        .into_iter()
        .filter(|i| i.key.conf_path == conf)
        .collect()
}

/// Scans until the instance of `conf` shows `workers` workers (they are
/// forked after the pid file is written), returning the last scan's matches.
fn scan_until_workers(conf: &str, workers: usize) -> Vec<Instance> {
    let mut found = Vec::new();
    wait_until(STARTUP_DEADLINE, || {
        found = instances_with_conf(conf);
        found.len() == 1 && found[0].worker_pids.len() == workers
    });
    found
}

fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net").expect("own netns").ino()
}

#[test]
fn finds_real_nginx_listeners_and_connections() {
    if !nginx_available() {
        return;
    }
    let v4 = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let v6 = free_port(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let listens = [format!("127.0.0.1:{v4}"), format!("[::1]:{v6}")];
    let (mut nginx, conf) = start_nginx("scan", &listens, None);
    assert_eq!(
        wait_listening(&mut nginx, &conf, v4),
        nginx.pid(),
        "pid file names our child"
    );

    let found = scan_until_workers(&conf, 2);
    assert_eq!(found.len(), 1, "exactly one instance for {conf}: {found:#?}");
    let inst = &found[0];
    assert_eq!(inst.master_pid, nginx.pid());
    assert_eq!(inst.worker_pids.len(), 2, "{inst:#?}");
    assert!(!inst.worker_pids.contains(&inst.master_pid));
    assert_eq!(inst.key.netns, own_netns());
    assert_eq!(inst.key.container_id, None);
    assert!(inst.exe.ends_with("/nginx"), "{}", inst.exe);
    assert!(inst.version.starts_with("nginx/"), "{}", inst.version);
    assert_eq!(
        inst.listeners,
        vec![
            Listener {
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: v4
            },
            Listener {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                port: v6
            },
        ]
    );

    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, v4)).expect("connect to nginx"))
        .collect();
    let conns = existing_conns(inst, proc_root()).expect("existing_conns");
    assert_eq!(conns.len(), 3, "{conns:?}");
    assert!(conns.iter().all(|c| c.local_port == v4 && c.cookie != 0), "{conns:?}");
    let cookies: BTreeSet<u64> = conns.iter().map(|c| c.cookie).collect();
    assert_eq!(cookies.len(), conns.len(), "cookies distinct: {conns:?}");
    drop(clients);

    assert!(nginx.terminate(), "nginx did not exit on SIGTERM");
    let after = instances_with_conf(&conf);
    assert!(after.is_empty(), "instance still reported after exit: {after:#?}");
}

#[test]
fn binary_upgrade_stays_one_instance() {
    if !nginx_available() {
        return;
    }
    // nginx ignores USR2 while its parent is the one it started under, so a
    // shell launches it in the background and exits once the pid file exists
    // (bounded to 10 s), leaving nginx reparented in our process group.
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let wait_pid = "\"$@\" & i=0; while [ ! -s \"$NGX_PIDFILE\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done";
    let wrap: &[&str] = &["/bin/sh", "-c", wait_pid, "sh"];
    let (mut nginx, conf) = start_nginx("upgrade", &[format!("127.0.0.1:{port}")], Some(wrap));
    nginx.launcher = true;
    let master = wait_listening(&mut nginx, &conf, port);
    assert!(
        wait_until(STARTUP_DEADLINE, || matches!(nginx.child.try_wait(), Ok(Some(_)))),
        "launcher exits"
    );
    assert_eq!(scan_until_workers(&conf, 2).len(), 1);

    // USR2: the master execs a new master as its child, with the same config.
    // SAFETY: plain kill(2) on nginx that runs in our process group.
    unsafe { libc::kill(master as i32, libc::SIGUSR2) };
    let found = scan_until_workers(&conf, 4);
    assert_eq!(found.len(), 1, "old and new master are one instance: {found:#?}");
    assert_eq!(found[0].master_pid, master, "the old master is the instance's master");
    assert_eq!(found[0].worker_pids.len(), 4, "{found:#?}");
    assert_eq!(
        found[0].listeners,
        vec![Listener {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port
        }]
    );
}

#[test]
fn nginx_in_other_netns_is_scanned_and_dumped_via_setns() {
    if !nginx_available() || require_tool("/usr/bin/unshare", "apt-get install util-linux").is_none() {
        return;
    }
    // unshare and sh exec into nginx, so the child pid is the master's; a
    // new netns has loopback down, hence `ip link set lo up`.
    let port = 8080;
    let wrap: &[&str] = &[
        "/usr/bin/unshare",
        "--net",
        "/bin/sh",
        "-c",
        "/usr/sbin/ip link set lo up && exec \"$@\"",
        "sh",
    ];
    let (mut nginx, conf) = start_nginx("netns", &[format!("127.0.0.1:{port}")], Some(wrap));
    assert_eq!(
        wait_listening(&mut nginx, &conf, port),
        nginx.pid(),
        "pid file names our child"
    );

    let found = scan_until_workers(&conf, 2);
    assert_eq!(found.len(), 1, "{found:#?}");
    let inst = &found[0];
    assert_eq!(inst.master_pid, nginx.pid());
    assert_ne!(inst.key.netns, own_netns(), "runs in its own netns");
    assert_eq!(
        inst.listeners,
        vec![Listener {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port
        }]
    );

    let clients = connect_in_netns_of(nginx.pid(), port, 2).expect("connect inside nginx's netns");
    let conns = existing_conns(inst, proc_root()).expect("existing_conns via setns");
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert!(conns.iter().all(|c| c.local_port == port && c.cookie != 0), "{conns:?}");
    drop(clients);
    assert!(nginx.terminate(), "nginx did not exit on SIGTERM");
}

/// Opens `n` connections to 127.0.0.1:port from inside the network
/// namespace of `pid`, on a throwaway thread.
fn connect_in_netns_of(pid: u32, port: u16, n: usize) -> io::Result<Vec<TcpStream>> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a valid fd; affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        (0..n)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
            .collect()
    })
    .join()
    .expect("connect thread")
}

#[test]
fn impostors_named_nginx_are_not_reported() {
    if !nginx_available() {
        return;
    }
    // A copy of sleep named "nginx": right names, wrong binary, no title.
    let dir = TempDir::new("impostor");
    let fake = dir.0.join("nginx");
    fs::copy("/bin/sleep", &fake).expect("copy sleep");
    let copied = Command::new(&fake)
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("spawn fake nginx");
    let copied = ChildGuard {
        child: copied,
        launcher: false,
        _dir: dir,
    };
    // A real program wearing nginx's master title (exe is not nginx).
    let titled = Command::new("/bin/bash")
        .args([
            "-c",
            "exec -a 'nginx: master process /usr/sbin/nginx -c /impostor.conf' sleep 30",
        ])
        .process_group(0)
        .spawn()
        .expect("spawn titled impostor");
    let titled = ChildGuard {
        child: titled,
        launcher: false,
        _dir: TempDir::new("impostor-titled"),
    };
    let titled_ready = wait_until(STARTUP_DEADLINE, || {
        fs::read(format!("/proc/{}/cmdline", titled.pid())).is_ok_and(|c| c.starts_with(b"nginx: master"))
    });
    assert!(titled_ready, "titled impostor did not start");

    let out = scan_host();
    for pid in [copied.pid(), titled.pid()] {
        assert!(
            fs::metadata(format!("/proc/{pid}")).is_ok(),
            "impostor {pid} must still run while scanning"
        );
        let hit = out
            .instances
            .iter()
            .find(|i| i.master_pid == pid || i.worker_pids.contains(&pid));
        assert!(hit.is_none(), "impostor {pid} reported as nginx: {hit:#?}");
    }
    assert!(out.instances.iter().all(|i| i.key.conf_path != "/impostor.conf"));
    // The titled one claims to be nginx: refused and said so; the untitled
    // copy claims nothing and is ignored quietly.
    let titled_subject = format!("pid {} ", titled.pid());
    let refusal = out.refused.iter().find(|r| r.subject.starts_with(&titled_subject));
    assert!(
        refusal.is_some_and(|r| r.reason == RefusalReason::NotNginx),
        "{:#?}",
        out.refused
    );
    let copied_subject = format!("pid {} ", copied.pid());
    assert!(!out.refused.iter().any(|r| r.subject.starts_with(&copied_subject)));
}
