//! Fault shims for the fault-injection suite (`faults`), all userspace and
//! on loopback (`tc netem` is not available): backends that misbehave, a
//! relay that delays, throttles and closes slowly, a relay through which a
//! client vanishes without a FIN, and a listener that black-holes SYNs.
//! Every thread they start ends when its connection does or within a
//! bounded time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Longest any shim thread holds a connection.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// Wait until the peer of `conn` closes its side (FIN or RST), without
/// reading anything; false if `limit` passed first.
pub fn wait_peer_closed(conn: &TcpStream, limit: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(
            conn,
            PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR,
        )];
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        if poll(&mut fds, Some(&tick)).unwrap_or(0) > 0 && !fds[0].revents().is_empty() {
            return true;
        }
    }
    false
}

/// A backend that greets `silent\n`, then never reads; counts the
/// connections the proxy closed on it.
pub fn never_reads_backend() -> (Backend, Arc<AtomicU64>) {
    let closed = Arc::new(AtomicU64::new(0));
    let c = closed.clone();
    let b = spawn_backend_on(listen_any(), move |mut conn| {
        let _ = conn.write_all(b"silent\n");
        if wait_peer_closed(&conn, HOLD_MAX) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (b, closed)
}

/// A backend that sends `data`, then resets the connection (RST, not FIN).
pub fn reset_backend(data: Vec<u8>) -> Backend {
    let data = Arc::new(data);
    spawn_backend_on(listen_any(), move |mut conn| {
        let _ = conn.write_all(&data);
        let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    })
}

/// A backend that sends `hello\n` and half-closes at once, then reads
/// what the client sends until its EOF; `got` receives it.
pub fn half_close_backend(got: Arc<std::sync::Mutex<Vec<u8>>>) -> Backend {
    spawn_backend_on(listen_any(), move |mut conn| {
        let _ = conn.write_all(b"hello\n");
        let _ = conn.shutdown(Shutdown::Write);
        let _ = conn.set_read_timeout(Some(HOLD_MAX));
        let mut all = Vec::new();
        let _ = conn.read_to_end(&mut all);
        *got.lock().unwrap() = all;
    })
}

/// An echo backend that counts the connections that ended.
pub fn counting_echo_backend() -> (Backend, Arc<AtomicU64>) {
    let closed = Arc::new(AtomicU64::new(0));
    let c = closed.clone();
    let b = spawn_backend_on(listen_any(), move |mut conn| {
        let _ = conn.set_read_timeout(Some(HOLD_MAX));
        echo_until_eof(&mut conn);
        c.fetch_add(1, Ordering::Relaxed);
    });
    (b, closed)
}

/// How a [`Relay`] mistreats what it forwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impair {
    /// Added before each chunk is passed on (latency).
    pub delay: Duration,
    /// Bytes per second each way; `None`: as fast as it comes.
    pub rate: Option<u64>,
    /// How long an EOF waits before it is passed on (slow close).
    pub close_delay: Duration,
    /// Largest chunk passed on at once.
    pub chunk: usize,
}

/// A TCP relay to `upstream` that impairs both directions, or (with
/// [`Relay::vanish`]) stops forwarding and holds its sockets silently, as
/// a peer that vanished without a FIN would look.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    vanished: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(upstream: SocketAddr, impair: Impair) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let vanished = Arc::new(AtomicBool::new(false));
        let (s, v) = (stop.clone(), vanished.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
                    continue;
                };
                for (from, to) in [(&down, &up), (&up, &down)] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let v = v.clone();
                    thread::spawn(move || forward(from, to, impair, &v));
                }
            }
        });
        Relay {
            addr,
            stop,
            vanished,
        }
    }

    /// From now on forward nothing, close nothing: both sockets stay open
    /// and unread until the relay's threads give up (after a minute).
    pub fn vanish(&self) {
        self.vanished.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, impair: Impair, vanished: &AtomicBool) {
    let began = Instant::now();
    let mut buf = vec![0u8; impair.chunk.max(1)];
    let mut sent = 0u64;
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    while began.elapsed() < HOLD_MAX {
        if vanished.load(Ordering::Relaxed) {
            // Hold both sockets, read nothing, send nothing.
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => {
                let _ = socket2::SockRef::from(&to).set_linger(Some(Duration::ZERO));
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        };
        if vanished.load(Ordering::Relaxed) {
            continue;
        }
        if n == 0 {
            thread::sleep(impair.close_delay);
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        thread::sleep(impair.delay);
        if let Some(rate) = impair.rate {
            // Do not get ahead of `rate` bytes per second.
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A listener that never accepts, with its accept queue full: further
/// SYNs are dropped, so a connect to it hangs until its timeout (a
/// black-holed backend).
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<socket2::Socket>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        // Fill the queue until a connect times out (bounded).
        for _ in 0..16 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            match s.connect_timeout(&addr.into(), Duration::from_millis(300)) {
                Ok(()) => queued.push(s),
                Err(_) => {
                    return BlackHole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    };
                }
            }
        }
        panic!("the accept queue of {addr} never filled");
    }
}
