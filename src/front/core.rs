//! The [`Front`] value and its hot path: dispatching accepted connections.
//!
//! Dispatch: for each accepted connection the policy picks a worker slot
//! and a backend; the descriptor joins that worker's batch. When the accept
//! loop reaches EAGAIN, each batch goes out as one `sendmsg`. A worker whose
//! channel is full is skipped (its batch is re-dispatched to others) until
//! its channel drains; when no worker can take a connection, it waits in
//! the ledger's `pending` queue and the listeners pause, so clients queue
//! in the kernel backlog instead of being accepted and dropped.
//!
//! Per connection the front does one pick, one push onto a batch and an
//! O(1) update of the chosen slot's view; workers account for the rest in
//! the statistics table, so nothing comes back per connection.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{Access, Backends, Counters, Ledger, Listeners};
use crate::channel::{Down, Fallbacks, Handoff, MAX_FALLBACKS, MAX_FDS};
use crate::config::{Config, Limits};
use crate::policy::{self, Policy, WorkerView};
use crate::stats::{FrontWord, ProcWord, SlotWord};
use crate::supervisor::Workers;

pub type Shared = Rc<std::cell::RefCell<Front>>;

/// An accepted client connection not yet handed to a worker.
pub struct Conn {
    pub stream: TcpStream,
    /// The client: the connection's peer, or for a connection from an
    /// `--accept-proxy` source, the source its PROXY header named.
    pub peer: SocketAddr,
    /// The address the client connected to, when the socket cannot tell
    /// (a PROXY header's destination); `None`: the socket's local address.
    pub destination: Option<SocketAddr>,
}

impl Conn {
    pub fn ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// A connection described by `h`, on its descriptor (taken back from a
    /// worker's channel).
    pub fn of_handoff(stream: TcpStream, h: &Handoff) -> Conn {
        Conn {
            stream,
            peer: h.client,
            destination: h.destination,
        }
    }
}

/// Where the front is in its life.
pub struct State {
    /// Signalled when a worker becomes ready or exits, or the front's state
    /// otherwise changes in a way waiters care about (rollouts, shutdown,
    /// upgrades wait on it).
    pub changed: Rc<Notify>,
    /// Set when the proxy cannot go on (no worker can run); it exits 1.
    pub fatal: Option<String>,
    pub shutting_down: bool,
    /// A rolling restart of the workers is in progress.
    pub rolling: bool,
    /// An upgrade of the front is in progress.
    pub upgrading: bool,
    /// Frozen for a handover: no accepting, no reading of channels, no
    /// reacting to exits; `thaw` wakes everything that waits.
    pub frozen: bool,
    pub thaw: Rc<Notify>,
    /// READY=1 was sent to the service manager.
    pub announced_ready: bool,
    /// The flags the proxy started with, re-read (with the config file) on
    /// reload; `None` for an embedded proxy (the demo).
    pub reload_args: Option<crate::cli::ProxyArgs>,
    /// The original command line (re-used by an upgrade).
    pub argv: Vec<std::ffi::OsString>,
    /// The path this front was started from, as it was then: an upgrade
    /// without a path starts the binary now at this path.
    pub exe_path: std::path::PathBuf,
    /// This front has handed everything to a successor and must exit
    /// without touching a worker.
    pub handed_over: bool,
    pub started: Instant,
    /// The outcome of the last rolling restart, for `ctl status`.
    pub last_roll: Option<Result<String, String>>,
    /// When a pause was last logged.
    pub last_pause_log: Option<Instant>,
    /// During a take-over: when the previous front stopped accepting.
    pub frozen_at_us: u64,
    /// What `ctl` changed since the config file was last applied.
    pub overrides: super::admin::Overrides,
}

impl State {
    pub fn new() -> State {
        State {
            changed: Rc::new(Notify::new()),
            fatal: None,
            shutting_down: false,
            rolling: false,
            upgrading: false,
            frozen: false,
            thaw: Rc::new(Notify::new()),
            announced_ready: false,
            reload_args: None,
            argv: std::env::args_os().collect(),
            exe_path: std::env::current_exe()
                .ok()
                .or_else(|| std::env::args_os().next().map(Into::into))
                .unwrap_or_default(),
            handed_over: false,
            started: Instant::now(),
            last_roll: None,
            last_pause_log: None,
            overrides: Default::default(),
            frozen_at_us: 0,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

pub struct Front {
    /// Weak handle to ourselves, for spawning tasks from `&mut self`.
    pub me: Weak<std::cell::RefCell<Front>>,
    /// The configuration in force; replaced whole on every change.
    pub config: Arc<ArcSwap<Config>>,
    /// The limits of `config`, copied out for the hot path.
    pub limits: Limits,
    pub listeners: Listeners,
    pub workers: Workers,
    pub backends: Backends,
    /// Who the client is (PROXY headers) and whether it is served (ACLs).
    pub access: Access,
    pub policy: Box<dyn Policy>,
    pub ledger: Ledger,
    pub counters: Counters,
    pub state: State,
    /// Parallel to `workers.slots`: what policies see.
    pub views: Vec<WorkerView>,
    /// Slots whose view is routable (kept with `views`).
    pub routable_slots: usize,
    /// Sum of `views[..].active` (kept with `views`).
    pub total_active: u64,
    /// `--retries` of the config in force (for the hot path).
    pub retries: usize,
    /// A config broadcast is scheduled for the end of this loop turn.
    pub config_dirty: bool,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl Front {
    /// Assemble a front from its parts (at start, or from a handover).
    pub fn assemble(
        config: Arc<ArcSwap<Config>>,
        listeners: Listeners,
        workers: Workers,
        backends: Backends,
        ledger: Ledger,
        counters: Counters,
        state: State,
    ) -> Shared {
        let cfg = config.load_full();
        let policy = policy::build(cfg.policy, &backends.views, &cfg.policy_options);
        let slots = workers.slots.len();
        Rc::new_cyclic(|me| {
            std::cell::RefCell::new(Front {
                me: me.clone(),
                limits: cfg.limits,
                retries: usize::from(cfg.retries),
                access: Access::new(&cfg),
                config,
                listeners,
                workers,
                backends,
                policy,
                ledger,
                counters,
                state,
                views: vec![WorkerView::default(); slots],
                routable_slots: 0,
                total_active: 0,
                config_dirty: false,
                scratch: Vec::with_capacity(2 + MAX_FDS * crate::channel::HANDOFF_LEN + 2),
            })
        })
    }

    /// A connection came out of `accept`. One from an `--accept-proxy`
    /// source first has its PROXY header read, off the accept loop; any
    /// other is admitted now (`Front::admit`, in `access`: access list,
    /// per-IP limit, dispatch).
    pub fn accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        self.counters.bump(FrontWord::Accepted, 1);
        if self.access.trusts(peer.ip()) {
            self.read_header(stream, peer);
            return;
        }
        self.admit(Conn {
            stream,
            peer,
            destination: None,
        });
    }

    /// Choose a worker and backend for `conn` and add it to that worker's
    /// batch. Returns false if no worker can take it now (it is queued).
    pub fn dispatch(&mut self, conn: Conn) -> bool {
        let ip = conn.ip();
        let Some(slot) = self.policy.pick_worker(ip, &self.views) else {
            self.ledger.pending.push_front(conn);
            self.publish_pending();
            return false;
        };
        let Some((bidx, fallbacks)) = self.pick_backend(ip) else {
            // Every backend is disabled or draining: nothing to try.
            debug!(client.addr = %conn.peer, "no enabled backend; closing client");
            self.counters.bump(FrontWord::FailedFront, 1);
            self.release_ip(ip);
            refuse(&conn.stream);
            return true;
        };
        let backend = self.backends.list[bidx].id;
        let track_ip = self.limits.per_ip().map(|_| self.client_key(ip));
        let conn_id = self.ledger.next_conn;
        self.ledger.next_conn += 1;
        let Some(proc) = self.workers.slots[slot].serving_mut() else {
            // Views and slots disagree: a bug, but not worth a connection.
            warn!(slot, "routable slot without a serving worker");
            self.ledger.pending.push_front(conn);
            self.refresh_view(slot);
            return false;
        };
        if let Some(key) = track_ip {
            proc.ip_add(key);
        }
        proc.batch.push(Handoff {
            conn: conn_id,
            backend,
            fallbacks,
            client: conn.peer,
            destination: conn.destination,
        });
        proc.batch_fds.push(OwnedFd::from(conn.stream));
        let full_batch = proc.batch.len() >= MAX_FDS;
        self.backends.add_inflight(bidx);
        self.refresh_view(slot);
        if full_batch {
            let retry = self.flush_slot(slot);
            for conn in retry {
                self.dispatch(conn);
            }
        }
        true
    }

    /// The backend for a connection from `ip`, and the ones to try after
    /// it (`--retries` of them at most, policy-ordered).
    fn pick_backend(&mut self, ip: IpAddr) -> Option<(usize, Fallbacks)> {
        let retries = self.retries;
        let pick = |policy: &mut Box<dyn Policy>, views: &[crate::policy::BackendView]| {
            let first = policy.pick_backend(ip, views)?;
            let mut idx = [0usize; MAX_FALLBACKS];
            let n = policy.fallbacks(ip, first, views, &mut idx[..retries.min(MAX_FALLBACKS)]);
            let mut ids = [0u32; MAX_FALLBACKS];
            for (id, &i) in ids.iter_mut().zip(&idx[..n]) {
                *id = self.backends.list[i].id;
            }
            Some((first, Fallbacks::new(&ids[..n])))
        };
        if let Some(p) = pick(&mut self.policy, &self.backends.views) {
            return Some(p);
        }
        // All down: fail open, try them anyway rather than refuse.
        let views = self.backends.fail_open_views();
        if views.iter().any(|v| v.routable) {
            super::log_fail_open();
            return pick(&mut self.policy, &views);
        }
        None
    }

    /// Send every non-empty batch. Batches that cannot be sent are
    /// re-dispatched to other workers (or queued).
    pub fn flush(&mut self) {
        // Each failed slot becomes unroutable, so this ends within
        // `slots.len()` rounds.
        for _round in 0..=self.workers.slots.len() {
            let mut retry = Vec::new();
            for slot in 0..self.workers.slots.len() {
                retry.extend(self.flush_slot(slot));
            }
            if retry.is_empty() {
                break;
            }
            for conn in retry {
                self.dispatch(conn);
            }
        }
        self.publish_pending();
        self.update_paused();
    }

    /// Send one slot's batch. Returns the connections to re-dispatch if the
    /// channel would not take them.
    fn flush_slot(&mut self, slot: usize) -> Vec<Conn> {
        if self.config_dirty {
            // A handoff planned on a new backend must not reach a worker
            // before the table that lists it.
            self.config_dirty = false;
            self.broadcast_config();
        }
        let Some(pi) = self.workers.slots[slot]
            .procs
            .iter()
            .position(|p| !p.batch.is_empty())
        else {
            return Vec::new();
        };
        let prefix = self.limits.per_ip_ipv6_prefix;
        let proc = &mut self.workers.slots[slot].procs[pi];
        if let Err(err) = Down::encode_conns(&proc.batch, &mut self.scratch) {
            warn!(cause = %err, "cannot encode a handoff batch");
        }
        let result = proc.channel.try_send_owned(&self.scratch, &proc.batch_fds);
        let n = proc.batch.len() as u64;
        match result {
            Ok(()) => {
                if proc.unread_since.is_none() {
                    proc.unread_since = Some(Instant::now());
                }
                proc.handed += n;
                proc.inflight
                    .extend(proc.batch.drain(..).map(|h| h.backend));
                proc.batch_fds.clear(); // closes our copies
                let (handed, cell) = (proc.handed, proc.cell);
                self.counters.cell(cell).set(ProcWord::Handed, handed);
                crate::stats::bump(self.counters.table.slot(slot, SlotWord::Handed), n);
                Vec::new()
            }
            Err(err) => {
                let handoffs = std::mem::take(&mut proc.batch);
                let fds = std::mem::take(&mut proc.batch_fds);
                proc.full = true;
                for h in &handoffs {
                    proc.ip_sub(super::ledger::client_of(h.client.ip(), prefix), 1);
                }
                let (id, channel) = (proc.id, proc.channel.clone());
                let wait = retry_wait(&err);
                if wait.is_none() {
                    debug!(slot, cause = %err, "handoff failed; worker going away");
                }
                self.counters.bump(FrontWord::HandoffFailures, n);
                for h in &handoffs {
                    self.backends.sub_inflight(h.backend);
                }
                self.refresh_view(slot);
                if let Some(wait) = wait {
                    self.watch_writable(slot, id, channel, wait);
                }
                fds.into_iter()
                    .zip(&handoffs)
                    .map(|(fd, h)| Conn::of_handoff(TcpStream::from(fd), h))
                    .collect()
            }
        }
    }

    /// Wait until a full channel drains (or a transient send error has had
    /// time to pass), send what its outbox holds, and make the worker
    /// routable again. One watcher per process at a time.
    fn watch_writable(
        &mut self,
        slot: usize,
        id: u64,
        channel: Rc<crate::channel::fdpass::Channel>,
        wait: Retry,
    ) {
        let Some(p) = self.workers.slots[slot].proc_mut(id) else {
            return;
        };
        if p.watched {
            return;
        }
        p.watched = true;
        let me = self.me.clone();
        tokio::task::spawn_local(async move {
            let mut wait = wait;
            loop {
                let ok = match wait {
                    Retry::Writable => channel.writable().await.is_ok(),
                    Retry::After(delay) => {
                        tokio::time::sleep(delay).await;
                        true
                    }
                };
                let Some(front) = me.upgrade() else { return };
                let mut f = front.borrow_mut();
                let Some(p) = f.workers.slots[slot].proc_mut(id) else {
                    return;
                };
                if !ok {
                    // The channel is broken: the worker is going away and
                    // its exit is handled elsewhere.
                    p.watched = false;
                    return;
                }
                p.full = false;
                p.flush_outbox();
                if p.full {
                    // Control frames filled it again (or the kernel is
                    // still short of memory): keep waiting, backing off.
                    wait = match wait {
                        Retry::After(d) => Retry::After((d * 2).min(RETRY_MAX)),
                        Retry::Writable => Retry::Writable,
                    };
                    continue;
                }
                p.watched = false;
                f.refresh_view(slot);
                f.retry_pending();
                return;
            }
        });
    }

    /// Watch every process a control frame left with a full channel.
    pub fn arm_watchers(&mut self) {
        let full: Vec<(usize, u64, Rc<crate::channel::fdpass::Channel>)> = self
            .workers
            .slots
            .iter()
            .flat_map(|s| s.procs.iter().map(move |p| (s.index, p)))
            .filter(|(_, p)| p.full && !p.watched)
            .map(|(slot, p)| (slot, p.id, p.channel.clone()))
            .collect();
        for (slot, id, channel) in full {
            self.watch_writable(slot, id, channel, Retry::After(RETRY_MIN));
        }
    }

    /// Hand queued connections to workers that have room again.
    pub fn retry_pending(&mut self) {
        if self.state.frozen {
            return;
        }
        while let Some(conn) = self.ledger.pending.pop_front() {
            if !self.dispatch(conn) {
                break;
            }
        }
        self.flush();
    }

    /// The backend table or settings changed: send workers the new config
    /// at the end of this loop turn, once however many changes it holds.
    pub fn config_changed(&mut self) {
        self.refresh_all_views();
        if self.config_dirty {
            return;
        }
        self.config_dirty = true;
        let me = self.me.clone();
        tokio::task::spawn_local(async move {
            tokio::task::yield_now().await;
            if let Some(front) = me.upgrade() {
                let mut f = front.borrow_mut();
                if f.config_dirty {
                    f.config_dirty = false;
                    f.broadcast_config();
                }
            }
        });
    }

    /// Send the current worker config to every live worker process now. A
    /// worker that has not taken the last one gets this one instead.
    pub fn broadcast_config(&mut self) {
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

    /// The current worker config, encoded, with a new sequence number;
    /// `None` (logged) if it cannot be encoded, which the backend limit
    /// is there to prevent.
    pub fn config_frame(&mut self) -> Option<Vec<u8>> {
        let cfg = self.config.load();
        let (backends, sources) = self.backends.worker_table(&cfg.source);
        let msg = Down::Config(crate::channel::WorkerConfig {
            seq: self.backends.next_table_seq(),
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.idle_timeout,
            drain_timeout: cfg.drain_timeout,
            first_byte_timeout: cfg.client_first_byte_timeout,
            splice: cfg.splice,
            report_closes: cfg.limits.per_ip().is_some(),
            backends,
            sources,
        });
        let mut frame = Vec::new();
        match msg.encode(&mut frame) {
            Ok(()) => Some(frame),
            Err(err) => {
                tracing::error!(cause = %err, "cannot encode the worker config; workers keep the previous one");
                None
            }
        }
    }
}

/// Close a client connection with a reset: it was refused, not served.
pub fn refuse(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// When to retry a worker whose channel refused a handoff.
enum Retry {
    /// The socket buffer is full: when it drains.
    Writable,
    /// Kernel memory or in-flight descriptor limit: after a pause that
    /// doubles while it lasts (writability would report ready at once and
    /// spin).
    After(std::time::Duration),
}

/// `None` means the channel is broken (the worker is going away).
fn retry_wait(err: &io::Error) -> Option<Retry> {
    if err.kind() == io::ErrorKind::WouldBlock {
        return Some(Retry::Writable);
    }
    crate::channel::fdpass::is_transient(err).then_some(Retry::After(RETRY_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    fn os(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    /// A full channel waits for room; a kernel that is short of memory or
    /// of in-flight descriptors is retried after a pause (the worker is
    /// not given up on); anything else means the channel is gone. (The
    /// kernel errors cannot be caused on purpose as root, which is exempt
    /// from the in-flight limit, so the classification is tested here.)
    #[test]
    fn a_refused_handoff_is_retried_unless_the_channel_is_gone() {
        assert!(matches!(
            retry_wait(&io::Error::from(io::ErrorKind::WouldBlock)),
            Some(Retry::Writable)
        ));
        assert!(matches!(
            retry_wait(&os(Errno::AGAIN)),
            Some(Retry::Writable)
        ));
        for e in [Errno::NOBUFS, Errno::NOMEM, Errno::TOOMANYREFS] {
            assert!(
                matches!(retry_wait(&os(e)), Some(Retry::After(d)) if d == RETRY_MIN),
                "{e:?}"
            );
        }
        for e in [Errno::PIPE, Errno::CONNRESET, Errno::BADF] {
            assert!(retry_wait(&os(e)).is_none(), "{e:?}");
        }
    }
}
