//! The `rules:` section of the agent config.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compat::PromDuration;

/// ```yaml
/// rules:
///   rule_files: ["/etc/ngxprobe/rules/*.yml"]   # globs, Prometheus rule files or PrometheusRule manifests
///   evaluation_interval: 250ms                  # groups without their own `interval:`
///   external_labels: { cluster: prod }
///   default_rules: true                         # the built-in nginx rules
///   resend_delay: 1m                            # re-send firing alerts this often
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Globs of rule files (relative globs are resolved from the working directory).
    pub rule_files: Vec<String>,
    /// Default group evaluation interval. Prometheus defaults to 1m. ngxprobe
    /// evaluates every 250ms: rules read the probes' live values (live.rs), so
    /// a condition is seen within a quarter second, and an evaluation costs
    /// well under a millisecond. Give recording groups `interval: 1s` to
    /// keep their output at the store's resolution.
    pub evaluation_interval: PromDuration,
    /// Labels added to every alert sent and available as `$externalLabels`.
    pub external_labels: BTreeMap<String, String>,
    /// Load the built-in nginx rules (NginxDown, NginxHighActiveConnections).
    pub default_rules: bool,
    /// Minimum time between two sends of the same firing alert (Prometheus: `--rules.alert.resend-delay`).
    pub resend_delay: PromDuration,
    /// How long after a restart `for` state may be restored from ALERTS_FOR_STATE
    /// (Prometheus: `--rules.alert.for-outage-tolerance`, 1h).
    pub for_outage_tolerance: PromDuration,
    /// Minimum time an alert waits to fire again after a restart
    /// (Prometheus: `--rules.alert.for-grace-period`, 10m).
    pub for_grace_period: PromDuration,
    /// Base of alert generator URLs (`<external_url>/graph?g0.expr=...`) and `externalURL` in
    /// templates; empty gives a relative link (set it to how users reach this agent).
    pub external_url: String,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            rule_files: Vec::new(),
            evaluation_interval: PromDuration::from_millis(250),
            external_labels: BTreeMap::new(),
            default_rules: true,
            resend_delay: PromDuration::from_secs(60),
            for_outage_tolerance: PromDuration::from_secs(3600),
            for_grace_period: PromDuration::from_secs(600),
            external_url: String::new(),
        }
    }
}
