//! Listening sockets and the accept loop.
//!
//! Each listener accepts until EAGAIN (bounded per round so other tasks
//! run), dispatches each connection, then flushes the batches: one
//! `sendmsg` per worker per round. When the front must not accept (limits,
//! no worker ready, all channels full) the loop waits for the pause to lift
//! and clients wait in the kernel backlog. Running out of descriptors
//! (EMFILE/ENFILE) backs off instead of spinning, logs at most once a
//! second, and recovers by itself; so does an error of the listening
//! socket itself (one shut down under it), which would otherwise come back
//! at once, forever.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::Shared;
use crate::stats::FrontWord;

/// The front's `Listeners` part: the listening sockets, their addresses,
/// and whether they accept now.
pub struct Listeners {
    sockets: Vec<Rc<AsyncFd<std::net::TcpListener>>>,
    addrs: Vec<SocketAddr>,
    /// Each socket's address as the config asked for it (`127.0.0.1:0`
    /// for a port the kernel chose): what reloads compare against.
    asked: Vec<SocketAddr>,
    /// Listeners are paused; see `Front::should_pause`.
    paused: bool,
    /// Listeners whose every service is at its own `max-conns`: they do
    /// not accept while the others do (usually empty).
    held: Vec<SocketAddr>,
    /// Wakes paused listeners.
    resume: Rc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The accept loops run (between `start` and `close`): a listener a
    /// reload adds gets its own at once. (Not `!tasks.is_empty()`: a reload
    /// that moves the only listener removes it, and its task, first.)
    accepting: bool,
    /// The metrics endpoint's address and a copy of its socket (served by
    /// its own thread; kept here for a handover).
    metrics: Option<(SocketAddr, std::os::fd::OwnedFd)>,
    /// The control socket's path and a copy of its socket (for a handover).
    control: Option<(std::path::PathBuf, std::os::fd::OwnedFd)>,
    /// `--status`: the status page's own address and a copy of its socket
    /// (served by the metrics endpoint's thread; kept for a handover).
    status: Option<(SocketAddr, std::os::fd::OwnedFd)>,
}

/// The listeners across an upgrade (every socket's descriptor travels
/// beside it: the listening sockets, then the metrics, control and status
/// ones).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenersState {
    listen: Vec<SocketAddr>,
    /// (Empty from a front that did not keep them: as bound.)
    #[serde(default)]
    asked: Vec<SocketAddr>,
    metrics: Option<SocketAddr>,
    control: Option<std::path::PathBuf>,
    /// (A build without `--status` never gets one: its command line and
    /// config file would not load.)
    #[serde(default)]
    status: Option<SocketAddr>,
}

/// The sockets a new front serves beside its listeners: metrics, control,
/// status.
pub struct Served {
    pub metrics: Option<std::net::TcpListener>,
    pub control: Option<(std::path::PathBuf, std::os::unix::net::UnixListener)>,
    pub status: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Register listening sockets with the event loop (not accepting yet:
    /// see [`Listeners::start`]).
    pub fn new(sockets: Vec<std::net::TcpListener>) -> io::Result<Listeners> {
        let addrs: Vec<SocketAddr> = sockets.iter().filter_map(|l| l.local_addr().ok()).collect();
        let sockets = sockets
            .into_iter()
            .map(|l| crate::sys::register(l, tokio::io::Interest::READABLE).map(Rc::new))
            .collect::<io::Result<_>>()?;
        Ok(Listeners {
            sockets,
            asked: addrs.clone(),
            addrs,
            paused: true,
            held: Vec::new(),
            resume: Rc::new(Notify::new()),
            tasks: Vec::new(),
            accepting: false,
            metrics: None,
            control: None,
            status: None,
        })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The addresses as asked for, in the order of [`Listeners::addrs`].
    pub fn asked(&self) -> &[SocketAddr] {
        &self.asked
    }

    /// Say what each socket was asked for (as bound by default), when the
    /// sockets were bound from `asked` in its order.
    pub fn set_asked(&mut self, asked: &[SocketAddr]) {
        if asked.len() == self.addrs.len() {
            self.asked = asked.to_vec();
        }
    }

    /// What the config asked for as the listener a connection came in on
    /// (`local`: the listener's address, or the connection's own local
    /// address, which on a wildcard listener is found by its port): the
    /// address services route by. `local` itself when no listener matches.
    pub fn asked_for(&self, local: SocketAddr) -> SocketAddr {
        let exact = self.addrs.iter().position(|&a| a == local);
        let wildcard = || {
            self.addrs
                .iter()
                .position(|a| a.ip().is_unspecified() && a.port() == local.port())
        };
        exact
            .or_else(wildcard)
            .and_then(|i| self.asked.get(i).copied())
            .unwrap_or(local)
    }

    /// The socket asked for as `addr`, or bound on it.
    fn position(&self, addr: SocketAddr) -> Option<usize> {
        (self.asked.iter().position(|&a| a == addr))
            .or_else(|| self.addrs.iter().position(|&a| a == addr))
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether the listener at `addr` is held (see [`Listeners::set_held`]).
    pub fn held(&self, addr: Option<SocketAddr>) -> bool {
        !self.held.is_empty() && addr.is_some_and(|a| self.held.contains(&a))
    }

    /// Hold exactly the listeners asked for as `asked`; a listener no
    /// longer held wakes. Returns the newly held ones, if anything changed.
    pub fn set_held(&mut self, asked: Vec<SocketAddr>) -> Option<Vec<SocketAddr>> {
        // The services name listeners as the config asked for them: hold
        // the sockets bound for those.
        let mut addrs: Vec<SocketAddr> = asked
            .iter()
            .filter_map(|&a| self.position(a).map(|i| self.addrs[i]))
            .collect();
        addrs.sort();
        if addrs == self.held {
            return None;
        }
        let new: Vec<SocketAddr> = addrs
            .iter()
            .filter(|a| !self.held.contains(a))
            .copied()
            .collect();
        let freed = self.held.iter().any(|a| !addrs.contains(a));
        self.held = addrs;
        if freed {
            self.resume.notify_waiters();
        }
        Some(new)
    }

    /// Pause or resume accepting; resuming wakes the accept loops.
    /// Returns whether it changed.
    pub fn set_paused(&mut self, paused: bool) -> bool {
        if paused == self.paused {
            return false;
        }
        self.paused = paused;
        if !paused {
            self.resume.notify_waiters();
        }
        true
    }

    /// Keep a copy of the metrics socket (serving on `addr`) for a handover.
    pub fn keep_metrics(&mut self, addr: SocketAddr, fd: std::os::fd::OwnedFd) {
        self.metrics = Some((addr, fd));
    }

    /// Keep a copy of the control socket (at `path`) for a handover.
    pub fn keep_control(&mut self, path: std::path::PathBuf, fd: std::os::fd::OwnedFd) {
        self.control = Some((path, fd));
    }

    /// Keep a copy of the `--status` socket (serving on `addr`) for a
    /// handover.
    pub fn keep_status(&mut self, addr: SocketAddr, fd: std::os::fd::OwnedFd) {
        self.status = Some((addr, fd));
    }

    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(|(a, _)| *a)
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
    }

    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(|(p, _)| p.as_path())
    }

    /// What the listeners hand to a new front; every socket's descriptor
    /// is pushed on `fds`.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> ListenersState {
        fds.extend(self.sockets.iter().map(|s| s.get_ref().as_fd()));
        if let Some((_, fd)) = &self.metrics {
            fds.push(fd.as_fd());
        }
        if let Some((_, fd)) = &self.control {
            fds.push(fd.as_fd());
        }
        if let Some((_, fd)) = &self.status {
            fds.push(fd.as_fd());
        }
        ListenersState {
            listen: self.addrs.clone(),
            asked: self.asked.clone(),
            metrics: self.metrics_addr(),
            control: self.control.as_ref().map(|(p, _)| p.clone()),
            status: self.status_addr(),
        }
    }

    /// The listeners a new front takes over, and the metrics, control and
    /// status sockets it is to serve.
    pub fn from_handover(
        state: ListenersState,
        fds: &mut crate::handover::FdSource,
    ) -> Result<(Listeners, Served), String> {
        let mut sockets = Vec::new();
        for a in &state.listen {
            let l = std::net::TcpListener::from(fds.next(&format!("listener {a}"))?);
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            sockets.push(l);
        }
        let metrics = match state.metrics {
            Some(_) => Some(std::net::TcpListener::from(fds.next("the metrics socket")?)),
            None => None,
        };
        let control = match state.control {
            Some(p) => Some((
                p,
                std::os::unix::net::UnixListener::from(fds.next("the control socket")?),
            )),
            None => None,
        };
        let status = match state.status {
            Some(_) => Some(std::net::TcpListener::from(
                fds.next("the status page's socket")?,
            )),
            None => None,
        };
        let mut listeners = Listeners::new(sockets).map_err(|e| e.to_string())?;
        listeners.set_asked(&state.asked);
        if let (Some(addr), Some(l)) = (state.status, &status) {
            let dup = l.try_clone().map_err(|e| e.to_string())?;
            listeners.keep_status(addr, dup.into());
        }
        if let (Some(addr), Some(l)) = (state.metrics, &metrics) {
            let dup = l.try_clone().map_err(|e| e.to_string())?;
            listeners.keep_metrics(addr, dup.into());
        }
        if let Some((p, l)) = &control {
            let dup = l.try_clone().map_err(|e| e.to_string())?;
            listeners.keep_control(p.clone(), dup.into());
        }
        Ok((
            listeners,
            Served {
                metrics,
                control,
                status,
            },
        ))
    }

    /// Start an accept loop per socket, on this thread (the front's event
    /// loop), which goes under `SCHED_BATCH` (see [`crate::sys::sched_batch`]):
    /// woken by a new connection while a worker runs on its CPU, the front
    /// no longer preempts it for every connection but runs when the worker
    /// blocks, and hands over everything that queued meanwhile in one round.
    /// With an idle CPU it runs at once, as before. (Workers it starts set
    /// their own policy back to normal: `worker::run`.)
    pub fn start(&mut self, front: &Shared) {
        if let Err(err) = crate::sys::sched_batch(true) {
            debug!(cause = %err, "cannot put the front under SCHED_BATCH; it keeps the normal policy");
        }
        self.accepting = true;
        for l in &self.sockets {
            self.tasks.push(tokio::task::spawn_local(accept_loop(
                front.clone(),
                l.clone(),
            )));
        }
    }

    /// A listener added by a reload (asked for as `asked`): accepting at
    /// once if the others are.
    pub fn add(
        &mut self,
        asked: SocketAddr,
        socket: std::net::TcpListener,
        front: &std::rc::Weak<std::cell::RefCell<super::Front>>,
    ) -> io::Result<()> {
        let addr = socket.local_addr()?;
        let l = Rc::new(crate::sys::register(socket, tokio::io::Interest::READABLE)?);
        if self.accepting {
            if let Some(front) = front.upgrade() {
                self.tasks
                    .push(tokio::task::spawn_local(accept_loop(front, l.clone())));
            }
        }
        self.sockets.push(l);
        self.addrs.push(addr);
        self.asked.push(asked);
        Ok(())
    }

    /// Close the listener on `addr` (a reload removed it).
    pub fn remove(&mut self, addr: SocketAddr) {
        let Some(i) = self.position(addr) else {
            return;
        };
        if let Some(t) = (i < self.tasks.len()).then(|| self.tasks.remove(i)) {
            t.abort();
        }
        self.sockets.remove(i);
        self.addrs.remove(i);
        self.asked.remove(i);
    }

    /// Turn defer-accept on or off on the listener on `addr` (port 0: on
    /// each listener of that IP, whatever port it was given).
    pub fn set_defer_accept_at(&self, addr: SocketAddr, on: bool) -> Result<(), String> {
        let Some(i) = self.position(addr) else {
            return Ok(());
        };
        crate::sys::set_defer_accept(self.sockets[i].get_ref().as_fd(), on)
            .map_err(|err| format!("cannot set defer-accept on {addr}: {err}"))
    }

    /// Stop accepting and close the sockets (shutdown).
    pub fn close(&mut self) {
        self.accepting = false;
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.sockets.clear();
    }

    /// Turn `--defer-accept` on or off on every listening socket (at start,
    /// and when a reload changes it). Names the listener that refused.
    pub fn set_defer_accept(&self, on: bool) -> Result<(), String> {
        for s in &self.sockets {
            crate::sys::set_defer_accept(s.get_ref().as_fd(), on).map_err(|err| {
                let addr = s.get_ref().local_addr().map(|a| a.to_string());
                format!(
                    "cannot set defer-accept on {}: {err}",
                    addr.unwrap_or_else(|_| "a listener".into())
                )
            })?;
        }
        Ok(())
    }
}

/// Most connections accepted in one round before yielding.
const ACCEPT_BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bind a listening socket: SO_REUSEADDR, IPv6 sockets v6-only, TCP_NODELAY
/// (inherited by accepted sockets), nonblocking, close-on-exec.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Accept one connection, already nonblocking and close-on-exec: the
/// nonblocking flag belongs to the open file description, which the worker
/// receives, so it needs no `ioctl` of its own.
fn accept(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    let (fd, addr) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = addr
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((std::net::TcpStream::from(fd), peer))
}

/// Out of descriptors or kernel memory: retrying at once would spin.
fn is_resource_error(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(err.raw_os_error(), Some(c) if [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|e| e.raw_os_error() == c))
}

/// An error about one connection only (the client gave up, or a network
/// error the kernel passes on from it, as accept(2) says): the next
/// accept may well succeed. Any other error (the listening socket shut
/// down or broken) would come back at once, forever: the loop backs off.
fn is_connection_error(err: &io::Error) -> bool {
    use rustix::io::Errno;
    let per_connection = [
        Errno::CONNABORTED,
        Errno::PROTO,
        Errno::PERM,
        Errno::NETDOWN,
        Errno::NOPROTOOPT,
        Errno::HOSTDOWN,
        Errno::NONET,
        Errno::HOSTUNREACH,
        Errno::OPNOTSUPP,
        Errno::NETUNREACH,
        Errno::TIMEDOUT,
        Errno::INTR,
    ];
    matches!(err.raw_os_error(), Some(c) if per_connection.iter().any(|e| e.raw_os_error() == c))
}

/// Accept on `listener` until the front shuts down.
pub async fn accept_loop(front: Shared, listener: Rc<AsyncFd<std::net::TcpListener>>) {
    let local = listener.get_ref().local_addr().ok();
    let mut backoff = BACKOFF_MIN;
    let mut last_log: Option<Instant> = None;
    let mut suppressed = 0u64;
    loop {
        // Wait while paused.
        loop {
            let resume = front.borrow().listeners().resume.clone();
            let lifted = resume.notified();
            {
                let f = front.borrow();
                if f.stopping() {
                    return;
                }
                if !f.listeners().paused && !f.listeners().held(local) {
                    break;
                }
            }
            lifted.await;
        }
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        // An error that retrying at once would only repeat.
        let mut trouble = None;
        let mut full_round = false;
        {
            let mut f = front.borrow_mut();
            // What workers counted since the last round (O(workers), and
            // O(workers x backends) for least-conn): once per round, not
            // per connection.
            f.refresh_all_views();
            for n in 0..ACCEPT_BATCH {
                if f.listeners().paused || f.listeners().held(local) {
                    break;
                }
                full_round = n + 1 == ACCEPT_BATCH;
                match guard.try_io(|l| accept(l.get_ref())) {
                    Ok(Ok((stream, peer))) => {
                        backoff = BACKOFF_MIN;
                        f.accepted(stream, peer, local);
                    }
                    Ok(Err(err)) if is_resource_error(&err) => {
                        f.count(FrontWord::AcceptEmfile, 1);
                        trouble = Some((
                            err,
                            "cannot accept: out of file descriptors or memory; backing off",
                        ));
                        break;
                    }
                    Ok(Err(err)) if is_connection_error(&err) => {
                        // The client gave up (ECONNABORTED) or similar.
                        f.count(FrontWord::AcceptOther, 1);
                        debug!(listener = ?local, cause = %err, "accept failed");
                    }
                    Ok(Err(err)) => {
                        f.count(FrontWord::AcceptOther, 1);
                        trouble = Some((
                            err,
                            "cannot accept: the listening socket fails; backing off",
                        ));
                        break;
                    }
                    Err(_would_block) => break,
                }
            }
            f.flush();
        }
        if let Some((err, what)) = trouble {
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                warn!(
                    listener = ?local,
                    cause = %err,
                    suppressed,
                    retry_in = ?backoff,
                    "{what}"
                );
                last_log = Some(Instant::now());
                suppressed = 0;
            } else {
                suppressed += 1;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else if full_round {
            // The backlog may still hold connections: let worker reports
            // and control requests run before the next round. A round that
            // ended short (EAGAIN, a pause) waits for readiness below,
            // which lets them run anyway, without a `yield_now` and the
            // extra zero-timeout poll of the reactor it costs.
            tokio::task::yield_now().await;
        }
    }
}
