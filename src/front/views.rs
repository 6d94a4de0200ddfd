//! What the front derives from its state: the per-slot views policies pick
//! from, and whether the listeners pause (and why, in the log).
//!
//! A slot's view comes from the front's own counts (handed, batched) and
//! its workers' statistics cells (finished, received): a few word reads
//! for one slot, done when that slot is picked, so nothing on the accept
//! path scans every worker. When no worker can take a connection for a
//! reason only a worker can lift (its connection limit, or handoffs it has
//! not read), the front raises the `Wake` flag in their cells and the
//! first worker that makes room says so.

use std::time::Instant;

use tracing::warn;

use super::Front;
use crate::policy::WorkerView;
use crate::stats::{FrontWord, ProcWord};
use crate::supervisor::{MAX_UNREAD, Role, WorkerProc};

/// A process's connections and unread handoffs, from its cell.
fn load(front: &Front, p: &WorkerProc) -> (u64, u64) {
    let cell = front.counters.cell(p.cell);
    let handed = p.handed + p.batch.len() as u64;
    (
        handed.saturating_sub(cell.get(ProcWord::Finished)),
        handed.saturating_sub(cell.get(ProcWord::Received)),
    )
}

impl Front {
    /// Recompute what policies see of `slot`.
    pub fn refresh_view(&mut self, slot: usize) {
        let cap = self.workers.per_proc_cap;
        let s = &self.workers.slots[slot];
        let mut active = 0;
        let mut routable = false;
        for p in &s.procs {
            let (held, unread) = load(self, p);
            active += held;
            let stuck = unread > 0
                && p.unread_since
                    .is_some_and(|t| t.elapsed() >= crate::supervisor::UNREAD_PATIENCE);
            if p.role == Role::Serving
                && !p.full
                && p.outbox.is_empty()
                && held < cap
                && unread < MAX_UNREAD
                && !stuck
            {
                routable = true;
            }
        }
        let routable = routable && !self.state.shutting_down && !self.state.frozen && !s.parked;
        let old = self.views[slot];
        self.views[slot] = WorkerView { routable, active };
        self.total_active = self.total_active - old.active + active;
        if routable != old.routable {
            if routable {
                self.routable_slots += 1;
            } else {
                self.routable_slots -= 1;
            }
        }
    }

    /// Recompute every view (after events, exits, config changes).
    pub fn refresh_all_views(&mut self) {
        self.sync_received();
        for slot in 0..self.workers.slots.len() {
            self.refresh_view(slot);
        }
        if self.policy.name() == crate::policy::PolicyName::LeastConn {
            let cells = self.live_cells();
            self.backends.refresh_active(&self.counters.table, &cells);
        }
        self.update_paused();
    }

    /// Connections the front has accepted and not yet seen finished.
    pub fn total_active(&self) -> u64 {
        self.total_active + self.ledger.pending.len() as u64
    }

    /// At `--max-conns` (counting connections whose PROXY header is being
    /// read): stop accepting until a connection ends.
    pub fn at_global_limit(&self) -> bool {
        self.limits
            .max_conns
            .is_some_and(|max| self.total_active() + self.access.waiting() as u64 >= max)
    }

    /// Whether listeners should stop accepting for now.
    pub fn should_pause(&self) -> bool {
        self.state.shutting_down
            || self.state.frozen
            || !self.ledger.pending.is_empty()
            || self.routable_slots == 0
            || self.at_global_limit()
            || self.access.full()
    }

    /// Re-evaluate the pause and wake listeners when it lifts.
    pub fn update_paused(&mut self) {
        let paused = self.should_pause();
        if paused != self.listeners.paused {
            self.listeners.paused = paused;
            self.counters.set(FrontWord::Paused, u64::from(paused));
            if paused {
                self.request_wakes();
                self.log_pause();
            } else {
                self.listeners.resume.notify_waiters();
            }
        }
    }

    /// Ask every serving worker to say when it makes room, then look again
    /// (a worker that made room in between would not have seen the flag).
    fn request_wakes(&mut self) {
        for p in self.workers.procs() {
            if p.role == Role::Serving {
                self.counters.cell(p.cell).request_wake();
            }
        }
        // Orders the stores of `Wake` above before the loads of `Finished`
        // and `Received` in `refresh_view` below; pairs with the worker's
        // fence in `ProcCell::finish` (a Dekker pattern: see there).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        for slot in 0..self.workers.slots.len() {
            self.refresh_view(slot);
        }
        let paused = self.should_pause();
        if !paused {
            self.listeners.paused = false;
            self.counters.set(FrontWord::Paused, 0);
            self.listeners.resume.notify_waiters();
        }
    }

    /// Say why accepting stopped (at most once every ten seconds), so a
    /// saturated proxy is never silent. Startup, shutdown and upgrades are
    /// expected.
    fn log_pause(&mut self) {
        if self.state.shutting_down || self.state.frozen || !self.state.announced_ready {
            return;
        }
        let cap = self.workers.per_proc_cap;
        let serving: Vec<&WorkerProc> = self
            .workers
            .slots
            .iter()
            .filter_map(|s| s.serving())
            .collect();
        let reason = if !self.ledger.pending.is_empty() && self.routable_slots > 0 {
            "connections are waiting to be handed out"
        } else if self.at_global_limit() {
            "--max-conns reached"
        } else if self.access.full() {
            "4096 connections from --accept-proxy sources are waiting for their PROXY header"
        } else if serving.is_empty() {
            "no worker is ready"
        } else if serving.iter().all(|p| load(self, p).0 >= cap) {
            "every worker is at its connection limit (--max-conns-per-worker or its descriptor budget)"
        } else {
            "every worker has a full channel or 512 handoffs it has not read yet (busy, or stalled)"
        };
        if self
            .state
            .last_pause_log
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10))
        {
            return;
        }
        self.state.last_pause_log = Some(Instant::now());
        warn!(
            reason,
            active = self.total_active(),
            per_worker_limit = cap,
            "not accepting for now: new clients wait in the listen backlog"
        );
    }
}
