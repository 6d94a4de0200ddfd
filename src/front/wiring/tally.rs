//! A service's own connection limits (`max-conns`, `max-conns-per-ip` in
//! its `[[service]]` table): counting a connection in when it is
//! admitted, out when it ends wherever it is (here, in a queue, in a
//! worker that reports it, or with a worker that died), and holding the
//! listeners of a service at its `max-conns`.
//!
//! A listener whose every service is at its `max-conns` stops accepting
//! (clients wait in its backlog, as with `--max-conns`); the others go on.
//! A connection that reaches a service at its limit anyway (on a listener
//! it shares with services that have room, or one read before the
//! listener stopped: a PROXY header, a ClientHello) is reset and counted,
//! as is one whose client is at the service's `max-conns-per-ip`.

use std::sync::atomic::Ordering;

use super::*;
use crate::front::ledger::{Over, Tally};

impl Front {
    // ---- Service limits.

    /// Count `conn` against service `i`'s own limits; false if they refuse
    /// it (it was reset and counted; the caller uncounts anything else).
    pub(super) fn admit_service(&mut self, conn: &mut Conn, i: usize) -> bool {
        let service = self.services.get(i);
        let limits = service.config().own_limits;
        if !limits.any() {
            return true;
        }
        let id = service.id();
        let key = self.client_key(conn.ip());
        match self.ledger.admit_service(id, key, limits) {
            Ok(t) => {
                conn.tally = Some(t);
                self.tally_changed(id);
                true
            }
            Err(over) => {
                let service = self.services.get(i);
                let why = match over {
                    Over::Service(_) => "the service is at its max-conns",
                    Over::Client(_) => "at the service's max-conns-per-ip",
                };
                service.label().count_refused(over.reason());
                self.access
                    .refuse_by_service(conn, service.name(), over.limit(), why);
                false
            }
        }
    }

    /// A connection that ended before reaching a worker: uncounted from
    /// the per-IP limit and from its service's own limits.
    pub(super) fn release(&mut self, conn: &Conn) {
        self.release_ip(conn.ip());
        if let Some(t) = conn.tally {
            self.release_tally(t);
        }
    }

    /// A connection counted as `t` ended.
    pub(super) fn release_tally(&mut self, t: Tally) {
        self.ledger.release_tally(t);
        self.tally_changed(t.service);
    }

    /// Worker process `id` of `slot` reports the end of connection `conn`.
    pub(super) fn ended(&mut self, slot: usize, id: u64, conn: u64) {
        let tally = self
            .workers
            .slot_mut(slot)
            .proc_mut(id)
            .and_then(|p| p.untrack(conn));
        if let Some(t) = tally {
            self.release_tally(t);
        }
    }

    /// Service `id`'s count moved: publish it, and hold or free its
    /// listeners when it reached or left its `max-conns`.
    fn tally_changed(&mut self, id: u32) {
        let open = self.ledger.service_count(id);
        let Some(i) = self.services.index_of(id) else {
            return;
        };
        let s = self.services.get(i);
        s.label().open.store(open, Ordering::Relaxed);
        if let Some(max) = s.config().own_limits.max_conns {
            if open + 1 >= max {
                self.update_holds();
            }
        }
    }

    /// Which listeners accept: not those whose every service is at its
    /// `max-conns`.
    pub(super) fn update_holds(&mut self) {
        let ledger = &self.ledger;
        let full = |s: &crate::front::services::Service| {
            s.config()
                .own_limits
                .max_conns
                .is_some_and(|max| ledger.service_count(s.id()) >= max)
        };
        let held = self.services.held_listeners(full);
        if let Some(now_held) = self.listeners.set_held(held) {
            for addr in now_held {
                info!(listener = %addr, "not accepting on this listener for now: its services are at their max-conns; new clients wait in its backlog");
            }
        }
    }

    /// Publish every service's own limit (after a start, a reload or a
    /// take-over) and its count, and look at the holds again.
    pub(super) fn publish_service_limits(&mut self) {
        for s in self.services.iter() {
            let l = s.label();
            l.max_conns.store(
                s.config().own_limits.max_conns.unwrap_or(0),
                Ordering::Relaxed,
            );
            l.open
                .store(self.ledger.service_count(s.id()), Ordering::Relaxed);
        }
        self.update_holds();
    }
}
