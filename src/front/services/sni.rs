//! Connections on a listener that routes by server name, waiting for
//! their ClientHello, without holding up the accept loop or anyone else.
//!
//! The first look is made at accept (`Front::accepted`): with
//! defer-accept (the default of such listeners) the hello is there and
//! the connection is routed at once. Otherwise it waits here, as a task
//! of its own on the front's loop (`sni::peek_client_hello`: nothing is
//! consumed, the backend receives every byte), for at most `sni-timeout`.
//! At most [`MAX_SNI_WAITS`] wait at once; at that bound the listeners
//! pause like for the other limits, and resume as waits end.
//!
//! Upgrades: when the front freezes, the waits stop (a peek consumes
//! nothing, so a stopped one loses nothing) and the connections travel to
//! the new front, which looks at them anew when it thaws.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use crate::front::{Conn, Front};
use crate::handover::FdSource;

/// Most connections waiting for their ClientHello at once (as for PROXY
/// headers: about 4 MiB and 4,096 descriptors at the bound).
pub const MAX_SNI_WAITS: usize = 4096;

/// A connection waiting for its ClientHello.
pub struct Unrouted {
    stream: Rc<tokio::net::TcpStream>,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    /// The listener it came in on.
    local: SocketAddr,
    /// The wait in progress; `None` while suspended for a handover.
    task: Option<AbortHandle>,
}

#[derive(Default)]
pub struct SniWaits {
    waiting: hashbrown::HashMap<u64, Unrouted>,
    next: u64,
}

/// The waits across an upgrade (descriptors beside, in this order).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SniWaitsState {
    waits: Vec<(SocketAddr, Option<SocketAddr>, SocketAddr)>,
}

impl SniWaits {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn full(&self) -> bool {
        self.waiting.len() >= MAX_SNI_WAITS
    }

    /// Wait for `conn`'s hello (unless `frozen`: then once the front
    /// thaws); it ends in `Front::sni_read`. `Err`: the socket cannot be
    /// registered with the event loop (that connection only).
    pub fn wait(
        &mut self,
        conn: Conn,
        local: SocketAddr,
        front: &Weak<RefCell<Front>>,
        frozen: bool,
        timeout: Duration,
    ) -> std::io::Result<()> {
        let stream = tokio::net::TcpStream::from_std(conn.stream)?;
        let id = self.next;
        self.next += 1;
        self.waiting.insert(
            id,
            Unrouted {
                stream: Rc::new(stream),
                peer: conn.peer,
                destination: conn.destination,
                local,
                task: None,
            },
        );
        if !frozen {
            self.start(id, front, timeout);
        }
        Ok(())
    }

    fn start(&mut self, id: u64, front: &Weak<RefCell<Front>>, timeout: Duration) {
        let Some(w) = self.waiting.get_mut(&id) else {
            return;
        };
        let stream = w.stream.clone();
        let me = front.clone();
        let task = tokio::task::spawn_local(async move {
            let result = crate::sni::peek_client_hello(&stream, timeout).await;
            drop(stream);
            if let Some(front) = me.upgrade() {
                front.borrow_mut().sni_read(id, result);
            }
        });
        w.task = Some(task.abort_handle());
    }

    /// A wait ended: the connection and its listener (`None`: it is gone,
    /// or its descriptor could not be kept).
    pub fn done(&mut self, id: u64) -> Option<(Conn, SocketAddr)> {
        let w = self.waiting.remove(&id)?;
        let stream = match Rc::try_unwrap(w.stream) {
            Ok(stream) => stream.into_std().ok()?,
            Err(shared) => shared
                .as_fd()
                .try_clone_to_owned()
                .map(std::net::TcpStream::from)
                .ok()?,
        };
        Some((
            Conn {
                stream,
                peer: w.peer,
                destination: w.destination,
                service: None,
                tally: None,
            },
            w.local,
        ))
    }

    /// Stop every wait (the front freezes for a handover).
    pub fn suspend(&mut self) {
        for w in self.waiting.values_mut() {
            if let Some(t) = w.task.take() {
                t.abort();
            }
        }
    }

    /// Start the waits that are not running.
    pub fn resume(&mut self, front: &Weak<RefCell<Front>>, timeout: Duration) {
        let idle: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.task.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.start(id, front, timeout);
        }
    }

    /// Close every waiting connection (the front stops).
    pub fn close(&mut self) -> usize {
        self.suspend();
        let n = self.waiting.len();
        self.waiting.clear();
        n
    }

    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> SniWaitsState {
        let mut waits = Vec::new();
        for w in self.waiting.values() {
            fds.push(w.stream.as_fd());
            waits.push((w.peer, w.destination, w.local));
        }
        SniWaitsState { waits }
    }

    /// The waits a new front takes over (started when it thaws).
    pub fn from_handover(state: SniWaitsState, fds: &mut FdSource) -> Result<SniWaits, String> {
        let mut waits = SniWaits::default();
        for (peer, destination, local) in state.waits {
            let fd = fds.next(&format!(
                "connection from {peer} waiting for its ClientHello"
            ))?;
            let stream = std::net::TcpStream::from(fd);
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let conn = Conn {
                stream,
                peer,
                destination,
                service: None,
                tally: None,
            };
            // (Not registered with a loop yet? `from_std` needs the
            // runtime, which the new front runs on.)
            let _ = waits.wait(conn, local, &Weak::new(), true, Duration::ZERO);
        }
        Ok(waits)
    }
}
