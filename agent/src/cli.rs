//! Command line: `ngxprobe [FLAGS]` runs the agent; subcommands check things.
//! Flag names follow nginx-prometheus-exporter / Prometheus (`--web.listen-address`).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ngxprobe",
    version,
    about = "Zero-config nginx metrics from eBPF socket probes"
)]
pub struct Cli {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// YAML config file (embedded defaults when absent).
    #[arg(long, env = "NGXPROBE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address for /metrics, e.g. ":9113", "127.0.0.1:9113", "[::1]:9113".
    #[arg(long = "web.listen-address")]
    pub listen_address: Option<String>,
    /// debug, info, warn or error.
    #[arg(long = "log.level")]
    pub log_level: Option<String>,
    /// text or json.
    #[arg(long = "log.format")]
    pub log_format: Option<String>,
    /// How often /proc is scanned for nginx (e.g. 1s).
    #[arg(long = "discovery.interval")]
    pub discovery_interval: Option<String>,
    /// Where the host's /proc is mounted (in a container: /host/proc).
    #[arg(long = "discovery.proc-path")]
    pub proc_path: Option<PathBuf>,
    /// Data directory of the embedded store (default /var/lib/ngxprobe).
    #[arg(long = "storage.path")]
    pub storage_path: Option<PathBuf>,
    /// TLS and basic auth: a web config file in the exporter-toolkit format
    /// (as for Prometheus and the exporters). /healthz and /readyz stay open.
    #[arg(long = "web.config.file")]
    pub web_config_file: Option<PathBuf>,
    /// Serve only the metrics path and health: no PromQL/rules API, no page.
    #[arg(long = "web.disable-api")]
    pub disable_api: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate files without starting the agent.
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
    /// Print the effective configuration (secrets redacted) and exit.
    ShowConfig,
    /// Run rule unit tests (the `promtool test rules` format).
    Test {
        #[command(subcommand)]
        what: TestWhat,
    },
    /// Evaluate a PromQL expression against a running agent or a data dir.
    Query {
        /// The PromQL expression.
        expr: String,
        /// Evaluation time (RFC 3339 or Unix seconds; default now).
        #[arg(long)]
        time: Option<String>,
        /// A running agent's address (host:port), e.g. 127.0.0.1:9113.
        #[arg(long, conflicts_with = "data_dir")]
        addr: Option<String>,
        /// Read a stopped agent's data directory, read-only (nothing there is written).
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
    },
    /// Report what looks wrong over the last N minutes (listeners dropping
    /// connections, accept queues nearly full, instances down, alerts firing),
    /// from a running agent's API. Exit status 0: nothing found, 1: problems
    /// reported, 2: the agent could not be asked.
    Diagnose {
        /// How far back to look (a Prometheus duration: 5m, 1h).
        #[arg(long, default_value = "5m")]
        since: String,
        /// The agent's URL, e.g. http://127.0.0.1:9113 (default: from the config).
        #[arg(long)]
        url: Option<String>,
    },
    /// A live view of a running agent: one row per nginx instance and
    /// listener (request rate, status mix, p50/p99, connections, accept
    /// queue, drops, retransmits, resets), sortable. Keys: r rate, e 5xx,
    /// l p99, a accept queue, d drops, t retransmits, x resets, n name, q quit.
    /// Speaks plain HTTP to the agent's API.
    Top {
        /// The agent's URL, e.g. http://127.0.0.1:9113 (default: from the config).
        #[arg(long)]
        url: Option<String>,
        /// How often the screen is refreshed (a Prometheus duration).
        #[arg(long, default_value = "1s")]
        interval: String,
        /// Rates, shares, quantiles and increases are taken over this window.
        #[arg(long, default_value = "10s")]
        window: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CheckWhat {
    /// Validate a config file (like `promtool check config`).
    Config {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
    },
    /// Validate rule files (like `promtool check rules`).
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TestWhat {
    /// Unit-test rule files (like `promtool test rules`).
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

impl RunArgs {
    /// The library's view of these flags: the config file and what overrides it.
    pub fn to_agent(&self) -> ngxprobe::agent::RunArgs {
        ngxprobe::agent::RunArgs {
            config: self.config.clone(),
            overrides: ngxprobe::config::Overrides {
                listen_address: self.listen_address.clone(),
                log_level: self.log_level.clone(),
                log_format: self.log_format.clone(),
                discovery_interval: self.discovery_interval.clone(),
                proc_path: self.proc_path.clone(),
                storage_path: self.storage_path.clone(),
                web_config_file: self.web_config_file.clone(),
                disable_api: self.disable_api,
            },
        }
    }
}
