//! The worker process: receives client connections from the front over its
//! channel, connects each to a backend and moves bytes both ways.
//!
//! A worker holds no policy state. It runs one single-threaded tokio
//! runtime, reports every connection's life back to the front (batched, see
//! `report`) and exits on its own when the front tells it to drain or when
//! the channel closes (the front is gone): it never outlives the front by
//! more than its drain timeout. A frame it cannot use is skipped (see
//! `skip`): only a channel that is really gone ends a worker.

mod connect;
pub mod pump;
mod report;
mod skip;
mod splice;

pub use report::ByteCounter;

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, warn};

use crate::channel::fdpass::{self, Channel, Damaged, Received};
use crate::channel::{Down, Event, Handoff, MAX_FRAME, Up, WorkerConfig};
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
    #[error("worker slot {slot}: front closed the channel before sending a config")]
    NoConfig { slot: usize },
    #[error("worker slot {slot}: bad frame from the front: {source}")]
    Frame {
        slot: usize,
        #[source]
        source: crate::channel::FrameError,
    },
    #[error("worker slot {slot}: channel i/o failed: {source}")]
    Io { slot: usize, source: std::io::Error },
}

/// State shared by the tasks of one worker (single-threaded).
pub(crate) struct Worker {
    pub slot: usize,
    /// The latest config from the front, swapped whole on every update.
    pub config: ArcSwap<WorkerConfig>,
    /// Connections received and not yet finished.
    pub active: Cell<usize>,
    /// Signalled whenever `active` drops to zero.
    pub idle: Notify,
    pub reporter: Reporter,
    /// Frames from the front that could not be used.
    pub skipped: skip::Skipped,
}

/// Run a worker on an inherited channel descriptor. Blocks until it exits.
pub fn run(slot: usize, channel_fd: i32) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkerError::Io { slot, source })?;
    check_fd(channel_fd).map_err(|source| WorkerError::Channel {
        slot,
        fd: channel_fd,
        source,
    })?;
    let fd = crate::sys::adopt_inherited_fd(channel_fd);
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

/// The worker's main loop over an already-open channel. Public to the crate
/// so tests and benches can run a worker in-process over a socketpair.
pub(crate) async fn serve(slot: usize, channel: Rc<Channel>) -> Result<(), WorkerError> {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let skipped = skip::Skipped::default();
    let config = loop {
        fds.clear();
        match next_frame(slot, &channel, &mut buf, &mut fds).await? {
            Next::Frame(Down::Config(cfg)) => break cfg,
            Next::Frame(Down::Drain { .. }) => return Ok(()),
            Next::Frame(Down::Conns(conns)) => {
                skipped.frame(
                    slot,
                    "connections before any config",
                    &mut fds,
                    &conns,
                    None,
                );
            }
            Next::Bad { why, conns } => skipped.frame(slot, &why, &mut fds, &conns, None),
            Next::Retry(err) => retry_later(&skipped, slot, &err).await,
            Next::Gone => return Err(WorkerError::NoConfig { slot }),
        }
    };
    let worker = Rc::new(Worker {
        slot,
        config: ArcSwap::from_pointee(config),
        active: Cell::new(0),
        idle: Notify::new(),
        reporter: Reporter::new(channel.clone()),
        skipped,
    });
    tokio::task::spawn_local(report::flush_loop(worker.clone()));
    tokio::task::spawn_local(report::bytes_loop(worker.clone()));
    // Ctrl-C reaches the whole process group: the front decides how to
    // stop, so a worker ignores SIGINT. SIGTERM sent to a worker (or to
    // the group) drains it like a request from the front.
    let mut interrupts =
        signal(SignalKind::interrupt()).map_err(|source| WorkerError::Io { slot, source })?;
    tokio::task::spawn_local(async move { while interrupts.recv().await.is_some() {} });
    let mut terms =
        signal(SignalKind::terminate()).map_err(|source| WorkerError::Io { slot, source })?;
    let pid = std::process::id();
    send_up(slot, &channel, &Up::Ready { pid }).await?;
    info!(slot, pid, "worker ready");

    let drain_timeout = loop {
        fds.clear();
        let frame = tokio::select! {
            frame = next_frame(slot, &channel, &mut buf, &mut fds) => frame,
            _ = terms.recv() => {
                let timeout = worker.config.load().drain_timeout;
                info!(slot, timeout = ?timeout, "SIGTERM: draining");
                break timeout;
            }
        };
        match frame? {
            Next::Frame(Down::Conns(conns)) => start_conns(&worker, conns, &mut fds),
            Next::Frame(Down::Config(cfg)) => {
                debug!(slot, backends = cfg.backends.len(), "config updated");
                worker.config.store(Arc::new(cfg));
            }
            Next::Frame(Down::Drain { timeout }) => {
                info!(slot, timeout = ?timeout, "draining on request");
                break timeout;
            }
            Next::Bad { why, conns } => {
                // Only this frame's connections are lost; every other
                // connection and the channel go on.
                let reporter = Some(&worker.reporter);
                worker.skipped.frame(slot, &why, &mut fds, &conns, reporter);
            }
            Next::Retry(err) => retry_later(&worker.skipped, slot, &err).await,
            Next::Gone => {
                let timeout = worker.config.load().drain_timeout;
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
    worker.reporter.report_bytes();
    worker.reporter.flush_now().await;
    info!(slot = worker.slot, "worker exiting");
}

fn start_conns(worker: &Rc<Worker>, mut conns: Vec<Handoff>, fds: &mut Vec<OwnedFd>) {
    if conns.len() != fds.len() {
        warn!(
            slot = worker.slot,
            described = conns.len(),
            received = fds.len(),
            "handoff frame and descriptors disagree; serving what matches"
        );
    }
    worker.reporter.push(Event::Received {
        count: conns.len() as u32,
    });
    // Connections described without a descriptor never start: the front
    // hears they closed, so its counts stay right.
    for lost in conns.drain(fds.len().min(conns.len())..) {
        worker.reporter.push(Event::Closed {
            backend: lost.backend,
            opened: false,
            client: lost.client.ip(),
            duration: Duration::ZERO,
        });
    }
    for (handoff, fd) in conns.into_iter().zip(fds.drain(..)) {
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

fn check_fd(fd: i32) -> std::io::Result<()> {
    if fd < 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|_| ())
}
