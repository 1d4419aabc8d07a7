//! When the enforce thread last finished a pass: what `/healthz` and the node gate read to tell
//! an agent that enforces from one whose pass hangs (a kernel write or a journal fsync that
//! never returns), which otherwise looks healthy and keeps its last report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time of the last finished pass, shared between threads.
#[derive(Debug)]
pub struct PassClock {
    epoch: Instant,
    /// Milliseconds after `epoch` at which the last pass finished.
    last_ms: AtomicU64,
    /// A pass older than this is a stall.
    bound: Duration,
}

/// Intervals without a finished pass before it is a stall, and the least of that bound: a
/// THP write takes milliseconds, a journal fsync on a busy disk can take seconds.
pub const STALL_INTERVALS: u32 = 3;
pub const STALL_MIN: Duration = Duration::from_secs(30);

/// The default stall bound for a loop interval: [`STALL_INTERVALS`] intervals, at least
/// [`STALL_MIN`].
pub fn stall_bound(interval: Duration) -> Duration {
    interval.saturating_mul(STALL_INTERVALS).max(STALL_MIN)
}

impl PassClock {
    /// A clock started now (the first pass counts from here).
    pub fn new(bound: Duration) -> PassClock {
        PassClock {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            bound,
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A pass finished at `at`.
    pub fn done(&self, at: Instant) {
        self.last_ms.store(self.ms(at), Ordering::Relaxed);
    }

    /// Time since the last finished pass (since the start, before the first).
    pub fn age(&self, now: Instant) -> Duration {
        Duration::from_millis(
            self.ms(now)
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    /// `Some(age)` when no pass has finished within the bound.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let age = self.age(now);
        (age > self.bound).then_some(age)
    }

    /// When the current pass becomes a stall if nothing finishes before.
    pub fn deadline(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + self.bound
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_older_than_the_bound_is_a_stall() {
        let c = PassClock::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(c.stalled(t0 + Duration::from_secs(29)), None);
        assert!(c.stalled(t0 + Duration::from_secs(31)).is_some());
        c.done(t0 + Duration::from_secs(31));
        assert_eq!(c.stalled(t0 + Duration::from_secs(40)), None);
        assert!(c.deadline() + Duration::from_millis(1) >= t0 + Duration::from_secs(61));
        assert_eq!(stall_bound(Duration::from_secs(1)), STALL_MIN);
        assert_eq!(
            stall_bound(Duration::from_secs(3600)),
            Duration::from_secs(3 * 3600)
        );
    }
}
