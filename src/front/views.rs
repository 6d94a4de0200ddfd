//! What the rest of the front derives from its state: the per-slot views
//! policies pick from, whether the listeners pause (and why, in the log),
//! and the summary gauges published once a second.

use std::time::Instant;

use tracing::warn;

use super::Front;
use crate::policy::WorkerView;
use crate::supervisor::Role;

impl Front {
    /// Recompute what policies see of `slot`.
    pub fn refresh_view(&mut self, slot: usize, cap: u64) {
        let s = &self.slots[slot];
        let active = s.procs.iter().map(|p| p.active).sum();
        let routable = !self.shutting_down
            && !s.parked
            && s.procs.iter().any(|p| {
                p.role == Role::Serving
                    && !p.full
                    && p.outbox.is_empty()
                    && p.active < cap
                    && p.unread < crate::supervisor::MAX_UNREAD
            });
        self.worker_views[slot] = WorkerView { routable, active };
        s.metrics.active.set(active as f64);
    }

    pub fn refresh_all_views(&mut self) {
        let cap = self.per_proc_cap;
        for slot in 0..self.slots.len() {
            self.refresh_view(slot, cap);
        }
        self.update_paused();
    }

    /// Whether listeners should stop accepting for now.
    pub fn should_pause(&self) -> bool {
        self.shutting_down
            || !self.pending.is_empty()
            || !self.worker_views.iter().any(|w| w.routable)
            || self.at_global_limit()
    }

    /// Re-evaluate the pause and wake listeners when it lifts.
    pub fn update_paused(&mut self) {
        let paused = self.should_pause();
        if paused != self.paused {
            self.paused = paused;
            self.fm.paused.set(if paused { 1.0 } else { 0.0 });
            if paused {
                self.log_pause();
            } else {
                self.resume.notify_waiters();
            }
        }
        self.readiness
            .set(!self.shutting_down && self.slots.iter().any(|s| s.serving().is_some()));
    }

    /// Say why accepting stopped (at most once every ten seconds), so a
    /// saturated proxy is never silent. Startup and shutdown are expected.
    fn log_pause(&mut self) {
        let cap = self.per_proc_cap;
        let serving: Vec<&crate::supervisor::WorkerProc> =
            self.slots.iter().filter_map(|s| s.serving()).collect();
        let reason = if self.shutting_down || !self.announced_ready {
            return;
        } else if self.at_global_limit() {
            "--max-conns reached"
        } else if serving.is_empty() {
            "no worker is ready"
        } else if serving.iter().all(|p| p.active >= cap) {
            "every worker is at its connection limit (--max-conns-per-worker or its descriptor budget)"
        } else {
            "every worker has a full channel or 512 handoffs it has not read yet (busy, or stalled)"
        };
        if self
            .last_pause_log
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10))
        {
            return;
        }
        self.last_pause_log = Some(Instant::now());
        warn!(
            reason,
            active = self.total_active(),
            per_worker_limit = cap,
            "not accepting for now: new clients wait in the listen backlog"
        );
    }

    /// Publish the gauges that summarise the whole front (called once a
    /// second): total active connections and how evenly they are spread
    /// over the ready worker slots (max / mean; 1 = even).
    pub fn publish_stats(&self) {
        self.fm.active.set(self.total_active() as f64);
        if let Some(n) = crate::sys::open_fd_count() {
            self.fm.open_fds.set(n as f64);
        }
        self.fm.max_fds.set(self.nofile as f64);
        self.fm.worker_limit.set(self.per_proc_cap as f64);
        let ready: Vec<u64> = self
            .slots
            .iter()
            .zip(&self.worker_views)
            .filter(|(s, _)| s.serving().is_some())
            .map(|(_, v)| v.active)
            .collect();
        let total: u64 = ready.iter().sum();
        let ratio = match ready.iter().max() {
            Some(&max) if total > 0 => max as f64 * ready.len() as f64 / total as f64,
            _ => 1.0,
        };
        self.fm.imbalance.set(ratio);
    }
}
