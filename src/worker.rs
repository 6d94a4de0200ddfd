//! The worker process: receives client connections from the front over its
//! channel, connects each to a backend and moves bytes both ways.
//!
//! A worker holds no policy state. It runs one single-threaded tokio
//! runtime, counts what it does in its own cell of the statistics table
//! (see [`crate::stats`]), tells the front over the channel only what the
//! front must act on (connect failures, closes when per-client limits are
//! on, draining, wake-ups; see `report`), and exits on its own when the
//! front tells it to drain, when it gets SIGTERM, or when the channel
//! closes (the front is gone): it never outlives the front by more than
//! its drain timeout. Every other signal is ignored. A frame it cannot use
//! is skipped (see `skip`): only a channel that is really gone ends a
//! worker.

mod connect;
mod deadline;
pub mod pump;
mod report;
mod skip;
mod splice;

pub use pump::Meter;

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, warn};

use crate::access_log::AccessLog;
use crate::channel::fdpass::{self, Channel, Damaged, Received};
use crate::channel::{
    BackendEntry, Down, Event, Handoff, MAX_FRAME, ServiceConns, Up, WorkerConfig,
};
use crate::stats::{self, ProcCell, ProcWord};
use report::Reporter;

/// Why a worker stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker slot {slot}: channel fd {fd} is not usable: {source}")]
    Channel {
        slot: usize,
        fd: i32,
        source: std::io::Error,
    },
    #[error("worker slot {slot}: front closed the channel before the handshake")]
    NoConfig { slot: usize },
    #[error("worker slot {slot}: bad handshake from the front: {0}", .why)]
    Handshake { slot: usize, why: String },
    #[error(
        "worker slot {slot}: this worker is build {mine} but the front is build {front}: refusing to run"
    )]
    Build {
        slot: usize,
        mine: String,
        front: String,
    },
    #[error("worker slot {slot}: bad frame from the front: {source}")]
    Frame {
        slot: usize,
        #[source]
        source: crate::channel::FrameError,
    },
    #[error("worker slot {slot}: channel i/o failed: {source}")]
    Io { slot: usize, source: std::io::Error },
}

/// The backend table in force, indexed by backend id.
pub(crate) struct Routes {
    pub config: WorkerConfig,
    by_id: HashMap<u32, usize>,
    /// Per backend: connections begun, to take its source addresses in
    /// turn.
    turns: Vec<Cell<u32>>,
}

impl Routes {
    fn new(config: WorkerConfig) -> Routes {
        let by_id = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
        let turns = config.backends.iter().map(|_| Cell::new(0)).collect();
        Routes {
            config,
            by_id,
            turns,
        }
    }

    /// The address the next connection to backend `id` leaves from (its
    /// source list in turn), or `None`: the system's choice.
    pub fn next_source(&self, id: u32) -> Option<std::net::IpAddr> {
        let i = self.index_of(id)?;
        let list = self
            .config
            .sources
            .get(usize::from(self.config.backends[i].source?))?;
        let turn = self.turns[i].get();
        self.turns[i].set(turn.wrapping_add(1));
        list.get(turn as usize % list.len().max(1)).copied()
    }

    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn entry(&self, id: u32) -> Option<&BackendEntry> {
        self.index_of(id).map(|i| &self.config.backends[i])
    }

    /// The per-connection settings of backend `id`'s service (the
    /// config's own for a backend of the first service, or one unknown).
    pub fn conns(&self, id: u32) -> ServiceConns {
        let own = ServiceConns {
            connect_timeout: self.config.connect_timeout,
            idle_timeout: self.config.idle_timeout,
            first_byte_timeout: self.config.first_byte_timeout,
        };
        self.entry(id)
            .and_then(|b| b.service)
            .and_then(|i| self.config.services.get(usize::from(i)).copied())
            .unwrap_or(own)
    }
}

/// State shared by the tasks of one worker (single-threaded).
pub(crate) struct Worker {
    pub slot: usize,
    /// The latest backend table and settings from the front.
    routes: RefCell<Rc<Routes>>,
    /// Connections received and not yet finished.
    pub active: Cell<usize>,
    /// Signalled whenever `active` drops to zero.
    pub idle: Notify,
    pub reporter: Reporter,
    /// The statistics table and this process's cell in it.
    pub stats: Arc<stats::Table>,
    pub cell_index: usize,
    /// One line per finished connection, when the front turns it on.
    pub access_log: AccessLog,
    /// Frames from the front that could not be used.
    pub skipped: skip::Skipped,
    /// The backend connects in flight and their deadlines.
    pub deadlines: deadline::Deadlines,
}

impl Worker {
    pub fn routes(&self) -> Rc<Routes> {
        self.routes.borrow().clone()
    }

    pub fn cell(&self) -> ProcCell<'_> {
        self.stats.cell(self.cell_index)
    }

    /// Apply a new config: zero the statistics columns whose backend
    /// changed (this process is their only writer), then record which
    /// config is in force.
    fn apply(&self, config: WorkerConfig) {
        let cell = self.cell();
        let old = self.routes();
        let (before, after) = (by_col_of(&old.config), by_col_of(&config));
        for (&col, &id) in &before {
            if after.get(&col) != Some(&id) {
                if let Some(c) = cell.col(usize::from(col)) {
                    c.clear();
                }
            }
        }
        let seq = config.seq;
        debug!(
            slot = self.slot,
            backends = config.backends.len(),
            seq,
            "config updated"
        );
        *self.routes.borrow_mut() = Rc::new(Routes::new(config));
        cell.set(ProcWord::ConfigSeq, seq);
    }

    /// Count `n` finished connections and say so if the front asked.
    pub fn finished(&self, n: u64) {
        let cell = self.cell();
        // Lines the log queue dropped: a relaxed load and store, here
        // rather than on a timer of its own.
        cell.set(ProcWord::LogDropped, crate::logging::dropped_lines());
        // (Counts, fences, then looks at `Wake`: see `ProcCell::finish`.)
        if cell.finish(n) {
            self.reporter.push(Event::Wake);
        }
    }
}

fn by_col_of(config: &WorkerConfig) -> HashMap<u16, u32> {
    config.backends.iter().map(|b| (b.column, b.id)).collect()
}

/// Run a worker on an inherited channel descriptor. Blocks until it exits.
pub fn run(slot: usize, channel_fd: i32) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkerError::Io { slot, source })?;
    let channel_error = |source| WorkerError::Channel {
        slot,
        fd: channel_fd,
        source,
    };
    check_fd(channel_fd).map_err(channel_error)?;
    let fd = crate::sys::adopt_inherited_fd(channel_fd);
    check_channel(&fd).map_err(channel_error)?;
    // Started through /proc/self/exe, the process would be called "exe".
    let _ = rustix::thread::set_name(c"rrproxy");
    // A worker started by a front whose event loop runs SCHED_BATCH
    // inherits it; a worker must preempt when its clients' bytes arrive.
    if let Err(err) = crate::sys::sched_batch(false) {
        debug!(slot, cause = %err, "cannot set the normal scheduling policy");
    }
    let local = tokio::task::LocalSet::new();
    // Every line this process logs says which worker it came from.
    let span = tracing::info_span!("worker", slot);
    let _entered = span.enter();
    local.block_on(&runtime, async move {
        let channel = Channel::new(fd).map_err(|source| WorkerError::Channel {
            slot,
            fd: channel_fd,
            source,
        })?;
        serve(slot, Rc::new(channel)).await
    })
}

/// The handshake: the front's `Hello` (with the statistics table) and the
/// first config. Unusable frames before the config are skipped (their
/// descriptors closed); a drain before it ends the worker at once (`None`).
async fn handshake(
    slot: usize,
    channel: &Channel,
    buf: &mut [u8; MAX_FRAME],
    fds: &mut Vec<OwnedFd>,
    skipped: &skip::Skipped,
) -> Result<Option<(stats::Table, usize, WorkerConfig)>, WorkerError> {
    let bad = |why: String| WorkerError::Handshake { slot, why };
    let (cell, build) = match next_frame(slot, channel, buf, fds).await? {
        Next::Frame(Down::Hello { cell, build }) => (cell as usize, build),
        Next::Frame(other) => return Err(bad(format!("expected hello first, got {other:?}"))),
        Next::Bad { why, .. } => return Err(bad(why)),
        Next::Retry(err) => return Err(WorkerError::Io { slot, source: err }),
        Next::Gone => return Err(WorkerError::NoConfig { slot }),
    };
    let mine = crate::version::build_id();
    if build != mine {
        return Err(WorkerError::Build {
            slot,
            mine: mine.to_string(),
            front: build,
        });
    }
    if fds.len() != 1 {
        return Err(bad(format!(
            "hello carried {} descriptors, expected the statistics table",
            fds.len()
        )));
    }
    let table = stats::Table::open(fds.remove(0)).map_err(|e| bad(e.to_string()))?;
    if cell >= table.procs() {
        return Err(bad(format!("statistics cell {cell} is out of range")));
    }
    let config = loop {
        fds.clear();
        match next_frame(slot, channel, buf, fds).await? {
            Next::Frame(Down::Config(cfg)) => break cfg,
            Next::Frame(Down::Drain { .. }) => return Ok(None),
            Next::Frame(Down::Conns(conns)) => {
                skipped.frame(slot, "connections before any config", fds, &conns, None);
            }
            Next::Frame(Down::Hello { .. }) => {
                skipped.frame(slot, "a second hello", fds, &[], None);
            }
            Next::Frame(Down::AccessLog { .. }) => {
                skipped.frame(
                    slot,
                    "an access log setting before any config",
                    fds,
                    &[],
                    None,
                );
            }
            Next::Bad { why, conns } => skipped.frame(slot, &why, fds, &conns, None),
            Next::Retry(err) => retry_later(skipped, slot, &err).await,
            Next::Gone => return Err(WorkerError::NoConfig { slot }),
        }
    };
    Ok(Some((table, cell, config)))
}

/// The worker's main loop over an already-open channel. Public to the crate
/// so tests and benches can run a worker in-process over a socketpair.
pub(crate) async fn serve(slot: usize, channel: Rc<Channel>) -> Result<(), WorkerError> {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let skipped = skip::Skipped::default();
    let Some((table, cell_index, config)) =
        handshake(slot, &channel, &mut buf, &mut fds, &skipped).await?
    else {
        return Ok(());
    };
    let pid = std::process::id();
    // Splice pipes: this worker's share of the user's pipe pages, among
    // every slot's worker and one replacement during a rolling restart.
    splice::configure(table.slots() + 1);
    let table = Arc::new(table);
    let worker = Rc::new(Worker {
        slot,
        routes: RefCell::new(Rc::new(Routes::new(WorkerConfig {
            backends: Vec::new(),
            ..config.clone()
        }))),
        active: Cell::new(0),
        idle: Notify::new(),
        reporter: Reporter::new(channel.clone()),
        access_log: AccessLog::new(table.clone(), cell_index, slot),
        stats: table,
        cell_index,
        skipped,
        deadlines: deadline::Deadlines::default(),
    });
    worker.cell().set(ProcWord::Pid, u64::from(pid));
    worker.apply(config);
    tokio::task::spawn_local(report::flush_loop(worker.clone()));
    tokio::task::spawn_local({
        let worker = worker.clone();
        async move { worker.deadlines.run().await }
    });
    // SIGTERM drains; every other signal is ignored (Ctrl-C reaches the
    // whole process group, but the front decides how to stop).
    let mut terms =
        signal(SignalKind::terminate()).map_err(|source| WorkerError::Io { slot, source })?;
    crate::signals::ignore_unused(&[rustix::process::Signal::TERM.as_raw()], "worker");
    send_up(
        slot,
        &channel,
        &Up::Ready {
            pid,
            build: crate::version::build_id().to_string(),
        },
    )
    .await?;
    info!(slot, pid, "worker ready");

    let drain_timeout = loop {
        fds.clear();
        let frame = tokio::select! {
            frame = next_frame(slot, &channel, &mut buf, &mut fds) => frame,
            _ = terms.recv() => {
                let timeout = worker.routes().config.drain_timeout;
                info!(slot, timeout = ?timeout, "SIGTERM: draining");
                worker.reporter.push(Event::Draining);
                break timeout;
            }
        };
        match frame? {
            Next::Frame(Down::Conns(conns)) => start_conns(&worker, conns, &mut fds),
            Next::Frame(Down::Config(cfg)) => worker.apply(cfg),
            Next::Frame(Down::AccessLog { target, json }) => worker.access_log.set(target, json),
            Next::Frame(Down::Drain { timeout }) => {
                info!(slot, timeout = ?timeout, "draining on request");
                break timeout;
            }
            Next::Frame(Down::Hello { .. }) => {
                worker
                    .skipped
                    .frame(slot, "a second hello", &mut fds, &[], Some(&worker));
            }
            Next::Bad { why, conns } => {
                // Only this frame's connections are lost; every other
                // connection and the channel go on.
                worker
                    .skipped
                    .frame(slot, &why, &mut fds, &conns, Some(&worker));
            }
            Next::Retry(err) => retry_later(&worker.skipped, slot, &err).await,
            Next::Gone => {
                let timeout = worker.routes().config.drain_timeout;
                info!(slot, timeout = ?timeout, "front is gone; draining");
                break timeout;
            }
        }
    };
    drain(&worker, drain_timeout).await;
    Ok(())
}

/// Wait for the connections in flight to finish, up to `timeout`.
async fn drain(worker: &Rc<Worker>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while worker.active.get() > 0 {
        let idle = worker.idle.notified();
        if worker.active.get() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            warn!(
                slot = worker.slot,
                cut = worker.active.get(),
                "drain timeout: closing connections still open"
            );
            break;
        }
    }
    worker.reporter.flush_now().await;
    info!(slot = worker.slot, "worker exiting");
}

fn start_conns(worker: &Rc<Worker>, conns: Vec<Handoff>, fds: &mut Vec<OwnedFd>) {
    if conns.len() != fds.len() {
        warn!(
            slot = worker.slot,
            described = conns.len(),
            received = fds.len(),
            "handoff frame and descriptors disagree; serving what matches"
        );
    }
    let cell = worker.cell();
    let routes = worker.routes();
    let taken = conns.len() as u64;
    let served = conns.len().min(fds.len()) as u64;
    for (handoff, fd) in conns.into_iter().zip(fds.drain(..)) {
        // Counted on its planned backend from now until it ends or moves.
        if let Some(col) = routes
            .entry(handoff.backend)
            .and_then(|b| cell.col(usize::from(b.column)))
        {
            col.active_up();
        }
        let stream = std::net::TcpStream::from(fd);
        worker.active.set(worker.active.get() + 1);
        let span = tracing::debug_span!(
            "conn",
            id = handoff.conn,
            worker = worker.slot,
            client.addr = tracing::field::Empty,
            server.addr = tracing::field::Empty,
        );
        let w = worker.clone();
        tokio::task::spawn_local(
            async move {
                connect::serve_conn(&w, stream, handoff).await;
                let left = w.active.get() - 1;
                w.active.set(left);
                if left == 0 {
                    w.idle.notify_waiters();
                }
            }
            .instrument(span),
        );
    }
    // Every `Active` raised above is seen by a front that sees these
    // received (it counts limited backends from both).
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    // Handoffs without a descriptor are done with at once.
    cell.bump(ProcWord::Received, taken);
    worker.finished(taken - served);
}

/// What one receive on the channel gave.
enum Next {
    Frame(Down),
    /// A frame that cannot be used, and the connections it described (when
    /// they could be read). Its descriptors are in the caller's `fds`.
    Bad {
        why: String,
        conns: Vec<Handoff>,
    },
    /// A passing failure (out of memory): try again shortly.
    Retry(std::io::Error),
    /// The front closed its end.
    Gone,
}

async fn next_frame(
    slot: usize,
    channel: &Channel,
    buf: &mut [u8; MAX_FRAME],
    fds: &mut Vec<OwnedFd>,
) -> Result<Next, WorkerError> {
    use std::io::ErrorKind;
    let bad = |why: String, conns| Ok(Next::Bad { why, conns });
    match channel.recv(buf, fds).await {
        Ok(Received::Frame(n)) => match Down::decode(&buf[..n]) {
            Ok(msg) => Ok(Next::Frame(msg)),
            Err(err) => bad(err.to_string(), Vec::new()),
        },
        Ok(Received::Closed) => Ok(Next::Gone),
        Err(err) => match fdpass::damage(&err) {
            // The frame is whole, its descriptor list is not.
            Some(Damaged::Descriptors { bytes }) => match Down::decode(&buf[..bytes]) {
                Ok(Down::Conns(conns)) => bad(err.to_string(), conns),
                Ok(_) | Err(_) => bad(err.to_string(), Vec::new()),
            },
            Some(Damaged::Truncated) => bad(err.to_string(), Vec::new()),
            None => match err.kind() {
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::NotConnected => {
                    Ok(Next::Gone)
                }
                ErrorKind::OutOfMemory | ErrorKind::Interrupted => Ok(Next::Retry(err)),
                _ if err.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => {
                    Ok(Next::Retry(err))
                }
                _ => Err(WorkerError::Io { slot, source: err }),
            },
        },
    }
}

/// Wait a little after a passing receive failure.
async fn retry_later(skipped: &skip::Skipped, slot: usize, err: &std::io::Error) {
    skipped.transient(slot, err);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn send_up(slot: usize, channel: &Channel, msg: &Up) -> Result<(), WorkerError> {
    let mut frame = Vec::new();
    msg.encode(&mut frame)
        .map_err(|source| WorkerError::Frame { slot, source })?;
    channel
        .send(&frame, &[])
        .await
        .map_err(|source| WorkerError::Io { slot, source })
}

/// The channel's number must name an open descriptor past the standard
/// ones (adopting stdin, stdout or stderr would close it when the channel
/// goes).
fn check_fd(fd: i32) -> std::io::Result<()> {
    if (0..=2).contains(&fd) {
        return Err(std::io::Error::other(
            "that is a standard descriptor (stdin, stdout or stderr), not a channel",
        ));
    }
    if fd < 0 {
        return Err(std::io::Error::other(
            "a descriptor number cannot be negative",
        ));
    }
    std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|_| ())
}

/// The channel is a Unix `SOCK_SEQPACKET` socket, as the front makes it
/// (see `channel::fdpass::pair`): anything else would be misread.
fn check_channel(fd: &OwnedFd) -> std::io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let not_socket = |e: rustix::io::Errno| {
        if e == rustix::io::Errno::NOTSOCK {
            std::io::Error::other("it is not a socket")
        } else {
            std::io::Error::from(e)
        }
    };
    let domain = sockopt::socket_domain(fd).map_err(not_socket)?;
    if domain != AddressFamily::UNIX {
        let what = match domain {
            AddressFamily::INET => "an IPv4".to_string(),
            AddressFamily::INET6 => "an IPv6".to_string(),
            AddressFamily::NETLINK => "a netlink".to_string(),
            other => format!("a family {}", other.as_raw()),
        };
        return Err(std::io::Error::other(format!(
            "it is {what} socket, not a Unix one"
        )));
    }
    let kind = sockopt::socket_type(fd).map_err(not_socket)?;
    if kind != SocketType::SEQPACKET {
        let what = match kind {
            SocketType::STREAM => "stream".to_string(),
            SocketType::DGRAM => "datagram".to_string(),
            other => format!("type {}", other.as_raw()),
        };
        return Err(std::io::Error::other(format!(
            "it is a Unix {what} socket, not a SEQPACKET one"
        )));
    }
    Ok(())
}
