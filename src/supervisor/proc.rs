//! One worker process as the front sees it: its channel and what waits to
//! go down it (handoffs batched this accept round, control frames waiting
//! for room), what it was handed and has not yet taken, its clients'
//! per-IP counts, and the deadline of its present role (ready in time,
//! drained in time).
//!
//! Invariants kept here: `handed` counts every handoff sent, and
//! `inflight` holds the backend of each one sent and not yet received
//! (oldest first), trimmed only by the worker's own `Received` count; a
//! batch and its descriptors always have the same length; control frames
//! go before any further handoff; a process's role only moves forward
//! (starting → serving → retiring).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tracing::{debug, warn};

use super::Role;
use crate::channel::fdpass::{self, Channel, Received};
use crate::channel::{Down, Handoff, MAX_FRAME};

/// What the front counted a connection as against its service's own
/// limits (kept per process for the connections it holds, so a process
/// that dies gives them back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// The service's id.
    pub service: u32,
    /// The client, when counted against the service's `max-conns-per-ip`
    /// (as its key: an IPv6 address's prefix).
    pub client: Option<IpAddr>,
}

/// One worker process.
pub struct WorkerProc {
    /// Unique for the front's lifetime (pids can be reused).
    pub(super) id: u64,
    pub(super) pid: u32,
    pub(super) role: Role,
    /// Its cell in the statistics table.
    pub(super) cell: usize,
    /// The build id it reported when ready.
    pub(super) build: Option<String>,
    /// The front's end of the channel.
    pub(super) channel: Rc<Channel>,
    /// The worker's end, kept open by the front: if the worker dies, the
    /// handoffs it had not yet read are still queued here, with their
    /// descriptors, and can be given to another worker.
    pub(super) worker_end: OwnedFd,
    /// Readable once the process has exited.
    pub(super) pidfd: Rc<OwnedFd>,
    /// The last send found the channel full; skip until it drains.
    pub(super) full: bool,
    /// A task waits for the channel to drain (at most one per process).
    pub(super) watched: bool,
    /// Control frames (config, drain) waiting for channel room; they go
    /// before any further handoff.
    pub(super) outbox: VecDeque<Vec<u8>>,
    /// This accept round's handoffs and their descriptors.
    batch: Vec<Handoff>,
    batch_fds: Vec<OwnedFd>,
    /// Connections handed over its life (also in its cell, for readers).
    pub(super) handed: u64,
    /// Backend ids of handoffs sent and not yet taken out of the channel,
    /// oldest first (the worker's `Received` count says how many went).
    pub(super) inflight: VecDeque<u32>,
    /// The worker's `Received` count when `inflight` was last trimmed.
    pub(super) received_seen: u64,
    /// Open connections per client IP (only with a per-IP limit).
    pub(super) ips: HashMap<IpAddr, u32>,
    /// What each connection handed to it counted against its service's
    /// own limits (only those that counted), by connection id: released
    /// when it reports the end, or when the process is gone.
    pub(super) counted: HashMap<u64, Tally>,
    /// Starting: when it must have reported ready; retiring: when it must
    /// have finished. Past it, the process is killed.
    pub(super) deadline: Option<Instant>,
    /// When it began to retire (the oldest retiring process is the one cut
    /// first when a statistics cell must be freed).
    pub(super) retired_at: Option<Instant>,
    /// Killed to free its cell.
    pub(super) reclaimed: bool,
    /// Since when it has had handoffs to read and read none (watchdog).
    stalled_since: Option<(Instant, u64)>,
    /// Since when its oldest unread handoff has waited (roughly: reset
    /// whenever the worker takes any); `None` when it has none.
    unread_since: Option<Instant>,
}

/// Handoffs taken back, each with its descriptor.
pub type Taken = Vec<(Handoff, OwnedFd)>;

/// What became of a batch the channel would not take.
pub struct Refused {
    pub err: std::io::Error,
    pub handoffs: Vec<Handoff>,
    pub fds: Vec<OwnedFd>,
}

impl WorkerProc {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: u64,
        pid: u32,
        role: Role,
        cell: usize,
        channel: Rc<Channel>,
        worker_end: OwnedFd,
        pidfd: Rc<OwnedFd>,
        deadline: Option<Instant>,
    ) -> WorkerProc {
        WorkerProc {
            id,
            pid,
            role,
            cell,
            build: None,
            channel,
            worker_end,
            pidfd,
            full: false,
            watched: false,
            outbox: VecDeque::new(),
            batch: Vec::new(),
            batch_fds: Vec::new(),
            handed: 0,
            inflight: VecDeque::new(),
            received_seen: 0,
            ips: HashMap::new(),
            counted: HashMap::new(),
            deadline,
            retired_at: None,
            reclaimed: false,
            stalled_since: None,
            unread_since: None,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn cell(&self) -> usize {
        self.cell
    }

    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    pub fn channel(&self) -> &Rc<Channel> {
        &self.channel
    }

    pub fn pidfd(&self) -> &Rc<OwnedFd> {
        &self.pidfd
    }

    pub fn handed(&self) -> u64 {
        self.handed
    }

    /// Its channel is full (or refused a send): skip it until it drains.
    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn outbox_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Connections it holds and handoffs it has not read, given its
    /// statistics cell's `Finished` and `Received` counts.
    pub fn load(&self, finished: u64, received: u64) -> (u64, u64) {
        let handed = self.handed + self.batch.len() as u64;
        (
            handed.saturating_sub(finished),
            handed.saturating_sub(received),
        )
    }

    /// Its oldest unread handoff has waited longer than `patience`.
    pub fn stuck(&self, unread: u64, patience: Duration) -> bool {
        unread > 0 && self.unread_since.is_some_and(|t| t.elapsed() >= patience)
    }

    /// Add a handoff to this round's batch; returns the batch's length.
    pub fn push(&mut self, h: Handoff, fd: OwnedFd) -> usize {
        self.batch.push(h);
        self.batch_fds.push(fd);
        self.batch.len()
    }

    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Send this round's batch as one frame (encoded into `scratch`).
    /// `Ok(n)`: `n` handoffs went (0: there was none). On a refusal the
    /// channel counts as full, the handoffs' clients are uncounted from
    /// this process (`prefix`: the per-IP key's IPv6 prefix), and the
    /// batch comes back to be dispatched elsewhere.
    pub fn send_batch(&mut self, scratch: &mut Vec<u8>, prefix: u8) -> Result<u64, Refused> {
        if self.batch.is_empty() {
            return Ok(0);
        }
        if let Err(err) = Down::encode_conns(&self.batch, scratch) {
            warn!(cause = %err, "cannot encode a handoff batch");
        }
        let n = self.batch.len() as u64;
        match self.channel.try_send_owned(scratch, &self.batch_fds) {
            Ok(()) => {
                if self.unread_since.is_none() {
                    self.unread_since = Some(Instant::now());
                }
                self.handed += n;
                self.inflight
                    .extend(self.batch.drain(..).map(|h| h.backend));
                self.batch_fds.clear(); // closes our copies
                Ok(n)
            }
            Err(err) => {
                self.full = true;
                let handoffs = std::mem::take(&mut self.batch);
                let fds = std::mem::take(&mut self.batch_fds);
                for h in &handoffs {
                    self.ip_sub(crate::acl::limit_key(h.client.ip(), prefix), 1);
                }
                Err(Refused { err, handoffs, fds })
            }
        }
    }

    /// Trim `inflight` by what the worker has received since the last look
    /// (`received`: its cell's count), calling `taken` with each backend.
    pub fn sync_received(&mut self, received: u64, mut taken: impl FnMut(u32)) {
        let mut n = received.saturating_sub(self.received_seen);
        self.received_seen = received;
        if n > 0 {
            self.unread_since = (self.handed > received).then(Instant::now);
        }
        while n > 0 {
            let Some(backend) = self.inflight.pop_front() else {
                break;
            };
            taken(backend);
            n -= 1;
        }
    }

    /// The process is gone: what the front still counted for it, to
    /// uncount: the backends of handoffs it never received, its clients'
    /// per-IP counts, and what its connections counted for their
    /// services.
    pub fn forget(&mut self) -> (Vec<u32>, HashMap<IpAddr, u32>, Vec<Tally>) {
        (
            self.inflight.drain(..).collect(),
            std::mem::take(&mut self.ips),
            self.counted.drain().map(|(_, t)| t).collect(),
        )
    }

    /// Connection `conn`, handed to it, counted as `tally`.
    pub fn track(&mut self, conn: u64, tally: Tally) {
        self.counted.insert(conn, tally);
    }

    /// Connection `conn` is no longer its (ended, or taken back): what it
    /// counted, if anything.
    pub fn untrack(&mut self, conn: u64) -> Option<Tally> {
        self.counted.remove(&conn)
    }

    /// Take back what a dead process never read: this round's batch (not
    /// sent; its backends are still counted in flight) and the handoffs
    /// still queued in its channel (counted in `inflight`, which `forget`
    /// uncounts), each with its descriptor. Their clients are uncounted
    /// from this process; they stay counted per IP, being dispatched
    /// again.
    pub fn recover(&mut self, prefix: u8) -> (Taken, Taken) {
        let batch: Vec<(Handoff, OwnedFd)> = std::mem::take(&mut self.batch)
            .into_iter()
            .zip(std::mem::take(&mut self.batch_fds))
            .collect();
        for (h, _) in &batch {
            self.ip_sub(crate::acl::limit_key(h.client.ip(), prefix), 1);
        }
        let mut queued = Vec::new();
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        // Bounded: a dead worker adds nothing.
        for _ in 0..100_000 {
            fds.clear();
            match fdpass::recv_raw(self.worker_end.as_fd(), &mut buf, &mut fds) {
                Ok(Received::Frame(n)) => {
                    let Ok(Down::Conns(handoffs)) = Down::decode(&buf[..n]) else {
                        continue;
                    };
                    for (h, fd) in handoffs.into_iter().zip(fds.drain(..)) {
                        self.ip_sub(crate::acl::limit_key(h.client.ip(), prefix), 1);
                        queued.push((h, fd));
                    }
                }
                Ok(Received::Closed) => break,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    warn!(cause = %err, "could not recover every queued connection");
                    break;
                }
            }
        }
        (batch, queued)
    }

    pub fn ip_add(&mut self, ip: IpAddr) {
        *self.ips.entry(ip).or_default() += 1;
    }

    pub fn ip_sub(&mut self, ip: IpAddr, n: u32) {
        if let Some(c) = self.ips.get_mut(&ip) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.ips.remove(&ip);
            }
        }
    }

    /// Queue a control frame and send what the channel takes.
    pub fn queue_control(&mut self, frame: Vec<u8>) {
        self.outbox.push_back(frame);
        self.flush_outbox();
    }

    /// Queue a config frame, replacing any config still waiting: only the
    /// latest table matters, so a stalled worker holds at most one.
    pub fn queue_config(&mut self, frame: Vec<u8>) {
        if let Some(old) = self
            .outbox
            .iter_mut()
            .find(|f| crate::channel::is_config(f))
        {
            *old = frame;
        } else {
            self.outbox.push_back(frame);
        }
        self.flush_outbox();
    }

    /// Send queued control frames until the channel is full.
    pub fn flush_outbox(&mut self) {
        while let Some(frame) = self.outbox.front() {
            match self.channel.try_send(frame, &[]) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    self.full = true;
                    return;
                }
                Err(err) if fdpass::is_transient(&err) => {
                    // Kernel memory is short: try again when woken.
                    self.full = true;
                    return;
                }
                Err(err) => {
                    debug!(pid = self.pid, cause = %err, "control frame not sent; worker going away");
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Mark the channel watched (a task waits for it to drain); false if
    /// one already does.
    pub fn watch(&mut self) -> bool {
        !std::mem::replace(&mut self.watched, true)
    }

    /// Needs a watcher: full, and nobody waits for it yet.
    pub fn wants_watch(&self) -> bool {
        self.full && !self.watched
    }

    /// The watcher ends (the channel drained, or is gone).
    pub fn unwatch(&mut self) {
        self.watched = false;
    }

    /// The channel has room again: send what the outbox holds. Returns
    /// whether it is still full.
    pub fn writable(&mut self) -> bool {
        self.full = false;
        self.flush_outbox();
        self.full
    }

    /// It reported ready with `build`: it serves from now on.
    pub fn ready(&mut self, build: String) {
        self.role = Role::Serving;
        self.build = Some(build);
        self.deadline = None;
    }

    /// It finishes its connections and takes no new ones; past `deadline`
    /// it is killed. A process already retiring keeps its deadline.
    pub fn retire(&mut self, now: Instant, deadline: Instant) {
        if self.role == Role::Retiring {
            return;
        }
        self.role = Role::Retiring;
        self.retired_at = Some(now);
        self.deadline = Some(deadline);
    }

    /// Its role's deadline has passed (not ready, or not drained, in time).
    pub fn overdue(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The watchdog's look: `received` is its cell's count. True once it
    /// has had something to read for `limit` and read none (hung).
    pub fn hung(&mut self, received: u64, now: Instant, limit: Duration) -> bool {
        let waiting = self.handed > received || (self.full && !self.outbox.is_empty());
        if !waiting || self.role == Role::Starting {
            self.stalled_since = None;
            return false;
        }
        match self.stalled_since {
            Some((_, seen)) if seen != received => {
                self.stalled_since = Some((now, received));
                false
            }
            None => {
                self.stalled_since = Some((now, received));
                false
            }
            Some((since, _)) if now.duration_since(since) >= limit => {
                self.stalled_since = None;
                true
            }
            Some(_) => false,
        }
    }

    /// Ask the process to exit now (SIGKILL), through its pidfd, so a
    /// reused pid can never be hit.
    pub fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, rustix::process::Signal::KILL);
    }
}
