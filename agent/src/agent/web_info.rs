//! What the page (`web`) shows about the agent's settings, taken from the
//! config here so that `web` knows no stage's config type.
use crate::config::Config;
use crate::web::{AgentInfo, ReceiverInfo, RulesInfo, StorageInfo};

pub fn agent_info(cfg: &Config) -> AgentInfo {
    let storage = cfg.storage.enabled.then(|| StorageInfo {
        path: cfg.storage.path.display().to_string(),
        retention: cfg.storage.retention.to_string(),
        retention_seconds: cfg.storage.retention.as_duration().as_secs_f64(),
        retention_size_bytes: cfg.storage.retention_size.0,
        interval_seconds: cfg.storage.interval.as_duration().as_secs_f64(),
    });
    // Rules run only with the store (they read its history).
    let rules = cfg.storage.enabled.then(|| RulesInfo {
        files: cfg.rules.rule_files.clone(),
        evaluation_interval_seconds: cfg.rules.evaluation_interval.as_duration().as_secs_f64(),
        default_rules: cfg.rules.default_rules,
    });
    // Names and integration kinds only: receiver URLs can be secrets.
    let receivers = cfg
        .alertmanager
        .iter()
        .flat_map(|am| &am.receivers)
        .map(|r| ReceiverInfo {
            name: r.name.clone(),
            integrations: [("slack", r.slack_configs.len()), ("webhook", r.webhook_configs.len())]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        })
        .collect();
    AgentInfo {
        telemetry_path: cfg.web.telemetry_path.clone(),
        storage,
        rules,
        receivers,
        alertmanagers: cfg.alerting.alertmanagers.len(),
    }
}
