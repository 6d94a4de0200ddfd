//! The waiting lines of backends with a connection limit (`maxconn=`):
//! per backend, the connections that wait for one of its slots, oldest
//! first, held by the front (a waiting client costs no backend connection
//! and no worker).
//!
//! Every waiting connection's socket is registered, for `EPOLLRDHUP`
//! only, in an epoll instance of the queue's own, so a client that goes
//! away (FIN or reset) is seen without reading a byte of what it sent
//! (`EPOLLIN` is not asked for: a client that sends its request while it
//! waits wakes nobody). The front's queue task waits on that instance
//! (a duplicate of its descriptor) and on the earliest deadline, and
//! tells the front which tokens fired ([`Queues::remove_token`]).
//!
//! Order: a connection joins at the back; one whose wait started earlier
//! (re-queued because its backend went down, or taken over in an
//! upgrade) goes where its start time puts it, so each line stays sorted
//! by `since` and the heads are the oldest.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use rustix::event::epoll;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::channel::Fallbacks;
use crate::front::Conn;
use crate::handover::FdSource;

/// A connection waiting for a slot.
pub struct Waiting {
    pub conn: Conn,
    /// When its wait began.
    pub since: Instant,
    /// It waits for this backend only (sticky), unless the backend goes
    /// down; otherwise any backend of the pool with a free slot may take it.
    pub pinned: bool,
    /// For a connection a worker gave back: the backends to try after
    /// this one. `None`: the policy's, when it is handed out.
    pub fallbacks: Option<Fallbacks>,
    /// Its key in the epoll instance.
    token: u64,
}

impl Waiting {
    pub fn new(conn: Conn, since: Instant, pinned: bool, fallbacks: Option<Fallbacks>) -> Waiting {
        Waiting {
            conn,
            since,
            pinned,
            fallbacks,
            token: 0,
        }
    }
}

#[derive(Default)]
pub struct Queues {
    /// Per backend id, sorted by `since`.
    lines: HashMap<u32, VecDeque<Waiting>>,
    /// Token of each waiting connection → its backend.
    owner: HashMap<u64, u32>,
    next_token: u64,
    /// Made on first use.
    epoll: Option<OwnedFd>,
    /// Connections waiting in all lines.
    total: usize,
    /// Woken when the earliest deadline may have moved (a first entry).
    wake: Rc<Notify>,
}

/// One waiting connection across an upgrade (its descriptor travels
/// beside the list, in the same order).
#[derive(Debug, Serialize, Deserialize)]
pub struct WaitingState {
    backend: u32,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    /// How long it had waited when the old front froze, in microseconds.
    waited_us: u64,
    pinned: bool,
    fallbacks: Option<Vec<u32>>,
    /// The id of its service. (Absent from a build before services:
    /// the only one.)
    #[serde(default)]
    service: Option<u32>,
    /// What it counted against its service's own limits. (Absent from a
    /// build before them: nothing.)
    #[serde(default)]
    tally: Option<crate::front::ledger::Tally>,
}

impl Queues {
    /// Connections waiting for backend `id`.
    pub fn len(&self, id: u32) -> usize {
        self.lines.get(&id).map_or(0, VecDeque::len)
    }

    /// Connections waiting in every line.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn head(&self, id: u32) -> Option<&Waiting> {
        self.lines.get(&id)?.front()
    }

    /// What the queue task waits on: a duplicate of the epoll descriptor,
    /// and the notifier that says the deadlines moved.
    pub fn watch(&mut self) -> std::io::Result<(OwnedFd, Rc<Notify>)> {
        let fd = self.epoll()?.try_clone()?;
        Ok((fd, self.wake.clone()))
    }

    fn epoll(&mut self) -> std::io::Result<&OwnedFd> {
        if self.epoll.is_none() {
            self.epoll = Some(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        }
        Ok(self.epoll.as_ref().expect("just made"))
    }

    /// Add `w` to backend `id`'s line, in the order of its `since`.
    pub fn push(&mut self, id: u32, mut w: Waiting) {
        w.token = self.next_token;
        self.next_token += 1;
        let fd = w.conn.stream.as_fd();
        match self.epoll() {
            Ok(ep) => {
                let data = epoll::EventData::new_u64(w.token);
                if let Err(err) = epoll::add(ep, fd, data, epoll::EventFlags::RDHUP) {
                    // It waits unwatched: a client that leaves is only
                    // noticed when its turn comes.
                    tracing::debug!(cause = %err, "cannot watch a waiting connection");
                }
            }
            Err(err) => tracing::debug!(cause = %err, "cannot watch waiting connections"),
        }
        self.owner.insert(w.token, id);
        let line = self.lines.entry(id).or_default();
        if line.is_empty() {
            self.wake.notify_one();
        }
        let at = if line.back().is_none_or(|b| b.since <= w.since) {
            line.len()
        } else {
            line.partition_point(|o| o.since <= w.since)
        };
        if at == 0 {
            self.wake.notify_one();
        }
        line.insert(at, w);
        self.total += 1;
    }

    /// Stop watching `w` (it leaves the queue).
    fn unwatch(&mut self, w: &Waiting) {
        self.owner.remove(&w.token);
        if let Some(ep) = &self.epoll {
            let _ = epoll::delete(ep, w.conn.stream.as_fd());
        }
        self.total -= 1;
    }

    /// The oldest connection waiting for backend `id`, out of the queue.
    pub fn pop(&mut self, id: u32) -> Option<Waiting> {
        let line = self.lines.get_mut(&id)?;
        let w = line.pop_front()?;
        if line.is_empty() {
            self.lines.remove(&id);
        }
        self.unwatch(&w);
        Some(w)
    }

    /// Every connection waiting for backend `id`, oldest first.
    pub fn take_all(&mut self, id: u32) -> Vec<Waiting> {
        let Some(line) = self.lines.remove(&id) else {
            return Vec::new();
        };
        let all: Vec<Waiting> = line.into_iter().collect();
        for w in &all {
            self.unwatch(w);
        }
        all
    }

    /// The connection whose epoll token is `token` (its client went
    /// away), out of the queue, with its backend.
    pub fn remove_token(&mut self, token: u64) -> Option<(u32, Waiting)> {
        let id = *self.owner.get(&token)?;
        let line = self.lines.get_mut(&id)?;
        let at = line.iter().position(|w| w.token == token)?;
        let w = line.remove(at)?;
        if line.is_empty() {
            self.lines.remove(&id);
        }
        self.unwatch(&w);
        Some((id, w))
    }

    /// The backend whose line has the oldest head that any backend may
    /// take (not pinned), among those `allowed` says.
    pub fn oldest_unpinned(&self, allowed: impl Fn(u32) -> bool) -> Option<u32> {
        self.lines
            .iter()
            .filter(|(id, line)| allowed(**id) && line.front().is_some_and(|w| !w.pinned))
            .min_by_key(|(_, line)| line.front().map(|w| w.since))
            .map(|(&id, _)| id)
    }

    /// The backends that have a line.
    pub fn backends(&self) -> Vec<u32> {
        self.lines.keys().copied().collect()
    }

    /// When the oldest waiting connection's wait ends, with `timeout`.
    pub fn next_deadline(&self, timeout: impl Fn(u32) -> Duration) -> Option<Instant> {
        self.lines
            .iter()
            .filter_map(|(&id, l)| Some(l.front()?.since + timeout(id)))
            .min()
    }

    /// Every connection that has waited its backend's `timeout` by `now`,
    /// out of the queue, oldest first per backend.
    pub fn expired(
        &mut self,
        now: Instant,
        timeout: impl Fn(u32) -> Duration,
    ) -> Vec<(u32, Waiting)> {
        let mut out = Vec::new();
        for id in self.backends() {
            let t = timeout(id);
            while self.head(id).is_some_and(|w| w.since + t <= now) {
                if let Some(w) = self.pop(id) {
                    out.push((id, w));
                }
            }
        }
        out
    }

    /// Close every waiting connection (shutdown). Returns how many.
    pub fn close_all(&mut self) -> Vec<Conn> {
        let mut out = Vec::new();
        for id in self.backends() {
            out.extend(self.take_all(id).into_iter().map(|w| w.conn));
        }
        out
    }

    /// What the queue hands to a new front; the waiting connections'
    /// descriptors are pushed on `fds` in the same order.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> Vec<WaitingState> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.total);
        for (&backend, line) in &self.lines {
            for w in line {
                fds.push(w.conn.stream.as_fd());
                out.push(WaitingState {
                    backend,
                    peer: w.conn.peer,
                    destination: w.conn.destination,
                    waited_us: u64::try_from(now.saturating_duration_since(w.since).as_micros())
                        .unwrap_or(u64::MAX),
                    pinned: w.pinned,
                    fallbacks: w.fallbacks.map(|f| f.as_slice().to_vec()),
                    service: w.conn.service,
                    tally: w.conn.tally,
                });
            }
        }
        out
    }

    /// The queue taken over from a previous front.
    pub fn from_handover(state: Vec<WaitingState>, fds: &mut FdSource) -> Result<Queues, String> {
        let mut q = Queues::default();
        let now = Instant::now();
        for s in state {
            let fd = fds.next(&format!("queued connection from {}", s.peer))?;
            let waited = Duration::from_micros(s.waited_us);
            let conn = Conn {
                stream: std::net::TcpStream::from(fd),
                peer: s.peer,
                destination: s.destination,
                service: s.service,
                tally: s.tally,
            };
            let since = now.checked_sub(waited).unwrap_or(now);
            let fallbacks = s.fallbacks.as_deref().map(Fallbacks::new);
            q.push(s.backend, Waiting::new(conn, since, s.pinned, fallbacks));
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn conn(l: &TcpListener, port: u16) -> Conn {
        Conn {
            stream: TcpStream::connect(l.local_addr().unwrap()).unwrap(),
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            destination: None,
            service: None,
            tally: None,
        }
    }

    fn ports(q: &mut Queues, id: u32) -> Vec<u16> {
        std::iter::from_fn(|| q.pop(id))
            .map(|w| w.conn.peer.port())
            .collect()
    }

    /// Oldest first; one whose wait began earlier goes where its start
    /// puts it; a token finds its connection; deadlines follow the heads.
    #[test]
    fn lines_are_first_come_first_served_by_when_the_wait_began() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut q = Queues::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        for (port, ms) in [(1, 10), (2, 20), (3, 30)] {
            q.push(7, Waiting::new(conn(&l, port), at(ms), false, None));
        }
        q.push(7, Waiting::new(conn(&l, 4), at(15), true, None));
        q.push(8, Waiting::new(conn(&l, 5), at(5), true, None));
        assert_eq!((q.len(7), q.len(8), q.total()), (4, 1, 5));
        assert_eq!(
            q.next_deadline(|_| Duration::from_secs(1)),
            Some(at(5) + Duration::from_secs(1))
        );
        // Backend 8's head is older but pinned.
        assert_eq!(q.oldest_unpinned(|_| true), Some(7));
        assert_eq!(q.oldest_unpinned(|id| id != 7), None);
        let token = q.lines[&7][2].token;
        let (id, w) = q.remove_token(token).unwrap();
        assert_eq!((id, w.conn.peer.port()), (7, 2));
        assert!(q.remove_token(token).is_none());
        let gone = q.expired(at(12), |_| Duration::from_millis(0));
        let gone: Vec<u16> = gone.iter().map(|(_, w)| w.conn.peer.port()).collect();
        assert_eq!(gone.len(), 2);
        assert!(gone.contains(&1) && gone.contains(&5));
        assert_eq!(ports(&mut q, 7), [4, 3]);
        assert_eq!(q.total(), 0);
    }

    /// A client that closes while it waits fires its token; one that
    /// sends bytes does not (nothing is read).
    #[test]
    fn a_client_that_leaves_fires_its_token_and_one_that_talks_does_not() {
        use std::io::Write;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut q = Queues::default();
        let mut talker = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let leaver = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        for port in [1, 2] {
            let (stream, _) = l.accept().unwrap();
            q.push(
                1,
                Waiting::new(
                    Conn {
                        stream,
                        peer: SocketAddr::from(([127, 0, 0, 1], port)),
                        destination: None,
                        service: None,
                        tally: None,
                    },
                    Instant::now(),
                    false,
                    None,
                ),
            );
        }
        let (fd, _) = q.watch().unwrap();
        talker.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        drop(leaver);
        let mut events = Vec::with_capacity(8);
        let timeout = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        epoll::wait(
            &fd,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        )
        .unwrap();
        assert_eq!(events.len(), 1, "only the client that left");
        let (_, w) = q.remove_token(events[0].data.u64()).unwrap();
        assert_eq!(w.conn.peer.port(), 2);
        // Its bytes are still there for the backend.
        let mut buf = [0u8; 64];
        let w = q.pop(1).unwrap();
        assert_eq!(w.conn.stream.peek(&mut buf).unwrap(), 18);
    }
}
