//! The front's `Ledger` part: the connections it is accountable for
//! before a worker has them, and its per-client counts.
//!
//! - `pending`: accepted, no worker can take it yet. Served in arrival
//!   order: a new connection waits behind every older one
//!   ([`Ledger::wait`]); one taken out to be handed and not placed goes
//!   back first ([`Ledger::put_back`]); connections taken back from a
//!   worker (it died before reading them, or its channel refused them)
//!   were accepted before anything still waiting and go first
//!   ([`Ledger::requeue`]).
//! - per client (only with a per-IP limit, `--max-conns-per-ip`): open
//!   connections, released by the workers' `Closed` events. A client is
//!   an IPv4 address, or an IPv6 address's
//!   leading `--per-ip-ipv6-prefix` bits (a /64 by default: one host
//!   usually owns a whole /64 and could walk it).
//! - the id the next connection gets (log correlation).
//!
//! What is in flight to a worker (handed, not yet received) is counted by
//! each worker process (`supervisor`) and per backend (`Backends`); once a
//! worker has received a connection it counts it in its own statistics
//! cell, which the front reads and never copies.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::channel::Handoff;
use crate::handover::FdSource;

/// An accepted client connection not yet handed to a worker.
pub struct Conn {
    pub stream: TcpStream,
    /// The client: the connection's peer, or for a connection from an
    /// `--accept-proxy` source, the source its PROXY header named.
    pub peer: SocketAddr,
    /// The address the client connected to, when the socket cannot tell
    /// (a PROXY header's destination); `None`: the socket's local address.
    pub destination: Option<SocketAddr>,
}

impl Conn {
    pub fn ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// A connection described by `h`, on its descriptor (taken back from a
    /// worker's channel).
    pub fn of_handoff(stream: TcpStream, h: &Handoff) -> Conn {
        Conn {
            stream,
            peer: h.client,
            destination: h.destination,
        }
    }
}

#[derive(Default)]
pub struct Ledger {
    /// Accepted connections waiting for a worker with room, oldest first.
    pending: VecDeque<Conn>,
    /// Open connections per client (only with a per-IP limit).
    per_ip: HashMap<IpAddr, u32>,
    /// The id the next connection gets.
    next_conn: u64,
}

/// The ledger across an upgrade (the pending connections' descriptors
/// travel beside it, oldest first).
#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerState {
    pending: Vec<(SocketAddr, Option<SocketAddr>)>,
    per_ip: Vec<(IpAddr, u32)>,
    next_conn: u64,
}

impl Ledger {
    /// A new connection waits for a worker, behind every older one.
    pub fn wait(&mut self, conn: Conn) {
        self.pending.push_back(conn);
    }

    /// The oldest waiting connection, to be handed now.
    pub fn take_oldest(&mut self) -> Option<Conn> {
        self.pending.pop_front()
    }

    /// A connection taken with [`Ledger::take_oldest`] that no worker could
    /// take after all: first in line again.
    pub fn put_back(&mut self, conn: Conn) {
        self.pending.push_front(conn);
    }

    /// Connections that were on their way to a worker and are back (a
    /// worker died before reading them, or its channel refused them):
    /// accepted before any that waits now, so they go first, in their
    /// order.
    pub fn requeue(&mut self, conns: Vec<Conn>) {
        for conn in conns.into_iter().rev() {
            self.pending.push_front(conn);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Close every waiting connection (shutdown): never handed out, the
    /// client sees the close. Returns how many.
    pub fn close_pending(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }

    /// The id for a new connection.
    pub fn next_conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn - 1
    }

    /// Count a new connection of client `key`; false if that client is at
    /// `max` (the caller refuses the connection).
    pub fn admit_ip(&mut self, key: IpAddr, max: u32) -> bool {
        let n = self.per_ip.entry(key).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// `n` connections of client `key` ended.
    pub fn release_ip(&mut self, key: IpAddr, n: u32) {
        if let Some(c) = self.per_ip.get_mut(&key) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.per_ip.remove(&key);
            }
        }
    }

    /// What the ledger hands to a new front; the waiting connections'
    /// descriptors are pushed on `fds`.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> LedgerState {
        for c in &self.pending {
            fds.push(c.stream.as_fd());
        }
        LedgerState {
            pending: self
                .pending
                .iter()
                .map(|c| (c.peer, c.destination))
                .collect(),
            per_ip: self.per_ip.iter().map(|(&ip, &n)| (ip, n)).collect(),
            next_conn: self.next_conn,
        }
    }

    pub fn from_handover(state: LedgerState, fds: &mut FdSource) -> Result<Ledger, String> {
        let mut pending = VecDeque::new();
        for (peer, destination) in state.pending {
            let fd = fds.next(&format!("pending connection from {peer}"))?;
            pending.push_back(Conn {
                stream: TcpStream::from(fd),
                peer,
                destination,
            });
        }
        Ok(Ledger {
            pending,
            per_ip: state.per_ip.into_iter().collect(),
            next_conn: state.next_conn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn conn(l: &TcpListener, port: u16) -> Conn {
        let stream = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        Conn {
            stream,
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            destination: None,
        }
    }

    fn order(ledger: &mut Ledger) -> Vec<u16> {
        std::iter::from_fn(|| ledger.take_oldest())
            .map(|c| c.peer.port())
            .collect()
    }

    /// Waiting connections are handed out in arrival order: the first to
    /// wait is the first served (it was the last: every new connection
    /// went in front of the others).
    #[test]
    fn pending_connections_are_served_first_come_first_served() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ledger = Ledger::default();
        for port in [1, 2, 3] {
            ledger.wait(conn(&l, port));
        }
        // The oldest is tried and cannot be placed: still first.
        let first = ledger.take_oldest().unwrap();
        assert_eq!(first.peer.port(), 1);
        ledger.put_back(first);
        ledger.wait(conn(&l, 4));
        // Recovered from a dead worker: before anything that waits.
        ledger.requeue(vec![conn(&l, 10), conn(&l, 11)]);
        assert_eq!(order(&mut ledger), [10, 11, 1, 2, 3, 4]);
    }

    #[test]
    fn a_client_at_its_limit_is_refused_until_one_of_its_connections_ends() {
        let mut ledger = Ledger::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(ledger.admit_ip(ip, 2));
        assert!(ledger.admit_ip(ip, 2));
        assert!(!ledger.admit_ip(ip, 2));
        ledger.release_ip(ip, 1);
        assert!(ledger.admit_ip(ip, 2));
        ledger.release_ip(ip, 5);
        assert!(ledger.per_ip.is_empty());
    }
}
