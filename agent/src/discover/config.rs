//! The `discovery:` section of the config file.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::compat::{PromDuration, duration};

/// How and where nginx instances are looked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(deserialize_with = "duration::deserialize_positive")]
    pub interval: PromDuration,
    pub proc_path: PathBuf,
    pub stopped_instance_retention: PromDuration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interval: PromDuration::from_secs(1),
            proc_path: PathBuf::from("/proc"),
            stopped_instance_retention: PromDuration::from_secs(5 * 60),
        }
    }
}
