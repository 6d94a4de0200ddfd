//! Views and pausing: what the policies see of each worker slot, whether
//! the listeners accept, and what `/metrics` is told.

use super::*;

impl Front {
    // ---- Views and pausing.

    /// Recompute what the policy sees of `slot`.
    pub(super) fn refresh_view(&mut self, slot: usize) {
        let counters = &self.counters;
        let (active, routable) = self.workers.view(slot, |cell| {
            let c = counters.cell(cell);
            (c.get(ProcWord::Finished), c.get(ProcWord::Received))
        });
        let routable = routable && !self.stopping() && !self.frozen();
        self.services
            .set_view(slot, WorkerView { routable, active });
    }

    /// Trim every process's in-flight handoffs by what its worker received.
    pub(super) fn sync_received(&mut self) {
        let counters = &self.counters;
        let services = &mut self.services;
        for p in self.workers.procs_mut() {
            let received = counters.cell(p.cell()).get(ProcWord::Received);
            p.sync_received(received, |b| services.sub_inflight(b));
        }
    }

    /// Recompute every view (after events, exits, config changes).
    pub fn refresh_all_views(&mut self) {
        self.sync_received();
        for slot in 0..self.workers.len() {
            self.refresh_view(slot);
        }
        let least_conn =
            |s: &crate::front::services::Service| s.routing().policy() == PolicyName::LeastConn;
        if self.services.iter().any(least_conn) {
            let cells = self.workers.live_cells();
            for s in self.services.iter_mut().filter(|s| least_conn(s)) {
                s.backends_mut()
                    .refresh_active(self.counters.table(), &cells);
            }
        }
        self.update_paused();
    }

    pub(super) fn at_global_limit(&self) -> bool {
        self.settings.limits().max_conns.is_some_and(|max| {
            self.total_active() + (self.access.waiting() + self.sni_waits.len()) as u64 >= max
        })
    }

    pub(super) fn should_pause(&self) -> bool {
        self.stopping()
            || self.frozen()
            || self.ledger.pending() > 0
            || self.services.routable_slots() == 0
            || self.at_global_limit()
            || self.access.full()
            || self.sni_waits.full()
    }

    /// Re-evaluate the pause; resuming wakes the accept loops.
    pub fn update_paused(&mut self) {
        let paused = self.should_pause();
        if self.listeners.set_paused(paused) {
            self.counters.set(FrontWord::Paused, u64::from(paused));
            if paused {
                self.request_wakes();
                self.log_pause();
            }
        }
    }

    /// Ask every serving worker to say when it makes room, then look again
    /// (a worker that made room in between would not have seen the flag).
    pub(super) fn request_wakes(&mut self) {
        for p in self.workers.procs() {
            if p.role() == Role::Serving {
                self.counters.cell(p.cell()).request_wake();
            }
        }
        // Orders the stores of `Wake` above before the loads of the
        // workers' `Finished`/`Received` below (paired with the worker's
        // own fence in `ProcCell::finish`, between its store of `Finished`
        // and its load of `Wake`), so one side always sees the other.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        for slot in 0..self.workers.len() {
            self.refresh_view(slot);
        }
        if !self.should_pause() && self.listeners.set_paused(false) {
            self.counters.set(FrontWord::Paused, 0);
        }
    }

    /// Say why accepting stopped (at most once every ten seconds), so a
    /// saturated proxy is never silent. Starting, stopping and upgrades
    /// are expected.
    pub(super) fn log_pause(&mut self) {
        if self.stopping() || self.frozen() || *self.life.phase() == Phase::Starting {
            return;
        }
        let cap = self.workers.per_proc_cap();
        let counters = &self.counters;
        let all_at_cap = self.workers.all_at_cap(|cell| {
            let c = counters.cell(cell);
            (c.get(ProcWord::Finished), c.get(ProcWord::Received))
        });
        let reason = if self.ledger.pending() > 0 && self.services.routable_slots() > 0 {
            "connections are waiting to be handed out"
        } else if self.at_global_limit() {
            "--max-conns reached"
        } else if self.sni_waits.full() {
            "4096 connections on SNI listeners are waiting for their ClientHello"
        } else if self.access.full() {
            "4096 connections from --accept-proxy sources are waiting for their PROXY header"
        } else if !self.workers.any_serving() {
            "no worker is ready"
        } else if all_at_cap {
            "every worker is at its connection limit (--max-conns-per-worker or its descriptor budget)"
        } else {
            "every worker has a full channel or 512 handoffs it has not read yet (busy, or stalled)"
        };
        if !self.life.pause_log_due() {
            return;
        }
        warn!(
            reason,
            active = self.total_active(),
            per_worker_limit = cap,
            "not accepting for now: new clients wait in the listen backlog"
        );
    }

    /// Publish names and states for `/metrics`.
    pub(super) fn publish(&self) {
        let slots = self
            .workers
            .slots()
            .iter()
            .map(|s| crate::metrics::SlotLabel {
                up: s.serving().is_some(),
                cells: s.procs().iter().map(|p| p.cell()).collect(),
            })
            .collect();
        let ready = !self.stopping() && self.workers.any_serving();
        self.counters.publish(
            self.services.get(0).routing().policy(),
            slots,
            self.services.backend_labels(),
            self.services.labels(),
            ready,
        );
    }

    pub(super) fn publish_pending(&self) {
        self.counters
            .set(FrontWord::Pending, self.ledger.pending() as u64);
    }
}
