//! `cargo xtask bench query`: query latency of ngxprobe vs Prometheus on the
//! same data, side by side in one run. The benchmark itself is the ignored
//! test `query::bench::bench_query_vs_prometheus` in the agent crate (it
//! needs the store and the API router, which live in the agent binary
//! crate); this runs it in release and prints its Markdown table:
//! `rate(x[1m])` range queries over 1 h and 24 h at a 15 s step for 1 and 100
//! series, and `sum by` over 100 series, median of N interleaved runs per
//! query per engine, and the ratio. Prometheus is Debian's (`cargo xtask
//! setup` installs it); data is imported with `promtool tsdb
//! create-blocks-from openmetrics`. The eBPF object is not needed.
use crate::util::{self, run};
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Interleaved runs per query per engine (median reported; at least 5).
    #[arg(long, default_value_t = 7)]
    runs: u32,
    /// Hours of data (15 s samples, 100 series); 24 h queries need >= 25.
    #[arg(long, default_value_t = 25)]
    hours: u32,
}

pub fn query(args: QueryArgs) -> Result<()> {
    for tool in ["prometheus", "promtool"] {
        if util::which(tool).is_none() && !std::path::Path::new("/usr/bin").join(tool).is_file() {
            bail!("{tool} not found: run `cargo xtask setup` (installs Debian's prometheus package)");
        }
    }
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "ngxprobe",
        "--bin",
        "ngxprobe",
        "query::bench::bench_query_vs_prometheus",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("AYA_BUILD_SKIP", "1")
    .env("QUERY_BENCH_RUNS", args.runs.max(5).to_string())
    .env("QUERY_BENCH_HOURS", args.hours.to_string());
    run(&mut cmd)
}
