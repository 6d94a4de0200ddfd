//! The connection ledger: what the front is accountable for between
//! `accept` and the moment a worker takes a connection out of its channel.
//!
//! - `pending`: accepted, no worker can take it yet;
//! - per worker process, `inflight`: handed (sent on its channel), not yet
//!   received; each one is counted on its planned backend (`Backends`
//!   keeps the per-backend sum for least-conn and for reaping);
//! - per client (only with a per-IP limit, `--max-conns-per-ip`): open
//!   connections, released by the workers' `Closed` events. A client is an IPv4 address, or an IPv6 address's
//!   leading `--per-ip-ipv6-prefix` bits (a /64 by default: one host
//!   usually owns a whole /64 and could walk it).
//!
//! Once a worker has received a connection, it counts it in its own
//! statistics cell; the front reads those words and never keeps a second
//! copy. Every change of the front's own counts goes through the methods
//! here, so no caller can do half an update.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

use hashbrown::HashMap;
use tracing::debug;

use super::{Conn, Front};
use crate::stats::ProcWord;
use crate::supervisor::WorkerProc;

#[derive(Default)]
pub struct Ledger {
    /// Accepted connections waiting for a worker with room.
    pub pending: VecDeque<Conn>,
    /// Open connections per client IP (only with `--max-conns-per-ip`).
    pub per_ip: HashMap<IpAddr, u32>,
    /// The id the next connection gets (for log correlation).
    pub next_conn: u64,
}

pub use crate::acl::limit_key as client_of;

impl Front {
    /// The per-IP limit's client for `ip`.
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_of(ip, self.limits.per_ip_ipv6_prefix)
    }

    /// Count a new connection from `ip`; false if that client is at its
    /// limit (the caller refuses the connection).
    pub fn admit_ip(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.limits.per_ip() else {
            return true;
        };
        let ip = self.client_key(ip);
        let n = self.ledger.per_ip.entry(ip).or_default();
        if *n >= max {
            debug!(client.addr = %ip, limit = max, "per-IP limit reached; refusing");
            return false;
        }
        *n += 1;
        true
    }

    /// `k` connections from `ip` ended.
    /// `k` connections of the client `ip` (already a key) ended.
    pub fn release_ip_n(&mut self, ip: IpAddr, k: u32) {
        if self.ledger.per_ip.is_empty() {
            return;
        }
        if let Some(n) = self.ledger.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(k);
            if *n == 0 {
                self.ledger.per_ip.remove(&ip);
            }
        }
    }

    /// A connection from `ip` ended.
    pub fn release_ip(&mut self, ip: IpAddr) {
        let key = self.client_key(ip);
        self.release_ip_n(key, 1);
    }

    /// A connection from `client` that worker process `id` had ended.
    pub fn closed(&mut self, slot: usize, id: u64, client: IpAddr) {
        let key = self.client_key(client);
        if let Some(p) = self.workers.slots[slot].proc_mut(id) {
            p.ip_sub(key, 1);
        }
        self.release_ip_n(key, 1);
    }

    /// Trim every process's `inflight` by what its worker has received
    /// since the last look, uncounting those from their backends' sums.
    pub fn sync_received(&mut self) {
        let table = self.counters.table.clone();
        for slot in &mut self.workers.slots {
            for p in &mut slot.procs {
                let received = table.cell(p.cell).get(ProcWord::Received);
                let mut taken = received.saturating_sub(p.received_seen);
                p.received_seen = received;
                if taken > 0 {
                    p.unread_since = (p.handed > received).then(Instant::now);
                }
                while taken > 0 {
                    let Some(backend) = p.inflight.pop_front() else {
                        break;
                    };
                    self.backends.sub_inflight(backend);
                    taken -= 1;
                }
            }
        }
    }

    /// A process is gone: uncount whatever the front still counted for it
    /// (its in-flight handoffs and its clients' per-IP counts). Returns the
    /// connections it held that were lost (handed and not finished).
    pub fn forget_proc(&mut self, proc: &mut WorkerProc) -> u64 {
        for backend in proc.inflight.drain(..) {
            self.backends.sub_inflight(backend);
        }
        for (ip, n) in std::mem::take(&mut proc.ips) {
            self.release_ip_n(ip, n);
        }
        let cell = self.counters.cell(proc.cell);
        proc.handed.saturating_sub(cell.get(ProcWord::Finished))
    }
}
