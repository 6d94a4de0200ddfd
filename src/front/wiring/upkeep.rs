//! Health, upkeep and the hand-over.

use super::*;

impl Front {
    // ---- Health.

    /// Apply a round of active checks (dropped while frozen).
    pub fn check_results(
        &mut self,
        results: Vec<(u32, Result<(), crate::front::health::Failure>)>,
    ) {
        if self.frozen() {
            return;
        }
        for (id, result) in results {
            let Some((si, _)) = self.services.of_backend(id) else {
                continue;
            };
            let health = self.services.get(si).config().health;
            let result = result.map_err(|why| why.to_string());
            if let Some(i) = self.services.get_mut(si).backends_mut().record_check(
                id,
                result,
                &health,
                self.counters.table(),
            ) {
                self.health_changed(si, i, "check");
            }
        }
    }

    /// A worker could not connect to backend `id`.
    pub(super) fn passive_failure(&mut self, id: u32) {
        let Some((si, i)) = self.services.of_backend(id) else {
            return;
        };
        let fall = self.services.get(si).config().health.fall;
        let cells = self.workers.live_cells();
        let backends = self.services.get_mut(si).backends_mut();
        let conns = backends.total(i, Col::Conns, self.counters.table(), &cells);
        if let Some(i) = backends.record_passive_failure(id, conns, fall, Instant::now()) {
            self.health_changed(si, i, "traffic");
        }
    }

    pub(super) fn health_changed(&mut self, si: usize, i: usize, source: &'static str) {
        let cfg = self.services.get(si).config().clone();
        let service = self.services.get(si).name().to_string();
        let backends = self.services.get_mut(si).backends_mut();
        let reason = backends
            .health_changed(i, source, cfg.slow_start)
            .to_string();
        let b = backends.get(i);
        let text = if b.healthy() {
            info!(service, backend = %b.spec().name, rise = cfg.health.rise, source, "backend up");
            format!("backend {} up ({source})", b.spec().name)
        } else {
            warn!(service, backend = %b.spec().name, fall = cfg.health.fall, source, reason, "backend down");
            format!("backend {} down ({source}: {reason})", b.spec().name)
        };
        let any_routable = backends.any_routable();
        self.life
            .record(EventKind::Health, text + &in_service(&service));
        if !any_routable {
            warn!(
                service,
                "every backend is down: failing open (connections are still tried)"
            );
        }
        self.config_changed();
        self.publish();
    }

    // ---- Upkeep.

    /// The periodic look (see `upkeep`).
    pub fn upkeep(&mut self) {
        if self.frozen() {
            return;
        }
        for s in self.services.iter_mut() {
            let ramp = s.config().slow_start;
            s.backends_mut().refresh_ramps(ramp);
        }
        self.refresh_all_views();
        self.reap_drained();
        let now = Instant::now();
        let counters = &self.counters;
        for (slot, pid, unread) in self.workers.kill_hung(
            |cell| counters.cell(cell).get(ProcWord::Received),
            now,
            crate::front::upkeep::STALL_LIMIT,
        ) {
            warn!(slot, pid, unread, limit = ?crate::front::upkeep::STALL_LIMIT, max_unread = MAX_UNREAD, "worker has not read its channel: hung; killing it (its queued connections go to the others)");
            self.life.record(
                EventKind::Worker,
                format!("slot {slot}: worker pid {pid} hung ({unread} handoffs unread); killed"),
            );
        }
        for (slot, pid, role) in self.workers.kill_overdue(now) {
            let why = match role {
                Role::Starting => "not ready in time",
                _ => "did not drain in time",
            };
            self.life.record(
                EventKind::Worker,
                format!("slot {slot}: worker pid {pid} {why}; killed"),
            );
            match role {
                Role::Starting => {
                    warn!(slot, pid, limit = ?READY_TIMEOUT, "worker not ready in time: killing it (its slot gets another)")
                }
                _ => warn!(slot, pid, "worker did not drain in time; killing it"),
            }
        }
        for si in 0..self.services.len() {
            if self.services.get(si).config().health.interval.is_some() {
                continue;
            }
            for i in self.services.get_mut(si).backends_mut().cooldowns(now) {
                self.health_changed(si, i, "cooldown");
            }
        }
        self.staff();
        self.advance_roll();
        // Slots a missed report would have freed, and upkeep's view.
        self.queues_changed();
        if self.ledger.pending() > 0 {
            self.retry_pending();
        }
    }

    /// Drop draining backends whose last connection ended.
    pub(super) fn reap_drained(&mut self) {
        if !self.services.any_draining() {
            return;
        }
        self.sync_received();
        let cells = self.workers.live_cells();
        for si in 0..self.services.len() {
            let s = self.services.get_mut(si);
            let gone = s.backends_mut().reap_drained(self.counters.table(), &cells);
            if gone.is_empty() {
                continue;
            }
            for name in &gone {
                info!(service = %s.name(), backend = %name, "drained backend removed");
            }
            if s.leaving() {
                let (routing, backends) = s.parts_mut();
                routing.rebuild(backends.views());
                self.config_changed();
            } else {
                self.backends_changed(si);
            }
        }
        for name in self.services.reap_left() {
            info!(service = %name, "removed service drained");
            self.config_changed();
            self.publish();
        }
    }

    // ---- The hand-over.

    /// Everything this front owns, from its parts, with their descriptors
    /// (in the order the parts pushed them). The front is frozen.
    pub fn handover(
        &self,
    ) -> (
        crate::front::upgrade::state::HandoverOut<'_>,
        Vec<BorrowedFd<'_>>,
    ) {
        let mut fds = Vec::new();
        let listeners = self.listeners.handover(&mut fds);
        let counters = self.counters.handover(&mut fds);
        let workers = self.workers.handover(&mut fds);
        let ledger = self.ledger.handover(&mut fds);
        let access = self.access.handover(&mut fds);
        let sni_waits = self.sni_waits.handover(&mut fds);
        let queue = self.services.queues().handover(&mut fds);
        let out = crate::front::upgrade::state::HandoverOut {
            settings: self.settings.handover(),
            listeners,
            counters,
            workers,
            ledger,
            access,
            services: self.services.handover(sni_waits),
            queue,
            life: crate::front::upgrade::state::LifeState {
                last_roll: self.life.last_roll().cloned(),
                frozen_at_us: self.life.frozen_at_us(),
                started_ms: self.life.started_ms(),
                events: self.life.events().to_vec(),
            },
        };
        (out, fds)
    }

    /// Watch every process taken over, and say what the new front holds.
    pub fn adopted(&mut self, procs: Vec<(usize, u64)>, nofile: u64) {
        for (slot, id) in procs {
            if let Some(p) = self.workers.slot(slot).proc(id) {
                crate::front::watch::watch(
                    &self.me,
                    slot,
                    id,
                    p.channel().clone(),
                    p.pidfd().clone(),
                );
            }
        }
        self.counters
            .set(FrontWord::WorkerLimit, self.workers.per_proc_cap());
        self.counters.set(FrontWord::MaxFds, nofile);
        self.publish();
    }
}
