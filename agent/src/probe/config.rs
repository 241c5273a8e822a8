//! The `ebpf:` section of the config file.
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// Limits of the eBPF side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EbpfConfig {
    pub max_seeded_connections: NonZeroU32,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            max_seeded_connections: NonZeroU32::new(65_536).unwrap_or(NonZeroU32::MIN),
        }
    }
}
