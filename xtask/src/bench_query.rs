//! `cargo xtask bench query`: query latency of ngxprobe vs Prometheus on the
//! same data, side by side in one run: the bench target agent/benches/query.rs
//! (`cargo bench -p ngxprobe --bench query`), which prints a Markdown table:
//! `rate(x[1m])` range queries over 1 h and 24 h at a 15 s step for 1 and 100
//! series, and `sum by` over 100 series, median of N interleaved runs per
//! query per engine, and the ratio. Prometheus is Debian's (`cargo xtask
//! setup` installs it); data is imported with `promtool tsdb
//! create-blocks-from openmetrics`. The eBPF object is not needed, so its
//! build is skipped.
use crate::util::{self, run};
use anyhow::{Result, bail};
use ngxprobe_e2e::prometheus::find_tool;

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Interleaved runs per query per engine (median reported; at least 5).
    #[arg(long, default_value_t = 7)]
    runs: u32,
    /// Hours of data (15 s samples, 100 series); 24 h queries need >= 25.
    #[arg(long, default_value_t = 25)]
    hours: u32,
    /// Instead of the comparison: where ngxprobe's time goes (store select,
    /// evaluation, JSON), in-process, without Prometheus.
    #[arg(long)]
    breakdown: bool,
}

pub fn query(args: QueryArgs) -> Result<()> {
    if !args.breakdown {
        for tool in ["prometheus", "promtool"] {
            if find_tool(tool).is_none() {
                bail!("{tool} not found: run `cargo xtask setup` (installs Debian's prometheus package)");
            }
        }
    }
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "ngxprobe", "--bench", "query"])
        .env("AYA_BUILD_SKIP", "1")
        .env("QUERY_BENCH_RUNS", args.runs.max(5).to_string())
        .env("QUERY_BENCH_HOURS", args.hours.to_string())
        .env("QUERY_BENCH_BREAKDOWN", if args.breakdown { "1" } else { "0" });
    run(&mut cmd)
}
