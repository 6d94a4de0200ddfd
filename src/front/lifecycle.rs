//! The front driving its workers: starting one (the handshake with its
//! statistics cell and config), reading its reports, noticing its end,
//! recovering the connections still queued for it, respawning with
//! backoff, parking a crash-looping slot, and draining everything on
//! shutdown.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::{Conn, Front, Shared};
use crate::channel::fdpass::{self, Channel, Received};
use crate::channel::{Down, MAX_FRAME, Up};
use crate::stats::{FrontWord, SlotWord};
use crate::supervisor::respawn::{AfterCrash, CRASH_WINDOW};
use crate::supervisor::{Role, WorkerProc, process, spawn_worker};

/// Extra grace after the drain timeout before stragglers are killed.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// A future that resolves when the front thaws, if it is frozen now.
pub(crate) fn frozen_gate(
    front: &Weak<std::cell::RefCell<Front>>,
) -> Option<impl std::future::Future<Output = ()> + use<>> {
    let f = front.upgrade()?;
    let f = f.borrow();
    if !f.state.frozen {
        return None;
    }
    let thaw = f.state.thaw.clone();
    Some(async move { thaw.notified().await })
}

impl Front {
    /// Start a new worker process in `slot`. It takes connections once it
    /// reports ready.
    pub fn start_worker(&mut self, slot: usize) -> io::Result<u64> {
        let cell = self.workers.take_cell().ok_or_else(|| {
            io::Error::other("every statistics cell is in use (too many worker processes at once)")
        })?;
        match self.spawn_in_cell(slot, cell) {
            Ok(id) => Ok(id),
            Err(err) => {
                self.workers.give_cell(cell);
                Err(err)
            }
        }
    }

    fn spawn_in_cell(&mut self, slot: usize, cell: usize) -> io::Result<u64> {
        let (front_end, worker_end) = fdpass::pair()?;
        // The first frames go out before the worker even runs: the channel
        // is empty, so they fit.
        let mut hello = Vec::new();
        Down::Hello {
            cell: cell as u32,
            build: crate::version::build_id().to_string(),
        }
        .encode(&mut hello)
        .map_err(io::Error::other)?;
        let config = self
            .config_frame()
            .ok_or_else(|| io::Error::other("cannot encode the worker config"))?;
        fdpass::send_raw(front_end.as_fd(), &hello, &[self.counters.table.fd()])?;
        fdpass::send_raw(front_end.as_fd(), &config, &[])?;
        if self.config.load().access_log != crate::channel::AccessLog::Off {
            if let Some(frame) = self.access_log_frame() {
                fdpass::send_raw(front_end.as_fd(), &frame, &[])?;
            }
        }
        let cpu = self
            .workers
            .plan
            .cpus
            .as_ref()
            .and_then(|c| c.get(slot).copied());
        let (pid, pidfd) = spawn_worker(
            &self.workers.plan.exe,
            slot,
            &worker_end,
            &self.workers.plan.log,
            cpu,
        )?;
        let channel = Rc::new(Channel::new(front_end)?);
        let id = self.workers.next_proc;
        self.workers.next_proc += 1;
        let proc = WorkerProc {
            id,
            pid,
            role: Role::Starting,
            cell,
            build: None,
            adopted: false,
            channel,
            worker_end,
            pidfd: Rc::new(pidfd),
            full: false,
            watched: false,
            outbox: Default::default(),
            batch: Vec::new(),
            batch_fds: Vec::new(),
            handed: 0,
            inflight: Default::default(),
            received_seen: 0,
            ips: Default::default(),
            spawned: Instant::now(),
            stalled_since: None,
            unread_since: None,
        };
        self.watch_proc(slot, &proc);
        self.workers.slots[slot].procs.push(proc);
        self.publish();
        debug!(slot, pid, cell, "worker spawned");
        Ok(id)
    }

    /// Start the tasks that read a process's reports and see its end.
    pub fn watch_proc(&self, slot: usize, proc: &WorkerProc) {
        tokio::task::spawn_local(read_events(
            self.me.clone(),
            slot,
            proc.id,
            proc.channel.clone(),
        ));
        tokio::task::spawn_local(wait_exit(
            self.me.clone(),
            slot,
            proc.id,
            proc.pidfd.clone(),
        ));
    }

    /// A worker process ended: account for it, recover what it had not
    /// started, and decide what the slot does next.
    pub fn worker_exited(&mut self, slot: usize, id: u64, status: String) {
        // Apply whatever it reported before dying.
        self.drain_events(slot, id);
        let Some(pos) = self.workers.slots[slot]
            .procs
            .iter()
            .position(|p| p.id == id)
        else {
            return;
        };
        let mut proc = self.workers.slots[slot].procs.remove(pos);
        let recovered = self.recover_queued(&mut proc);
        let held = self.forget_proc(&mut proc);
        let lost = held.saturating_sub(recovered.len() as u64);
        self.fold_cell(slot, proc.cell);
        let expected = proc.role == Role::Retiring || self.state.shutting_down;
        if expected {
            info!(slot, pid = proc.pid, %status, "worker exited");
        } else {
            warn!(
                slot,
                pid = proc.pid,
                %status,
                lost_connections = lost,
                recovered_connections = recovered.len(),
                "worker died"
            );
        }
        if !recovered.is_empty() {
            self.counters
                .bump(FrontWord::Recovered, recovered.len() as u64);
            for conn in recovered.into_iter().rev() {
                self.ledger.pending.push_front(conn);
            }
        }
        if !expected {
            self.worker_crashed(slot, proc.role);
        }
        self.reap_drained();
        self.refresh_all_views();
        self.publish();
        self.retry_pending();
        self.update_paused();
        self.state.changed.notify_waiters();
    }

    /// Apply events still queued on a worker's channel (synchronously).
    fn drain_events(&mut self, slot: usize, id: u64) {
        let Some(channel) = self.workers.slots[slot].proc(id).map(|p| p.channel.clone()) else {
            return;
        };
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        // Bounded: a dead worker cannot add frames.
        for _ in 0..100_000 {
            match channel.try_recv(&mut buf, &mut fds) {
                Ok(Received::Frame(n)) => {
                    fds.clear();
                    if let Ok(Up::Events(events)) = Up::decode(&buf[..n]) {
                        self.on_up(slot, id, Up::Events(events));
                    }
                }
                _ => break,
            }
        }
    }

    /// Take back handoffs a dead worker never read, with their descriptors.
    fn recover_queued(&mut self, proc: &mut WorkerProc) -> Vec<Conn> {
        let prefix = self.limits.per_ip_ipv6_prefix;
        let mut conns = Vec::new();
        // Anything batched but never sent.
        let batch = std::mem::take(&mut proc.batch);
        let fds = std::mem::take(&mut proc.batch_fds);
        // Their clients stay counted per IP: they are dispatched again.
        for (h, fd) in batch.iter().zip(fds) {
            proc.ip_sub(super::ledger::client_of(h.client.ip(), prefix), 1);
            self.backends.sub_inflight(h.backend);
            conns.push(Conn::of_handoff(fd.into(), h));
        }
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        for _ in 0..100_000 {
            fds.clear();
            match fdpass::recv_raw(proc.worker_end.as_fd(), &mut buf, &mut fds) {
                Ok(Received::Frame(n)) => {
                    let Ok(Down::Conns(handoffs)) = Down::decode(&buf[..n]) else {
                        continue;
                    };
                    for (h, fd) in handoffs.iter().zip(fds.drain(..)) {
                        proc.ip_sub(super::ledger::client_of(h.client.ip(), prefix), 1);
                        conns.push(Conn::of_handoff(std::net::TcpStream::from(fd), h));
                    }
                }
                Ok(Received::Closed) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    warn!(cause = %err, "could not recover every queued connection");
                    break;
                }
            }
        }
        conns
    }

    /// A worker that should have kept running is gone.
    pub(crate) fn worker_crashed(&mut self, slot: usize, role: Role) {
        if self.state.shutting_down {
            return;
        }
        if role == Role::Starting && self.workers.slots[slot].serving().is_some() {
            // A replacement in a rolling restart failed; the rollout
            // notices and keeps the old worker. Not a slot crash.
            return;
        }
        let now = Instant::now();
        let seed = self.workers.next_proc ^ u64::from(std::process::id());
        let s = &mut self.workers.slots[slot];
        match s.record_crash(now, seed ^ now.elapsed().as_nanos() as u64) {
            AfterCrash::Parked => {
                error!(
                    slot,
                    crashes = s.crashes.len(),
                    window = ?CRASH_WINDOW,
                    "worker slot is crash-looping; parked (restart with `rrproxy ctl upgrade` or SIGUSR2)"
                );
                if self.workers.slots.iter().all(|s| s.parked) {
                    error!("every worker slot is parked: no worker can run; exiting");
                    self.state.fatal = Some("every worker slot crash-looped".into());
                    self.state.changed.notify_waiters();
                }
            }
            AfterCrash::Pending => {}
            AfterCrash::Respawn(delay) => {
                let me = self.me.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(front) = me.upgrade() {
                        front.borrow_mut().respawn(slot);
                    }
                });
            }
        }
    }

    fn respawn(&mut self, slot: usize) {
        self.workers.slots[slot].respawn_scheduled = false;
        let s = &self.workers.slots[slot];
        if self.state.shutting_down || s.parked || s.serving().is_some() {
            return;
        }
        match self.start_worker(slot) {
            Ok(_) => {
                self.counters.slot_bump(slot, SlotWord::Restarts, 1);
                info!(
                    slot,
                    restarts = self.counters.slot_get(slot, SlotWord::Restarts),
                    "worker respawned"
                );
            }
            Err(err) => {
                warn!(slot, cause = %err, "cannot respawn worker");
                self.worker_crashed(slot, Role::Serving);
            }
        }
    }

    /// Start a replacement for a slot whose worker is leaving (it drains);
    /// counted as a restart of the slot.
    pub fn replace_worker(&mut self, slot: usize) {
        match self.start_worker(slot) {
            Ok(_) => self.counters.slot_bump(slot, SlotWord::Restarts, 1),
            Err(err) => {
                warn!(slot, cause = %err, "cannot start a replacement worker");
                self.worker_crashed(slot, Role::Serving);
            }
        }
    }

    /// The frame that tells a worker to finish and exit.
    pub fn drain_frame(&self) -> Vec<u8> {
        let timeout = self.config.load().drain_timeout;
        let mut frame = Vec::new();
        if let Err(err) = (Down::Drain { timeout }).encode(&mut frame) {
            warn!(cause = %err, "cannot encode drain");
        }
        frame
    }

    /// Stop taking connections and tell every worker to drain.
    pub fn begin_shutdown(&mut self) {
        self.state.shutting_down = true;
        let pending = self.ledger.pending.len();
        for conn in self.ledger.pending.drain(..) {
            drop(conn); // never handed out: the client sees the close
        }
        if pending > 0 {
            warn!(pending, "closed connections that were waiting for a worker");
        }
        let drain = self.drain_frame();
        for p in self.workers.procs_mut() {
            p.role = Role::Retiring;
            p.queue_control(drain.clone());
        }
        self.arm_watchers();
        self.refresh_all_views();
        self.publish();
    }
}

/// Read a worker's reports until its channel closes.
async fn read_events(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    channel: Rc<Channel>,
) {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let mut bad_frames = 0u64;
    loop {
        let received = channel
            .recv_gated(&mut buf, &mut fds, || frozen_gate(&front))
            .await;
        fds.clear(); // workers send no descriptors; drop any
        let n = match received {
            Ok(Received::Frame(n)) => n,
            Ok(Received::Closed) | Err(_) => return,
        };
        let Some(front) = front.upgrade() else { return };
        match Up::decode(&buf[..n]) {
            Ok(up) => front.borrow_mut().on_up(slot, id, up),
            Err(err) => {
                bad_frames += 1;
                if bad_frames.is_power_of_two() {
                    warn!(slot, cause = %err, count = bad_frames, "ignoring malformed frame from worker");
                }
            }
        }
    }
}

async fn wait_exit(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    pidfd: Rc<OwnedFd>,
) {
    let status = process::wait_exit(&pidfd).await;
    while let Some(wait) = frozen_gate(&front) {
        wait.await;
    }
    if let Some(front) = front.upgrade() {
        front.borrow_mut().worker_exited(slot, id, status);
    }
}

/// Wait until every worker process has exited, killing stragglers after
/// `limit`.
pub async fn wait_for_workers(front: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let changed = front.borrow().state.changed.clone();
        let notified = changed.notified();
        if front.borrow().workers.all_gone() {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            for p in front.borrow().workers.procs() {
                warn!(pid = p.pid, "worker did not drain in time; killing it");
                p.kill();
            }
            // Give the kernel a moment to deliver the exits.
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while !front.borrow().workers.all_gone() {
                let changed = front.borrow().state.changed.clone();
                if tokio::time::timeout_at(until, changed.notified())
                    .await
                    .is_err()
                {
                    warn!("workers did not exit after SIGKILL; giving up waiting");
                    return;
                }
            }
            return;
        }
    }
}
