//! Reading the PROXY header of a connection from an `--accept-proxy`
//! source, without blocking the accept loop.
//!
//! Each such connection gets a task of its own on the front's event loop
//! ([`crate::proxy_protocol::read_header`]: it peeks until a whole header
//! is there, then consumes exactly its bytes), bounded by
//! `--proxy-header-timeout`. Then the header's source is the client and
//! the connection is admitted like any other (access list, per-IP limit,
//! dispatch), and the batch is flushed at once, since this is not inside
//! an accept round. A missing, malformed, oversized, truncated or late
//! header closes that connection only (with a reset), counted by reason in
//! `rrproxy_proxy_header_errors_total`.
//!
//! At most [`MAX_HEADER_WAITS`] reads wait at once; at that bound the
//! listeners pause like for the other limits (clients wait in the kernel
//! backlog, nothing is accepted only to be dropped), and resume as reads
//! end, which each does within the timeout.
//!
//! Upgrades: when the front freezes for a handover, the reads stop (their
//! tasks are cancelled; a read only consumes once the whole header is
//! there, and then without yielding, so a cancelled read has consumed
//! nothing, however long the header) and the connections travel to the
//! new front, which reads their headers anew when it thaws; if the upgrade
//! fails, the old front resumes them.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::client_of;
use crate::front::{Conn, Front, refuse};
use crate::proxy_protocol::{self, HeaderError, Parsed};
use crate::stats::FrontWord;

/// Most connections whose header is read at once. A sender that is a load
/// balancer writes the header with its first segment, so a read lasts
/// about one round trip: even 100,000 new connections a second with 10 ms
/// round trips keep about 1,000 waiting. The bound is what keeps a flood
/// of connections that send nothing (the timeout frees each after 3 s by
/// default) from holding an unbounded number of descriptors and tasks in
/// the front: 4,096 of them take about 4 MiB and 4,096 descriptors.
pub const MAX_HEADER_WAITS: usize = 4096;

/// One connection whose header is being read.
pub struct Waiting {
    stream: Rc<tokio::net::TcpStream>,
    peer: SocketAddr,
    /// The read in progress; `None` while suspended for a handover.
    task: Option<AbortHandle>,
}

impl Front {
    /// Start reading the PROXY header of a connection from a trusted source.
    pub(in crate::front) fn read_header(&mut self, stream: std::net::TcpStream, peer: SocketAddr) {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                let id = self.access.next_wait;
                self.access.next_wait += 1;
                let w = Waiting {
                    stream: Rc::new(stream),
                    peer,
                    task: None,
                };
                self.access.waiting.insert(id, w);
                if !self.state.frozen {
                    self.start_read(id);
                }
            }
            Err(err) => {
                // Registering with the event loop failed (out of memory):
                // that connection only.
                self.header_failed(peer, HeaderError::Io(err.kind()), None);
            }
        }
        self.update_paused();
    }

    fn start_read(&mut self, id: u64) {
        let timeout = self.access.header_timeout;
        let me = self.me.clone();
        let Some(w) = self.access.waiting.get_mut(&id) else {
            return;
        };
        let stream = w.stream.clone();
        let task = tokio::task::spawn_local(async move {
            let result = proxy_protocol::read_header(&stream, timeout).await;
            drop(stream);
            if let Some(front) = me.upgrade() {
                front.borrow_mut().header_read(id, result);
            }
        });
        w.task = Some(task.abort_handle());
    }

    /// A read ended: admit the connection with the header's client, or
    /// close it.
    fn header_read(&mut self, id: u64, result: Result<Parsed, HeaderError>) {
        let Some(w) = self.access.waiting.remove(&id) else {
            return;
        };
        let stream = match Rc::try_unwrap(w.stream) {
            Ok(stream) => stream.into_std(),
            // A cancelled read's task may not have let go of it yet: keep
            // the connection through a descriptor of our own.
            Err(shared) => shared
                .as_fd()
                .try_clone_to_owned()
                .map(std::net::TcpStream::from),
        };
        let (stream, parsed) = match (stream, result) {
            (Ok(stream), Ok(parsed)) => (stream, parsed),
            (Ok(stream), Err(why)) => {
                self.header_failed(w.peer, why, Some(&stream));
                self.update_paused();
                return;
            }
            (Err(err), _) => {
                self.header_failed(w.peer, HeaderError::Io(err.kind()), None);
                self.update_paused();
                return;
            }
        };
        let (peer, destination) = client_of(&parsed.header, w.peer);
        debug!(
            via = %w.peer,
            client.addr = %peer,
            version = %parsed.version,
            "PROXY header read"
        );
        self.admit(Conn {
            stream,
            peer,
            destination,
        });
        // Not inside an accept round: send the batch now.
        self.flush();
    }

    /// Close a connection whose header could not be read (a reset), count
    /// it by reason, and log at most a line a second.
    fn header_failed(
        &mut self,
        peer: SocketAddr,
        why: HeaderError,
        stream: Option<&std::net::TcpStream>,
    ) {
        if let Some(s) = stream {
            refuse(s);
        }
        self.counters.bump(FrontWord::header_error(&why), 1);
        match self.access.header_log.pass() {
            Some(held) => warn!(
                source = %peer,
                reason = why.reason(),
                cause = %why,
                also_failed_since_last_line = held,
                "closed a connection from an --accept-proxy source: no valid PROXY header"
            ),
            None => debug!(source = %peer, cause = %why, "no valid PROXY header"),
        }
    }

    /// Stop every read (the front freezes for a handover). Nothing has been
    /// consumed of a header whose read is stopped; see the module doc.
    pub fn suspend_header_reads(&mut self) {
        for w in self.access.waiting.values_mut() {
            if let Some(t) = w.task.take() {
                t.abort();
            }
        }
    }

    /// Start the reads that are not running: suspended ones after a failed
    /// upgrade, inherited ones after a successful one.
    pub fn resume_header_reads(&mut self) {
        let idle: Vec<u64> = self
            .access
            .waiting
            .iter()
            .filter(|(_, w)| w.task.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.start_read(id);
        }
    }

    /// The connections whose header is still to be read, for a handover
    /// (the front is frozen: their reads are suspended).
    pub fn header_waits(&self) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
        self.access
            .waiting
            .values()
            .map(|w| (w.peer, w.stream.as_fd()))
            .collect()
    }

    /// Connections handed over whose header is still to be read; read when
    /// the front thaws ([`Front::resume_header_reads`]).
    pub fn adopt_header_waits(&mut self, conns: Vec<(SocketAddr, OwnedFd)>) {
        for (peer, fd) in conns {
            let stream = std::net::TcpStream::from(fd);
            if let Err(err) = stream.set_nonblocking(true) {
                self.header_failed(peer, HeaderError::Io(err.kind()), Some(&stream));
                continue;
            }
            self.read_header(stream, peer);
        }
    }
}
