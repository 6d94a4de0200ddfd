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
//! - per service (only for a `[[service]]` with `max-conns` or
//!   `max-conns-per-ip` of its own): its open connections, and each
//!   client's. What admission counted travels with the connection (its
//!   [`Tally`]) wherever it goes (waiting here, in a backend queue, to a
//!   worker, back), and is released exactly once when it ends, whatever a
//!   reload changed meanwhile; a worker reports such an end
//!   (`Event::Ended`), and a worker that dies releases all of its own.
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
pub use crate::supervisor::Tally;

/// An accepted client connection not yet handed to a worker.
pub struct Conn {
    pub stream: TcpStream,
    /// The client: the connection's peer, or for a connection from an
    /// `--accept-proxy` source, the source its PROXY header named.
    pub peer: SocketAddr,
    /// The address the client connected to, when the socket cannot tell
    /// (a PROXY header's destination); `None`: the socket's local address.
    pub destination: Option<SocketAddr>,
    /// The id of the service it is for, once routed.
    pub service: Option<u32>,
    /// What its service's own limits counted it as (released when it ends).
    pub tally: Option<Tally>,
}

/// Why a service's own limits refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The service holds its `max-conns`.
    Service(u64),
    /// The client holds the service's `max-conns-per-ip`.
    Client(u32),
}

impl Over {
    /// Its name in metrics and `ctl explain` (one of
    /// `metrics::SERVICE_REFUSALS`).
    pub fn reason(&self) -> &'static str {
        match self {
            Over::Service(_) => "max_conns",
            Over::Client(_) => "max_conns_per_ip",
        }
    }

    /// The limit reached.
    pub fn limit(&self) -> u64 {
        match *self {
            Over::Service(n) => n,
            Over::Client(n) => u64::from(n),
        }
    }
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
            service: None,
            tally: None,
        }
    }
}

#[derive(Default)]
pub struct Ledger {
    /// Accepted connections waiting for a worker with room, oldest first.
    pending: VecDeque<Conn>,
    /// Open connections per client (only with a per-IP limit).
    per_ip: HashMap<IpAddr, u32>,
    /// Open connections per service with limits of its own (by id).
    service_open: HashMap<u32, u64>,
    /// Open connections per (service, client) under a service's own
    /// per-IP limit.
    service_ip: HashMap<(u32, IpAddr), u32>,
    /// The id the next connection gets.
    next_conn: u64,
}

/// The ledger across an upgrade (the pending connections' descriptors
/// travel beside it, oldest first).
#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerState {
    pending: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// Parallel to `pending`: each one's service id.
    #[serde(default)]
    services: Vec<Option<u32>>,
    per_ip: Vec<(IpAddr, u32)>,
    /// Parallel to `pending`: what each counted against its service.
    #[serde(default)]
    tallies: Vec<Option<Tally>>,
    #[serde(default)]
    service_open: Vec<(u32, u64)>,
    #[serde(default)]
    service_ip: Vec<(u32, IpAddr, u32)>,
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
        if !self.ip_has_room(key, max) {
            return false;
        }
        *self.per_ip.entry(key).or_default() += 1;
        true
    }

    /// Whether client `key` may open one more connection under `max`.
    pub fn ip_has_room(&self, key: IpAddr, max: u32) -> bool {
        self.ip_count(key) < max
    }

    /// Connections client `key` has open now (counted with a limit only).
    pub fn ip_count(&self, key: IpAddr) -> u32 {
        self.per_ip.get(&key).copied().unwrap_or(0)
    }

    /// `n` connections of client `key` ended.
    pub fn release_ip(&mut self, key: IpAddr, n: u32) {
        uncount(&mut self.per_ip, key, n);
    }

    /// Count a new connection of service `service` from client `key`
    /// under the service's own `limits`; `Err` (nothing counted) if the
    /// service or the client is at its limit.
    pub fn admit_service(
        &mut self,
        service: u32,
        key: IpAddr,
        limits: crate::config::ServiceLimits,
    ) -> Result<Tally, Over> {
        self.service_has_room(service, key, limits)?;
        *self.service_open.entry(service).or_default() += 1;
        let client = limits.max_conns_per_ip.map(|_| {
            *self.service_ip.entry((service, key)).or_default() += 1;
            key
        });
        Ok(Tally { service, client })
    }

    /// Whether service `service`'s own `limits` take one more connection
    /// from client `key` now; `Err`: the limit that is reached.
    pub fn service_has_room(
        &self,
        service: u32,
        key: IpAddr,
        limits: crate::config::ServiceLimits,
    ) -> Result<(), Over> {
        if let Some(max) = limits.max_conns {
            if self.service_count(service) >= max {
                return Err(Over::Service(max));
            }
        }
        if let Some(max) = limits.max_conns_per_ip {
            if self.service_ip_count(service, key) >= max {
                return Err(Over::Client(max));
            }
        }
        Ok(())
    }

    /// A connection counted as `t` ended.
    pub fn release_tally(&mut self, t: Tally) {
        uncount(&mut self.service_open, t.service, 1);
        if let Some(key) = t.client {
            uncount(&mut self.service_ip, (t.service, key), 1);
        }
    }

    /// Open connections of service `id` (counted only with limits of its
    /// own).
    pub fn service_count(&self, id: u32) -> u64 {
        self.service_open.get(&id).copied().unwrap_or(0)
    }

    /// Open connections of client `key` to service `id` (counted only
    /// under the service's own per-IP limit).
    pub fn service_ip_count(&self, id: u32, key: IpAddr) -> u32 {
        self.service_ip.get(&(id, key)).copied().unwrap_or(0)
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
            services: self.pending.iter().map(|c| c.service).collect(),
            per_ip: self.per_ip.iter().map(|(&ip, &n)| (ip, n)).collect(),
            tallies: self.pending.iter().map(|c| c.tally).collect(),
            service_open: self.service_open.iter().map(|(&s, &n)| (s, n)).collect(),
            service_ip: self
                .service_ip
                .iter()
                .map(|(&(s, ip), &n)| (s, ip, n))
                .collect(),
            next_conn: self.next_conn,
        }
    }

    pub fn from_handover(state: LedgerState, fds: &mut FdSource) -> Result<Ledger, String> {
        let mut pending = VecDeque::new();
        for (i, (peer, destination)) in state.pending.into_iter().enumerate() {
            let fd = fds.next(&format!("pending connection from {peer}"))?;
            pending.push_back(Conn {
                stream: TcpStream::from(fd),
                peer,
                destination,
                service: state.services.get(i).copied().flatten(),
                tally: state.tallies.get(i).copied().flatten(),
            });
        }
        Ok(Ledger {
            pending,
            per_ip: state.per_ip.into_iter().collect(),
            service_open: state.service_open.into_iter().collect(),
            service_ip: state
                .service_ip
                .into_iter()
                .map(|(s, ip, n)| ((s, ip), n))
                .collect(),
            next_conn: state.next_conn,
        })
    }
}

/// Take `n` from `key`'s count (never below 0); a count at 0 leaves the
/// map, so it holds only clients and services with something open.
fn uncount<K, N>(map: &mut HashMap<K, N>, key: K, n: N)
where
    K: std::hash::Hash + Eq,
    N: Copy + Default + PartialEq + std::ops::Sub<Output = N> + PartialOrd,
{
    if let Some(c) = map.get_mut(&key) {
        *c = if *c > n { *c - n } else { N::default() };
        if *c == N::default() {
            map.remove(&key);
        }
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
            service: None,
            tally: None,
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

    #[test]
    fn a_service_at_its_limits_refuses_until_a_counted_connection_ends() {
        use crate::config::ServiceLimits;
        let mut ledger = Ledger::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let limits = ServiceLimits {
            max_conns: Some(3),
            max_conns_per_ip: Some(2),
        };
        let t1 = ledger.admit_service(7, a, limits).unwrap();
        ledger.admit_service(7, a, limits).unwrap();
        assert_eq!(ledger.admit_service(7, a, limits), Err(Over::Client(2)));
        // Another service counts apart.
        ledger.admit_service(8, a, limits).unwrap();
        ledger.admit_service(7, b, limits).unwrap();
        assert_eq!(ledger.admit_service(7, b, limits), Err(Over::Service(3)));
        assert_eq!(ledger.service_count(7), 3);
        ledger.release_tally(t1);
        assert_eq!(ledger.service_ip_count(7, a), 1);
        assert!(ledger.admit_service(7, b, limits).is_ok());
        // A limit without the per-IP one counts no client.
        let only = ServiceLimits {
            max_conns: Some(1),
            max_conns_per_ip: None,
        };
        let t = ledger.admit_service(9, a, only).unwrap();
        assert_eq!(t.client, None);
        ledger.release_tally(t);
        ledger.release_tally(t);
        assert_eq!(ledger.service_count(9), 0);
    }
}
