//! The front's periodic look at what workers counted, a few times a
//! second: trim in-flight handoffs, drop drained backends, replace a hung
//! worker, bring passively failed backends back when no health check
//! will, move slow starts along, and hand out connections still waiting.
//!
//! Workers send nothing per connection, so this is where slow-moving
//! consequences of their counts are noticed; anything urgent (a worker
//! making room the front waits for, a connect failure) comes as an event.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Front, Shared};
use crate::stats::ProcWord;
use crate::supervisor::{MAX_UNREAD, Role};

/// How often the front looks.
pub const TICK: Duration = Duration::from_millis(250);
/// A worker that has had handoffs (or control frames) to read for this
/// long and read none is hung: it is killed, its queue recovered and the
/// slot respawned, as after a crash.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Look every [`TICK`] until the front shuts down.
pub async fn run(front: Shared) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut f = front.borrow_mut();
        if f.state.shutting_down && f.workers.all_gone() {
            return;
        }
        if f.state.frozen {
            continue;
        }
        f.upkeep();
    }
}

impl Front {
    fn upkeep(&mut self) {
        self.backends.refresh_ramps(self.config.load().slow_start);
        self.refresh_all_views();
        self.reap_drained();
        self.watchdog();
        self.passive_cooldowns();
        if !self.ledger.pending.is_empty() {
            self.retry_pending();
        }
    }

    /// Drop draining backends whose last connection ended.
    pub fn reap_drained(&mut self) {
        if !self
            .backends
            .list
            .iter()
            .any(|b| b.admin == super::Admin::Draining)
        {
            return;
        }
        self.sync_received();
        let cells = self.live_cells();
        let gone = self.backends.reap_drained(&self.counters.table, &cells);
        if gone.is_empty() {
            return;
        }
        for name in &gone {
            info!(backend = %name, "drained backend removed");
        }
        self.backends_changed();
    }

    /// Replace a worker that stopped reading its channel.
    fn watchdog(&mut self) {
        let now = Instant::now();
        let table = self.counters.table.clone();
        for slot in &mut self.workers.slots {
            for p in &mut slot.procs {
                let received = table.cell(p.cell).get(ProcWord::Received);
                let waiting = p.handed > received || (p.full && !p.outbox.is_empty());
                if !waiting || p.role == Role::Starting {
                    p.stalled_since = None;
                    continue;
                }
                match p.stalled_since {
                    Some((_, seen)) if seen != received => {
                        p.stalled_since = Some((now, received));
                    }
                    None => p.stalled_since = Some((now, received)),
                    Some((since, _)) if now.duration_since(since) >= STALL_LIMIT => {
                        warn!(
                            slot = slot.index,
                            pid = p.pid,
                            unread = p.handed - received.min(p.handed),
                            limit = ?STALL_LIMIT,
                            max_unread = MAX_UNREAD,
                            "worker has not read its channel: hung; killing it (its queued connections go to the others)"
                        );
                        p.kill();
                        p.stalled_since = None;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
