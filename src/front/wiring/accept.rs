//! The accept path: a connection from `accept` (or a PROXY header read, or
//! a ClientHello read) to a worker's batch: routing to its service,
//! admission, the policy's pick, batching and flushing.

use super::*;

impl Front {
    // ---- The accept path.

    /// A connection came out of `accept` on the listener at `local`. One
    /// from an `--accept-proxy` source first has its PROXY header read,
    /// off the accept loop (it comes back in [`Front::header_read`]); any
    /// other is routed to its service now.
    pub fn accepted(&mut self, stream: TcpStream, peer: SocketAddr, local: Option<SocketAddr>) {
        self.counters.bump(FrontWord::Accepted, 1);
        let trusted = if self.services.single() {
            self.services
                .get(0)
                .config()
                .accept_proxy
                .contains(peer.ip())
        } else {
            let key = local.map(|l| self.listeners.asked_for(l));
            self.services.trusts(key, peer.ip())
        };
        if trusted {
            let frozen = self.frozen();
            self.access
                .read_header(stream, peer, &self.me, frozen, &self.counters);
            self.update_paused();
            return;
        }
        self.route(
            Conn {
                stream,
                peer,
                destination: None,
                service: None,
                tally: None,
            },
            local,
        );
    }

    /// A PROXY header read ended: route the connection with the header's
    /// client (or it was closed), and send its batch at once, since this
    /// is not inside an accept round.
    pub fn header_read(
        &mut self,
        id: u64,
        result: Result<crate::proxy_protocol::Parsed, crate::proxy_protocol::HeaderError>,
    ) {
        if let Some(conn) = self.access.header_read(id, result, &self.counters) {
            self.route(conn, None);
            self.flush();
        }
        self.update_paused();
    }

    /// Which service `conn` (accepted on `local`; `None`: ask the socket)
    /// is for: its listener's, or on a listener that routes by server
    /// name, the one its ClientHello asks for. A hello already there
    /// (always with defer-accept) decides now; otherwise the connection
    /// waits for it off the accept loop ([`Front::sni_read`]).
    pub(super) fn route(&mut self, conn: Conn, local: Option<SocketAddr>) {
        if self.services.single() {
            self.admit(conn, 0);
            return;
        }
        let Some(local) = local.or_else(|| conn.stream.local_addr().ok()) else {
            refuse(&conn.stream);
            return;
        };
        // (Services route by the address the config asked for: `:0` for a
        // port the kernel chose.)
        let local = self.listeners.asked_for(local);
        let Some(route) = self.services.route(local) else {
            // A listener a reload just removed.
            refuse(&conn.stream);
            return;
        };
        if let Some(i) = route.direct() {
            self.admit(conn, i);
            return;
        }
        use std::os::fd::AsFd;
        match crate::sni::try_peek_client_hello(conn.stream.as_fd()) {
            Ok(Some(peeked)) => self.sni_decided(conn, local, Ok(peeked)),
            Ok(None) => {
                let frozen = self.frozen();
                let timeout = self.settings.get().sni_timeout;
                let peer = conn.peer;
                if let Err(err) = self.sni_waits.wait(conn, local, &self.me, frozen, timeout) {
                    debug!(client.addr = %peer, cause = %err, "cannot wait for a ClientHello");
                    self.services.count_unrouted("io");
                }
                self.update_paused();
            }
            Err(err) => self.sni_decided(conn, local, Err(err)),
        }
    }

    /// A ClientHello wait ended: route the connection, and send its batch
    /// at once, since this is not inside an accept round.
    pub fn sni_read(&mut self, id: u64, result: Result<crate::sni::Peeked, crate::sni::PeekError>) {
        if let Some((conn, local)) = self.sni_waits.done(id) {
            if !self.stopping() {
                self.sni_decided(conn, local, result);
                self.flush();
            }
        }
        self.update_paused();
    }

    /// What the hello says decides the service: a name one of them claims
    /// (most specific first), else the listener's fallback; none: closed.
    /// Counted by service and reason either way.
    pub(super) fn sni_decided(
        &mut self,
        conn: Conn,
        local: SocketAddr,
        result: Result<crate::sni::Peeked, crate::sni::PeekError>,
    ) {
        use crate::sni::Hello;
        let Some(route) = self.services.route(local) else {
            refuse(&conn.stream);
            return;
        };
        let (to, reason) = match &result {
            Ok(p) => match &p.hello {
                Hello::Found(host) => match route.matched(host.as_str()) {
                    Some(i) => (Some(i), "found"),
                    None => (route.fallback(), "no_match"),
                },
                other => (route.fallback(), other.reason()),
            },
            // The client left, or its socket failed: nothing to route.
            Err(e @ (crate::sni::PeekError::Closed { .. } | crate::sni::PeekError::Io(_))) => {
                (None, e.reason())
            }
            Err(e) => (route.fallback(), e.reason()),
        };
        match to {
            Some(i) => {
                self.services.get(i).count_sni(reason);
                self.admit(conn, i);
            }
            None => {
                self.services.count_unrouted(reason);
                debug!(client.addr = %conn.peer, reason, "no service for this connection; closing it");
                refuse(&conn.stream);
            }
        }
    }

    /// A connection for service `i` whose client is known: refused if the
    /// service's access list, the client's per-IP limit or the service's
    /// own limits say so, else
    /// dispatched (or, if no worker can take it now, queued behind the
    /// others).
    pub(super) fn admit(&mut self, mut conn: Conn, i: usize) {
        if self.stopping() {
            // (A PROXY header read that ended during the drain.)
            return;
        }
        let service = self.services.get(i);
        service.count_connection();
        conn.service = Some(service.id());
        let acl = service.acl().clone();
        if !self.access.admits(&acl, &conn, &self.counters) {
            return;
        }
        if !self.admit_ip(conn.ip()) {
            let limit = self.settings.limits().per_ip().unwrap_or(0);
            self.access.refuse_at_limit(&conn, limit, &self.counters);
            return;
        }
        if !self.admit_service(&mut conn, i) {
            self.release_ip(conn.ip());
            return;
        }
        if let Err(conn) = self.dispatch(conn) {
            self.ledger.wait(conn);
            self.publish_pending();
        }
        self.update_paused();
    }

    /// The per-IP limit's client for `ip`.
    pub(super) fn client_key(&self, ip: IpAddr) -> IpAddr {
        crate::acl::limit_key(ip, self.settings.limits().per_ip_ipv6_prefix)
    }

    /// Count a new connection from `ip`; false if that client is at its
    /// limit.
    pub(super) fn admit_ip(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.settings.limits().per_ip() else {
            return true;
        };
        let key = self.client_key(ip);
        let ok = self.ledger.admit_ip(key, max);
        if !ok {
            debug!(client.addr = %key, limit = max, "per-IP limit reached; refusing");
        }
        ok
    }

    /// A connection from `ip` ended before reaching a worker.
    pub(super) fn release_ip(&mut self, ip: IpAddr) {
        let key = self.client_key(ip);
        self.ledger.release_ip(key, 1);
    }

    /// Choose a worker and a backend of its service for `conn` and add it
    /// to that worker's batch; a full batch is sent at once. A connection
    /// for which every backend it may use is at its connection limit
    /// waits in a backend's queue (see `queue`). `Err(conn)`: no worker
    /// can take it now.
    pub(super) fn dispatch(&mut self, conn: Conn) -> Result<(), Conn> {
        let ip = conn.ip();
        let Some(si) = conn
            .service
            .and_then(|id| self.services.index_of(id))
            .or_else(|| self.services.single().then_some(0))
        else {
            // Its service is gone (removed by a reload, drained).
            debug!(client.addr = %conn.peer, "its service is gone; closing client");
            self.counters.bump(FrontWord::FailedFront, 1);
            self.release(&conn);
            refuse(&conn.stream);
            return Ok(());
        };
        // Exact counts for limited backends (cheap: a few word reads per
        // worker and limited backend); also right after a take-over or a
        // limit set by ctl, before any report arrived.
        self.recount(Some(si));
        let service = self.services.get_mut(si);
        let retries = service.retries();
        let (routing, backends) = service.parts_mut();
        let Some(slot) = routing.pick_worker(ip) else {
            return Err(conn);
        };
        let (bidx, fallbacks) = match routing.pick_backend(ip, backends, retries) {
            Pick::Go(bidx, fallbacks) => (bidx, fallbacks),
            Pick::Wait { backend, pinned } => {
                let w = Waiting::new(conn, Instant::now(), pinned, None);
                self.wait_for(si, backend, w);
                return Ok(());
            }
            Pick::Nowhere => {
                // Every backend is disabled or draining: nothing to try.
                debug!(client.addr = %conn.peer, "no enabled backend; closing client");
                self.counters.bump(FrontWord::FailedFront, 1);
                self.release(&conn);
                refuse(&conn.stream);
                return Ok(());
            }
        };
        self.hand(slot, conn, si, bidx, fallbacks)
    }

    /// Add `conn` to the batch of the worker in `slot`, for backend `bidx`
    /// of service `si` then `fallbacks`; a full batch is sent at once.
    /// `Err(conn)`: the slot has no serving worker after all.
    pub(super) fn hand(
        &mut self,
        slot: usize,
        conn: Conn,
        si: usize,
        bidx: usize,
        fallbacks: crate::channel::Fallbacks,
    ) -> Result<(), Conn> {
        let ip = conn.ip();
        let backend = self.services.get(si).backends().get(bidx).id();
        let track = self.settings.limits().per_ip().map(|_| self.client_key(ip));
        let id = self.ledger.next_conn();
        let Some(proc) = self.workers.slot_mut(slot).serving_mut() else {
            // Views and slots disagree: a bug, but not worth a connection.
            warn!(slot, "routable slot without a serving worker");
            self.refresh_view(slot);
            return Err(conn);
        };
        if let Some(key) = track {
            proc.ip_add(key);
        }
        if let Some(t) = conn.tally {
            proc.track(id, t);
        }
        let handoff = Handoff {
            conn: id,
            backend,
            fallbacks,
            client: conn.peer,
            destination: conn.destination,
        };
        let batched = proc.push(handoff, OwnedFd::from(conn.stream));
        self.services.get_mut(si).backends_mut().add_inflight(bidx);
        self.refresh_view(slot);
        if batched >= MAX_FDS {
            let retry = self.flush_slot(slot);
            self.redispatch(retry);
        }
        Ok(())
    }

    /// Dispatch connections a worker's channel would not take; those no
    /// worker can take now go first in the queue, in their order.
    pub(super) fn redispatch(&mut self, conns: Vec<Conn>) {
        let mut waiting = Vec::new();
        for conn in conns {
            if let Err(conn) = self.dispatch(conn) {
                waiting.push(conn);
            }
        }
        if !waiting.is_empty() {
            self.ledger.requeue(waiting);
        }
    }

    /// Send every non-empty batch. Batches that cannot be sent are
    /// re-dispatched to other workers (or queued).
    pub fn flush(&mut self) {
        // Each failed slot becomes unroutable, so this ends within
        // `slots` rounds.
        for _round in 0..=self.workers.len() {
            let mut retry = Vec::new();
            for slot in 0..self.workers.len() {
                retry.extend(self.flush_slot(slot));
            }
            if retry.is_empty() {
                break;
            }
            self.redispatch(retry);
        }
        self.publish_pending();
        self.update_paused();
    }

    /// Send one slot's batch. Returns the connections to re-dispatch if the
    /// channel would not take them.
    pub(super) fn flush_slot(&mut self, slot: usize) -> Vec<Conn> {
        if self.settings.take_broadcast() {
            // A handoff planned on a new backend must not reach a worker
            // before the table that lists it.
            self.broadcast_config();
        }
        let prefix = self.settings.limits().per_ip_ipv6_prefix;
        let Some(proc) = self.workers.slot_mut(slot).batched_mut() else {
            return Vec::new();
        };
        match proc.send_batch(&mut self.scratch, prefix) {
            Ok(0) => Vec::new(),
            Ok(n) => {
                self.counters
                    .cell(proc.cell())
                    .set(ProcWord::Handed, proc.handed());
                self.counters.slot_bump(slot, SlotWord::Handed, n);
                Vec::new()
            }
            Err(Refused { err, handoffs, fds }) => {
                let tallies: Vec<Option<Tally>> =
                    handoffs.iter().map(|h| proc.untrack(h.conn)).collect();
                let (id, channel) = (proc.id(), proc.channel().clone());
                let wait = crate::front::flow::retry_wait(&err);
                if wait.is_none() {
                    debug!(slot, cause = %err, "handoff failed; worker going away");
                }
                self.counters
                    .bump(FrontWord::HandoffFailures, handoffs.len() as u64);
                for h in &handoffs {
                    self.services.unhanded(h.backend);
                }
                self.refresh_view(slot);
                let watch = self
                    .workers
                    .slot_mut(slot)
                    .proc_mut(id)
                    .is_some_and(|p| p.watch());
                if let (Some(wait), true) = (wait, watch) {
                    crate::front::flow::watch_writable(&self.me, slot, id, channel, wait);
                }
                fds.into_iter()
                    .zip(&handoffs)
                    .zip(tallies)
                    .map(|((fd, h), t)| self.conn_of_handoff(TcpStream::from(fd), h, t))
                    .collect()
            }
        }
    }

    /// A full channel of process `id` has room again: send its outbox;
    /// false if it filled again (the watcher keeps waiting).
    pub fn channel_writable(&mut self, slot: usize, id: u64, ok: bool) -> bool {
        let Some(p) = self.workers.slot_mut(slot).proc_mut(id) else {
            return true;
        };
        if !ok {
            // The channel is broken: the worker is going away and its exit
            // is handled elsewhere.
            p.unwatch();
            return true;
        }
        if p.writable() {
            return false;
        }
        p.unwatch();
        self.refresh_view(slot);
        self.retry_pending();
        true
    }

    /// Watch every process a control frame left with a full channel.
    pub(super) fn arm_watchers(&mut self) {
        let full: Vec<(usize, u64)> = self
            .workers
            .procs_by_slot()
            .filter(|(_, p)| p.wants_watch())
            .map(|(slot, p)| (slot, p.id()))
            .collect();
        for (slot, id) in full {
            if let Some(p) = self.workers.slot_mut(slot).proc_mut(id) {
                if p.watch() {
                    let channel = p.channel().clone();
                    crate::front::flow::watch_writable(
                        &self.me,
                        slot,
                        id,
                        channel,
                        crate::front::flow::Retry::After(crate::front::flow::RETRY_MIN),
                    );
                }
            }
        }
    }

    /// Hand queued connections, oldest first, to workers that have room.
    pub fn retry_pending(&mut self) {
        if self.frozen() {
            return;
        }
        self.serve_queues();
        while let Some(conn) = self.ledger.take_oldest() {
            if let Err(conn) = self.dispatch(conn) {
                self.ledger.put_back(conn);
                break;
            }
        }
        self.flush();
    }

    /// A connection taken back from a worker's channel: its service is
    /// its planned backend's.
    /// `tally`: what it counted against its service, taken back from the
    /// process it was handed to.
    pub(super) fn conn_of_handoff(
        &self,
        stream: TcpStream,
        h: &Handoff,
        tally: Option<Tally>,
    ) -> Conn {
        let mut conn = Conn::of_handoff(stream, h);
        conn.service = self
            .services
            .of_backend(h.backend)
            .map(|(s, _)| self.services.get(s).id())
            .or(tally.map(|t| t.service));
        conn.tally = tally;
        conn
    }
}
