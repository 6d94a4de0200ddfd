//! The front's state and its hot path: dispatching accepted connections.
//!
//! One `Front` value, owned by the front's single-threaded event loop
//! (`Rc<RefCell<Front>>`, never borrowed across an await), is the single
//! source of truth: worker slots, backends, the policy, every counter.
//!
//! Dispatch: for each accepted connection the policy picks a worker slot
//! and a backend; the descriptor joins that worker's batch. When the accept
//! loop reaches EAGAIN, each batch goes out as one `sendmsg`. A worker whose
//! channel is full is skipped (its batch is re-dispatched to others) until
//! its channel drains; when no worker can take a connection, it waits in
//! `pending` and the listeners pause, so clients queue in the kernel backlog
//! instead of being accepted and dropped.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::backends::Backends;
use crate::channel::{Down, Handoff, MAX_FDS};
use crate::cli::LogArgs;
use crate::config::Config;
use crate::metrics::{self as m, Readiness};
use crate::policy::{self, Policy, WorkerView};
use crate::supervisor::Slot;

pub type Shared = Rc<std::cell::RefCell<Front>>;

/// An accepted client connection not yet handed to a worker.
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

impl Conn {
    pub fn ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

/// Front-wide metric handles, resolved once.
pub struct FrontMetrics {
    pub accepted: Counter,
    pub accept_emfile: Counter,
    pub accept_other: Counter,
    pub handoff_failures: Counter,
    pub redispatched: Counter,
    pub failed: Counter,
    pub refused_ip: Counter,
    pub duration: metrics::Histogram,
    pub pending: Gauge,
    pub paused: Gauge,
    pub active: Gauge,
    pub imbalance: Gauge,
    pub open_fds: Gauge,
    pub max_fds: Gauge,
    pub worker_limit: Gauge,
}

impl FrontMetrics {
    fn new() -> FrontMetrics {
        let zero = |c: Counter| {
            c.absolute(0);
            c
        };
        let fm = FrontMetrics {
            accepted: zero(counter!(m::ACCEPTED)),
            accept_emfile: zero(counter!(m::ACCEPT_ERRORS, "reason" => "emfile")),
            accept_other: zero(counter!(m::ACCEPT_ERRORS, "reason" => "other")),
            handoff_failures: zero(counter!(m::HANDOFF_FAILURES)),
            redispatched: zero(counter!(m::REDISPATCHED)),
            failed: zero(counter!(m::FAILED_CONNECTIONS)),
            refused_ip: zero(counter!(m::REFUSED_PER_IP)),
            duration: metrics::histogram!(m::CONNECTION_SECONDS),
            pending: gauge!(m::PENDING),
            paused: gauge!(m::ACCEPT_PAUSED),
            active: gauge!(m::ACTIVE),
            imbalance: gauge!(m::IMBALANCE),
            open_fds: gauge!(m::OPEN_FDS),
            max_fds: gauge!(m::MAX_FDS),
            worker_limit: gauge!(m::WORKER_LIMIT),
        };
        fm.active.set(0.0);
        fm.imbalance.set(1.0);
        fm.pending.set(0.0);
        fm.paused.set(1.0);
        fm
    }
}

pub struct Front {
    /// Weak handle to ourselves, for spawning tasks from `&mut self`.
    pub me: Weak<std::cell::RefCell<Front>>,
    /// The configuration in force; replaced whole on every change.
    pub config: Arc<ArcSwap<Config>>,
    /// The binary workers are started from.
    pub exe: PathBuf,
    /// Logging flags passed on to workers.
    pub log: LogArgs,
    pub slots: Vec<Slot>,
    /// Parallel to `slots`: what policies see.
    pub worker_views: Vec<WorkerView>,
    pub backends: Backends,
    pub policy: Box<dyn Policy>,
    /// Accepted connections waiting for a worker with room.
    pub pending: VecDeque<Conn>,
    /// Most connections one worker process may hold (its descriptor budget).
    pub per_proc_cap: u64,
    /// Listeners are paused; see [`Front::should_pause`].
    pub paused: bool,
    /// Wakes paused listeners.
    pub resume: Rc<Notify>,
    /// Signalled when a worker becomes ready or exits (rollouts and
    /// shutdown wait on it).
    pub changed: Rc<Notify>,
    /// Set when the proxy cannot go on (no worker can run); `run` exits 1.
    pub fatal: Option<String>,
    pub shutting_down: bool,
    /// The flags the proxy started with, re-read (with the config file) on
    /// reload; `None` for an embedded proxy (the demo).
    pub reload_args: Option<crate::cli::ProxyArgs>,
    /// When a pause was last logged.
    pub last_pause_log: Option<Instant>,
    /// READY=1 was sent to the service manager.
    pub announced_ready: bool,
    /// A rolling restart is in progress.
    pub rolling: bool,
    /// With `--cpu-affinity`: the CPU of each worker slot.
    pub worker_cpus: Option<Vec<usize>>,
    /// The open-file limit workers run with.
    pub nofile: u64,
    pub next_conn: u64,
    pub next_proc: u64,
    pub started: Instant,
    pub listen_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub readiness: Readiness,
    pub fm: FrontMetrics,
    /// Open connections per client IP (only with `--max-conns-per-ip`).
    pub per_ip: hashbrown::HashMap<IpAddr, u32>,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl Front {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        exe: PathBuf,
        log: LogArgs,
        per_proc_cap: u64,
        readiness: Readiness,
    ) -> Shared {
        let cfg = config.load_full();
        let backends = Backends::new(&cfg.backends);
        let policy = policy::build(cfg.policy, &backends.views, &cfg.policy_options);
        crate::front::set_policy_metric(None, cfg.policy);
        let slots = (0..cfg.workers).map(Slot::new).collect();
        Rc::new_cyclic(|me| {
            std::cell::RefCell::new(Front {
                me: me.clone(),
                config,
                exe,
                log,
                slots,
                worker_views: vec![WorkerView::default(); cfg.workers],
                backends,
                policy,
                pending: VecDeque::new(),
                per_proc_cap,
                paused: true,
                resume: Rc::new(Notify::new()),
                changed: Rc::new(Notify::new()),
                fatal: None,
                shutting_down: false,
                rolling: false,
                announced_ready: false,
                last_pause_log: None,
                reload_args: None,
                nofile: 0,
                worker_cpus: None,
                next_conn: 0,
                next_proc: 0,
                started: Instant::now(),
                listen_addrs: Vec::new(),
                metrics_addr: None,
                readiness,
                fm: FrontMetrics::new(),
                per_ip: hashbrown::HashMap::new(),
                scratch: Vec::with_capacity(2 + MAX_FDS * crate::channel::HANDOFF_LEN + 2),
            })
        })
    }

    /// A connection came out of `accept`.
    pub fn accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        self.fm.accepted.increment(1);
        let ip = peer.ip();
        if !self.admit_ip(ip) {
            self.fm.refused_ip.increment(1);
            refuse(&stream);
            return;
        }
        self.dispatch(Conn { stream, peer });
        self.update_paused();
    }

    /// Choose a worker and backend for `conn` and add it to that worker's
    /// batch. Returns false if no worker can take it now (it is queued).
    pub fn dispatch(&mut self, conn: Conn) -> bool {
        let ip = conn.ip();
        let Some(slot) = self.policy.pick_worker(ip, &self.worker_views) else {
            self.pending.push_front(conn);
            self.fm.pending.set(self.pending.len() as f64);
            self.update_paused();
            return false;
        };
        let Some(bidx) = self.pick_backend(ip) else {
            // Every backend is disabled or draining: nothing to try.
            debug!(client.addr = %conn.peer, "no enabled backend; closing client");
            self.fm.failed.increment(1);
            self.release_ip(ip);
            refuse(&conn.stream);
            return true;
        };
        let backend = self.backends.list[bidx].id;
        self.backends.add_active(bidx);
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let cap = self.per_proc_cap;
        let track_ip = self.tracks_ips();
        let Some(proc) = self.slots[slot].serving_mut() else {
            // Views and slots disagree: a bug, but not worth a connection.
            warn!(slot, "routable slot without a serving worker");
            self.backends.sub_active_id(backend, 1);
            self.pending.push_front(conn);
            self.refresh_view(slot, cap);
            return false;
        };
        proc.assign(backend);
        proc.unread += 1;
        if track_ip {
            proc.ip_add(ip);
        }
        proc.batch.push(Handoff {
            conn: conn_id,
            backend,
            client: conn.peer,
        });
        proc.batch_fds.push(OwnedFd::from(conn.stream));
        let full_batch = proc.batch.len() >= MAX_FDS;
        self.refresh_view(slot, cap);
        if full_batch {
            self.flush_slot(slot);
        }
        true
    }

    fn pick_backend(&mut self, ip: IpAddr) -> Option<usize> {
        if let Some(i) = self.policy.pick_backend(ip, &self.backends.views) {
            return Some(i);
        }
        // All down: fail open, try them anyway rather than refuse.
        let views = self.backends.fail_open_views();
        if views.iter().any(|v| v.routable) {
            crate::front::log_fail_open();
            return self.policy.pick_backend(ip, &views);
        }
        None
    }

    /// Send every non-empty batch. Batches that cannot be sent are
    /// re-dispatched to other workers (or queued).
    pub fn flush(&mut self) {
        // Each failed slot becomes unroutable, so this ends within
        // `slots.len()` rounds.
        for _round in 0..=self.slots.len() {
            let mut retry = Vec::new();
            for slot in 0..self.slots.len() {
                retry.extend(self.flush_slot(slot));
            }
            if retry.is_empty() {
                break;
            }
            for conn in retry {
                self.dispatch(conn);
            }
        }
        self.fm.pending.set(self.pending.len() as f64);
        self.update_paused();
    }

    /// Send one slot's batch. Returns the connections to re-dispatch if the
    /// channel would not take them.
    fn flush_slot(&mut self, slot: usize) -> Vec<Conn> {
        let cap = self.per_proc_cap;
        let Some(proc) = self.slots[slot]
            .procs
            .iter_mut()
            .find(|p| !p.batch.is_empty())
        else {
            return Vec::new();
        };
        let handoffs = std::mem::take(&mut proc.batch);
        if let Err(err) = Down::encode_conns(&handoffs, &mut self.scratch) {
            warn!(cause = %err, "cannot encode a handoff batch");
        }
        let result = {
            let fds: Vec<BorrowedFd<'_>> = proc.batch_fds.iter().map(|f| f.as_fd()).collect();
            proc.channel.try_send(&self.scratch, &fds)
        };
        match result {
            Ok(()) => {
                let n = handoffs.len() as u64;
                proc.handed += n;
                proc.batch_fds.clear(); // closes our copies
                self.slots[slot].metrics.connections.increment(n);
                self.slots[slot].handed += n;
                Vec::new()
            }
            Err(err) => {
                let wait = retry_wait(&err);
                if wait.is_none() {
                    debug!(slot, cause = %err, "handoff failed; worker going away");
                }
                proc.full = true;
                let id = proc.id;
                let channel = proc.channel.clone();
                let fds = std::mem::take(&mut proc.batch_fds);
                for h in &handoffs {
                    proc.unassign(h.backend, 1);
                    proc.ip_sub(h.client.ip(), 1);
                }
                proc.unread = proc.unread.saturating_sub(handoffs.len() as u64);
                self.fm.handoff_failures.increment(handoffs.len() as u64);
                for h in &handoffs {
                    self.backends.sub_active_id(h.backend, 1);
                }
                self.refresh_view(slot, cap);
                if let Some(wait) = wait {
                    self.watch_writable(slot, id, channel, wait);
                }
                fds.into_iter()
                    .zip(&handoffs)
                    .map(|(fd, h)| Conn {
                        stream: TcpStream::from(fd),
                        peer: h.client,
                    })
                    .collect()
            }
        }
    }

    /// When a full channel drains, make its worker routable again.
    /// Wait until a full channel drains, send what its outbox holds, and
    /// make the worker routable again. One watcher per process at a time.
    fn watch_writable(
        &mut self,
        slot: usize,
        id: u64,
        channel: Rc<crate::channel::fdpass::Channel>,
        wait: Retry,
    ) {
        let Some(p) = self.slots[slot].proc_mut(id) else {
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
                let cap = f.per_proc_cap;
                let Some(p) = f.slots[slot].proc_mut(id) else {
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
                    // Control frames filled it again: keep waiting.
                    wait = Retry::Writable;
                    continue;
                }
                p.watched = false;
                f.refresh_view(slot, cap);
                f.retry_pending();
                return;
            }
        });
    }

    /// Watch every process a control frame left with a full channel.
    pub fn arm_watchers(&mut self) {
        let full: Vec<(usize, u64, Rc<crate::channel::fdpass::Channel>)> = self
            .slots
            .iter()
            .flat_map(|s| s.procs.iter().map(move |p| (s.index, p)))
            .filter(|(_, p)| p.full && !p.watched)
            .map(|(slot, p)| (slot, p.id, p.channel.clone()))
            .collect();
        for (slot, id, channel) in full {
            self.watch_writable(slot, id, channel, Retry::Writable);
        }
    }

    /// Hand queued connections to workers that have room again.
    pub fn retry_pending(&mut self) {
        while let Some(conn) = self.pending.pop_front() {
            if !self.dispatch(conn) {
                break;
            }
        }
        self.flush();
    }

    /// Send the current worker config (timeouts and backend table) to every
    /// live worker process.
    pub fn broadcast_config(&mut self) {
        let frame = self.config_frame();
        for slot in &mut self.slots {
            for p in &mut slot.procs {
                p.queue_control(frame.clone());
            }
        }
        self.arm_watchers();
        self.refresh_all_views();
    }

    pub fn config_frame(&self) -> Vec<u8> {
        let cfg = self.config.load();
        let msg = Down::Config(crate::channel::WorkerConfig {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.idle_timeout,
            drain_timeout: cfg.drain_timeout,
            first_byte_timeout: cfg.client_first_byte_timeout,
            splice: cfg.splice,
            backends: self.backends.worker_table(),
        });
        let mut frame = Vec::new();
        if let Err(err) = msg.encode(&mut frame) {
            warn!(cause = %err, "cannot encode worker config");
        }
        frame
    }
}

/// Close a client connection with a reset: it was refused, not served.
fn refuse(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// When to retry a worker whose channel refused a handoff.
enum Retry {
    /// The socket buffer is full: when it drains.
    Writable,
    /// Kernel memory or in-flight descriptor limit: after a pause
    /// (writability would report ready at once and spin).
    After(std::time::Duration),
}

/// `None` means the channel is broken (the worker is going away).
fn retry_wait(err: &io::Error) -> Option<Retry> {
    use rustix::io::Errno;
    if err.kind() == io::ErrorKind::WouldBlock {
        return Some(Retry::Writable);
    }
    match err.raw_os_error() {
        Some(code)
            if code == Errno::NOBUFS.raw_os_error()
                || code == Errno::TOOMANYREFS.raw_os_error() =>
        {
            Some(Retry::After(std::time::Duration::from_millis(20)))
        }
        _ => None,
    }
}
