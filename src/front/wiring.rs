//! The wiring: [`Front`] holds the parts, and `impl Front` (all of it, in
//! this file) is how they act together. Each part keeps its own state and
//! invariants behind its methods; what crosses parts is here, in sections:
//! the accept path (admit, dispatch, flush), workers (start, ready,
//! reports, exit, staffing, the rolling restart), the lifecycle (events
//! through the phase machine, and the actions it asks for), views and
//! pausing, run-time changes and reloads, health, upkeep, and the
//! hand-over. DESIGN.md's "life of a connection" follows a connection
//! through the functions here.
//!
//! The front is owned by its single-threaded event loop
//! (`Rc<RefCell<Front>>`, never borrowed across an await).

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::backends::Waiting;
use super::phase::{Action, Event, Phase};
use super::report::{self, BackendRow, Status, WorkerRow};
use super::routing::Pick;
use super::settings::{Plan, Settings};
use super::{
    Access, AclView, Admin, AdminError, Backends, Conn, Counters, Ledger, Lifecycle, Listeners,
    ReloadReport, Routing, access, notify, refuse, upkeep,
};
use crate::acl::Action as AclAction;
use crate::channel::{AccessLog, Event as WorkerEvent, Handoff, MAX_FDS, Up};
use crate::config::{BackendSpec, Config, ResolveGroup};
use crate::policy::{PolicyName, WorkerView};
use crate::stats::{Col, FrontWord, ProcWord, SlotWord};
use crate::supervisor::respawn::{AfterCrash, CRASH_WINDOW};
use crate::supervisor::{
    MAX_UNREAD, READY_TIMEOUT, Refused, Role, SpawnError, WorkerProc, Workers,
};

mod queue;

pub type Shared = Rc<RefCell<Front>>;

pub struct Front {
    /// Weak handle to ourselves, for spawning tasks from `&mut self`.
    me: Weak<RefCell<Front>>,
    settings: Settings,
    listeners: Listeners,
    workers: Workers,
    backends: Backends,
    access: Access,
    routing: Routing,
    ledger: Ledger,
    counters: Counters,
    life: Lifecycle,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

/// The parts a front is assembled from (at start, or from a hand-over).
pub struct Parts {
    pub settings: Settings,
    pub listeners: Listeners,
    pub workers: Workers,
    pub backends: Backends,
    pub access: Access,
    pub ledger: Ledger,
    pub counters: Counters,
    pub life: Lifecycle,
}

impl Front {
    pub fn assemble(p: Parts) -> Shared {
        let cfg = p.settings.get();
        let routing = Routing::new(
            cfg.policy,
            p.backends.views(),
            &cfg.policy_options,
            p.workers.len(),
        );
        Rc::new_cyclic(|me| {
            RefCell::new(Front {
                me: me.clone(),
                settings: p.settings,
                listeners: p.listeners,
                workers: p.workers,
                backends: p.backends,
                access: p.access,
                routing,
                ledger: p.ledger,
                counters: p.counters,
                life: p.life,
                scratch: Vec::with_capacity(2 + MAX_FDS * crate::channel::HANDOFF_LEN + 2),
            })
        })
    }

    /// Start an accept loop per listening socket.
    pub fn start_listeners(front: &Shared) {
        let mut f = front.borrow_mut();
        f.listeners.start(front);
    }

    // ---- Read-only views for the front's tasks and the control socket.

    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    pub fn config(&self) -> std::sync::Arc<Config> {
        self.settings.get()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn phase(&self) -> &Phase {
        self.life.phase()
    }

    pub fn life(&self) -> &Lifecycle {
        &self.life
    }

    pub fn frozen(&self) -> bool {
        self.life.phase().frozen()
    }

    pub fn stopping(&self) -> bool {
        self.life.phase().stopping()
    }

    pub fn finished(&self) -> bool {
        self.life.phase().finished()
    }

    pub fn workers_gone(&self) -> bool {
        self.workers.all_gone()
    }

    pub fn thaw_notify(&self) -> Rc<tokio::sync::Notify> {
        self.life.thaw_notify()
    }

    pub fn count(&self, word: FrontWord, n: u64) {
        self.counters.bump(word, n);
    }

    pub fn policy(&self) -> PolicyName {
        self.routing.policy()
    }

    /// Connections the front has accepted and not yet seen finished
    /// (those waiting for a backend slot included).
    pub fn total_active(&self) -> u64 {
        self.routing.total_active()
            + self.ledger.pending() as u64
            + self.backends.queues().total() as u64
    }

    pub fn status(&self) -> Status {
        let cfg = self.settings.get();
        let phase = self.life.phase();
        Status {
            version: crate::version::VERSION,
            build: crate::version::build_id(),
            pid: std::process::id(),
            uptime_seconds: self.life.uptime().as_secs(),
            phase: phase.name(),
            policy: self.routing.policy(),
            listen: self
                .listeners
                .addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            metrics: self.listeners.metrics_addr().map(|a| a.to_string()),
            workers: cfg.workers,
            workers_up: self
                .workers
                .slots()
                .iter()
                .filter(|s| s.serving().is_some())
                .count(),
            backends: self.backends.list().len(),
            backends_up: self.backends.views().iter().filter(|v| v.routable).count(),
            active_connections: self.routing.total_active(),
            total_connections: report::handed(&self.workers, &self.counters),
            pending_connections: self.ledger.pending(),
            queued_connections: self.backends.queues().total(),
            accepting: !self.listeners.paused(),
            rolling_restart: phase.rolling(),
            upgrading: phase.upgrading(),
            last_restart: self.life.last_roll().map(|r| match r {
                Ok(m) => m.clone(),
                Err(m) => format!("failed: {m}"),
            }),
            builds: report::builds(&self.workers),
            drain_timeout_seconds: cfg.drain_timeout.as_secs_f64(),
        }
    }

    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        report::workers(&self.workers, &self.routing, &self.counters)
    }

    pub fn backend_rows(&self) -> Vec<BackendRow> {
        report::backends(&self.backends, &self.workers.live_cells(), &self.counters)
    }

    pub fn acl_view(&self) -> AclView {
        self.access.view()
    }

    // ---- The accept path.

    /// A connection came out of `accept`. One from an `--accept-proxy`
    /// source first has its PROXY header read, off the accept loop (it
    /// comes back in [`Front::header_read`]); any other is admitted now.
    pub fn accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        self.counters.bump(FrontWord::Accepted, 1);
        if self.access.trusts(peer.ip()) {
            let frozen = self.frozen();
            self.access
                .read_header(stream, peer, &self.me, frozen, &self.counters);
            self.update_paused();
            return;
        }
        self.admit(Conn {
            stream,
            peer,
            destination: None,
        });
    }

    /// A PROXY header read ended: admit the connection with the header's
    /// client (or it was closed), and send its batch at once, since this
    /// is not inside an accept round.
    pub fn header_read(
        &mut self,
        id: u64,
        result: Result<crate::proxy_protocol::Parsed, crate::proxy_protocol::HeaderError>,
    ) {
        if let Some(conn) = self.access.header_read(id, result, &self.counters) {
            self.admit(conn);
            self.flush();
        }
        self.update_paused();
    }

    /// A connection whose client is known: refused if the access list or
    /// the client's per-IP limit says so, else dispatched (or, if no
    /// worker can take it now, queued behind the others).
    fn admit(&mut self, conn: Conn) {
        if self.stopping() {
            // (A PROXY header read that ended during the drain.)
            return;
        }
        if !self.access.admits(&conn, &self.counters) {
            return;
        }
        if !self.admit_ip(conn.ip()) {
            let limit = self.settings.limits().per_ip().unwrap_or(0);
            self.access.refuse_at_limit(&conn, limit, &self.counters);
            return;
        }
        if let Err(conn) = self.dispatch(conn) {
            self.ledger.wait(conn);
            self.publish_pending();
        }
        self.update_paused();
    }

    /// The per-IP limit's client for `ip`.
    fn client_key(&self, ip: IpAddr) -> IpAddr {
        crate::acl::limit_key(ip, self.settings.limits().per_ip_ipv6_prefix)
    }

    /// Count a new connection from `ip`; false if that client is at its
    /// limit.
    fn admit_ip(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.settings.limits().per_ip() else {
            return true;
        };
        let key = self.client_key(ip);
        let ok = self.ledger.admit_ip(key, max);
        if !ok {
            debug!(client.addr = %key, limit = max, "per-IP limit reached; refusing");
        }
        ok
    }

    /// A connection from `ip` ended before reaching a worker.
    fn release_ip(&mut self, ip: IpAddr) {
        let key = self.client_key(ip);
        self.ledger.release_ip(key, 1);
    }

    /// Choose a worker and a backend for `conn` and add it to that
    /// worker's batch; a full batch is sent at once. A connection for
    /// which every backend it may use is at its connection limit waits in
    /// a backend's queue (see `queue`). `Err(conn)`: no worker can take
    /// it now.
    fn dispatch(&mut self, conn: Conn) -> Result<(), Conn> {
        let ip = conn.ip();
        let Some(slot) = self.routing.pick_worker(ip) else {
            return Err(conn);
        };
        let retries = self.settings.retries();
        // Exact counts for limited backends (cheap: a few word reads per
        // worker and limited backend); also right after a take-over or a
        // limit set by ctl, before any report arrived.
        self.recount();
        let (bidx, fallbacks) = match self.routing.pick_backend(ip, &self.backends, retries) {
            Pick::Go(bidx, fallbacks) => (bidx, fallbacks),
            Pick::Wait { backend, pinned } => {
                self.wait_for(backend, Waiting::new(conn, Instant::now(), pinned, None));
                return Ok(());
            }
            Pick::Nowhere => {
                // Every backend is disabled or draining: nothing to try.
                debug!(client.addr = %conn.peer, "no enabled backend; closing client");
                self.counters.bump(FrontWord::FailedFront, 1);
                self.release_ip(ip);
                refuse(&conn.stream);
                return Ok(());
            }
        };
        self.hand(slot, conn, bidx, fallbacks)
    }

    /// Add `conn` to the batch of the worker in `slot`, for backend `bidx`
    /// then `fallbacks`; a full batch is sent at once. `Err(conn)`: the
    /// slot has no serving worker after all.
    fn hand(
        &mut self,
        slot: usize,
        conn: Conn,
        bidx: usize,
        fallbacks: crate::channel::Fallbacks,
    ) -> Result<(), Conn> {
        let ip = conn.ip();
        let backend = self.backends.get(bidx).id();
        let track = self.settings.limits().per_ip().map(|_| self.client_key(ip));
        let id = self.ledger.next_conn();
        let Some(proc) = self.workers.slot_mut(slot).serving_mut() else {
            // Views and slots disagree: a bug, but not worth a connection.
            warn!(slot, "routable slot without a serving worker");
            self.refresh_view(slot);
            return Err(conn);
        };
        if let Some(key) = track {
            proc.ip_add(key);
        }
        let handoff = Handoff {
            conn: id,
            backend,
            fallbacks,
            client: conn.peer,
            destination: conn.destination,
        };
        let batched = proc.push(handoff, OwnedFd::from(conn.stream));
        self.backends.add_inflight(bidx);
        self.refresh_view(slot);
        if batched >= MAX_FDS {
            let retry = self.flush_slot(slot);
            self.redispatch(retry);
        }
        Ok(())
    }

    /// Dispatch connections a worker's channel would not take; those no
    /// worker can take now go first in the queue, in their order.
    fn redispatch(&mut self, conns: Vec<Conn>) {
        let mut waiting = Vec::new();
        for conn in conns {
            if let Err(conn) = self.dispatch(conn) {
                waiting.push(conn);
            }
        }
        if !waiting.is_empty() {
            self.ledger.requeue(waiting);
        }
    }

    /// Send every non-empty batch. Batches that cannot be sent are
    /// re-dispatched to other workers (or queued).
    pub fn flush(&mut self) {
        // Each failed slot becomes unroutable, so this ends within
        // `slots` rounds.
        for _round in 0..=self.workers.len() {
            let mut retry = Vec::new();
            for slot in 0..self.workers.len() {
                retry.extend(self.flush_slot(slot));
            }
            if retry.is_empty() {
                break;
            }
            self.redispatch(retry);
        }
        self.publish_pending();
        self.update_paused();
    }

    /// Send one slot's batch. Returns the connections to re-dispatch if the
    /// channel would not take them.
    fn flush_slot(&mut self, slot: usize) -> Vec<Conn> {
        if self.settings.take_broadcast() {
            // A handoff planned on a new backend must not reach a worker
            // before the table that lists it.
            self.broadcast_config();
        }
        let prefix = self.settings.limits().per_ip_ipv6_prefix;
        let Some(proc) = self.workers.slot_mut(slot).batched_mut() else {
            return Vec::new();
        };
        match proc.send_batch(&mut self.scratch, prefix) {
            Ok(0) => Vec::new(),
            Ok(n) => {
                self.counters
                    .cell(proc.cell())
                    .set(ProcWord::Handed, proc.handed());
                self.counters.slot_bump(slot, SlotWord::Handed, n);
                Vec::new()
            }
            Err(Refused { err, handoffs, fds }) => {
                let (id, channel) = (proc.id(), proc.channel().clone());
                let wait = super::flow::retry_wait(&err);
                if wait.is_none() {
                    debug!(slot, cause = %err, "handoff failed; worker going away");
                }
                self.counters
                    .bump(FrontWord::HandoffFailures, handoffs.len() as u64);
                for h in &handoffs {
                    self.backends.unhanded(h.backend);
                }
                self.refresh_view(slot);
                let watch = self
                    .workers
                    .slot_mut(slot)
                    .proc_mut(id)
                    .is_some_and(|p| p.watch());
                if let (Some(wait), true) = (wait, watch) {
                    super::flow::watch_writable(&self.me, slot, id, channel, wait);
                }
                fds.into_iter()
                    .zip(&handoffs)
                    .map(|(fd, h)| Conn::of_handoff(TcpStream::from(fd), h))
                    .collect()
            }
        }
    }

    /// A full channel of process `id` has room again: send its outbox;
    /// false if it filled again (the watcher keeps waiting).
    pub fn channel_writable(&mut self, slot: usize, id: u64, ok: bool) -> bool {
        let Some(p) = self.workers.slot_mut(slot).proc_mut(id) else {
            return true;
        };
        if !ok {
            // The channel is broken: the worker is going away and its exit
            // is handled elsewhere.
            p.unwatch();
            return true;
        }
        if p.writable() {
            return false;
        }
        p.unwatch();
        self.refresh_view(slot);
        self.retry_pending();
        true
    }

    /// Watch every process a control frame left with a full channel.
    fn arm_watchers(&mut self) {
        let full: Vec<(usize, u64)> = self
            .workers
            .procs_by_slot()
            .filter(|(_, p)| p.wants_watch())
            .map(|(slot, p)| (slot, p.id()))
            .collect();
        for (slot, id) in full {
            if let Some(p) = self.workers.slot_mut(slot).proc_mut(id) {
                if p.watch() {
                    let channel = p.channel().clone();
                    super::flow::watch_writable(
                        &self.me,
                        slot,
                        id,
                        channel,
                        super::flow::Retry::After(super::flow::RETRY_MIN),
                    );
                }
            }
        }
    }

    /// Hand queued connections, oldest first, to workers that have room.
    pub fn retry_pending(&mut self) {
        if self.frozen() {
            return;
        }
        self.serve_queues();
        while let Some(conn) = self.ledger.take_oldest() {
            if let Err(conn) = self.dispatch(conn) {
                self.ledger.put_back(conn);
                break;
            }
        }
        self.flush();
    }

    // ---- Workers.

    /// Start a new worker process in `slot` (its first frames: the
    /// statistics table, the config, the access log setting).
    fn start_worker(&mut self, slot: usize) -> Result<u64, SpawnError> {
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
            super::watch::watch(&self.me, slot, id, p.channel().clone(), p.pidfd().clone());
        }
        self.publish();
        Ok(id)
    }

    /// Start every slot's first worker (a fresh start).
    pub fn start_workers(&mut self) -> Result<(), super::FrontError> {
        for slot in 0..self.workers.len() {
            self.start_worker(slot)
                .map_err(|err| super::FrontError::Spawn {
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
    fn staff(&mut self) {
        if self.stopping() || self.frozen() {
            return;
        }
        for slot in self.workers.unstaffed() {
            match self.start_worker(slot) {
                Ok(_) => {
                    self.counters.slot_bump(slot, SlotWord::Restarts, 1);
                    let restarts = self.counters.slot_get(slot, SlotWord::Restarts);
                    info!(slot, restarts, "worker respawned");
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
    fn worker_crashed(&mut self, slot: usize) {
        let now = Instant::now();
        let seed = self.workers.seed() ^ crate::front::upgrade::state::unix_micros();
        let s = self.workers.slot_mut(slot);
        match s.record_crash(now, seed) {
            AfterCrash::Parked => {
                error!(
                    slot,
                    crashes = s.crashes(),
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

    fn worker_ready(&mut self, slot: usize, id: u64, pid: u32, build: String) {
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
        self.arm_watchers();
        let _ = self.handle(Event::WorkerReady);
        self.advance_roll();
        self.refresh_view(slot);
        self.publish();
        self.retry_pending();
        self.update_paused();
    }

    fn on_event(&mut self, slot: usize, id: u64, ev: WorkerEvent) {
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
            self.backends.unhanded(h.backend);
        }
        let recovered: Vec<Conn> = batch
            .into_iter()
            .chain(queued)
            .map(|(h, fd)| Conn::of_handoff(TcpStream::from(fd), &h))
            .collect();
        let held = self.forget_proc(&mut proc);
        let lost = held.saturating_sub(recovered.len() as u64);
        self.counters
            .fold(slot, proc.cell(), self.backends.columns());
        self.workers.give_cell(proc.cell());
        let expected = proc.role() == Role::Retiring || self.stopping();
        if expected {
            info!(slot, pid = proc.pid(), %status, "worker exited");
        } else {
            warn!(slot, pid = proc.pid(), %status, lost_connections = lost, recovered_connections = recovered.len(), "worker died");
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
    fn drain_events(&mut self, slot: usize, id: u64) {
        let Some(channel) = self
            .workers
            .slot(slot)
            .proc(id)
            .map(|p| p.channel().clone())
        else {
            return;
        };
        for (up, fd) in super::watch::queued_reports(&channel) {
            self.on_up(slot, id, up, fd);
        }
    }

    /// Uncount whatever the front still counted for a gone process (its
    /// in-flight handoffs, its clients' per-IP counts). Returns the
    /// connections it held that were lost (handed and not finished).
    fn forget_proc(&mut self, proc: &mut WorkerProc) -> u64 {
        let (inflight, ips) = proc.forget();
        for backend in inflight {
            self.backends.unhanded(backend);
        }
        for (ip, n) in ips {
            self.ledger.release_ip(ip, n);
        }
        let finished = self.counters.cell(proc.cell()).get(ProcWord::Finished);
        proc.handed().saturating_sub(finished)
    }

    /// Start what the restart of the workers still has to start, and see
    /// whether it is over.
    fn advance_roll(&mut self) {
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
            self.life.set_last_roll(outcome);
            let _ = self.handle(Event::RollDone);
        }
    }

    fn drain_frame(&self) -> Vec<u8> {
        self.settings.drain_frame()
    }

    fn drain_wait(&self) -> Duration {
        self.settings.drain_wait()
    }

    // ---- The lifecycle: events through the phase machine.

    /// Run `event` through the phase machine and perform what it asks.
    /// `Err`: the request is refused, and why.
    pub fn handle(&mut self, event: Event) -> Result<(), &'static str> {
        let actions = self.life.on(&event, self.drain_wait());
        let mut refused = None;
        for action in actions {
            match action {
                Action::Refuse(why) => refused = Some(why),
                Action::Proceed => {}
                Action::Freeze => self.freeze(),
                Action::AnnounceReady => notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("accepting connections"),
                ]),
                Action::StartRoll => {
                    for slot in self.workers.begin_roll(Instant::now()) {
                        info!(slot, "worker slot unparked");
                    }
                    self.advance_roll();
                }
                Action::AbortUpgrade => self.life.abort_upgrade(),
                Action::Thaw => self.thaw(),
                Action::Drain => self.drain(),
                Action::KillWorkers => {
                    warn!("stopping now: killing every worker (connections still open are cut)");
                    self.workers.kill_all();
                }
                Action::ForwardStop => self.forward_stop(),
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Freeze for a hand-over: send what is batched, stop reading PROXY
    /// headers, stop accepting (the phase says frozen already).
    fn freeze(&mut self) {
        self.flush();
        self.access.suspend_header_reads();
        self.refresh_all_views();
        self.life
            .set_frozen_at_us(crate::front::upgrade::state::unix_micros());
    }

    /// A freeze ended (or the front handed over for good: then only what
    /// waits is woken).
    fn thaw(&mut self) {
        self.life.thaw();
        if self.frozen() {
            return;
        }
        self.access.resume_header_reads(&self.me);
        self.arm_watchers();
        self.refresh_all_views();
        self.retry_pending();
        self.update_paused();
        self.staff();
        self.advance_roll();
    }

    /// Stop: accept nothing, close what waits, tell every worker to
    /// finish (the phase's deadline kills what is left).
    fn drain(&mut self) {
        notify(&[sd_notify::NotifyState::Stopping]);
        self.listeners.close();
        let pending = self.ledger.close_pending();
        if pending > 0 {
            warn!(pending, "closed connections that were waiting for a worker");
        }
        let queued = self.close_queues();
        if queued > 0 {
            warn!(
                queued,
                "closed connections that were waiting for a backend slot"
            );
        }
        self.publish_pending();
        let now = Instant::now();
        let drain = self.drain_frame();
        self.workers
            .retire_all(&drain, now, now + self.drain_wait());
        self.workers.cancel_roll();
        self.arm_watchers();
        self.refresh_all_views();
        self.publish();
        let open = self.total_active();
        if open > 0 {
            warn!(
                open_connections = open,
                deadline = ?self.settings.get().drain_timeout,
                "draining: waiting for open connections to finish (at most --drain-timeout); send SIGINT (Ctrl-C) or SIGTERM again to stop now"
            );
        } else {
            info!("shutting down: no connection open");
        }
        if self.workers.all_gone() {
            let _ = self.handle(Event::WorkersGone);
        }
    }

    /// After the commit: the new front owns everything, so a stop asked of
    /// this one is passed on to it.
    fn forward_stop(&mut self) {
        let Some(link) = self.life.successor() else {
            warn!("stop requested during the hand-over, but the new front cannot be reached");
            return;
        };
        info!("stop requested after the hand-over: passing it on to the new front");
        tokio::task::spawn_local(async move {
            if let Err(err) = link.send(&crate::handover::Msg::Stop).await {
                warn!(cause = %err, "cannot pass the stop on to the new front");
            }
        });
    }

    /// The upgrade reached `step`: may it go on?
    pub fn upgrade_at(&mut self, step: super::phase::Step) -> Result<(), &'static str> {
        self.handle(Event::UpgradeAt(step))
    }

    /// The upgrade committed and its requester has the answer: this front
    /// lets go (its metrics endpoint stops, control clients are told to
    /// reconnect) and leaves once its control sessions are done.
    pub fn hand_over(&mut self) {
        self.counters.hand_over();
        let _ = self.handle(Event::HandOver);
        if self.life.sessions() == 0 {
            let _ = self.handle(Event::SessionsDone);
        }
    }

    pub fn session_opened(&mut self) {
        self.life.session_opened();
    }

    pub fn session_closed(&mut self) {
        if self.life.session_closed() == 0 {
            let _ = self.handle(Event::SessionsDone);
        }
    }

    /// Keep the upgrade conversation, to cancel it on a stop.
    pub fn set_upgrade(&mut self, task: Option<tokio::task::AbortHandle>) {
        self.life.set_upgrade(task);
    }

    /// The new front's link, once committed.
    pub fn set_successor(&mut self, link: Rc<crate::handover::Link>) {
        self.life.set_successor(link);
    }

    // ---- Views and pausing.

    /// Recompute what the policy sees of `slot`.
    fn refresh_view(&mut self, slot: usize) {
        let counters = &self.counters;
        let (active, routable) = self.workers.view(slot, |cell| {
            let c = counters.cell(cell);
            (c.get(ProcWord::Finished), c.get(ProcWord::Received))
        });
        let routable = routable && !self.stopping() && !self.frozen();
        self.routing.set(slot, WorkerView { routable, active });
    }

    /// Trim every process's in-flight handoffs by what its worker received.
    fn sync_received(&mut self) {
        let counters = &self.counters;
        let backends = &mut self.backends;
        for p in self.workers.procs_mut() {
            let received = counters.cell(p.cell()).get(ProcWord::Received);
            p.sync_received(received, |b| backends.sub_inflight(b));
        }
    }

    /// Recompute every view (after events, exits, config changes).
    pub fn refresh_all_views(&mut self) {
        self.sync_received();
        for slot in 0..self.workers.len() {
            self.refresh_view(slot);
        }
        if self.routing.policy() == PolicyName::LeastConn {
            let cells = self.workers.live_cells();
            self.backends.refresh_active(self.counters.table(), &cells);
        }
        self.update_paused();
    }

    fn at_global_limit(&self) -> bool {
        self.settings
            .limits()
            .max_conns
            .is_some_and(|max| self.total_active() + self.access.waiting() as u64 >= max)
    }

    fn should_pause(&self) -> bool {
        self.stopping()
            || self.frozen()
            || self.ledger.pending() > 0
            || self.routing.routable_slots() == 0
            || self.at_global_limit()
            || self.access.full()
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
    fn request_wakes(&mut self) {
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
    fn log_pause(&mut self) {
        if self.stopping() || self.frozen() || *self.life.phase() == Phase::Starting {
            return;
        }
        let cap = self.workers.per_proc_cap();
        let counters = &self.counters;
        let all_at_cap = self.workers.all_at_cap(|cell| {
            let c = counters.cell(cell);
            (c.get(ProcWord::Finished), c.get(ProcWord::Received))
        });
        let reason = if self.ledger.pending() > 0 && self.routing.routable_slots() > 0 {
            "connections are waiting to be handed out"
        } else if self.at_global_limit() {
            "--max-conns reached"
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
    fn publish(&self) {
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
        self.counters
            .publish(self.routing.policy(), slots, self.backends.labels(), ready);
    }

    fn publish_pending(&self) {
        self.counters
            .set(FrontWord::Pending, self.ledger.pending() as u64);
    }

    // ---- Run-time changes and reloads.

    /// The backend table or settings changed: send workers the new config
    /// at the end of this loop turn, once however many changes it holds.
    fn config_changed(&mut self) {
        self.refresh_all_views();
        if self.settings.schedule_broadcast() {
            let me = self.me.clone();
            tokio::task::spawn_local(async move {
                tokio::task::yield_now().await;
                if let Some(front) = me.upgrade() {
                    let mut f = front.borrow_mut();
                    if f.settings.take_broadcast() {
                        f.broadcast_config();
                    }
                }
            });
        }
        // (After scheduling: a connection it hands out is sent after the
        // new table, by `flush_slot`.)
        self.queues_changed();
    }

    /// Send the current worker config to every live worker process now. A
    /// worker that has not taken the last one gets this one instead.
    fn broadcast_config(&mut self) {
        let Some(frame) = self.config_frame() else {
            return;
        };
        for p in self.workers.procs_mut() {
            p.queue_config(frame.clone());
        }
        self.arm_watchers();
        self.refresh_all_views();
        self.publish();
    }

    /// The current worker config, encoded, with a new sequence number.
    fn config_frame(&mut self) -> Option<Vec<u8>> {
        let seq = self.backends.next_table_seq();
        let (table, sources) = self.backends.worker_table(&self.settings.get().source);
        self.settings.config_frame(seq, table, sources)
    }

    /// Switch the balancing policy (by `ctl`). Returns the previous one.
    pub fn set_policy(&mut self, name: PolicyName) -> Result<PolicyName, AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let old = self.switch_policy(name);
        self.settings.note_policy(name);
        Ok(old)
    }

    fn switch_policy(&mut self, name: PolicyName) -> PolicyName {
        let old = self.routing.policy();
        if old != name {
            let options = self.settings.get().policy_options;
            self.routing.switch(name, self.backends.views(), &options);
            self.settings.update(|c| c.policy = name);
            self.counters.bump(FrontWord::PolicyChanges, 1);
            info!(from = %old, to = %name, "policy changed");
            self.refresh_all_views();
            self.publish();
        }
        old
    }

    /// The backend list or weights changed: rebuild what depends on them,
    /// record the new list in the config, and tell the workers.
    fn backends_changed(&mut self) {
        self.routing.rebuild(self.backends.views());
        let specs = self.backends.specs();
        self.settings.update(|c| c.backends = specs);
        self.config_changed();
        self.publish();
    }

    /// The oldest backend table every live worker has applied.
    fn table_applied_everywhere(&self) -> u64 {
        self.workers
            .procs()
            .map(|p| self.counters.cell(p.cell()).get(ProcWord::ConfigSeq))
            .min()
            .unwrap_or(self.backends.table_seq())
    }

    fn add_spec(&mut self, spec: BackendSpec) -> Result<(), AdminError> {
        let applied = self.table_applied_everywhere();
        let slow_start = self.settings.get().slow_start;
        self.backends
            .add_checked(spec, self.counters.table(), applied, slow_start)
            .map(|_| ())
    }

    /// Add a backend (by `ctl`).
    pub fn add_backend(&mut self, spec: BackendSpec) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        self.backends.may_add(&spec.name)?;
        // Its source list must fit the workers' table with the others.
        self.backends
            .check_sources(&spec, &self.settings.get().source)
            .map_err(|why| AdminError::Invalid(format!("invalid backend '{spec}': {why}")))?;
        info!(backend = %spec, "backend added");
        let name = spec.name.clone();
        self.add_spec(spec)?;
        self.settings.note_added(&name);
        self.backends_changed();
        Ok(())
    }

    /// Drain a backend (by `ctl`): no new connections; it leaves the list
    /// when its last connection ends.
    pub fn remove_backend(&mut self, name: &str) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let i = self.backends.target(name)?;
        if self.backends.serving() <= 1 {
            return Err(AdminError::LastBackend(name.into()));
        }
        self.backends.set_admin(i, Admin::Draining);
        let spec_name = self.backends.get(i).spec().name.clone();
        info!(backend = %name, "backend draining for removal");
        self.settings.note_removed(&spec_name);
        self.backends_changed();
        self.reap_drained();
        Ok(())
    }

    /// `enable` or `disable` a backend (kept in the list either way).
    pub fn set_backend_enabled(&mut self, name: &str, enabled: bool) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let i = self.backends.target(name)?;
        let admin = if enabled {
            Admin::Enabled
        } else {
            Admin::Disabled
        };
        let was = self.backends.get(i).admin();
        self.backends.set_admin(i, admin);
        if enabled && was == Admin::Disabled {
            // Back in rotation: slow start, if it has one.
            self.backends.start_ramp(i, self.settings.get().slow_start);
        }
        info!(backend = %name, enabled, "backend admin state changed");
        self.config_changed();
        self.publish();
        Ok(())
    }

    /// `ctl acl allow|deny CIDR` (`action` given) or `ctl acl remove CIDR`
    /// (`None`): edit the running lists. Returns the reply.
    pub fn acl_edit(&mut self, action: Option<AclAction>, text: &str) -> Result<String, String> {
        self.handle(Event::Change)?;
        let edit = access::edit(&self.settings.get().acl, action, text)?;
        if let Some(next) = edit.next {
            let next = std::sync::Arc::new(next);
            self.settings.update(|c| c.acl = next);
            self.access.configure(&self.settings.get());
            // What a reload would compare with the file: where ctl put it.
            self.settings.note_acl(edit.cidr, action);
            info!(change = %edit.msg, "access list changed");
        }
        Ok(edit.msg)
    }

    /// Bring a `resolve` name's backends in line with a fresh look-up
    /// (see `Backends::apply_resolved`). Skipped while frozen or stopping
    /// (the next look-up applies it).
    pub fn apply_resolved(&mut self, group: &ResolveGroup, addrs: &[SocketAddr]) {
        if addrs.is_empty() || self.frozen() || self.stopping() {
            return;
        }
        let applied = self.table_applied_everywhere();
        if self.backends.apply_resolved(
            group,
            addrs,
            self.counters.table(),
            applied,
            &self.settings.get(),
        ) {
            self.backends_changed();
            self.reap_drained();
        }
    }

    /// Work out what applying `new` (the config file as it is now) would
    /// do; nothing changes. Refused whole if it cannot apply.
    pub fn plan_file(&mut self, new: Config) -> Result<Plan, String> {
        self.sync_received();
        let cells = self.workers.live_cells();
        let table = self.counters.table();
        // Backends still listed after it applies only to drain: those
        // leaving (or already draining) that still have connections.
        let lingering = (0..self.backends.list().len())
            .filter(|&i| {
                let b = self.backends.get(i);
                b.admin() == Admin::Draining
                    || !new.backends.iter().any(|s| s.name == b.spec().name)
            })
            .filter(|&i| self.backends.active(i, table, &cells) > 0)
            .count();
        super::settings::plan(&self.settings, new, &self.backends, lingering)
    }

    /// Apply a config file: reload, or the new front after an upgrade.
    pub fn apply_file(&mut self, new: Config) -> Result<ReloadReport, String> {
        self.handle(Event::Change)?;
        let plan = self.plan_file(new)?;
        Ok(self.apply_plan(plan))
    }

    /// Apply a plan: backends (added, drained, weights), policy, timeouts
    /// and limits; the notes say what it did.
    pub fn apply_plan(&mut self, plan: Plan) -> ReloadReport {
        let Plan {
            mut config,
            mut notes,
        } = plan;
        let cur = self.settings.get();
        if cur.defer_accept != config.defer_accept {
            let to = if config.defer_accept { "on" } else { "off" };
            match self.listeners.set_defer_accept(config.defer_accept) {
                Ok(()) => info!(defer_accept = to, "listeners changed by reload"),
                Err(err) => {
                    // Put back the listeners changed before the one that
                    // refused, so all of them keep the running value.
                    let _ = self.listeners.set_defer_accept(cur.defer_accept);
                    warn!(cause = %err, "defer-accept not changed");
                    notes.retain(|n| !n.starts_with("defer-accept "));
                    notes.push(format!("{err}; kept"));
                    config.defer_accept = cur.defer_accept;
                }
            }
        }
        self.settings.clear_overrides();
        let applied = self.table_applied_everywhere();
        notes.extend(self.backends.reconcile(
            &config.backends,
            self.counters.table(),
            applied,
            config.slow_start,
        ));
        let policy = config.policy;
        let access_log_changed = cur.access_log != config.access_log;
        self.settings.replace(Config {
            policy: cur.policy,
            ..config
        });
        let cfg = self.settings.get();
        self.access.configure(&cfg);
        if access_log_changed {
            self.send_access_log();
        }
        self.backends_changed();
        if self.switch_policy(policy) == policy && cur.policy_options != cfg.policy_options {
            // Same policy, new tuning (sticky IPv6 prefix): rebuild it.
            self.routing
                .switch(policy, self.backends.views(), &cfg.policy_options);
            info!("policy options changed");
        }
        let cap = super::proc_cap(&cfg, self.workers.nofile());
        self.workers.set_per_proc_cap(cap);
        self.counters.set(FrontWord::WorkerLimit, cap);
        self.reap_drained();
        self.refresh_all_views();
        for n in &notes {
            info!(note = %n, "reload");
        }
        info!("configuration reloaded");
        ReloadReport { notes }
    }

    /// The frame that tells a worker where the access log goes now.
    fn access_log_frame(&self) -> Option<Vec<u8>> {
        let json = self.workers.plan().log.format == crate::logging::LogFormat::Json;
        self.settings.access_log_frame(json)
    }

    /// Send the access log setting to every worker process (each opens
    /// the target again). Returns how many were told.
    fn send_access_log(&mut self) -> usize {
        let Some(frame) = self.access_log_frame() else {
            return 0;
        };
        let mut told = 0;
        for p in self.workers.procs_mut() {
            p.queue_control(frame.clone());
            told += 1;
        }
        self.arm_watchers();
        told
    }

    /// Make every worker reopen the access log file (SIGUSR1, `ctl log
    /// reopen`: logrotate's `postrotate`). A worker that cannot open it
    /// logs why and keeps writing to the file it had.
    pub fn reopen_access_log(&mut self) -> Result<String, String> {
        self.handle(Event::ReopenLog)?;
        match self.settings.get().access_log.clone() {
            AccessLog::Off => Err("the access log is off (--access-log PATH turns it on)".into()),
            AccessLog::Stderr => Ok("the access log goes to stderr: nothing to reopen".into()),
            AccessLog::File(path) => {
                let told = self.send_access_log();
                info!(path = %path.display(), workers = told, "access log reopen");
                Ok(format!(
                    "access log {}: reopen sent to {told} worker processes (a worker that cannot open it logs why and keeps the old file)",
                    path.display()
                ))
            }
        }
    }

    /// The flags to re-read the configuration with, if the proxy may
    /// reload now.
    pub fn reload_flags(&mut self) -> Result<crate::config::Flags, String> {
        self.handle(Event::Reload)?;
        self.settings.reload_flags()
    }

    // ---- Health.

    /// What the active checks need: interval, timeout, targets; `None`
    /// when they are off.
    #[allow(clippy::type_complexity)]
    pub fn health_plan(
        &self,
    ) -> Option<(
        Duration,
        Duration,
        Vec<(u32, SocketAddr, Option<crate::proxy_protocol::Version>)>,
    )> {
        let cfg = self.settings.get();
        cfg.health
            .interval
            .map(|i| (i, cfg.health.timeout, self.backends.check_targets()))
    }

    /// Apply a round of active checks (dropped while frozen).
    pub fn check_results(&mut self, results: Vec<(u32, Result<(), super::health::Failure>)>) {
        if self.frozen() {
            return;
        }
        let health = self.settings.get().health;
        for (id, result) in results {
            let result = result.map_err(|why| why.to_string());
            if let Some(i) = self
                .backends
                .record_check(id, result, &health, self.counters.table())
            {
                self.health_changed(i, "check");
            }
        }
    }

    /// A worker could not connect to backend `id`.
    fn passive_failure(&mut self, id: u32) {
        let fall = self.settings.get().health.fall;
        let Some(i) = self.backends.index_of(id) else {
            return;
        };
        let cells = self.workers.live_cells();
        let conns = self
            .backends
            .total(i, Col::Conns, self.counters.table(), &cells);
        if let Some(i) = self
            .backends
            .record_passive_failure(id, conns, fall, Instant::now())
        {
            self.health_changed(i, "traffic");
        }
    }

    fn health_changed(&mut self, i: usize, source: &'static str) {
        let cfg = self.settings.get();
        let reason = self
            .backends
            .health_changed(i, source, cfg.slow_start)
            .to_string();
        let b = self.backends.get(i);
        if b.healthy() {
            info!(backend = %b.spec().name, rise = cfg.health.rise, source, "backend up");
        } else {
            warn!(backend = %b.spec().name, fall = cfg.health.fall, source, reason, "backend down");
        }
        if !self.backends.any_routable() {
            warn!("every backend is down: failing open (connections are still tried)");
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
        self.backends.refresh_ramps(self.settings.get().slow_start);
        self.refresh_all_views();
        self.reap_drained();
        let now = Instant::now();
        let counters = &self.counters;
        for (slot, pid, unread) in self.workers.kill_hung(
            |cell| counters.cell(cell).get(ProcWord::Received),
            now,
            upkeep::STALL_LIMIT,
        ) {
            warn!(slot, pid, unread, limit = ?upkeep::STALL_LIMIT, max_unread = MAX_UNREAD, "worker has not read its channel: hung; killing it (its queued connections go to the others)");
        }
        for (slot, pid, role) in self.workers.kill_overdue(now) {
            match role {
                Role::Starting => {
                    warn!(slot, pid, limit = ?READY_TIMEOUT, "worker not ready in time: killing it (its slot gets another)")
                }
                _ => warn!(slot, pid, "worker did not drain in time; killing it"),
            }
        }
        if self.settings.get().health.interval.is_none() {
            for i in self.backends.cooldowns(now) {
                self.health_changed(i, "cooldown");
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
    fn reap_drained(&mut self) {
        if !self.backends.any_draining() {
            return;
        }
        self.sync_received();
        let cells = self.workers.live_cells();
        let gone = self.backends.reap_drained(self.counters.table(), &cells);
        if gone.is_empty() {
            return;
        }
        for name in &gone {
            info!(backend = %name, "drained backend removed");
        }
        self.backends_changed();
    }

    // ---- The hand-over.

    /// Everything this front owns, from its parts, with their descriptors
    /// (in the order the parts pushed them). The front is frozen.
    pub fn handover(&self) -> (super::upgrade::state::HandoverOut<'_>, Vec<BorrowedFd<'_>>) {
        let mut fds = Vec::new();
        let listeners = self.listeners.handover(&mut fds);
        let counters = self.counters.handover(&mut fds);
        let workers = self.workers.handover(&mut fds);
        let ledger = self.ledger.handover(&mut fds);
        let access = self.access.handover(&mut fds);
        let queue = self.backends.queues().handover(&mut fds);
        let out = super::upgrade::state::HandoverOut {
            settings: self.settings.handover(),
            listeners,
            counters,
            workers,
            ledger,
            access,
            queue,
            backends: &self.backends,
            life: super::upgrade::state::LifeState {
                last_roll: self.life.last_roll().cloned(),
                frozen_at_us: self.life.frozen_at_us(),
            },
        };
        (out, fds)
    }

    /// Watch every process taken over, and say what the new front holds.
    pub fn adopted(&mut self, procs: Vec<(usize, u64)>, nofile: u64) {
        for (slot, id) in procs {
            if let Some(p) = self.workers.slot(slot).proc(id) {
                super::watch::watch(&self.me, slot, id, p.channel().clone(), p.pidfd().clone());
            }
        }
        self.counters
            .set(FrontWord::WorkerLimit, self.workers.per_proc_cap());
        self.counters.set(FrontWord::MaxFds, nofile);
        self.publish();
    }
}
