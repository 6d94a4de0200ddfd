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

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::{Rc, Weak};

use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::{Access, client_of};
use crate::config::Config;
use crate::front::{Conn, Counters, Front, refuse};
use crate::handover::FdSource;
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
pub(super) struct Waiting {
    stream: Rc<tokio::net::TcpStream>,
    peer: SocketAddr,
    /// The read in progress; `None` while suspended for a handover.
    task: Option<AbortHandle>,
}

impl Access {
    /// Start reading the PROXY header of a connection from a trusted
    /// source (unless `frozen`: then it is read once the front thaws). The
    /// read ends in `Front::header_read`, through `front`.
    pub fn read_header(
        &mut self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        front: &Weak<RefCell<Front>>,
        frozen: bool,
        counters: &Counters,
    ) {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                let id = self.next_wait;
                self.next_wait += 1;
                let w = Waiting {
                    stream: Rc::new(stream),
                    peer,
                    task: None,
                };
                self.waiting.insert(id, w);
                if !frozen {
                    self.start_read(id, front);
                }
            }
            Err(err) => {
                // Registering with the event loop failed (out of memory):
                // that connection only.
                self.header_failed(peer, HeaderError::Io(err.kind()), None, counters);
            }
        }
    }

    fn start_read(&mut self, id: u64, front: &Weak<RefCell<Front>>) {
        let timeout = self.header_timeout;
        let me = front.clone();
        let Some(w) = self.waiting.get_mut(&id) else {
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

    /// A read ended: the connection with the header's client, to admit;
    /// or `None` (it was closed: no header, a bad one, a late one).
    pub fn header_read(
        &mut self,
        id: u64,
        result: Result<Parsed, HeaderError>,
        counters: &Counters,
    ) -> Option<Conn> {
        let w = self.waiting.remove(&id)?;
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
                self.header_failed(w.peer, why, Some(&stream), counters);
                return None;
            }
            (Err(err), _) => {
                self.header_failed(w.peer, HeaderError::Io(err.kind()), None, counters);
                return None;
            }
        };
        let (peer, destination) = client_of(&parsed.header, w.peer);
        debug!(
            via = %w.peer,
            client.addr = %peer,
            version = %parsed.version,
            "PROXY header read"
        );
        Some(Conn {
            stream,
            peer,
            destination,
            service: None,
            tally: None,
        })
    }

    /// Close a connection whose header could not be read (a reset), count
    /// it by reason, and log at most a line a second.
    fn header_failed(
        &mut self,
        peer: SocketAddr,
        why: HeaderError,
        stream: Option<&std::net::TcpStream>,
        counters: &Counters,
    ) {
        if let Some(s) = stream {
            refuse(s);
        }
        counters.bump(FrontWord::header_error(&why), 1);
        match self.header_log.pass() {
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
        for w in self.waiting.values_mut() {
            if let Some(t) = w.task.take() {
                t.abort();
            }
        }
    }

    /// Start the reads that are not running: suspended ones after a failed
    /// upgrade, inherited ones after a successful one.
    pub fn resume_header_reads(&mut self, front: &Weak<RefCell<Front>>) {
        let idle: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.task.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.start_read(id, front);
        }
    }

    /// What the part hands to a new front: the connections whose header is
    /// still to be read (the front is frozen: their reads are suspended),
    /// their descriptors pushed on `fds`.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> AccessState {
        let mut header_waits = Vec::new();
        for w in self.waiting.values() {
            fds.push(w.stream.as_fd());
            header_waits.push(w.peer);
        }
        AccessState { header_waits }
    }

    /// The part a new front takes over: the lists and settings of
    /// `config`, and the connections whose header it is to read when it
    /// thaws ([`Access::resume_header_reads`]).
    pub fn from_handover(
        config: &Config,
        state: AccessState,
        fds: &mut FdSource,
        counters: &Counters,
    ) -> Result<Access, String> {
        let mut access = Access::new(config);
        for peer in state.header_waits {
            let fd = fds.next(&format!(
                "connection from {peer} waiting for its PROXY header"
            ))?;
            let stream = std::net::TcpStream::from(fd);
            if let Err(err) = stream.set_nonblocking(true) {
                access.header_failed(peer, HeaderError::Io(err.kind()), Some(&stream), counters);
                continue;
            }
            access.read_header(stream, peer, &Weak::new(), true, counters);
        }
        Ok(access)
    }
}

/// The `Access` part across an upgrade.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AccessState {
    /// Connections from `--accept-proxy` sources whose header is still to
    /// be read (by their source address; descriptors beside).
    header_waits: Vec<SocketAddr>,
}
