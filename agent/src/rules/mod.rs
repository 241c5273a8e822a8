//! Rules stage: Prometheus alerting and recording rules.
//!
//! - [`file`]: rule files (Prometheus format or a Kubernetes PrometheusRule), validated like `rulefmt`.
//! - [`template`]: Go-template expansion of labels/annotations with Prometheus's functions.
//! - [`eval`]: alert states, ALERTS/ALERTS_FOR_STATE, staleness, `for` restore, what is sent.
//! - [`manager`]: [`RuleManager`] (scheduling, reload, self-metrics, API data).
//! - [`api`]: GET /api/v1/rules and /api/v1/alerts.
//! - [`promtool`]: `ngxprobe check rules` / `ngxprobe test rules`.

pub mod api;
pub mod config;
pub mod eval;
pub mod file;
pub mod manager;
pub mod promtool;
pub mod template;

pub use api::rules_router;
pub use config::RulesConfig;
pub use manager::{LoadError, RuleManager};
pub use promtool::{check_rules_cli, test_rules_cli};

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod kernel_rules_tests;
#[cfg(test)]
mod tests;
