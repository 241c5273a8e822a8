//! `cargo xtask setup`: makes this machine able to build and test ngxprobe.
//! Idempotent: every item is checked first; only what is missing is installed.
//! Prints one line per item: "ok: <what> (already present)" or
//! "installing: <what> (<why>)".
use crate::util::{self, output_ok, run};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nightly that builds agent-ebpf (keep in sync with agent/build.rs).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    (LLVM_PACKAGE, "LLVM 22 for bpf-linker"),
    // llvm-config lists these as link dependencies of LLVM's libraries; the
    // bpf-linker build fails without them on a machine that lacks them.
    ("zlib1g-dev", "linked by bpf-linker (LLVM's system libs)"),
    ("libzstd-dev", "linked by bpf-linker (LLVM's system libs)"),
    (
        "libpolly-22-dev",
        "LLVM 22's Polly libraries, referenced by llvm-config",
    ),
    ("nginx", "tests and benchmarks run their own nginx"),
    (
        "nginx-dev",
        "nginx's sources with Debian's configure flags: offsetof() and DWARF oracles for the uprobe's offsets",
    ),
    ("gcc", "compiles nginx-dev's headers (offset oracles)"),
    ("binutils", "objcopy: an nginx copy carrying DWARF (uprobe offsets e2e)"),
    ("wrk", "load generator for tests and benchmarks"),
    ("curl", "used by tests (also over https)"),
    (
        "openssl",
        "TLS tests: self-signed certificate, s_client handshakes, the Kubernetes API stand-in's CA",
    ),
    (
        "nghttp2-client",
        "h2load: HTTP/2 clients for the unparsed-connection tests",
    ),
    ("iproute2", "ss/ip for tests"),
    (
        "nftables",
        "kernel_tcp e2e: packet loss on a test namespace's link (this kernel has no netem)",
    ),
    ("iptables", "kernel_tcp e2e: the loss rule where nft is unusable"),
    ("prometheus", "promtool and reference Prometheus for tests"),
    ("prometheus-alertmanager", "reference Alertmanager for tests"),
    ("prometheus-nginx-exporter", "reference nginx_* metrics for tests"),
    ("procps", "ps/sysctl/pgrep for tests"),
    (
        "tmux",
        "top e2e: runs `ngxprobe top` in a terminal and reads its screen",
    ),
    (
        "chromium",
        "headless browser for the page's end-to-end tests (driven over DevTools)",
    ),
    ("util-linux", "setpriv/unshare: capability and namespace tests"),
    (
        "python3-venv",
        "deploy_manifests e2e: the venv with kubernetes-validate and kubectl (kustomize)",
    ),
    (
        "libcap2-bin",
        "setcap/capsh: capability tests (file capabilities, non-root agent)",
    ),
];

/// Packages whose Debian maintainer scripts enable and start a service.
const SERVICES: &[&str] = &[
    "nginx",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-nginx-exporter",
];

pub fn setup() -> Result<()> {
    println!("== setup");
    if !util::is_root() {
        bail!(
            "`cargo xtask setup` must run as root: it installs Debian packages and mounts \
             tracefs/bpffs (and the agent needs root to load eBPF programs). \
             Run it as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`."
        );
    }
    add_cargo_bin_to_path();
    packages()?;
    nightly()?;
    bpf_linker()?;
    mounts()?;
    kernel()?;
    deploy_tools()?;
    println!("setup: done");
    Ok(())
}

/// Makes sure $CARGO_HOME/bin (where cargo install puts bpf-linker) is on PATH
/// for everything xtask starts.
fn add_cargo_bin_to_path() {
    let bin = cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut parts = vec![bin];
    parts.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(parts) {
        // SAFETY: called from the main thread before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

// ---------------------------------------------------------------- Debian packages

fn installed(pkg: &str) -> bool {
    output_ok("dpkg-query", ["-W", "-f=${Status}", pkg]).is_some_and(|s| s.trim() == "install ok installed")
}

fn packages() -> Result<()> {
    let mut missing = Vec::new();
    for &(pkg, why) in PACKAGES {
        if installed(pkg) {
            println!("ok: Debian package {pkg} (already present)");
        } else {
            println!("installing: Debian package {pkg} (not installed; {why})");
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if util::which("apt-get").is_none() {
        bail!(
            "apt-get not found: this setup supports Debian/Ubuntu only; install {} by hand",
            missing.join(" ")
        );
    }
    // Keep Debian from starting nginx, prometheus, the exporter (which would
    // take :9113) etc. during the install: tests start their own.
    let _no_autostart = PolicyRcD::install()?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("NEEDRESTART_MODE", "a");
        run(&mut cmd)
    };
    apt(&["update", "-q"]).context("apt-get update failed")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args).with_context(|| format!("installing {} failed", missing.join(" ")))?;
    for pkg in &missing {
        if !installed(pkg) {
            bail!("Debian package {pkg} is still not installed after apt-get install");
        }
        if SERVICES.contains(pkg) {
            stop_and_disable(pkg);
        }
    }
    Ok(())
}

/// /usr/sbin/policy-rc.d returning 101 ("action forbidden") while it exists:
/// the Debian way to keep maintainer scripts from starting services.
/// Only created when none exists; removed on drop.
struct PolicyRcD(Option<PathBuf>);

impl PolicyRcD {
    fn install() -> Result<Self> {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(PolicyRcD(None));
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# temporary, written by `cargo xtask setup`\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(PolicyRcD(Some(path.to_path_buf())))
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Stops a service a package we just installed may have started, and keeps it
/// from starting at boot (best effort; tests start their own instances).
fn stop_and_disable(service: &str) {
    let quiet = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let done = if Path::new("/run/systemd/system").exists() {
        quiet("systemctl", &["disable", "--now", service])
    } else {
        let stopped = quiet("service", &[service, "stop"]);
        quiet("update-rc.d", &[service, "disable"]) || stopped
    };
    if done {
        println!("note: stopped/disabled the {service} service Debian sets up on install (tests start their own)");
    }
}

// ---------------------------------------------------------------- Rust toolchains

/// Components of the pinned nightly: rust-src (build-std for the BPF
/// target) and clippy (`cargo xtask test` lints agent-ebpf with it).
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy"];

fn nightly() -> Result<()> {
    if util::which("rustup").is_none() {
        bail!("rustup not found on PATH (install it from https://rustup.rs, then `. ~/.cargo/env`)");
    }
    let what = format!("Rust toolchain {EBPF_TOOLCHAIN} (builds and lints agent-ebpf)");
    let toolchains = output_ok("rustup", ["toolchain", "list"]).unwrap_or_default();
    let has_toolchain = toolchains.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|t| t.starts_with(EBPF_TOOLCHAIN))
    });
    if has_toolchain {
        println!("ok: {what} (already present)");
    } else {
        println!("installing: {what} (toolchain not installed)");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal"]);
        for c in EBPF_COMPONENTS {
            cmd.args(["--component", c]);
        }
        run(&mut cmd)?;
    }
    components(EBPF_TOOLCHAIN, EBPF_COMPONENTS)?;
    // `cargo xtask test` runs `cargo fmt --check` and `cargo clippy` with the
    // toolchain that runs xtask.
    match std::env::var("RUSTUP_TOOLCHAIN") {
        Ok(tc) if !tc.is_empty() => components(&tc, &["rustfmt", "clippy"]),
        _ => {
            println!("note: RUSTUP_TOOLCHAIN not set; not checking rustfmt/clippy of the default toolchain");
            Ok(())
        }
    }
}

/// Adds the `wanted` components `toolchain` lacks.
fn components(toolchain: &str, wanted: &[&str]) -> Result<()> {
    let installed =
        output_ok("rustup", ["component", "list", "--installed", "--toolchain", toolchain]).unwrap_or_default();
    for c in wanted {
        // `rust-src`, or `clippy-x86_64-unknown-linux-gnu` for host components.
        let present = installed
            .lines()
            .map(str::trim)
            .any(|l| l == *c || l.strip_prefix(c).is_some_and(|rest| rest.starts_with('-')));
        if present {
            println!("ok: {c} for {toolchain} (already present)");
        } else {
            println!("installing: {c} for {toolchain} (component missing)");
            run(Command::new("rustup").args(["component", "add", c, "--toolchain", toolchain]))?;
        }
    }
    Ok(())
}

fn bpf_linker_version() -> Option<String> {
    output_ok("bpf-linker", ["--version"]).map(|s| s.trim().to_string())
}

fn bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
    let why = match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => {
            println!("ok: {what} (already present)");
            return Ok(());
        }
        Some(v) => format!("found `{v}`, need {BPF_LINKER_VERSION}"),
        None => "not found".to_string(),
    };
    println!("installing: {what} ({why}; cargo install, takes a few minutes)");
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("{LLVM_PREFIX}/bin/llvm-config missing: Debian package {LLVM_PACKAGE} is broken");
    }
    run(util::cargo()
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .context("installing bpf-linker failed")?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => Ok(()),
        other => {
            bail!("bpf-linker still not usable after install (`bpf-linker --version`: {other:?})")
        }
    }
}

// ---------------------------------------------------------------- mounts

/// (mount point, fs type) of every mount, from /proc/self/mountinfo.
fn mounts_table() -> Result<Vec<(String, String)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((f.get(4)?.replace("\\040", " "), f.get(sep + 1)?.to_string()))
        })
        .collect())
}

fn mount(fstype: &str, source: &str, target: &str) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    run(Command::new("mount").args(["-t", fstype, source, target]))
        .with_context(|| format!("mounting {fstype} at {target}"))
}

fn mounts() -> Result<()> {
    let table = mounts_table()?;
    let at = |point: &str, fstype: &str| table.iter().any(|(p, t)| p == point && t == fstype);

    for (fstype, source, point, why) in [
        ("tracefs", "nodev", "/sys/kernel/tracing", "tracepoints"),
        ("bpf", "bpf", "/sys/fs/bpf", "pinned eBPF objects"),
    ] {
        if at(point, fstype) {
            println!("ok: {fstype} at {point} (already present)");
        } else {
            println!("installing: {fstype} at {point} (not mounted; needed for {why})");
            mount(fstype, source, point)?;
        }
    }

    if let Some((point, _)) = table.iter().find(|(_, t)| t == "cgroup2") {
        println!("ok: cgroup2 mounted at {point} (already present)");
    } else {
        // Pure cgroup v1 host: /sys/fs/cgroup is a tmpfs of v1 hierarchies.
        let point = if table.iter().any(|(p, _)| p == "/sys/fs/cgroup") {
            "/sys/fs/cgroup/unified"
        } else {
            "/sys/fs/cgroup"
        };
        println!("installing: cgroup2 at {point} (no cgroup2 mount; needed for cgroup eBPF programs)");
        mount("cgroup2", "none", point)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- kernel

fn kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) < (6, 3) {
        bail!("kernel {release} is too old: ngxprobe needs Linux >= 6.3 (cannot be installed by setup)");
    }
    println!("ok: kernel {release} (>= 6.3)");
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("/sys/kernel/btf/vmlinux missing: ngxprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    println!("ok: kernel BTF at /sys/kernel/btf/vmlinux (already present)");
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    println!(
        "ok: kernel.bpf_stats_enabled left untouched (currently {})",
        stats.trim()
    );
    Ok(())
}

/// The offline validators of deploy/ (tests/tests/deploy_manifests.rs), in
/// target/deploy-tools: a venv from tests/deploy/requirements.txt
/// (kubernetes-validate, kubectl for `kubectl kustomize`). Redone when the
/// pinned file changes. (The Prometheus Operator's resources are checked in
/// Rust against the CRDs vendored in tests/deploy/crds: nothing to install.)
fn deploy_tools() -> Result<()> {
    let src = util::workspace_root().join("tests/deploy");
    let dest = util::target_dir().join("deploy-tools");
    let venv = dest.join("venv");
    let requirements =
        std::fs::read_to_string(src.join("requirements.txt")).context("reading tests/deploy/requirements.txt")?;
    let stamp = venv.join("ngxprobe-requirements.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
        println!("ok: deploy validators venv {} (already present)", venv.display());
    } else {
        println!(
            "installing: deploy validators venv {} (kubernetes-validate, kubectl)",
            venv.display()
        );
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("/usr/bin/python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(src.join("requirements.txt")))?;
        std::fs::write(&stamp, &requirements)?;
    }
    Ok(())
}
