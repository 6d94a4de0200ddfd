//! What happens after a worker dies unexpectedly: respawn in the same slot
//! at once the first time, then with jittered exponential backoff; park the
//! slot after [`CRASH_LIMIT`] crashes within [`CRASH_WINDOW`], and give up
//! (exit non-zero, for the service manager) when no slot can run at all.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::Role;
use crate::front::Front;

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

impl Front {
    /// A worker that should have kept running is gone.
    pub(crate) fn worker_crashed(&mut self, slot: usize, role: Role) {
        if self.shutting_down {
            return;
        }
        if role == Role::Starting && self.slots[slot].serving().is_some() {
            // A replacement in a rolling restart failed; the rollout
            // notices and keeps the old worker. Not a slot crash.
            return;
        }
        let now = Instant::now();
        let s = &mut self.slots[slot];
        s.crashes.push_back(now);
        while s
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            s.crashes.pop_front();
        }
        if s.crashes.len() >= CRASH_LIMIT {
            s.parked = true;
            s.metrics.up.set(0.0);
            error!(
                slot,
                crashes = s.crashes.len(),
                window = ?CRASH_WINDOW,
                "worker slot is crash-looping; parked (restart with `rrproxy ctl reload` or SIGUSR2)"
            );
            if self.slots.iter().all(|s| s.parked) {
                error!("every worker slot is parked: no worker can run; exiting");
                self.fatal = Some("every worker slot crash-looped".into());
                self.changed.notify_waiters();
            }
            return;
        }
        if s.respawn_scheduled {
            return;
        }
        s.respawn_scheduled = true;
        let delay = backoff(
            s.crashes.len(),
            self.next_proc ^ now.elapsed().as_nanos() as u64 ^ u64::from(std::process::id()),
        );
        let me = self.me.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            if let Some(front) = me.upgrade() {
                front.borrow_mut().respawn(slot);
            }
        });
    }

    fn respawn(&mut self, slot: usize) {
        self.slots[slot].respawn_scheduled = false;
        if self.shutting_down || self.slots[slot].parked || self.slots[slot].serving().is_some() {
            return;
        }
        match self.start_worker(slot) {
            Ok(_) => {
                let s = &mut self.slots[slot];
                s.restarts += 1;
                s.metrics.restarts.increment(1);
                info!(slot, restarts = s.restarts, "worker respawned");
            }
            Err(err) => {
                warn!(slot, cause = %err, "cannot respawn worker");
                self.worker_crashed(slot, Role::Serving);
            }
        }
    }

    /// Take a parked slot back into service (rolling restart, operator).
    pub fn unpark(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.parked {
            s.parked = false;
            s.crashes.clear();
            info!(slot, "worker slot unparked");
        }
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
    fn jitter_varies_with_seed() {
        let a: Vec<_> = (0..20).map(|s| backoff(3, s)).collect();
        assert!(a.iter().any(|d| *d != a[0]));
    }
}
