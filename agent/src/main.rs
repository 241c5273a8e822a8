//! ngxprobe: zero-config nginx visibility from eBPF.
//!
//! Pipeline (data flows one way): discover/probe → collect → expose (/metrics)
//! → store → query → rules → notify. This file is the command line; the
//! library (lib.rs) does the work.
mod cli;

use ngxprobe::{agent, config, rules};

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
        Some(cli::Command::ShowConfig) => match agent::effective_config(&cli.run.to_agent()) {
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
        }) => agent::query_cli(&cli.run.to_agent(), &expr, time.as_deref(), addr, data_dir),
        None => agent::run(cli.run.to_agent()),
    }
}
