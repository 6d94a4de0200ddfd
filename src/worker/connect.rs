//! One connection's life in a worker: connect to the chosen backend (or,
//! if it cannot be reached, the fallbacks the front's policy chose for it,
//! each at most once), then pump bytes until both sides are done.
//!
//! A backend with `send-proxy` gets a PROXY protocol header (the client's
//! address, and the address it connected to) written as part of the
//! connect, within the connect timeout, before a single byte is pumped
//! either way: so it comes first even to a backend that speaks first, and
//! a backend that takes the connection but not the header counts as a
//! failed connect (the next fallback is tried).
//!
//! A backend with a connection limit (`maxconn=`) is counted by the
//! front from the workers' `Active` words: so the word is raised before
//! a connect starts and lowered only after the backend connection is
//! closed, and leaving such a backend is reported at once
//! (`Event::Released`). The worker never falls back to a limited backend
//! on its own: it gives the connection back to the front.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::pump::{self, ConnBytes, Meter, Outcome, Side};
use super::{Routes, Worker};
use crate::access_log::{End, Entry};
use crate::channel::{BackendEntry, Event, FailReason, Fallbacks, Handoff};
use crate::proxy_protocol::Header;
use crate::stats::{Col, ColCell, ProcCell, ProcWord};

/// Which backend column counts a connection as active now. It starts on
/// the planned backend (raised in `start_conns`) and moves with each
/// connect attempt, so a backend's `Active` word is what is open or being
/// opened on it. Leaving a limited backend reports its slot free.
struct Holder<'a> {
    col: Option<ColCell<'a>>,
    id: u32,
    limited: bool,
}

impl<'a> Holder<'a> {
    /// On backend `id`, as the worker's table lists it (`entry`).
    fn planned(entry: Option<&BackendEntry>, cell: ProcCell<'a>, id: u32) -> Holder<'a> {
        Holder {
            col: entry.and_then(|b| cell.col(usize::from(b.column))),
            id,
            limited: entry.is_some_and(|b| b.limited),
        }
    }

    /// The connection is now on `to` (about to be tried).
    fn move_to(&mut self, worker: &Worker, cell: ProcCell<'a>, to: &BackendEntry) {
        if to.id == self.id {
            return;
        }
        self.release(worker);
        let col = cell.col(usize::from(to.column));
        if let Some(c) = col {
            c.active_up();
        }
        *self = Holder {
            col,
            id: to.id,
            limited: to.limited,
        };
    }

    /// The connection is on no backend any more (its backend connection,
    /// if any, is closed).
    fn release(&mut self, worker: &Worker) {
        if let Some(c) = self.col.take() {
            c.active_down();
        }
        if std::mem::take(&mut self.limited) {
            worker.reporter.push(Event::Released { backend: self.id });
        }
    }
}

/// What the connect attempts came to.
enum Attempt {
    /// Connected to this backend (the holder's), after `Duration`.
    Connected(BackendEntry, TcpStream, Duration),
    /// None of the backends could be reached.
    Failed,
    /// The next backend to try has a connection limit, which only the
    /// front may grant: these backends (ids) are what is left to try.
    GiveBack(Vec<u32>),
}

/// Serve one handed-off client connection to the end. It arrives counted
/// as active on its planned backend (see `start_conns`). Its access log
/// entry is written when this returns (or when the worker stops first).
pub async fn serve_conn(worker: &Worker, stream: std::net::TcpStream, handoff: Handoff) {
    let started = Instant::now();
    let bytes = ConnBytes::default();
    let mut entry = Entry::new(
        &worker.access_log,
        &bytes,
        started,
        handoff.conn,
        handoff.client,
    );
    tracing::Span::current().record("client.addr", tracing::field::display(handoff.client));
    let routes = worker.routes();
    let cell = worker.cell();
    let planned = routes.entry(handoff.backend);
    let mut holder = Holder::planned(planned, cell, handoff.backend);
    // Whether the front counts this connection for its service (decided
    // by the table it was planned with).
    let counted = planned.is_some_and(|b| b.counted);
    let unserved = |holder: &mut Holder| {
        holder.release(worker);
        cell.bump(ProcWord::Failed, 1);
        closed(worker, &handoff, counted);
    };
    // The front accepted it nonblocking (the flag travels with the
    // descriptor), as tokio requires.
    let client = match TcpStream::from_std(stream) {
        Ok(client) => client,
        Err(err) => {
            debug!(cause = %err, "cannot register client connection");
            entry.end = Some(End::ConnectFailed);
            unserved(&mut holder);
            return;
        }
    };
    let (backend, upstream, connect_time) =
        match connect_any(worker, &routes, &handoff, &client, &mut holder).await {
            Attempt::Connected(backend, upstream, connect_time) => {
                (backend, upstream, connect_time)
            }
            Attempt::Failed => {
                // A reset, not a FIN: the client must not take it for an
                // answer.
                debug!("no backend reachable; closing client");
                entry.end = Some(End::ConnectFailed);
                reset(&client);
                unserved(&mut holder);
                return;
            }
            Attempt::GiveBack(rest) => {
                holder.release(worker);
                redispatched(&routes, cell, handoff.backend);
                entry.given_back();
                give_back(worker, client, &handoff, &rest).await;
                return;
            }
        };
    entry.backend = Some(backend.addr);
    let col = cell.col(usize::from(backend.column));
    if backend.id != handoff.backend {
        redispatched(&routes, cell, handoff.backend);
    }
    if let Some(c) = col {
        c.opened(connect_time);
    }
    tracing::Span::current().record("server.addr", tracing::field::display(backend.addr));
    debug!(connect_time = ?connect_time, "connected");
    let outcome = {
        let mut client = client;
        let mut upstream = upstream;
        let spare = AtomicU64::new(0);
        let meter = Meter {
            from_clients: cell.word(ProcWord::BytesIn),
            to_clients: cell.word(ProcWord::BytesOut),
            to_backend: col.map_or(&spare, |c| c.word(Col::BytesUp)),
            from_backend: col.map_or(&spare, |c| c.word(Col::BytesDown)),
            conn: &bytes,
        };
        // The service's settings (its backends all have the same).
        let conns = routes.conns(handoff.backend);
        let outcome = pump::pump(
            &mut client,
            &mut upstream,
            conns.idle_timeout,
            // Counted from when this worker got the client, connect included.
            conns
                .first_byte_timeout
                .map(|limit| limit.saturating_sub(started.elapsed())),
            routes.config.splice,
            &meter,
        )
        .await;
        match &outcome {
            Outcome::IdleTimeout(stuck) | Outcome::FirstByteTimeout(stuck) => {
                reset_stuck(&client, &upstream, *stuck)
            }
            Outcome::Reset(..) => {
                reset(&client);
                reset(&upstream);
            }
            Outcome::Done(_) => {}
        }
        // Both sockets close here: the backend connection is closed
        // before its slot is reported free.
        outcome
    };
    entry.end = Some(match outcome {
        Outcome::Done(Side::Client) => End::ClientClosed,
        Outcome::Done(Side::Backend) => End::BackendClosed,
        Outcome::IdleTimeout(stuck) => {
            debug!(?stuck, "idle timeout");
            End::IdleTimeout
        }
        Outcome::FirstByteTimeout(_) => {
            debug!("client sent nothing within the first-byte timeout; closing");
            cell.bump(ProcWord::FirstByteTimeouts, 1);
            End::FirstByteTimeout
        }
        Outcome::Reset(side, err) => {
            debug!(side = side.as_str(), cause = %err, "connection reset; propagating");
            match side {
                Side::Client => End::ClientReset,
                Side::Backend => End::BackendReset,
            }
        }
    });
    holder.release(worker);
    cell.record_duration(started.elapsed());
    closed(worker, &handoff, counted);
}

/// Count a connection planned for `planned` that another backend serves
/// (or that went back to the front).
fn redispatched(routes: &Routes, cell: ProcCell<'_>, planned: u32) {
    if let Some(p) = routes
        .entry(planned)
        .and_then(|b| cell.col(usize::from(b.column)))
    {
        p.bump(Col::Redispatch, 1);
    }
    cell.bump(ProcWord::Redispatched, 1);
}

/// Give the client back to the front (`Up::Returned`): `rest` are the
/// backends still to try, the first one limited. It is this worker's no
/// more (finished, without a close report: its client is still served).
async fn give_back(worker: &Worker, client: TcpStream, handoff: &Handoff, rest: &[u32]) {
    let h = Handoff {
        conn: handoff.conn,
        backend: rest[0],
        fallbacks: Fallbacks::new(&rest[1..]),
        client: handoff.client,
        destination: handoff.destination,
    };
    match client.into_std() {
        Ok(std) => {
            debug!(
                next = rest[0],
                "next backend is limited: giving the connection back to the front"
            );
            if let Err(err) = worker.reporter.give_back(h, std.into()).await {
                // The front is gone: the client is lost with it.
                debug!(cause = %err, "cannot give the connection back");
            }
        }
        Err(err) => debug!(cause = %err, "cannot give the connection back"),
    }
    worker.finished(1);
}

/// The connection is over: count it, and tell the front if it asked
/// (per-IP counts), or if it counts the connection for its service.
fn closed(worker: &Worker, handoff: &Handoff, counted: bool) {
    if worker.routes().config.report_closes {
        worker.reporter.push(Event::Closed {
            client: handoff.client.ip(),
        });
    }
    if counted {
        worker.reporter.push(Event::Ended { conn: handoff.conn });
    }
    worker.finished(1);
}

/// A side that stopped reading gets a reset; a quiet one a FIN (as both
/// drop).
fn reset_stuck(client: &TcpStream, upstream: &TcpStream, stuck: pump::Stuck) {
    if stuck.client {
        reset(client);
    }
    if stuck.backend {
        reset(upstream);
    }
}

/// Make the next close send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// What a `send-proxy` backend is told about this connection: the client
/// (the handoff's, which for an `--accept-proxy` connection is its
/// header's source) and the address it connected to (the accepted
/// socket's own, or the destination of its header).
fn proxy_header(client: &TcpStream, handoff: &Handoff) -> Header {
    let destination = handoff.destination.or_else(|| client.local_addr().ok());
    match destination {
        Some(destination) => Header::Tcp {
            source: handoff.client,
            destination,
        },
        // The socket is already gone; the connect that follows is moot.
        None => Header::Local,
    }
}

/// Try the planned backend, then the fallbacks the front's policy chose,
/// in order, each at most once. A fallback with a connection limit is
/// not tried here: the connection goes back to the front with what is
/// left to try ([`Attempt::GiveBack`]), since only the front may grant
/// a slot. Reports each failure.
async fn connect_any<'a>(
    worker: &'a Worker,
    routes: &Routes,
    handoff: &Handoff,
    client: &TcpStream,
    holder: &mut Holder<'a>,
) -> Attempt {
    // Each within the connect timeout, so a client waits at most (1 +
    // retries) of them.
    let order: Vec<u32> = std::iter::once(handoff.backend)
        .chain(handoff.fallbacks.as_slice().iter().copied())
        .collect();
    for (k, &id) in order.iter().enumerate() {
        let Some(backend) = routes.entry(id).copied() else {
            continue;
        };
        if k > 0 && backend.limited {
            return Attempt::GiveBack(order[k..].to_vec());
        }
        holder.move_to(worker, worker.cell(), &backend);
        let began = Instant::now();
        // The header needs the accepted socket's own address (a
        // `getsockname`): asked only for a backend that gets one.
        let preface = backend
            .send_proxy
            .map(|v| proxy_header(client, handoff).encode(v));
        let source = routes.next_source(backend.id);
        let deadline = began + routes.conns(backend.id).connect_timeout;
        match connect_one(worker, backend.addr, source, deadline, preface.as_deref()).await {
            Ok(stream) => return Attempt::Connected(backend, stream, began.elapsed()),
            Err(reason) => {
                debug!(server.addr = %backend.addr, ?reason, "backend connect failed");
                if let Some(c) = worker.cell().col(usize::from(backend.column)) {
                    c.failed(reason);
                }
                worker.reporter.push(Event::ConnectFailed {
                    backend: backend.id,
                    reason,
                });
            }
        }
    }
    Attempt::Failed
}

/// Connect to `addr` (from `source`, if given) and write `preface` (a
/// PROXY header) if any, all by `deadline` (kept by the worker's
/// [`Deadlines`](super::deadline)).
async fn connect_one(
    worker: &Worker,
    addr: SocketAddr,
    source: Option<IpAddr>,
    deadline: Instant,
    preface: Option<&[u8]>,
) -> Result<TcpStream, FailReason> {
    let attempt = async {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = source {
            crate::sys::bind_source(&socket, ip)?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(err) => return Err(err),
        }
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
        // Made once writable, failed if the event also says the write side
        // closed (EPOLLERR/EPOLLHUP): only then is the kernel asked why
        // (`SO_ERROR`), where tokio's own connect asks every time.
        let ready = stream.ready(Interest::WRITABLE).await?;
        if ready.is_write_closed() {
            return Err(stream
                .take_error()?
                .unwrap_or_else(|| io::ErrorKind::NotConnected.into()));
        }
        if let Some(bytes) = preface {
            stream.write_all(bytes).await?;
        }
        Ok::<_, io::Error>(stream)
    };
    match worker.deadlines.within(deadline, attempt).await {
        Some(Ok(stream)) => Ok(stream),
        Some(Err(err)) => Err(classify(&err)),
        None => Err(FailReason::Timeout),
    }
}

fn classify(err: &io::Error) -> FailReason {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => FailReason::Refused,
        io::ErrorKind::TimedOut => FailReason::Timeout,
        _ => FailReason::Other,
    }
}
