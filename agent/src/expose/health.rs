//! Liveness and readiness state behind /healthz and /readyz.
use std::sync::RwLock;

/// Readiness starts false ("starting") and becomes true once the probes are
/// loaded and the first discovery pass is done.
#[derive(Debug)]
pub struct Health {
    /// `Ok` when ready, else the reason /readyz reports.
    state: RwLock<Result<(), String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            state: RwLock::new(Err("starting".to_string())),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        if ready {
            self.set(Ok(()));
        } else {
            self.set(Err("not ready".to_string()));
        }
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    /// `Ok(())` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        // A panic elsewhere while holding the lock must not take /readyz down.
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, state: Result<(), String>) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }
}
