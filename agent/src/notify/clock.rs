//! Time arithmetic that cannot panic. `Instant + Duration` and
//! `SystemTime + Duration` panic on overflow, and durations here come from
//! receivers (`Retry-After: 18446744073709551615`), config files and the
//! state file: a sum past the clock's range means "never", so it saturates
//! to a far but representable time instead.
use std::time::{Duration, Instant, SystemTime};

/// Longer than anything the notifier waits for (group intervals, repeat
/// intervals, retention), short enough that any clock reading plus this fits.
pub const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `t + d`, saturating at `t + NEVER`.
pub fn instant_after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(NEVER))
        .or_else(|| t.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(t)
}

/// `t + d`, saturating at `t + NEVER`.
pub fn time_after(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d.min(NEVER))
        .or_else(|| t.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(t)
}

/// The first `start + k * step` (k ≥ 1) after `now`, in O(1) however far
/// `now` is ahead (a clock jump must not loop once per missed step).
pub fn next_tick_after(start: SystemTime, step: Duration, now: SystemTime) -> SystemTime {
    let step = step.max(Duration::from_millis(1));
    let behind = now.duration_since(start).unwrap_or(Duration::ZERO);
    // u128 nanoseconds: no overflow for any pair of Durations.
    let ahead_ns = (behind.as_nanos() / step.as_nanos() + 1) * step.as_nanos();
    let ahead = u64::try_from(ahead_ns).map_or(NEVER, Duration::from_nanos);
    time_after(start, ahead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn sums_past_the_clock_saturate() {
        let now = Instant::now();
        assert_eq!(instant_after(now, Duration::MAX), now + NEVER);
        assert_eq!(instant_after(now, Duration::from_secs(3)), now + Duration::from_secs(3));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(time_after(t, Duration::from_secs(u64::MAX)), t + NEVER);
        assert_eq!(time_after(t, Duration::from_secs(5)), t + Duration::from_secs(5));
    }

    #[test]
    fn next_tick_skips_missed_steps_at_once() {
        let start = UNIX_EPOCH + Duration::from_secs(1000);
        let step = Duration::from_secs(10);
        assert_eq!(next_tick_after(start, step, start), start + step);
        assert_eq!(
            next_tick_after(start, step, start + Duration::from_secs(25)),
            start + Duration::from_secs(30)
        );
        assert_eq!(
            next_tick_after(start, step, start + Duration::from_secs(30)),
            start + Duration::from_secs(40)
        );
        // A year of 1 ms steps behind: one division, not 3e10 additions.
        let year = Duration::from_secs(365 * 24 * 3600);
        let next = next_tick_after(start, Duration::from_millis(1), start + year);
        assert_eq!(next, start + year + Duration::from_millis(1));
        // Before start: the first step.
        assert_eq!(next_tick_after(start, step, UNIX_EPOCH), start + step);
    }
}
