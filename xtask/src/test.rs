//! `cargo xtask test`: setup, build, then every test of the workspace. The
//! end-to-end package (the workspace member under tests/) runs single-threaded:
//! its tests start nginx and the agent.
use crate::util;
use anyhow::{Context as _, Result, anyhow, bail};
use std::io::BufRead as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Pass {
    name: String,
    command: String,
    ok: bool,
    error: Option<String>,
    passed: u64,
    failed: u64,
    ignored: u64,
    failures: Vec<String>,
    elapsed: Duration,
}

pub fn test(no_setup: bool) -> Result<i32> {
    let started = Instant::now();
    let mut steps: Vec<(String, Result<(), String>, Duration)> = Vec::new();
    let mut step = |name: &str, f: &dyn Fn() -> Result<()>| -> bool {
        let t = Instant::now();
        let r = f().map_err(|e| format!("{e:#}"));
        let ok = r.is_ok();
        steps.push((name.to_string(), r, t.elapsed()));
        ok
    };
    let ready = (no_setup || step("setup", &crate::setup::setup)) && step("build", &|| crate::build(true));

    let mut passes = Vec::new();
    if ready {
        match e2e_packages() {
            Ok(e2e) => {
                let mut args: Vec<String> = ["test", "--workspace", "--exclude", "agent-ebpf", "--no-fail-fast"]
                    .map(String::from)
                    .into();
                for p in &e2e {
                    args.extend(["--exclude".to_string(), p.clone()]);
                }
                passes.push(run_pass("unit + integration tests", &args));
                for p in &e2e {
                    let args: Vec<String> = ["test", "-p", p, "--no-fail-fast", "--", "--test-threads=1"]
                        .map(String::from)
                        .into();
                    passes.push(run_pass(&format!("end-to-end tests ({p}, single-threaded)"), &args));
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
    for p in &passes {
        passed += p.passed;
        failed += p.failed;
        ignored += p.ignored;
        let verdict = if p.ok { "ok    " } else { "FAILED" };
        println!(
            "  {verdict}  {}: {} passed, {} failed, {} ignored ({:.0?})",
            p.name, p.passed, p.failed, p.ignored, p.elapsed
        );
        println!("            `{}`", p.command);
        if let Some(e) = &p.error {
            println!("            {e}");
        }
        for f in &p.failures {
            println!("            failed: {f}");
        }
        all_ok &= p.ok;
    }
    if !ready {
        println!("  tests not run: setup or build failed");
    }
    println!(
        "  total: {passed} passed, {failed} failed, {ignored} ignored in {:.0?} -> {}",
        started.elapsed(),
        if all_ok { "OK" } else { "FAILED" }
    );
    Ok(if all_ok { 0 } else { 1 })
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
        .stdout(Stdio::piped());
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
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            parse_line(&line, &mut pass);
        }
    }
    match child.wait() {
        Ok(st) => {
            pass.ok = st.success();
            if !st.success() && pass.failed == 0 {
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
        assert_eq!(p.failures, vec!["e2e::counts_requests".to_string()]);
    }
}
