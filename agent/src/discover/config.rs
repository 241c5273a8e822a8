//! The `discovery:` section of the config file.
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
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
    /// Instances tracked per network namespace (a host, a pod, a container).
    /// More are refused and counted, root's masters and older ones first, so
    /// a neighbour starting nginx processes cannot push out the real ones nor
    /// use up the agent's instance slots.
    pub max_instances_per_netns: NonZeroU32,
    /// Listening sockets of one instance; an instance with more is refused
    /// (partial listeners would make its counters wrong).
    pub max_listeners_per_instance: NonZeroU32,
}

const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("zero default"),
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interval: PromDuration::from_secs(1),
            proc_path: PathBuf::from("/proc"),
            stopped_instance_retention: PromDuration::from_secs(5 * 60),
            max_instances_per_netns: const { nonzero(8) },
            max_listeners_per_instance: const { nonzero(64) },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config;
    use std::path::Path;

    #[test]
    fn caps_must_be_positive_and_errors_name_the_field() {
        let ok = config::parse(Path::new("c.yml"), "discovery:\n  max_instances_per_netns: 2\n").unwrap();
        assert_eq!(ok.discovery.max_instances_per_netns.get(), 2);
        assert_eq!(ok.discovery.max_listeners_per_instance.get(), 64);
        let err = config::parse(Path::new("c.yml"), "discovery:\n  max_instances_per_netns: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.yml") && err.contains(":2:") && err.contains("max_instances_per_netns"),
            "{err}"
        );
    }
}
