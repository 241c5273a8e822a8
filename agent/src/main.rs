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
            match agent::check_config(&path) {
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
        }) => match agent::query_cli(&cli.run.to_agent(), &expr, time.as_deref(), addr, data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ngxprobe {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Some(cli::Command::Diagnose { since, url }) => {
            let Some(url) = agent_url(url, &cli.run, "diagnose") else {
                return ExitCode::from(2);
            };
            match ngxprobe::diagnose::run(&url, &since, &mut std::io::stdout()) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("ngxprobe diagnose: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(cli::Command::Top { url, interval, window }) => {
            let Some(url) = agent_url(url, &cli.run, "top") else {
                return ExitCode::from(2);
            };
            match ngxprobe::top::run(&ngxprobe::top::Options { url, interval, window }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ngxprobe top: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => match agent::run(cli.run.to_agent()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(&e);
                ExitCode::from(e.exit_code())
            }
        },
    }
}

/// `--url` of the API clients, else the agent's own address from the
/// config; `None` (the error said on stderr) when the config is bad.
fn agent_url(url: Option<String>, run: &cli::RunArgs, command: &str) -> Option<String> {
    if url.is_some() {
        return url;
    }
    match agent::effective_config(&run.to_agent()) {
        Ok(c) => Some(format!("http://{}", c.web.local_address())),
        Err(e) => {
            eprintln!("ngxprobe {command}: {e}");
            None
        }
    }
}

/// Says why the agent stopped: in the log once logging is set up (so JSON
/// logs stay JSON), on stderr before that.
fn report(e: &agent::RunError) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{e}");
    } else {
        eprintln!("ngxprobe: {e}");
    }
}
