//! Least privilege, against the real agent: each capability the deployment
//! files grant is needed (the agent refuses, or a feature is missing, without
//! it), CAP_NET_ADMIN is not, only the discovery thread keeps capabilities,
//! and the agent runs exactly as a non-root user the way deploy/ runs it
//! (systemd: ambient capabilities; Kubernetes: file capabilities,
//! no_new_privs, its own pid namespace and the host's /proc mounted elsewhere).
//!
//! The agent is started under `setpriv`/`capsh`/`unshare` (util-linux,
//! libcap2-bin), as root narrowing its capabilities down.
use anyhow::{Context, Result, bail};
use ngxprobe_e2e::agent::binary_path;
use ngxprobe_e2e::clients::wrk;
use ngxprobe_e2e::measure::{assert_all, measure};
use ngxprobe_e2e::nginx::{NginxOptions, config_text};
use ngxprobe_e2e::oracle::{self, StubStatus};
use ngxprobe_e2e::util::{self, ChildGuard, Poll, TempDir, children_of, cmdline, is_alive, poll, require_tool};
use ngxprobe_e2e::{Agent, AgentOptions, Nginx, guard};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Capability bits (include/uapi/linux/capability.h).
const DAC_READ_SEARCH: u64 = 1 << 2;
const NET_ADMIN: u64 = 1 << 12;
const SYS_PTRACE: u64 = 1 << 19;
const SYS_ADMIN: u64 = 1 << 21;
const PERFMON: u64 = 1 << 38;
const BPF: u64 = 1 << 39;
/// Everything the agent uses: the bounding set it leaves itself.
const USED: u64 = BPF | PERFMON | SYS_PTRACE | DAC_READ_SEARCH | SYS_ADMIN;
/// What the discovery thread keeps.
const DISCOVERY: u64 = SYS_PTRACE | DAC_READ_SEARCH | SYS_ADMIN;

/// setpriv's names for [`USED`].
const USED_NAMES: [&str; 5] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search", "sys_admin"];

/// The unprivileged user the deployment files run the agent as.
const AGENT_UID: u32 = 65532;

/// `setpriv --bounding-set=-all,+<keep...> --`: as root, the agent starts
/// with exactly `keep` (permitted = bounding set after exec).
fn only_caps(keep: &[&str]) -> Vec<String> {
    let mut set = String::from("-all");
    for k in keep {
        set.push_str(",+");
        set.push_str(k);
    }
    vec!["setpriv".into(), format!("--bounding-set={set}"), "--".into()]
}

fn used_except(except: &[&str]) -> Vec<&'static str> {
    USED_NAMES.iter().copied().filter(|n| !except.contains(n)).collect()
}

/// A field of /proc/PID/task/TID/status.
fn status_field(status: &str, field: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn cap_mask(status: &str, field: &str) -> Result<u64> {
    let v = status_field(status, field).with_context(|| format!("no {field}"))?;
    u64::from_str_radix(&v, 16).with_context(|| format!("{field}: {v}"))
}

/// Every thread of `pid`: (name, status text).
fn threads(pid: i32) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        // A thread that ended since readdir is skipped.
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        out.push((comm.trim().to_string(), status));
    }
    Ok(out)
}

/// Checks the agent's threads: only `discovery` (and the short-lived
/// `ngxprobe-netns` it starts) holds capabilities — exactly
/// `discovery_caps` — every other thread holds none, effective or
/// permitted; the bounding set is [`USED`] and no_new_privs is set. Returns
/// the thread names seen.
fn check_threads(pid: i32, discovery_caps: u64, uid: u32) -> Result<BTreeMap<String, usize>> {
    let mut names = BTreeMap::new();
    for (name, status) in threads(pid)? {
        *names.entry(name.clone()).or_insert(0) += 1;
        let eff = cap_mask(&status, "CapEff")?;
        let prm = cap_mask(&status, "CapPrm")?;
        let (want_eff, want_prm) = match name.as_str() {
            "discovery" | "ngxprobe-netns" => (discovery_caps, discovery_caps),
            _ => (0, 0),
        };
        if eff != want_eff || prm != want_prm {
            bail!("thread {name:?}: CapEff {eff:#x}, CapPrm {prm:#x}; want {want_eff:#x}, {want_prm:#x}");
        }
        let amb = cap_mask(&status, "CapAmb")?;
        let inh = cap_mask(&status, "CapInh")?;
        if amb != 0 || inh != 0 {
            bail!("thread {name:?}: CapAmb {amb:#x}, CapInh {inh:#x}; want 0");
        }
        let bnd = cap_mask(&status, "CapBnd")?;
        if bnd != USED {
            bail!("thread {name:?}: CapBnd {bnd:#x}, want {USED:#x}");
        }
        if status_field(&status, "NoNewPrivs").as_deref() != Some("1") {
            bail!("thread {name:?}: no_new_privs is not set");
        }
        let uids = status_field(&status, "Uid").unwrap_or_default();
        if uids.split_whitespace().any(|u| u != uid.to_string()) {
            bail!("thread {name:?}: Uid {uids}, want {uid}");
        }
    }
    for want in ["discovery", "tokio-rt-worker", "rules", "sampler"] {
        if !names.contains_key(want) {
            bail!("no {want:?} thread among {names:?}");
        }
    }
    Ok(names)
}

/// Traffic, a query, the rules API and the self-metrics of an agent whose
/// serving threads have no capabilities: counters exact against stub_status.
fn exercise(agent: &Agent, nginx: &Nginx) {
    let url = nginx.url("/");
    let (rep, mon, w) = measure(agent, nginx, 0, 0, "keepalive load (wrk -t1 -c10 -d2s)", || {
        wrk(&["-t1", "-c10", "-d2s", &url], Duration::from_secs(2))
    })
    .expect("measure");
    assert_all(&rep, &mon);
    assert!(w.requests >= 100, "wrk produced too little traffic:\n{}", w.output);
    let data = agent
        .query(&format!(
            "nginx_http_requests_total{{conf_path=\"{}\"}}",
            nginx.conf_label()
        ))
        .expect("query");
    assert_eq!(data["result"].as_array().map(Vec::len), Some(1), "{data}");
    let rules = agent.get_json("/api/v1/rules").expect("rules API");
    assert_eq!(rules["status"], "success", "{rules}");
    let scrape = agent.scrape().expect("scrape");
    assert_eq!(scrape.sum("ngxprobe_privilege_drop_failures_total"), 0.0);
    assert!(
        scrape.sum("ngxprobe_ebpf_programs_loaded") >= 1.0 || scrape.raw.contains("ngxprobe_ebpf_program"),
        "no eBPF self-metrics"
    );
}

#[test]
fn only_the_discovery_thread_keeps_capabilities_and_counts_stay_exact() {
    let _g = guard("only_the_discovery_thread_keeps_capabilities");
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let agent = Agent::start().expect("start ngxprobe");
    agent.wait_instance_up(&nginx.conf_label()).expect("instance up");
    exercise(&agent, &nginx);
    // The queries above ran on the runtime's blocking threads too.
    let names = check_threads(agent.pid(), DISCOVERY, 0).expect("thread capabilities");
    eprintln!("[e2e] agent threads: {names:?}");
}

/// Runs the agent with `wrapper`, expecting it to refuse to start: exit
/// code 1 within 30 s. Returns its output.
fn refused(wrapper: &[String]) -> String {
    let dir = TempDir::new("refused").expect("temp dir");
    let log = dir.path().join("agent.log");
    let port = util::free_port().expect("port");
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(binary_path())
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--storage.path")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"));
    let mut child = ChildGuard::spawn(&mut cmd, "ngxprobe").expect("spawn");
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("the agent did not exit");
    let out = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "exit status {status}; output:\n{out}");
    out
}

#[test]
fn without_cap_bpf_cap_perfmon_or_cap_sys_ptrace_the_agent_refuses_to_start() {
    let _g = guard("without_bpf_perfmon_ptrace_the_agent_refuses");
    if require_tool("setpriv", "apt-get install util-linux").is_none() {
        return;
    }
    // CAP_SYS_ADMIN grants what CAP_BPF and CAP_PERFMON do: it goes as well.
    for (dropped, expect) in [
        (&["bpf", "sys_admin"][..], "CAP_BPF (to load eBPF programs and maps)"),
        (&["perfmon", "sys_admin"][..], "CAP_PERFMON (to attach"),
        (&["sys_ptrace"][..], "CAP_SYS_PTRACE (to read nginx's /proc/PID/exe"),
    ] {
        let out = refused(&only_caps(&used_except(dropped)));
        assert!(
            out.contains("missing capabilities") && out.contains(expect),
            "without {dropped:?}: expected {expect:?} in:\n{out}"
        );
        eprintln!("[e2e] without {dropped:?}: refused as expected");
    }
    // A non-root agent cannot list root's /proc/PID/fd without CAP_DAC_READ_SEARCH.
    let out = refused(&as_agent_user(&used_except(&["dac_read_search"])));
    assert!(
        out.contains("missing capabilities") && out.contains("CAP_DAC_READ_SEARCH (to list"),
        "non-root without CAP_DAC_READ_SEARCH:\n{out}"
    );
}

/// `setpriv` running the agent as [`AGENT_UID`] with `caps` as ambient
/// capabilities (what systemd's AmbientCapabilities= does).
fn as_agent_user(caps: &[&str]) -> Vec<String> {
    let caps = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    vec![
        "setpriv".into(),
        format!("--reuid={AGENT_UID}"),
        format!("--regid={AGENT_UID}"),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set=-all,{caps}"),
        "--".into(),
    ]
}

/// An nginx in a network namespace of its own (as in a container), started
/// through `unshare --net`; everything about it is reached from inside.
struct NetnsNginx {
    master: ChildGuard,
    dir: TempDir,
    main_port: u16,
    oracle_port: u16,
}

impl NetnsNginx {
    fn start() -> Result<NetnsNginx> {
        let dir = TempDir::new("netns-nginx")?;
        let d = dir.path();
        for sub in ["html", "tmp", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::fs::write(d.join("html/index.html"), "ok\n")?;
        // A fresh namespace has only loopback: any ports are free there.
        let (main_port, oracle_port) = (18080, 18081);
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, config_text(d, &NginxOptions::default(), main_port, oracle_port))?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
            .arg(ngxprobe_e2e::nginx::nginx_bin())
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log"))?);
        let master = ChildGuard::spawn(&mut cmd, "nginx in a netns")?;
        let n = NetnsNginx {
            master,
            dir,
            main_port,
            oracle_port,
        };
        poll(
            "nginx in its netns to answer stub_status",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || match n.oracle() {
                Ok(_) => Ok(Poll::Ready(())),
                Err(e) => Ok(Poll::Pending(format!("{e:#}"))),
            },
        )
        .with_context(|| util::tail(&n.dir.path().join("error.log"), 10))?;
        Ok(n)
    }

    fn conf_label(&self) -> String {
        self.dir.path().join("nginx.conf").to_string_lossy().into_owned()
    }

    /// Runs `f` on a thread moved into nginx's network namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.master.pid()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a valid fd; it moves only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", io::Error::last_os_error());
                }
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
        })
    }

    fn oracle(&self) -> Result<StubStatus> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.oracle_port));
        self.inside(|| oracle::fetch(addr))
    }

    /// `n` idle connections to the main server, opened from inside.
    fn hold(&self, n: usize) -> Result<Vec<TcpStream>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.main_port));
        self.inside(|| (0..n).map(|_| TcpStream::connect(addr).map_err(Into::into)).collect())
    }
}

impl Drop for NetnsNginx {
    fn drop(&mut self) {
        // Workers are children of the master: kill them by pid first.
        let kids = children_of(self.master.pid());
        self.master.stop(libc::SIGKILL, Duration::from_secs(5));
        for k in kids {
            // SAFETY: plain kill(2) by pid.
            unsafe { libc::kill(k, libc::SIGKILL) };
        }
    }
}

/// The agent's `nginx_connections_active` for `conf` once it has settled
/// on `want` (bounded); the last value seen otherwise.
fn active_settles(agent: &Agent, conf: &str, want: i64) -> Result<i64> {
    let r = poll(
        "nginx_connections_active",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let v = agent.view(conf)?;
            Ok(if v.active == want {
                Poll::Ready(v.active)
            } else {
                Poll::Pending(format!("{v:?}"))
            })
        },
    );
    match r {
        Ok(v) => Ok(v),
        Err(_) => Ok(agent.view(conf)?.active),
    }
}

#[test]
fn cap_sys_admin_takes_over_connections_in_another_netns_and_cap_net_admin_is_not_needed() {
    let _g = guard("cap_sys_admin_takes_over_connections_in_another_netns");
    if require_tool("unshare", "apt-get install util-linux").is_none()
        || require_tool("setpriv", "apt-get install util-linux").is_none()
    {
        return;
    }
    let nginx = NetnsNginx::start().expect("start nginx in a netns");
    let conf = nginx.conf_label();
    const HELD: usize = 3;
    let held = nginx.hold(HELD).expect("open connections inside the netns");
    let stub = poll(
        "stub_status to show the held connections",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let o = nginx.oracle()?;
            // stub_status counts its own request's connection.
            Ok(if o.active == HELD as i64 + 1 {
                Poll::Ready(o)
            } else {
                Poll::Pending(format!("{o:?}"))
            })
        },
    )
    .expect("nginx holds the connections");
    eprintln!("[e2e] nginx in its netns: {stub:?}");

    // Without CAP_SYS_ADMIN the instance is found (its /proc entries need no
    // setns), but the connections open before the agent are not taken over.
    let opts = |caps: Vec<&str>| AgentOptions {
        wrapper: only_caps(&caps),
        ..Default::default()
    };
    let without = Agent::start_opts(&opts(used_except(&["sys_admin"]))).expect("agent without CAP_SYS_ADMIN");
    without
        .wait_instance_up(&conf)
        .expect("instance up without CAP_SYS_ADMIN");
    let active = active_settles(&without, &conf, HELD as i64).expect("view");
    assert_eq!(active, 0, "connections taken over without CAP_SYS_ADMIN?");
    let log = std::fs::read_to_string(without.log_path()).unwrap_or_default();
    assert!(
        log.contains("setns needs CAP_SYS_ADMIN"),
        "the agent must say why it cannot take the connections over:\n{log}"
    );
    without.stop();

    // With it — and still without CAP_NET_ADMIN (not in USED) — they are.
    let with = Agent::start_opts(&opts(USED_NAMES.to_vec())).expect("agent with CAP_SYS_ADMIN");
    with.wait_instance_up(&conf).expect("instance up");
    assert_eq!(active_settles(&with, &conf, HELD as i64).expect("view"), HELD as i64);
    let eff = threads(with.pid())
        .expect("threads")
        .into_iter()
        .find(|(n, _)| n == "discovery")
        .map(|(_, s)| cap_mask(&s, "CapEff").expect("CapEff"))
        .expect("a discovery thread");
    assert_eq!(eff & NET_ADMIN, 0, "discovery must not hold CAP_NET_ADMIN");
    drop(held);
    assert_eq!(
        active_settles(&with, &conf, 0).expect("view"),
        0,
        "closing the taken-over connections"
    );
}

#[test]
fn another_users_nginx_is_seen_only_with_cap_dac_read_search() {
    let _g = guard("another_users_nginx_needs_cap_dac_read_search");
    if require_tool("setpriv", "apt-get install util-linux").is_none() {
        return;
    }
    let nginx = Nginx::start(NginxOptions {
        tag: "nobody".into(),
        big_file: false,
        user: Some((65534, 65534)),
        ..Default::default()
    })
    .expect("start nginx as nobody");
    let conf = nginx.conf_label();
    let without = Agent::start_opts(&AgentOptions {
        wrapper: only_caps(&used_except(&["dac_read_search"])),
        ..Default::default()
    })
    .expect("agent without CAP_DAC_READ_SEARCH");
    // Ready means one scan finished; wait for two more to be sure.
    poll(
        "three discovery scans",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let n = without.scrape()?.sum("ngxprobe_discovery_scans_total");
            Ok(if n >= 3.0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{n} scans"))
            })
        },
    )
    .expect("scans");
    let seen = without.scrape().expect("scrape").conf_paths();
    assert!(
        !seen.contains(&conf),
        "nobody's nginx was seen without CAP_DAC_READ_SEARCH: {seen:?}"
    );
    without.stop();

    let with = Agent::start().expect("agent with every capability");
    with.wait_instance_up(&conf)
        .expect("nobody's nginx seen with CAP_DAC_READ_SEARCH");
}

/// A data directory the unprivileged agent owns.
fn agent_owned_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag).expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    std::os::unix::fs::chown(&data, Some(AGENT_UID), Some(AGENT_UID)).expect("chown data");
    dir
}

#[test]
fn as_a_non_root_user_with_ambient_capabilities_like_the_systemd_unit() {
    let _g = guard("non_root_with_ambient_capabilities");
    if require_tool("setpriv", "apt-get install util-linux").is_none() {
        return;
    }
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let dir = agent_owned_dir("ambient");
    let agent = Agent::start_opts(&AgentOptions {
        storage_path: Some(dir.path().join("data")),
        wrapper: as_agent_user(&USED_NAMES),
        ..Default::default()
    })
    .expect("start the agent as uid 65532");
    agent.wait_instance_up(&nginx.conf_label()).expect("instance up");
    exercise(&agent, &nginx);
    check_threads(agent.pid(), DISCOVERY, AGENT_UID).expect("thread capabilities");
}

#[test]
fn as_a_non_root_user_with_file_capabilities_in_its_own_pid_namespace_like_the_daemonset() {
    let _g = guard("non_root_with_file_capabilities_in_own_pidns");
    for (tool, hint) in [
        ("setcap", "apt-get install libcap2-bin"),
        ("capsh", "apt-get install libcap2-bin"),
        ("unshare", "apt-get install util-linux"),
        ("setpriv", "apt-get install util-linux"),
    ] {
        if require_tool(tool, hint).is_none() {
            return;
        }
    }
    let nginx = Nginx::start(NginxOptions::default()).expect("start nginx");
    let dir = agent_owned_dir("filecaps");
    // The image's binary: file capabilities in the permitted set only (the
    // agent raises them itself, so a missing one never makes exec fail).
    let bin = dir.path().join("ngxprobe");
    std::fs::copy(binary_path(), &bin).expect("copy the agent");
    let file_caps = USED_NAMES.map(|c| format!("cap_{c}")).join(",");
    run_ok(Command::new("setcap").arg(format!("{file_caps}=p")).arg(&bin));
    // What the container runtime does: the host's /proc at /host/proc (the
    // DaemonSet's hostPath), a pid namespace of its own (no hostPID), then
    // uid 65532 with the added capabilities permitted, bounding set narrowed,
    // no_new_privs (allowPrivilegeEscalation: false), and exec.
    let host_proc = dir.path().join("host-proc");
    std::fs::create_dir(&host_proc).expect("mkdir host-proc");
    let bounding = USED_NAMES.map(|c| format!("+{c}")).join(",");
    let script = format!(
        "mount --bind /proc {hp} && mount -t proc proc /proc && \
         exec setpriv --bounding-set=-all,{bounding},+setuid,+setgid,+setpcap -- \
         capsh --keep=1 --gid={u} --groups={u} --uid={u} --caps=cap_setpcap,{file_caps}=ep \
         --drop=cap_setuid,cap_setgid,cap_setpcap --caps={file_caps}=p --no-new-privs \
         --shell=\"$bin\" -- \"$@\"",
        hp = host_proc.display(),
        u = AGENT_UID,
    );
    let agent = Agent::start_opts(&AgentOptions {
        bin: Some(bin.clone()),
        storage_path: Some(dir.path().join("data")),
        extra_args: vec!["--discovery.proc-path".into(), host_proc.display().to_string()],
        wrapper: vec![
            "unshare".into(),
            "--pid".into(),
            "--fork".into(),
            "--mount".into(),
            "--kill-child=SIGTERM".into(),
            "sh".into(),
            "-c".into(),
            // The harness appends the agent's path and arguments.
            format!("bin=$1; shift; {script}"),
            "sh".into(),
        ],
        ..Default::default()
    })
    .expect("start the agent like the DaemonSet");
    // unshare's child is the agent (pid 1 of its namespace). It is stopped
    // by its own pid: unshare's --kill-child is a parent-death signal, which
    // the kernel clears when a binary with file capabilities is executed.
    let pid = poll(
        "the agent under unshare",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok(match children_of(agent.pid()).first() {
                Some(p) if cmdline(*p).contains("ngxprobe") => Poll::Ready(*p),
                other => Poll::Pending(format!("{other:?}")),
            })
        },
    )
    .expect("the agent under unshare");
    let _stop = StopByPid(pid);
    agent.wait_instance_up(&nginx.conf_label()).expect("instance up");
    exercise(&agent, &nginx);
    check_threads(pid, DISCOVERY, AGENT_UID).expect("thread capabilities");
    assert_eq!(
        own_pid_in_namespace(pid).as_deref(),
        Some("1"),
        "the agent runs in its own pid namespace"
    );
}

/// SIGTERM to a process the test started, then SIGKILL if it is still
/// there after 5 s (bounded wait on /proc).
struct StopByPid(i32);
impl Drop for StopByPid {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the agent this test started, by its pid.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let gone = poll(
            "the agent to exit",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                Ok(if is_alive(self.0) {
                    Poll::Pending("running".into())
                } else {
                    Poll::Ready(())
                })
            },
        );
        if gone.is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// The last NSpid entry of a process: its pid in its own pid namespace.
fn own_pid_in_namespace(pid: i32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "NSpid")?
        .split_whitespace()
        .last()
        .map(str::to_string)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
