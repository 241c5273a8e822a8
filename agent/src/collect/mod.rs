//! Collect stage: keeps the registry of nginx instances (from discover), gives
//! each a counter slot in the probe's maps, seeds connections that were open
//! before the agent, and turns slot counters into metric families. Owns the
//! discovery loop that feeds the registry.
mod counter_drift;
pub mod discovery_loop;
mod discovery_stats;
mod families;
mod listen;
mod registry;
pub mod requests;
mod tcp_health;
mod unparsed;
mod worker_health;

pub use listen::ListenTargets;
pub use registry::{Collector, ScanReport};

use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::{Family, MetricsSource};

/// The collector shared by its one writer (the discovery loop) and its
/// readers (/metrics, the sampler, rules' live reads).
#[derive(Clone)]
pub struct SharedCollector(Arc<Mutex<Collector>>);

impl SharedCollector {
    pub fn new(collector: Collector) -> Self {
        SharedCollector(Arc::new(Mutex::new(collector)))
    }

    /// The collector; a panic elsewhere that poisoned the lock does not stop
    /// the agent from serving what it has.
    pub fn lock(&self) -> MutexGuard<'_, Collector> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MetricsSource for SharedCollector {
    fn families(&self) -> Vec<Family> {
        self.lock().families()
    }

    fn families_wanted(&self, want: &dyn Fn(&str) -> bool) -> Vec<Family> {
        self.lock().families_wanted(want)
    }
}
