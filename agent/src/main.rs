//! ngxprobe: zero-config nginx visibility from eBPF.
//!
//! Pipeline (data flows one way): discover/probe → collect → expose (/metrics)
//! → store → query → rules → notify. `agent` wires the stages together.
mod agent;
mod alerts;
mod cli;
mod collect;
mod config;
mod discover;
mod expose;
mod gotime;
mod live;
mod logging;
mod metrics;
mod notify;
mod preflight;
mod probe;
mod query;
mod rules;
mod series;
mod store;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Check {
            what: cli::CheckWhat::Config { file },
        }) => {
            let Some(path) = file.or(cli.run.config) else {
                eprintln!("ngxprobe check config: give a FILE (or --config FILE)");
                return ExitCode::from(2);
            };
            match config::check(&path) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(cli::Command::Check {
            what: cli::CheckWhat::Rules { files },
        }) => ExitCode::from(rules::check_rules_cli(&files, &mut std::io::stdout())),
        Some(cli::Command::Test {
            what: cli::TestWhat::Rules { files },
        }) => ExitCode::from(rules::test_rules_cli(&files, &mut std::io::stdout())),
        Some(cli::Command::ShowConfig) => match agent::effective_config(&cli.run) {
            Ok(c) => {
                print!("{}", config::redacted_yaml(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ngxprobe: {e}");
                ExitCode::FAILURE
            }
        },
        Some(cli::Command::Query {
            expr,
            time,
            addr,
            data_dir,
        }) => agent::query_cli(&cli.run, &expr, time.as_deref(), addr, data_dir),
        None => agent::run(cli.run),
    }
}
