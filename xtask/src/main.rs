//! Developer tasks for ngxprobe: `cargo xtask <setup|build|run|test|bench>`.
mod bench;
mod bench_alert;
mod bench_query;
mod bench_store;
mod setup;
mod test;
mod util;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ngxprobe developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install/check everything needed to build and test (idempotent, needs root).
    Setup,
    /// Setup, then build the agent (`cargo build -p ngxprobe`, release unless --debug).
    Build {
        /// Release build of the agent (the default; the eBPF object is always release).
        #[arg(long)]
        release: bool,
        /// Debug build of the agent.
        #[arg(long, conflicts_with = "release")]
        debug: bool,
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Setup, build (release), then run target/release/ngxprobe with ARGS
    /// (its embedded defaults when none: /metrics on :9113).
    Run {
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
        /// Arguments for the agent (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Setup, build, then run every test (unit, integration, end-to-end).
    Test {
        /// Skip `setup`.
        #[arg(long)]
        no_setup: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Internal: one side of the loopback TCP ping-pong used by `bench overhead`.
    #[command(hide = true)]
    PingPong(bench::PingPongArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Cost of the agent to nginx (µs CPU per request, with vs without the agent),
    /// eBPF run time per request, cost to other processes, agent RSS and CPU.
    Overhead(bench::OverheadArgs),
    /// Store: bytes/sample vs Prometheus (promtool), appends/s, 24 h read, RSS/series.
    Store(bench_store::StoreArgs),
    /// Query latency, ngxprobe vs Prometheus on the same data (median of interleaved runs).
    Query(bench_query::QueryArgs),
    /// Load start → Slack POST (firing) and load end → resolved POST, ngxprobe
    /// vs Prometheus + Alertmanager + nginx-exporter, same rule/route/load.
    AlertLatency(bench_alert::AlertLatencyArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Setup => setup::setup().map(|()| 0),
        Cmd::Build { debug, no_setup, .. } => {
            if !no_setup {
                setup::setup()?;
            }
            build(!debug).map(|()| 0)
        }
        Cmd::Run { no_setup, args } => {
            if !no_setup {
                setup::setup()?;
            }
            build(true)?;
            exec_agent(&args)
        }
        Cmd::Test { no_setup } => test::test(no_setup),
        Cmd::Bench { which } => match which {
            BenchCmd::Overhead(args) => bench::overhead(args).map(|()| 0),
            BenchCmd::Query(args) => bench_query::query(args).map(|()| 0),
            BenchCmd::AlertLatency(args) => bench_alert::alert_latency(args).map(|()| 0),
            BenchCmd::Store(args) => bench_store::store(args).map(|()| 0),
        },
        Cmd::PingPong(args) => bench::ping_pong(args).map(|()| 0),
    }
}

/// `cargo build -p ngxprobe` (agent/build.rs builds the eBPF object, always release).
pub fn build(release: bool) -> Result<()> {
    println!("== build (agent: {})", if release { "release" } else { "debug" });
    let started = Instant::now();
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "ngxprobe"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context("building the agent failed")?;
    println!("build: done in {:.0?}", started.elapsed());
    Ok(())
}

/// What a benchmark that runs the agent does first: check it runs as root
/// (`why`), then setup and the release build unless skipped.
pub fn bench_prelude(name: &str, why: &str, no_setup: bool, no_build: bool) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask bench {name}` must run as root ({why})");
    }
    if !no_setup {
        setup::setup()?;
    }
    if !no_build {
        build(true)?;
    }
    Ok(())
}

/// Replaces xtask with the agent, so signals (Ctrl-C, SIGTERM) reach it directly.
fn exec_agent(args: &[String]) -> Result<i32> {
    let bin = util::agent_bin();
    if !bin.is_file() {
        bail!("{} missing after the build", bin.display());
    }
    println!("== run: {} {}", bin.display(), args.join(" "));
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("could not exec {}", bin.display()))
}
