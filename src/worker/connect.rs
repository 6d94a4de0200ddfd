//! One connection's life in a worker: connect to the chosen backend (or the
//! next ones, each at most once), then pump bytes until both sides are done.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tracing::debug;

use super::Worker;
use super::pump::{self, Outcome};
use crate::channel::{BackendEntry, Event, FailReason, Handoff, WorkerConfig};

/// Serve one handed-off client connection to the end.
pub async fn serve_conn(worker: &Worker, stream: std::net::TcpStream, handoff: Handoff) {
    let started = Instant::now();
    let client_ip = handoff.client.ip();
    tracing::Span::current().record("client.addr", tracing::field::display(handoff.client));
    // The front accepted it nonblocking (the flag travels with the
    // descriptor), as tokio requires.
    let mut client = match TcpStream::from_std(stream) {
        Ok(c) => c,
        Err(err) => {
            debug!(cause = %err, "cannot register client connection");
            closed(worker, handoff.backend, false, client_ip, started);
            return;
        }
    };
    let config = worker.config.load_full();
    let Some((backend, mut upstream, connect_time)) =
        connect_any(worker, &config, handoff.backend).await
    else {
        debug!("no backend reachable; closing client");
        reset(&client);
        closed(worker, handoff.backend, false, client_ip, started);
        return;
    };
    worker.reporter.push(Event::Opened {
        planned: handoff.backend,
        backend: backend.id,
        connect_time,
    });
    tracing::Span::current().record("server.addr", tracing::field::display(backend.addr));
    debug!(connect_time = ?connect_time, "connected");
    let counter = worker.reporter.counter(backend.id);
    let outcome = pump::pump(
        &mut client,
        &mut upstream,
        config.idle_timeout,
        // Counted from when this worker got the client, connect included.
        config
            .first_byte_timeout
            .map(|limit| limit.saturating_sub(started.elapsed())),
        config.splice,
        &counter,
    )
    .await;
    match outcome {
        Outcome::Done => {}
        Outcome::IdleTimeout(stuck) => {
            debug!(?stuck, "idle timeout");
            reset_stuck(&client, &upstream, stuck);
        }
        Outcome::FirstByteTimeout(stuck) => {
            debug!("client sent nothing within the first-byte timeout; closing");
            reset_stuck(&client, &upstream, stuck);
            worker.reporter.push(Event::FirstByteTimeout {
                backend: backend.id,
            });
        }
        Outcome::Reset(side, err) => {
            debug!(side, cause = %err, "connection reset; propagating");
            reset(&client);
            reset(&upstream);
        }
    }
    closed(worker, backend.id, true, client_ip, started);
}

fn closed(worker: &Worker, backend: u32, opened: bool, client: IpAddr, started: Instant) {
    worker.reporter.push(Event::Closed {
        backend,
        opened,
        client,
        duration: started.elapsed(),
    });
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

/// Try the planned backend, then every other routable backend once, in
/// table order after it. Reports each failure.
async fn connect_any(
    worker: &Worker,
    config: &WorkerConfig,
    planned: u32,
) -> Option<(BackendEntry, TcpStream, Duration)> {
    let table = &config.backends;
    let n = table.len();
    let start = table.iter().position(|b| b.id == planned);
    let base = start.map_or(0, |i| i + 1);
    let fallbacks = (0..n)
        .map(move |k| (base + k) % n)
        .filter(move |&i| Some(i) != start && table[i].routable);
    let order = start.into_iter().chain(fallbacks);
    for i in order {
        let backend = table[i];
        let began = Instant::now();
        match connect_one(backend.addr, config.connect_timeout).await {
            Ok(stream) => return Some((backend, stream, began.elapsed())),
            Err(reason) => {
                debug!(server.addr = %backend.addr, ?reason, "backend connect failed");
                worker.reporter.push(Event::ConnectFailed {
                    backend: backend.id,
                    reason,
                });
            }
        }
    }
    None
}

async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, FailReason> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(classify(&err)),
        Err(_elapsed) => Err(FailReason::Timeout),
    }
}

fn classify(err: &io::Error) -> FailReason {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => FailReason::Refused,
        io::ErrorKind::TimedOut => FailReason::Timeout,
        _ => FailReason::Other,
    }
}
