//! What happens after a worker dies unexpectedly: respawn in the same slot
//! at once the first time, then with jittered exponential backoff; park the
//! slot after [`CRASH_LIMIT`] crashes within [`CRASH_WINDOW`]. (When no slot
//! can run at all the front gives up and exits non-zero, for the service
//! manager.)

use std::time::{Duration, Instant};

use super::Slot;

/// Crashes within [`CRASH_WINDOW`] that park a slot.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Delay before the respawn that follows the `n`th recent crash (1-based):
/// none for the first, then 100ms, 200ms, 400ms... capped, ±25% jitter.
pub fn backoff(n: usize, jitter_seed: u64) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let exp = BACKOFF_BASE
        .saturating_mul(1 << (n - 2).min(16))
        .min(BACKOFF_MAX);
    // Jitter in [-25%, +25%) from the seed.
    let frac = (crate::policy::mix64(jitter_seed) % 1000) as f64 / 1000.0;
    exp.mul_f64(0.75 + frac * 0.5)
}

/// What a slot does after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCrash {
    /// Start a new process after this delay.
    Respawn(Duration),
    /// Too many crashes: the slot is parked.
    Parked,
    /// A respawn is already on its way.
    Pending,
}

impl Slot {
    /// Record an unexpected exit at `now` and decide what comes next.
    pub fn record_crash(&mut self, now: Instant, jitter_seed: u64) -> AfterCrash {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() >= CRASH_LIMIT {
            self.parked = true;
            return AfterCrash::Parked;
        }
        if self.respawn_scheduled {
            return AfterCrash::Pending;
        }
        self.respawn_scheduled = true;
        AfterCrash::Respawn(backoff(self.crashes.len(), jitter_seed))
    }

    /// Take a parked slot back into service (restart by an operator).
    /// Returns whether it was parked.
    pub fn unpark(&mut self) -> bool {
        let was = self.parked;
        self.parked = false;
        self.crashes.clear();
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1, 7), Duration::ZERO);
        let b2 = backoff(2, 7);
        assert!(b2 >= Duration::from_millis(75) && b2 < Duration::from_millis(125));
        let b4 = backoff(4, 7);
        assert!(b4 >= Duration::from_millis(300) && b4 < Duration::from_millis(500));
        assert!(backoff(40, 7) <= BACKOFF_MAX.mul_f64(1.25));
    }

    #[test]
    fn five_quick_crashes_park_a_slot() {
        let mut s = Slot::new(0);
        let t = Instant::now();
        assert_eq!(s.record_crash(t, 1), AfterCrash::Respawn(Duration::ZERO));
        assert_eq!(s.record_crash(t, 1), AfterCrash::Pending);
        s.respawn_scheduled = false;
        for _ in 0..2 {
            assert!(matches!(s.record_crash(t, 1), AfterCrash::Respawn(_)));
            s.respawn_scheduled = false;
        }
        assert_eq!(s.record_crash(t, 1), AfterCrash::Parked);
        assert!(s.parked);
        assert!(s.unpark());
        assert!(!s.parked && s.crashes.is_empty());
    }

    #[test]
    fn jitter_varies_with_seed() {
        let a: Vec<_> = (0..20).map(|s| backoff(3, s)).collect();
        assert!(a.iter().any(|d| *d != a[0]));
    }
}
