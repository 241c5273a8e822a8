//! `cargo xtask test`: setup, build, the code checks (rustfmt, clippy on the
//! workspace and on the eBPF crate), then every test of the workspace. The
//! end-to-end package (the workspace member under tests/) runs
//! single-threaded: its tests start nginx and the agent.
//!
//! A run passes only if every step passes. A test pass is judged by more
//! than cargo's exit code: no test may fail, and each pass must have run at
//! least a minimum number of tests ([`min_tests`]), so a pass that silently
//! ran nothing (a target not built, tests filtered out) is a failure.
use crate::setup::EBPF_TOOLCHAIN;
use crate::util;
use anyhow::{Context as _, Result, anyhow, bail};
use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unit + integration pass (every package but the end-to-end ones).
const UNIT_PASS: &str = "unit + integration tests";

/// Fewest tests the unit + integration pass must run. Set a bit below the
/// count when it was introduced (174 executed: 166 in the agent, 8 in
/// xtask); raise it as tests are added, never lower it to make a run pass.
/// +7: the page's (web) unit tests; +22: bounded queries; +25: discovery's
/// hostile-input tests (fake /proc trees, ELF checks, caps, label bounds);
/// +8: per-thread capabilities; +1: answers counted by route and code;
/// +7: first-bytes classification (agent-common) and unparsed-connection news;
/// +1: PROXY protocol headers. Then per-request metrics, listener and TCP
/// diagnostics, the secured endpoint, remote_write, Kubernetes metadata and
/// `top` brought it to about 345 (330); then diagnose's findings, top's
/// bounded client, socket-path request lines: about 365 (350); then config
/// reading, DWARF offsets, drift, h2c-only listeners, listener dumps and
/// live reads: 397 (393).
const MIN_UNIT_TESTS: u64 = 393;

/// Fewest tests the end-to-end pass of `ngxprobe-e2e` must run (42 executed
/// when introduced: 28 end-to-end, 14 of the harness itself). +2: the page
/// in a browser (tests/web.rs); +2: the hostile-client suite; +1: a flood of
/// fake nginx masters; +6: least privilege (tests/privileges.rs); +1: hostile
/// queries; +1: keep-alive downloads of 2 MiB files (sendfile on/off); +1:
/// h2load's summary parser; +2: TLS, h2c and non-HTTP connections
/// (tests/unparsed.rs); +1: PROXY protocol before TLS and HTTP. Then
/// per_request, kernel_listen, kernel_tcp, netns_selftest, secured_endpoint,
/// remote_write, kubernetes_metadata, deploy_manifests, dashboard and top:
/// 89 executed (85). Then CRD schemas, RBAC and image checks, external
/// labels to Prometheus and Alertmanager, credential files, socket-path
/// RED, TLS counters with the uprobe, hostile bytes on every port: 97 (95).
/// Then `auto`, DWARF, self-check, crossings and h2c-only listeners: 111
/// (109).
const MIN_E2E_TESTS: u64 = 109;

/// Minimum for a pass: the unit pass, `ngxprobe-e2e`, or (any other package
/// under tests/) at least one test.
fn min_tests(pass: &PassKind) -> u64 {
    match pass {
        PassKind::Unit => MIN_UNIT_TESTS,
        PassKind::EndToEnd(p) if p == "ngxprobe-e2e" => MIN_E2E_TESTS,
        PassKind::EndToEnd(_) => 1,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PassKind {
    Unit,
    EndToEnd(String),
}

#[derive(Debug, Default)]
struct Pass {
    name: String,
    command: String,
    /// cargo's exit status was success.
    exit_ok: bool,
    error: Option<String>,
    passed: u64,
    failed: u64,
    ignored: u64,
    failures: Vec<String>,
    elapsed: Duration,
}

impl Pass {
    /// Tests that ran (ignored ones did not).
    fn executed(&self) -> u64 {
        self.passed + self.failed
    }

    /// The verdict: cargo succeeded, nothing failed, at least `min` tests
    /// ran. `Err` says why not.
    fn verdict(&self, min: u64) -> Result<(), String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.failed > 0 {
            return Err(format!("{} test(s) failed", self.failed));
        }
        if !self.exit_ok {
            return Err("cargo test failed — see the output above (build error?)".into());
        }
        if self.executed() < min {
            return Err(format!(
                "ran {} test(s), fewer than the {min} this pass must run (tests not built, filtered out or gone?)",
                self.executed()
            ));
        }
        Ok(())
    }
}

pub fn test(no_setup: bool) -> Result<i32> {
    let started = Instant::now();
    let mut steps: Vec<(String, Result<(), String>, Duration)> = Vec::new();
    let mut step = |name: &str, f: &dyn Fn() -> Result<()>| -> bool {
        println!("== {name}");
        let t = Instant::now();
        let r = f().map_err(|e| format!("{e:#}"));
        let ok = r.is_ok();
        steps.push((name.to_string(), r, t.elapsed()));
        ok
    };
    let ready = (no_setup || step("setup", &crate::setup::setup)) && step("build", &|| crate::build(true));

    let mut passes = Vec::new();
    if ready {
        // Code checks: each is a step of its own; the tests run anyway.
        step("format (cargo fmt --all --check)", &fmt_check);
        step(
            "clippy (workspace without agent-ebpf, all targets, -D warnings)",
            &clippy_workspace,
        );
        step(
            "clippy (agent-ebpf for bpfel, pinned nightly, -D warnings)",
            &clippy_ebpf,
        );
        match e2e_packages() {
            Ok(e2e) => {
                let mut args: Vec<String> = ["test", "--workspace", "--exclude", "agent-ebpf", "--no-fail-fast"]
                    .map(String::from)
                    .into();
                for p in &e2e {
                    args.extend(["--exclude".to_string(), p.clone()]);
                }
                passes.push((PassKind::Unit, run_pass(UNIT_PASS, &args)));
                for p in &e2e {
                    let args: Vec<String> = ["test", "-p", p, "--no-fail-fast", "--", "--test-threads=1"]
                        .map(String::from)
                        .into();
                    let name = format!("end-to-end tests ({p}, single-threaded)");
                    passes.push((PassKind::EndToEnd(p.clone()), run_pass(&name, &args)));
                }
            }
            Err(e) => steps.push(("find test packages".into(), Err(format!("{e:#}")), Duration::ZERO)),
        }
    }

    // Summary.
    println!();
    println!("================ cargo xtask test: summary ================");
    let mut all_ok = ready;
    for (name, r, d) in &steps {
        match r {
            Ok(()) => println!("  ok      {name} ({:.0?})", d),
            Err(e) => {
                all_ok = false;
                println!("  FAILED  {name} ({:.0?}): {e}", d);
            }
        }
    }
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for (kind, p) in &passes {
        passed += p.passed;
        failed += p.failed;
        ignored += p.ignored;
        let min = min_tests(kind);
        let verdict = p.verdict(min);
        println!(
            "  {}  {}: {} passed, {} failed, {} ignored (at least {min} must run) ({:.0?})",
            if verdict.is_ok() { "ok    " } else { "FAILED" },
            p.name,
            p.passed,
            p.failed,
            p.ignored,
            p.elapsed
        );
        println!("            `{}`", p.command);
        if let Err(e) = &verdict {
            println!("            {e}");
        }
        for f in &p.failures {
            println!("            failed: {f}");
        }
        all_ok &= verdict.is_ok();
    }
    if !ready {
        println!("  checks and tests not run: setup or build failed");
    }
    println!(
        "  total: {passed} passed, {failed} failed, {ignored} ignored in {:.0?} -> {}",
        started.elapsed(),
        if all_ok { "OK" } else { "FAILED" }
    );
    Ok(if all_ok { 0 } else { 1 })
}

/// `cargo fmt --all --check` (rustfmt.toml: max_width 120).
fn fmt_check() -> Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--check"])).context("code is not formatted: run `cargo fmt --all`")
}

/// `cargo clippy --workspace --exclude agent-ebpf --all-targets -- -D warnings`
/// (with `--keep-going`: a crate that fails does not hide the others' warnings).
fn clippy_workspace() -> Result<()> {
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--keep-going",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Clippy on agent-ebpf as agent/build.rs (aya-build) builds it: the pinned
/// nightly, the bpfel target with build-std, and the `bpf_target_arch` cfg.
/// Its own target dir, so that these flags do not invalidate the host build.
fn clippy_ebpf() -> Result<()> {
    let root = util::workspace_root();
    let mut cmd = clippy_ebpf_command(&root, &util::target_dir().join("ebpf-clippy"));
    util::run(&mut cmd)
}

fn clippy_ebpf_command(root: &Path, target_dir: &Path) -> Command {
    let arch = match std::env::consts::ARCH {
        a if a.starts_with("riscv64") => "riscv64",
        a => a,
    };
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        EBPF_TOOLCHAIN,
        "cargo",
        "clippy",
        "-p",
        "agent-ebpf",
        "--target",
        target,
    ])
    .args(["-Z", "build-std=core", "--release", "--target-dir"])
    .arg(target_dir)
    .args(["--", "-D", "warnings"])
    .current_dir(root.join("agent-ebpf"))
    .env("CARGO_ENCODED_RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{arch}\""))
    // Set by the cargo running xtask; they would point at the stable toolchain.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Names of the workspace packages under <root>/tests/ (the end-to-end tests).
fn e2e_packages() -> Result<Vec<String>> {
    let root = util::workspace_root();
    let out = util::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let tests_dir = root.join("tests");
    let mut names = Vec::new();
    for pkg in meta["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata: no packages"))?
    {
        let manifest = Path::new(pkg["manifest_path"].as_str().unwrap_or_default());
        if manifest.starts_with(&tests_dir)
            && let Some(name) = pkg["name"].as_str()
        {
            names.push(name.to_string());
        }
    }
    if names.is_empty() && tests_dir.join("Cargo.toml").is_file() {
        bail!(
            "tests/Cargo.toml exists but tests/ is not a member of the workspace (add it to [workspace] members in Cargo.toml)"
        );
    }
    Ok(names)
}

/// Runs one `cargo test` invocation, echoing its output and counting results.
fn run_pass(name: &str, args: &[String]) -> Pass {
    println!("== {name}");
    let root = util::workspace_root();
    let mut cmd = util::cargo();
    cmd.args(args)
        .env("NGXPROBE_BIN", util::agent_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Setup has installed every tool the tests use: a missing one is a
    // failure here, not a skip (tests skip only when run by hand, CI unset).
    if std::env::var_os("CI").is_none() {
        cmd.env("CI", "1");
    }
    let shared = root.join("..").join("shared");
    if shared.is_dir() {
        let shared = shared.canonicalize().unwrap_or(shared);
        cmd.env("NGXPROBE_SHARED", shared);
    }
    let mut pass = Pass {
        name: name.to_string(),
        command: format!("cargo {}", args.join(" ")),
        ..Pass::default()
    };
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            pass.error = Some(format!("could not start cargo: {e}"));
            return pass;
        }
    };
    // stderr (cargo's progress, test binaries' stderr) in a thread of its
    // own, so that neither pipe can fill up and block cargo.
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let _ = for_each_line_lossy(e, |l| eprintln!("{l}"));
        })
    });
    if let Some(stdout) = child.stdout.take()
        && let Err(e) = for_each_line_lossy(stdout, |l| {
            println!("{l}");
            parse_line(l, &mut pass);
        })
    {
        pass.error = Some(format!("reading cargo's output: {e}"));
        // Unblock cargo rather than wait for it forever.
        let _ = child.kill();
    }
    if let Some(t) = stderr {
        let _ = t.join();
    }
    match child.wait() {
        Ok(st) => {
            pass.exit_ok = st.success();
            if !st.success() && pass.failed == 0 && pass.error.is_none() {
                pass.error = Some(format!(
                    "cargo test failed ({}) — see the output above (build error?)",
                    util::describe(st)
                ));
            }
        }
        Err(e) => pass.error = Some(format!("waiting for cargo: {e}")),
    }
    pass.elapsed = started.elapsed();
    pass
}

/// Calls `f` on every line of `r` (without its line end) until EOF. Bytes
/// that are not UTF-8 are replaced (U+FFFD) rather than ending the loop, so
/// the reader always drains the pipe. Only a read error ends it early.
fn for_each_line_lossy(r: impl Read, mut f: impl FnMut(&str)) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                f(line.trim_end_matches(['\n', '\r']));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Counts libtest's "test result:" lines and collects "... FAILED" test names.
fn parse_line(line: &str, pass: &mut Pass) {
    if let Some(rest) = line.strip_prefix("test result: ") {
        for part in rest.split(';') {
            let mut words = part.split_whitespace().skip_while(|w| w.ends_with('.'));
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => pass.passed += n,
                "failed" => pass.failed += n,
                "ignored" => pass.ignored += n,
                _ => {}
            }
        }
    } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
        pass.failures.push(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summary_lines() {
        let mut p = Pass::default();
        parse_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            &mut p,
        );
        parse_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            &mut p,
        );
        parse_line("test e2e::counts_requests ... FAILED", &mut p);
        parse_line("test e2e::other ... ok", &mut p);
        assert_eq!((p.passed, p.failed, p.ignored), (15, 2, 1));
        assert_eq!(p.executed(), 17);
        assert_eq!(p.failures, vec!["e2e::counts_requests".to_string()]);
    }

    #[test]
    fn reads_lines_lossily_to_the_end() {
        // A non-UTF-8 line in the middle, CRLF, and no newline at the end.
        let input: &[u8] = b"test a ... ok\nbad \xff\xfe bytes\r\ntest result: ok. 2 passed; 0 failed\nlast";
        let mut lines = Vec::new();
        for_each_line_lossy(input, |l| lines.push(l.to_string())).unwrap();
        assert_eq!(
            lines,
            [
                "test a ... ok",
                "bad \u{fffd}\u{fffd} bytes",
                "test result: ok. 2 passed; 0 failed",
                "last"
            ]
        );
        // A large output with invalid bytes everywhere is read completely.
        let big: Vec<u8> = (0..100_000u32).flat_map(|i| [b'x', (i % 256) as u8, b'\n']).collect();
        let mut n = 0;
        for_each_line_lossy(&big[..], |_| n += 1).unwrap();
        assert!(n >= 100_000, "{n} lines");
    }

    #[test]
    fn verdict_needs_exit_ok_no_failures_and_the_minimum() {
        let ok = Pass {
            exit_ok: true,
            passed: 10,
            ignored: 5,
            ..Pass::default()
        };
        assert_eq!(ok.verdict(10), Ok(()));
        let e = ok.verdict(11).unwrap_err();
        assert!(e.contains("ran 10 test(s), fewer than the 11"), "{e}");
        let failed = Pass {
            failed: 1,
            ..ok.clone_counts()
        };
        assert!(failed.verdict(1).unwrap_err().contains("1 test(s) failed"));
        let exit = Pass {
            exit_ok: false,
            ..ok.clone_counts()
        };
        assert!(exit.verdict(1).unwrap_err().contains("cargo test failed"));
        let empty = Pass {
            exit_ok: true,
            ..Pass::default()
        };
        assert!(empty.verdict(min_tests(&PassKind::EndToEnd("other".into()))).is_err());
        assert_eq!(min_tests(&PassKind::Unit), MIN_UNIT_TESTS);
        assert_eq!(min_tests(&PassKind::EndToEnd("ngxprobe-e2e".into())), MIN_E2E_TESTS);
    }

    #[test]
    fn ebpf_clippy_mirrors_aya_build() {
        let cmd = clippy_ebpf_command(Path::new("/ws"), Path::new("/ws/target/ebpf-clippy"));
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cmd.get_program(), "rustup");
        assert_eq!(&args[..2], ["run", EBPF_TOOLCHAIN]);
        for want in ["clippy", "agent-ebpf", "build-std=core", "--release", "-D", "warnings"] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/ws/agent-ebpf")));
        let flags = cmd
            .get_envs()
            .find(|(k, _)| *k == "CARGO_ENCODED_RUSTFLAGS")
            .and_then(|(_, v)| v)
            .unwrap();
        assert!(flags.to_string_lossy().starts_with("--cfg=bpf_target_arch=\""));
    }

    impl Pass {
        fn clone_counts(&self) -> Pass {
            Pass {
                exit_ok: self.exit_ok,
                passed: self.passed,
                failed: self.failed,
                ignored: self.ignored,
                ..Pass::default()
            }
        }
    }
}
