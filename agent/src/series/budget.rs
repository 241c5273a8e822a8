//! What one query may still read: a number of samples and a deadline, shared
//! by every select of the query and by the store's decode threads. Readers
//! charge samples as they decode them (per chunk), so a query that would load
//! too much stops while loading, not after everything is in memory.
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use super::ReadError;

#[derive(Debug)]
pub struct ReadBudget {
    max_samples: usize,
    loaded: AtomicUsize,
    deadline: Option<Instant>,
}

impl ReadBudget {
    pub fn new(max_samples: usize, deadline: Option<Instant>) -> Self {
        ReadBudget {
            max_samples,
            loaded: AtomicUsize::new(0),
            deadline,
        }
    }

    /// No sample limit, no deadline: for trusted internal reads and tests.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, None)
    }

    /// Counts `n` more samples held by the query; an error once the total
    /// passes the limit (every later charge fails too, so parallel decoders
    /// all stop at their next chunk).
    pub fn charge(&self, n: usize) -> Result<(), ReadError> {
        let total = self.loaded.fetch_add(n, Relaxed).saturating_add(n);
        if total > self.max_samples {
            // Stay above the limit even if the counter were to wrap.
            self.loaded.store(usize::MAX / 2, Relaxed);
            return Err(ReadError::TooManySamples);
        }
        Ok(())
    }

    /// An error once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), ReadError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(ReadError::Timeout),
            _ => Ok(()),
        }
    }

    /// Charges `n` samples and checks the deadline: what a reader does after
    /// each chunk it decodes.
    pub fn charge_and_check(&self, n: usize) -> Result<(), ReadError> {
        self.charge(n)?;
        self.check_deadline()
    }

    /// Samples charged so far.
    pub fn loaded(&self) -> usize {
        self.loaded.load(Relaxed)
    }

    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn charges_until_the_limit_and_then_always_fails() {
        let b = ReadBudget::new(10, None);
        assert!(b.charge(6).is_ok());
        assert!(b.charge(4).is_ok());
        assert!(matches!(b.charge(1), Err(ReadError::TooManySamples)));
        assert!(matches!(b.charge(0), Err(ReadError::TooManySamples)));
        assert!(ReadBudget::unlimited().charge(usize::MAX).is_ok());
    }

    #[test]
    fn deadline_in_the_past_fails() {
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            ReadBudget::new(1, Some(past)).check_deadline(),
            Err(ReadError::Timeout)
        ));
        let later = Instant::now() + Duration::from_secs(60);
        assert!(ReadBudget::new(1, Some(later)).check_deadline().is_ok());
    }
}
