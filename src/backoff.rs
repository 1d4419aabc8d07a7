//! Exponential backoff with jitter, shared by the enforce loop (failing corrections) and the
//! Kubernetes gate (API retries), so a fleet that failed together does not retry together.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `start` doubling up to `max`, each delay scaled by a random factor in `[1 - jitter, 1 + jitter]`
/// ([`Backoff::new`]) or drawn uniformly from `[base / 2, base]` ([`Backoff::spread`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    jitter: f64,
    spread: bool,
    failures: u32,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            start,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            spread: false,
            failures: 0,
        }
    }

    /// The backoff of a fleet's reconnects: each delay uniform in `[base / 2, base]`. Once at the
    /// cap, N clients that failed together retry at a flat rate of at most N / (0.75 × cap) per
    /// second whenever the server comes back, and each one within `max` of it. (Full jitter,
    /// `[0, base]`, has the same spread but twice the rate right after the server returns,
    /// `2N / cap`, and the same worst-case wait.)
    pub fn spread(start: Duration, max: Duration) -> Backoff {
        Backoff {
            spread: true,
            ..Backoff::new(start, max, 0.0)
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .start
            .saturating_mul(2u32.saturating_pow(self.failures.min(20)))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        if self.spread {
            base.mul_f64(0.5 + 0.5 * unit_random())
        } else {
            jittered(base, self.jitter)
        }
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

/// `d` scaled by a factor drawn uniformly from `[1 - jitter, 1 + jitter]`.
pub fn jittered(d: Duration, jitter: f64) -> Duration {
    d.mul_f64(1.0 - jitter + 2.0 * jitter * unit_random())
}

/// A number in `[0, 1)`: not cryptographic, only different per process and per call.
pub fn unit_random() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = now ^ (u64::from(std::process::id()) << 32) | 1;
    }
    // xorshift64*
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_start_up_to_the_cap_within_the_jitter() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5), 0.2);
        let ds: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(ds[0] >= Duration::from_millis(400) && ds[0] <= Duration::from_millis(600));
        assert!(ds[1] >= Duration::from_millis(800) && ds[1] <= Duration::from_millis(1200));
        assert!(ds.iter().all(|d| *d <= Duration::from_secs(6)));
        assert!(ds[9] >= Duration::from_secs(4));
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(600));
    }

    #[test]
    fn spread_delays_stay_between_half_the_base_and_the_base() {
        let mut b = Backoff::spread(Duration::from_millis(500), Duration::from_secs(20));
        let ds: Vec<Duration> = (0..300).map(|_| b.next_delay()).collect();
        assert!(ds[0] >= Duration::from_millis(250) && ds[0] <= Duration::from_millis(500));
        assert!(ds[1] >= Duration::from_millis(500) && ds[1] <= Duration::from_secs(1));
        let capped = &ds[10..];
        assert!(
            capped
                .iter()
                .all(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(20)),
            "{capped:?}"
        );
        // Spread over the whole half-period, not bunched.
        let (lo, hi) = (capped.iter().min(), capped.iter().max());
        assert!(
            hi.zip(lo)
                .is_some_and(|(h, l)| *h - *l > Duration::from_secs(8)),
            "{lo:?}..{hi:?}"
        );
    }

    #[test]
    fn jitter_spreads_delays() {
        let ds: Vec<Duration> = (0..200)
            .map(|_| jittered(Duration::from_secs(10), 0.2))
            .collect();
        assert!(
            ds.iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(12))
        );
        let (lo, hi) = (ds.iter().min(), ds.iter().max());
        assert!(
            hi.zip(lo)
                .is_some_and(|(h, l)| *h - *l > Duration::from_secs(2)),
            "{lo:?}..{hi:?}"
        );
    }
}
