//! Moving bytes between a client and its backend, both directions at once.
//!
//! Semantics, as a user of a TCP proxy expects them:
//! - bytes arrive intact and in order;
//! - half-close is honoured: EOF from one side becomes a write shutdown on
//!   the other, and the opposite direction keeps flowing;
//! - a reset is propagated: if either side resets, both are closed with RST;
//! - a connection on which nothing moved in either direction for the idle
//!   timeout is closed: with a FIN to a side that was merely quiet, with a
//!   reset to a side that stopped reading (bytes for it were stuck), so no
//!   close waits behind data nobody will read;
//! - with a first-byte timeout, a client that has sent nothing (no byte,
//!   no EOF) that long after the pump started is closed, whatever the
//!   backend sent meanwhile.
//!
//! The [`Outcome`] says how the connection ended and which side ended it
//! (the one whose EOF or error came first), for the access log.
//!
//! Bytes move by splice(2) through a pipe (the `splice` module) or, when
//! that is off or impossible, through a buffer. Pipes and buffers come from
//! small per-thread pools only when a socket is readable and go back right
//! after the write, so an idle connection holds neither.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::splice;
pub use crate::access_log::ConnBytes;
use crate::channel::Splice;
use crate::stats::bump;

/// Size of one copy buffer.
pub const BUF_SIZE: usize = 64 * 1024;
/// In `Auto` splice mode, a spliced chunk smaller than this sends the
/// direction back to buffered copies.
const SMALL_CHUNK: usize = 16 * 1024;
/// Buffers kept for reuse per worker thread.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// Where the bytes a connection moves are counted: the worker's totals and
/// the backend's column in its statistics cell (this worker is the only
/// writer of both, so a count is a plain load and store), and the
/// connection's own totals (for its access log line).
#[derive(Clone, Copy)]
pub struct Meter<'a> {
    pub from_clients: &'a AtomicU64,
    pub to_clients: &'a AtomicU64,
    pub to_backend: &'a AtomicU64,
    pub from_backend: &'a AtomicU64,
    pub conn: &'a ConnBytes,
}

impl Meter<'_> {
    fn up(&self, n: usize) {
        bump(self.from_clients, n as u64);
        bump(self.to_backend, n as u64);
        self.conn.up.set(self.conn.up.get() + n as u64);
    }

    fn down(&self, n: usize) {
        bump(self.from_backend, n as u64);
        bump(self.to_clients, n as u64);
        self.conn.down.set(self.conn.down.get() + n as u64);
    }
}

/// One end of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// How a pumped connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions reached EOF and were shut down; the side named
    /// sent its EOF first (it closed the connection).
    Done(Side),
    /// Nothing moved for the idle timeout.
    IdleTimeout(Stuck),
    /// The client sent nothing within the first-byte timeout.
    FirstByteTimeout(Stuck),
    /// A side failed (reset, broken pipe...): the side named, the first
    /// to fail.
    Reset(Side, io::Error),
}

/// Which sides had bytes waiting to be written to them when a timeout
/// ended the pump: they stopped reading, and get a reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stuck {
    pub client: bool,
    pub backend: bool,
}

/// Which way bytes flow, for counting.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    /// The side bytes come from.
    fn source(self) -> Side {
        match self {
            Dir::Up => Side::Client,
            Dir::Down => Side::Backend,
        }
    }
}

/// Pump until both directions are done, a side resets, the idle timeout,
/// or (if given) the client's first-byte timeout.
pub async fn pump(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
    first_byte: Option<Duration>,
    splice: Splice,
    meter: &Meter<'_>,
) -> Outcome {
    let now = Instant::now();
    let (client_r, client_w) = client.split();
    let (backend_r, backend_w) = backend.split();
    let flow = Flow {
        splice,
        meter,
        idle,
        silent_until: first_byte.map(|d| now + d),
        last: Cell::new(now),
        first_eof: Cell::new(None),
        spoke: Cell::new(false),
        stuck: [Cell::new(false), Cell::new(false)],
    };
    let up = copy(client_r, backend_w, Dir::Up, &flow);
    let down = copy(backend_r, client_w, Dir::Down, &flow);
    let both = async { tokio::try_join!(up, down) };
    tokio::select! {
        res = both => match res {
            // (Both reached EOF, so one was first.)
            Ok(((), ())) => Outcome::Done(flow.first_eof.get().map_or(Side::Client, Dir::source)),
            Err((side, err)) => Outcome::Reset(side, err),
        },
        idle = watch(&flow) => if idle {
            Outcome::IdleTimeout(flow.stuck())
        } else {
            Outcome::FirstByteTimeout(flow.stuck())
        },
    }
}

/// What both directions of one connection share.
struct Flow<'a> {
    splice: Splice,
    meter: &'a Meter<'a>,
    idle: Duration,
    /// The first-byte deadline, if there is one.
    silent_until: Option<Instant>,
    /// When a byte last moved either way (idle timeout).
    last: Cell<Instant>,
    /// The direction that reached EOF first, once one has.
    first_eof: Cell<Option<Dir>>,
    /// The client has sent a byte or its EOF.
    spoke: Cell<bool>,
    /// Per direction (`Dir as usize`): a write to its destination is in
    /// progress.
    stuck: [Cell<bool>; 2],
}

impl Flow<'_> {
    fn stuck(&self) -> Stuck {
        Stuck {
            backend: self.stuck[Dir::Up as usize].get(),
            client: self.stuck[Dir::Down as usize].get(),
        }
    }
}

/// Resolves with `true` once nothing moved for the idle timeout, or with
/// `false` once the first-byte deadline passed without the client
/// speaking. One timer serves both, so an idle connection carries one.
async fn watch(flow: &Flow<'_>) -> bool {
    loop {
        let idle_at = flow.last.get() + flow.idle;
        let silent_at = flow.silent_until.filter(|_| !flow.spoke.get());
        tokio::time::sleep_until(silent_at.map_or(idle_at, |t| t.min(idle_at))).await;
        let now = Instant::now();
        if silent_at.is_some_and(|t| t <= now) && !flow.spoke.get() {
            return false;
        }
        if flow.last.get() + flow.idle <= now {
            return true;
        }
    }
}

/// Copy `src` to `dst` until EOF, then shut down `dst`'s write side.
/// Each chunk goes through a pipe (splice) or a pooled buffer, as the
/// splice mode says: `Auto` starts with buffers, which cost the fewest
/// system calls for small messages, moves to pipes once a read fills a
/// whole buffer (a bulk transfer), and back once chunks are small again.
/// Neither a pipe nor a buffer is held while the source has nothing to say.
async fn copy(
    mut src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    dir: Dir,
    flow: &Flow<'_>,
) -> Result<(), (Side, io::Error)> {
    let (src_name, dst_name) = match dir {
        Dir::Up => (Side::Client, Side::Backend),
        Dir::Down => (Side::Backend, Side::Client),
    };
    let mut piping = flow.splice == Splice::On;
    loop {
        poll_fn(|cx| src.as_ref().poll_read_ready(cx))
            .await
            .map_err(|e| (src_name, e))?;
        let moved = match piping.then(splice::take_pipe) {
            Some(Ok(pipe)) => match splice::fill(&pipe, src.as_ref()) {
                Ok(0) => {
                    splice::give_pipe(pipe);
                    0
                }
                Ok(n) => {
                    if flow.splice == Splice::Auto && n < SMALL_CHUNK {
                        piping = false;
                    }
                    // Not boxed: `drain` waits with `poll_write_ready`, so its
                    // future is a few words and the idle connection's task
                    // stays small without an allocation per chunk.
                    flow.stuck[dir as usize].set(true);
                    let drained =
                        splice::drain(&pipe, dst.as_ref(), n, || flow.last.set(Instant::now()))
                            .await;
                    flow.stuck[dir as usize].set(false);
                    drained.map_err(|e| (dst_name, e))?;
                    splice::give_pipe(pipe); // empty again
                    n
                }
                Err(e) if retry(&e) => {
                    splice::give_pipe(pipe);
                    continue;
                }
                Err(e) => return Err((src_name, e)),
            },
            // No pipe to be had (descriptor allowance) or splicing is off.
            Some(Err(_)) | None => {
                let mut buf = take_buf();
                // Readable now, so this returns at once; a short read tells
                // tokio the socket is drained (no extra EAGAIN read).
                let n = match src.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) if retry(&e) => {
                        give_buf(buf);
                        continue;
                    }
                    Err(e) => {
                        give_buf(buf);
                        return Err((src_name, e));
                    }
                };
                flow.stuck[dir as usize].set(true);
                let written = write_all(dst.as_ref(), &buf[..n], &flow.last).await;
                flow.stuck[dir as usize].set(false);
                give_buf(buf);
                written.map_err(|e| (dst_name, e))?;
                if flow.splice == Splice::Auto && n == BUF_SIZE {
                    piping = true;
                }
                n
            }
        };
        if let Dir::Up = dir {
            flow.spoke.set(true);
        }
        if moved == 0 {
            // Half-close: pass the EOF on, keep the other way open. When
            // the other way is already done, the close that follows sends
            // the FIN anyway.
            if flow.first_eof.get().is_some() {
                return Ok(());
            }
            flow.first_eof.set(Some(dir));
            return match SockRef::from(dst.as_ref()).shutdown(Shutdown::Write) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                Err(e) => Err((dst_name, e)),
            };
        }
        flow.last.set(Instant::now());
        match dir {
            Dir::Up => flow.meter.up(moved),
            Dir::Down => flow.meter.down(moved),
        }
    }
}

/// Errors after which the same operation is simply tried again.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Write all of `data`. Waits with `poll_write_ready` (a closure holding a
/// reference) rather than `writable()` (a waiter node of several words), so
/// this future is small enough to live inline in the connection's task.
async fn write_all(dst: &TcpStream, mut data: &[u8], last: &Cell<Instant>) -> io::Result<()> {
    while !data.is_empty() {
        poll_fn(|cx| dst.poll_write_ready(cx)).await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                last.set(Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every connection's task carries this future; its size is most of
    /// what an idle connection costs. The transfer-time futures live inline
    /// (no allocation per chunk), so they must stay small; this keeps it
    /// that way.
    #[test]
    fn an_idle_connection_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (mut b, _) = l.accept().await.unwrap();
            let w = std::sync::atomic::AtomicU64::new(0);
            let conn = super::ConnBytes::default();
            let meter = super::Meter {
                from_clients: &w,
                to_clients: &w,
                to_backend: &w,
                from_backend: &w,
                conn: &conn,
            };
            let idle = std::time::Duration::from_secs(1);
            let f = super::pump(
                &mut a,
                &mut b,
                idle,
                None,
                crate::channel::Splice::Auto,
                &meter,
            );
            let size = std::mem::size_of_val(&f);
            // 1,600 with the transfer futures boxed per chunk; 1,408 with
            // them inline and waiting through `poll_*_ready`.
            assert!(size <= 1500, "pump future grew to {size} bytes");
        });
    }
}
