//! Workers: start, ready, reports, exit, staffing, the rolling restart.

use super::*;

impl Front {
    // ---- Workers.

    /// Start a new worker process in `slot` (its first frames: the
    /// statistics table, the config, the access log setting).
    pub(super) fn start_worker(&mut self, slot: usize) -> Result<u64, SpawnError> {
        let mut frames = vec![
            self.config_frame()
                .ok_or_else(|| io::Error::other("cannot encode the worker config"))?,
        ];
        if self.settings.get().access_log != AccessLog::Off {
            frames.extend(self.access_log_frame());
        }
        let table = self.counters.table().fd();
        let id = self.workers.spawn(slot, table, &frames, Instant::now())?;
        if let Some(p) = self.workers.slot(slot).proc(id) {
            crate::front::watch::watch(&self.me, slot, id, p.channel().clone(), p.pidfd().clone());
        }
        self.publish();
        Ok(id)
    }

    /// Start every slot's first worker (a fresh start).
    pub fn start_workers(&mut self) -> Result<(), crate::front::FrontError> {
        for slot in 0..self.workers.len() {
            self.start_worker(slot)
                .map_err(|err| crate::front::FrontError::Spawn {
                    slot,
                    source: match err {
                        SpawnError::Io(e) => e,
                        other => io::Error::other(other.to_string()),
                    },
                })?;
        }
        self.publish();
        Ok(())
    }

    /// Give every slot without a worker one (no slot is ever lost): after
    /// a crash's backoff, a worker not ready in time, a SIGTERM, a kill.
    /// When every cell is held by draining processes, the oldest of those
    /// is cut to free one.
    pub(super) fn staff(&mut self) {
        if self.stopping() || self.frozen() {
            return;
        }
        for slot in self.workers.unstaffed() {
            match self.start_worker(slot) {
                Ok(_) => {
                    self.counters.slot_bump(slot, SlotWord::Restarts, 1);
                    let restarts = self.counters.slot_get(slot, SlotWord::Restarts);
                    info!(slot, restarts, "worker respawned");
                    self.life
                        .record(EventKind::Worker, format!("slot {slot}: worker respawned"));
                }
                Err(SpawnError::NoCell) => {
                    if let Some((at, pid)) = self.workers.reclaim_cell() {
                        warn!(
                            slot = at,
                            pid,
                            waiting_slot = slot,
                            "every statistics cell is held by draining workers: cutting the oldest so a slot without a worker gets one"
                        );
                    }
                    return;
                }
                Err(SpawnError::Io(err)) => {
                    warn!(slot, cause = %err, "cannot start a worker");
                    self.worker_crashed(slot);
                }
            }
        }
    }

    /// A slot lost its worker unexpectedly: back off, or park it.
    pub(super) fn worker_crashed(&mut self, slot: usize) {
        let now = Instant::now();
        let seed = self.workers.seed() ^ crate::front::upgrade::state::unix_micros();
        let s = self.workers.slot_mut(slot);
        match s.record_crash(now, seed) {
            AfterCrash::Parked => {
                let crashes = s.crashes();
                self.life.record(
                    EventKind::Worker,
                    format!("slot {slot}: crash-looping ({crashes} crashes); parked"),
                );
                error!(
                    slot,
                    crashes,
                    window = ?CRASH_WINDOW,
                    "worker slot is crash-looping; parked (restart with `rrproxy ctl upgrade` or SIGUSR2)"
                );
                if self.workers.all_parked() {
                    error!("every worker slot is parked: no worker can run; exiting");
                    self.life.set_fatal("every worker slot crash-looped".into());
                    let _ = self.handle(Event::Fatal);
                }
            }
            AfterCrash::Pending => {}
            AfterCrash::Respawn(delay) => {
                let me = self.me.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(front) = me.upgrade() {
                        let mut f = front.borrow_mut();
                        f.workers.slot_mut(slot).respawn_due();
                        f.staff();
                    }
                });
            }
        }
    }

    /// Handle one message from the worker process `id` in `slot`, with
    /// the descriptor it carried (a connection given back).
    pub fn on_up(&mut self, slot: usize, id: u64, up: Up, fd: Option<OwnedFd>) {
        match up {
            Up::Ready { pid, build } => self.worker_ready(slot, id, pid, build),
            Up::Events(events) => {
                let mut released = Vec::new();
                for ev in events {
                    if let WorkerEvent::Released { backend } = ev {
                        released.push(backend);
                    } else {
                        self.on_event(slot, id, ev);
                    }
                }
                self.refresh_all_views();
                if !released.is_empty() {
                    self.released(&released);
                    self.flush();
                }
                if self.ledger.pending() > 0 {
                    self.retry_pending();
                }
            }
            Up::Returned(h) => match fd {
                Some(fd) => {
                    self.returned(slot, id, h, fd);
                    self.update_paused();
                }
                None => warn!(slot, "a connection given back came without its descriptor"),
            },
        }
    }

    pub(super) fn worker_ready(&mut self, slot: usize, id: u64, pid: u32, build: String) {
        let mine = crate::version::build_id();
        let Some(p) = self.workers.slot(slot).proc(id) else {
            return;
        };
        if p.role() != Role::Starting {
            return;
        }
        if build != mine {
            // It cannot happen (workers run the front's own image), but if
            // it does, two builds must not serve side by side.
            error!(slot, pid, worker_build = %build, front_build = %mine, "worker reports another build than the front: refusing it");
            p.kill();
            return;
        }
        let replacement = self.workers.roll_replacement(slot) == Some(id);
        let drain = self.drain_frame();
        let now = Instant::now();
        let deadline = now + self.drain_wait();
        for old in self.workers.ready(slot, id, build, &drain, now, deadline) {
            info!(
                slot,
                old_pid = old,
                new_pid = pid,
                "worker replaced; old one draining"
            );
        }
        if replacement {
            self.counters.slot_bump(slot, SlotWord::Restarts, 1);
        }
        info!(slot, pid, "worker up");
        self.life.record(
            EventKind::Worker,
            format!("slot {slot}: worker pid {pid} ready"),
        );
        self.arm_watchers();
        let _ = self.handle(Event::WorkerReady);
        self.advance_roll();
        self.refresh_view(slot);
        self.publish();
        self.retry_pending();
        self.update_paused();
    }

    pub(super) fn on_event(&mut self, slot: usize, id: u64, ev: WorkerEvent) {
        match ev {
            WorkerEvent::ConnectFailed { backend, .. } => self.passive_failure(backend),
            WorkerEvent::Closed { client } => {
                let key = self.client_key(client);
                if let Some(p) = self.workers.slot_mut(slot).proc_mut(id) {
                    p.ip_sub(key, 1);
                }
                self.ledger.release_ip(key, 1);
            }
            WorkerEvent::Draining => {
                let now = Instant::now();
                let deadline = now + self.drain_wait();
                let Some(p) = self.workers.slot_mut(slot).proc_mut(id) else {
                    return;
                };
                if p.role() == Role::Retiring {
                    return;
                }
                p.retire(now, deadline);
                let pid = p.pid();
                warn!(
                    slot,
                    pid, "worker was told to stop by a signal: draining it"
                );
                // Keep the slot serving: a replacement, as in a roll.
                self.staff();
                self.advance_roll();
                self.refresh_view(slot);
                self.publish();
            }
            WorkerEvent::Wake => {}
            // (Gathered by `on_up`.)
            WorkerEvent::Released { .. } => {}
            WorkerEvent::Ended { conn } => self.ended(slot, id, conn),
        }
    }

    /// A worker process ended: account for it, recover what it had not
    /// started, and give its slot a worker again if it needs one.
    pub fn worker_exited(&mut self, slot: usize, id: u64, status: String) {
        // Apply whatever it reported before dying.
        self.drain_events(slot, id);
        let Some(mut proc) = self.workers.remove(slot, id) else {
            return;
        };
        let prefix = self.settings.limits().per_ip_ipv6_prefix;
        let (batch, queued) = proc.recover(prefix);
        for (h, _) in &batch {
            self.services.unhanded(h.backend);
        }
        let recovered: Vec<Conn> = batch
            .into_iter()
            .chain(queued)
            .map(|(h, fd)| {
                let tally = proc.untrack(h.conn);
                self.conn_of_handoff(TcpStream::from(fd), &h, tally)
            })
            .collect();
        let held = self.forget_proc(&mut proc);
        let lost = held.saturating_sub(recovered.len() as u64);
        self.counters
            .fold(slot, proc.cell(), self.services.columns().into_iter());
        self.workers.give_cell(proc.cell());
        let expected = proc.role() == Role::Retiring || self.stopping();
        if expected {
            info!(slot, pid = proc.pid(), %status, "worker exited");
        } else {
            warn!(slot, pid = proc.pid(), %status, lost_connections = lost, recovered_connections = recovered.len(), "worker died");
            self.life.record(
                EventKind::Worker,
                format!(
                    "slot {slot}: worker pid {} died ({status}); {lost} connections lost, {} handed to others",
                    proc.pid(),
                    recovered.len()
                ),
            );
        }
        if !recovered.is_empty() {
            self.counters
                .bump(FrontWord::Recovered, recovered.len() as u64);
            self.ledger.requeue(recovered);
        }
        if !expected && !self.workers.slot(slot).staffed() {
            self.worker_crashed(slot);
        }
        self.staff();
        self.advance_roll();
        self.reap_drained();
        self.refresh_all_views();
        self.publish();
        self.retry_pending();
        self.update_paused();
        if self.workers.all_gone() {
            let _ = self.handle(Event::WorkersGone);
        }
        self.life.notify();
    }

    /// Apply events still queued on a worker's channel (synchronously).
    pub(super) fn drain_events(&mut self, slot: usize, id: u64) {
        let Some(channel) = self
            .workers
            .slot(slot)
            .proc(id)
            .map(|p| p.channel().clone())
        else {
            return;
        };
        for (up, fd) in crate::front::watch::queued_reports(&channel) {
            self.on_up(slot, id, up, fd);
        }
    }

    /// Uncount whatever the front still counted for a gone process (its
    /// in-flight handoffs, its clients' per-IP counts, its connections'
    /// counts for their services). Returns the
    /// connections it held that were lost (handed and not finished).
    pub(super) fn forget_proc(&mut self, proc: &mut WorkerProc) -> u64 {
        let (inflight, ips, tallies) = proc.forget();
        for backend in inflight {
            self.services.unhanded(backend);
        }
        for (ip, n) in ips {
            self.ledger.release_ip(ip, n);
        }
        for t in tallies {
            self.release_tally(t);
        }
        let finished = self.counters.cell(proc.cell()).get(ProcWord::Finished);
        proc.handed().saturating_sub(finished)
    }

    /// Start what the restart of the workers still has to start, and see
    /// whether it is over.
    pub(super) fn advance_roll(&mut self) {
        if !self.workers.rolling() || self.stopping() || self.frozen() {
            return;
        }
        for slot in self.workers.roll_waiting() {
            match self.start_worker(slot) {
                Ok(id) => self.workers.roll_started(slot, id),
                // Waits for a cell: a draining process's exit frees one.
                Err(SpawnError::NoCell) => break,
                Err(SpawnError::Io(err)) => self
                    .workers
                    .roll_failed(slot, format!("cannot start a new worker: {err}")),
            }
        }
        if let Some(outcome) = self.workers.roll_progress() {
            match &outcome {
                Ok(msg) => info!("{msg}"),
                Err(msg) => warn!("{msg}"),
            }
            let text = match &outcome {
                Ok(msg) => msg.clone(),
                Err(msg) => format!("failed: {msg}"),
            };
            self.life.record(EventKind::Restart, text);
            self.life.set_last_roll(outcome);
            let _ = self.handle(Event::RollDone);
        }
    }

    pub(super) fn drain_frame(&self) -> Vec<u8> {
        self.settings.drain_frame()
    }

    pub(super) fn drain_wait(&self) -> Duration {
        self.settings.drain_wait()
    }
}
