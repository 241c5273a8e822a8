//! `cargo xtask bench store`: the store benchmark (agent/benches/store.rs,
//! criterion inside). Generates 24 h of 1 s nginx-like samples, ingests them
//! into ngxprobe's store, converts the same data with Debian's
//! `promtool tsdb create-blocks-from openmetrics`, and prints bytes/sample on
//! disk for both, append throughput, 24 h single-series read time and RSS per
//! series. The eBPF object is not needed, so its build is skipped.
use crate::util::{self, run};
use anyhow::Result;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Hours of 1 s data to generate.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// promtool binary for the Prometheus comparison ("" skips it).
    #[arg(long, default_value = "promtool")]
    promtool: String,
    /// Extra arguments for criterion (e.g. a benchmark name filter).
    #[arg(last = true)]
    criterion: Vec<String>,
}

pub fn store(args: StoreArgs) -> Result<()> {
    if !args.promtool.is_empty() && util::which(&args.promtool).is_none() {
        eprintln!(
            "note: {} not found (apt-get install prometheus); running without the Prometheus comparison",
            args.promtool
        );
    }
    let promtool = if util::which(&args.promtool).is_some() {
        args.promtool.clone()
    } else {
        String::new()
    };
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "ngxprobe", "--bench", "store", "--"])
        .args(&args.criterion)
        .env("AYA_BUILD_SKIP", "1")
        .env("STORE_BENCH_HOURS", args.hours.to_string())
        .env("PROMTOOL", promtool)
        .env("STORE_BENCH_DIR", util::target_dir().join("store-bench"));
    run(&mut cmd)
}
