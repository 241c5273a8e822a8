//! Discovery against fake /proc trees: hostile titles, executables that are
//! not nginx, unreadable entries, floods past the caps. Each process is a
//! directory with the files discovery reads (cmdline, exe, stat, status,
//! cgroup, ns/net, fd/, net/tcp); executables are real files (Debian's nginx,
//! a copy of sleep), so the content check runs for real.
use super::{DiscoveryConfig, Instance, RefusalReason, ScanOutcome, Scanner};
use ngxprobe_e2e::util::require_tool;
use std::fs;
use std::num::NonZeroU32;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const NGINX: &str = "/usr/sbin/nginx";

/// A fake proc root in a temp dir.
struct FakeProc {
    dir: tempfile::TempDir,
}

/// One fake process.
struct P<'a> {
    pid: u32,
    ppid: u32,
    cmdline: &'a [u8],
    exe: &'a Path,
    root: bool,
    start: u64,
    netns: &'a str,
    /// Listening ports (one socket each).
    listen: &'a [u16],
}

impl<'a> P<'a> {
    fn master(pid: u32, cmdline: &'a [u8], exe: &'a Path) -> P<'a> {
        P {
            pid,
            ppid: 1,
            cmdline,
            exe,
            root: true,
            start: pid as u64,
            netns: "host",
            listen: &[],
        }
    }
}

impl FakeProc {
    fn new() -> FakeProc {
        FakeProc {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the tree outside the pid dirs (executables, netns files).
    fn aux(&self, name: &str) -> PathBuf {
        let aux = self.root().join("aux");
        fs::create_dir_all(&aux).unwrap();
        aux.join(name)
    }

    fn add(&self, p: P) {
        let d = self.root().join(p.pid.to_string());
        fs::create_dir_all(d.join("fd")).unwrap();
        fs::create_dir_all(d.join("ns")).unwrap();
        fs::create_dir_all(d.join("net")).unwrap();
        fs::write(d.join("cmdline"), p.cmdline).unwrap();
        symlink(p.exe, d.join("exe")).unwrap();
        fs::write(
            d.join("stat"),
            format!(
                "{} (nginx) S {} {} {} 0 -1 4194624 0 0 0 0 0 0 0 0 20 0 1 0 {} 1000 200\n",
                p.pid, p.ppid, p.pid, p.pid, p.start
            ),
        )
        .unwrap();
        let uid = if p.root { 0 } else { 1000 };
        fs::write(
            d.join("status"),
            format!("Name:\tnginx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
        fs::write(d.join("cgroup"), "0::/system.slice/nginx.service\n").unwrap();
        // Every process of a namespace links to the same file: same inode.
        let ns = self.aux(&format!("netns-{}", p.netns));
        if !ns.exists() {
            fs::write(&ns, "").unwrap();
        }
        symlink(&ns, d.join("ns").join("net")).unwrap();
        let mut tcp = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        for (i, port) in p.listen.iter().enumerate() {
            let inode = p.pid as u64 * 1000 + i as u64;
            symlink(format!("socket:[{inode}]"), d.join("fd").join((10 + i).to_string())).unwrap();
            tcp.push_str(&format!(
                "   {i}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            ));
        }
        fs::write(d.join("net").join("tcp"), tcp).unwrap();
    }

    /// A copy of sleep named nginx: the right name, not the right binary.
    fn fake_nginx(&self) -> PathBuf {
        let dir = self.aux("fake");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nginx");
        if !path.exists() {
            fs::copy("/bin/sleep", &path).unwrap();
        }
        path
    }

    fn scan_with(&self, per_netns: u32, listeners: u32) -> ScanOutcome {
        let cfg = DiscoveryConfig {
            proc_path: self.root().to_path_buf(),
            max_instances_per_netns: NonZeroU32::new(per_netns).unwrap(),
            max_listeners_per_instance: NonZeroU32::new(listeners).unwrap(),
            ..DiscoveryConfig::default()
        };
        Scanner::new(&cfg).scan().expect("scan of a fake proc tree")
    }

    fn scan(&self) -> ScanOutcome {
        self.scan_with(8, 64)
    }
}

fn nginx_available() -> bool {
    require_tool(NGINX, "apt-get install nginx").is_some()
}

fn title(conf: &str) -> Vec<u8> {
    format!("nginx: master process /usr/sbin/nginx -c {conf}\0\0\0").into_bytes()
}

fn confs(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.key.conf_path.as_str()).collect()
}

fn refusals(out: &ScanOutcome, reason: RefusalReason) -> Vec<&str> {
    out.refused
        .iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.subject.as_str())
        .collect()
}

#[test]
fn real_binary_found_fakes_refused() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    let fake = fp.fake_nginx();
    fp.add(P {
        listen: &[8080],
        ..P::master(100, &title("/etc/real/nginx.conf"), nginx)
    });
    fp.add(P {
        ppid: 100,
        ..P::master(101, b"nginx: worker process\0\0", nginx)
    });
    // Titled like a master, executable is sleep named nginx.
    fp.add(P {
        listen: &[9090],
        ..P::master(200, &title("/tmp/evil.conf"), &fake)
    });
    // A fake worker under the real master: refused, not counted as a worker.
    fp.add(P {
        ppid: 100,
        ..P::master(201, b"nginx: worker process\0", &fake)
    });
    // Untitled, named nginx, not nginx: claims nothing, ignored quietly.
    fp.add(P::master(300, b"nginx\0-c\0/tmp/x.conf\0", &fake));

    let out = fp.scan();
    assert_eq!(confs(&out.instances), ["/etc/real/nginx.conf"], "{out:#?}");
    let inst = &out.instances[0];
    assert_eq!((inst.master_pid, inst.worker_pids.as_slice()), (100, &[101][..]));
    assert_eq!(inst.listeners.len(), 1);
    assert!(inst.version.starts_with("nginx/1."), "{}", inst.version);
    let not_nginx = refusals(&out, RefusalReason::NotNginx);
    assert_eq!(not_nginx.len(), 2, "{out:#?}");
    assert!(not_nginx[0].starts_with("pid 200 ") && not_nginx[1].starts_with("pid 201 "));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
}

#[test]
fn hostile_titles_cannot_forge_logs_or_labels() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    let fake = fp.fake_nginx();
    let forged = format!(
        "nginx: master process -c /tmp/a\n2026-01-01T00:00:00Z INFO ngxprobe: all good\x1b[2J<!channel>{}\0",
        "x".repeat(10_000)
    );
    fp.add(P::master(400, forged.as_bytes(), &fake));
    // Real nginx binary, hostile config paths.
    fp.add(P::master(500, &title("/tmp/\x1b[31mred/nginx.conf"), nginx));
    fp.add(P::master(501, &title(&format!("/{}", "d".repeat(300))), nginx));
    fp.add(P::master(502, &title("/tmp/\u{202e}fnoc.xnign"), nginx));
    let mut huge = title("/etc/huge.conf");
    huge.truncate(huge.len() - 3);
    huge.extend(std::iter::repeat_n(b' ', 70 * 1024));
    fp.add(P::master(503, &huge, nginx));
    // Legal but Slack-significant characters: a path like any other here
    // (templates escape it), tracked.
    fp.add(P::master(504, &title("/tmp/<!channel>|<https:evil|x>.conf"), nginx));

    let out = fp.scan();
    assert_eq!(
        confs(&out.instances),
        ["/tmp/<!channel>|<https:evil|x>.conf"],
        "{out:#?}"
    );
    let bad = refusals(&out, RefusalReason::BadLabel);
    assert_eq!(bad.len(), 4, "{out:#?}");
    for pid in 500..=503 {
        assert!(bad.iter().any(|s| s.contains(&format!("pid {pid}"))), "{pid}: {bad:?}");
    }
    assert_eq!(refusals(&out, RefusalReason::NotNginx).len(), 1);
    for r in &out.refused {
        let line = format!("{}: {}", r.subject, r.detail);
        assert!(
            !line.chars().any(|c| c.is_control()),
            "control character reaches the log: {line:?}"
        );
        assert!(line.len() < 1024, "{} bytes: {line}", line.len());
    }
}

#[test]
fn unreadable_processes_are_skipped_not_fatal() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    fp.add(P::master(100, &title("/etc/ok.conf"), nginx));
    // cmdline that cannot be read (a directory: EISDIR).
    fs::create_dir_all(fp.root().join("600/cmdline")).unwrap();
    // A master whose exe link loops (ELOOP).
    let loop_dir = fp.aux("loop");
    fs::create_dir_all(&loop_dir).unwrap();
    symlink(loop_dir.join("b"), loop_dir.join("a")).unwrap();
    symlink(loop_dir.join("a"), loop_dir.join("b")).unwrap();
    fp.add(P::master(601, &title("/etc/loop.conf"), &loop_dir.join("a")));
    // A pid dir that vanished but for its name: skipped without an error.
    fs::create_dir_all(fp.root().join("602")).unwrap();

    let out = fp.scan();
    assert_eq!(confs(&out.instances), ["/etc/ok.conf"], "{out:#?}");
    let mut failed: Vec<(u32, &str)> = out.errors.iter().map(|e| (e.pid, e.error.kind())).collect();
    failed.sort();
    assert_eq!(failed, [(600, "io"), (601, "io")], "{:?}", out.errors);
}

#[test]
fn flood_in_a_netns_does_not_displace_roots_nginx() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    // Ten real-nginx masters of another user, started first...
    let titles: Vec<Vec<u8>> = (0..10).map(|i| title(&format!("/home/u/flood{i}.conf"))).collect();
    for (i, t) in titles.iter().enumerate() {
        fp.add(P {
            root: false,
            ..P::master(1000 + i as u32, t, nginx)
        });
    }
    // ...then root's nginx, and one in another namespace.
    fp.add(P::master(5000, &title("/etc/nginx/nginx.conf"), nginx));
    fp.add(P {
        netns: "pod",
        root: false,
        ..P::master(5001, &title("/etc/pod.conf"), nginx)
    });

    let out = fp.scan_with(3, 64);
    assert_eq!(
        confs(&out.instances),
        [
            "/etc/nginx/nginx.conf",
            "/etc/pod.conf",
            "/home/u/flood0.conf",
            "/home/u/flood1.conf"
        ],
        "{out:#?}"
    );
    assert_eq!(refusals(&out, RefusalReason::TooManyInstances).len(), 8);
}

#[test]
fn too_many_listeners_refuses_the_instance() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    fp.add(P {
        listen: &[81, 82, 83, 84, 85],
        ..P::master(100, &title("/etc/wide.conf"), nginx)
    });
    fp.add(P {
        listen: &[90, 91],
        netns: "other",
        ..P::master(101, &title("/etc/narrow.conf"), nginx)
    });
    let out = fp.scan_with(8, 4);
    assert_eq!(confs(&out.instances), ["/etc/narrow.conf"]);
    assert_eq!(refusals(&out, RefusalReason::TooManyListeners).len(), 1, "{out:#?}");
}

#[test]
fn each_executable_is_examined_once() {
    if !nginx_available() {
        return;
    }
    let fp = FakeProc::new();
    let nginx = Path::new(NGINX);
    let fake = fp.fake_nginx();
    let titles: Vec<Vec<u8>> = (0..50).map(|i| title(&format!("/tmp/f{i}.conf"))).collect();
    for (i, t) in titles.iter().enumerate() {
        fp.add(P::master(2000 + i as u32, t, &fake));
    }
    fp.add(P::master(100, &title("/etc/a.conf"), nginx));
    fp.add(P::master(101, &title("/etc/b.conf"), nginx));
    let cfg = DiscoveryConfig {
        proc_path: fp.root().to_path_buf(),
        ..DiscoveryConfig::default()
    };
    let mut scanner = Scanner::new(&cfg);
    for _ in 0..3 {
        let out = scanner.scan().unwrap();
        assert_eq!(out.instances.len(), 2);
        assert_eq!(refusals(&out, RefusalReason::NotNginx).len(), 50);
    }
    assert_eq!(scanner.executables_examined(), 2, "nginx and the fake, once each");
}
