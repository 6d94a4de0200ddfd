//! The wiring of connection limits and queues (`maxconn=`, `maxqueue=`,
//! `--queue-timeout`): how a connection that must wait joins a backend's
//! queue, how a freed slot goes to the oldest waiting connection at once,
//! what a timeout, a client that leaves, a backend that goes away and a
//! connection a worker gives back do. Limits are per backend of a
//! service (`backends::limits`); the queues are one set for the backends
//! of every service (`Services::queues`, by backend id: ids are unique
//! across services), and a waiting connection keeps its service. The
//! policy's side is `Routing::pick_backend`. DESIGN.md, "Protecting
//! backends: the queue", says why it is built this way.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{AdminError, Event, Front};
use crate::channel::{Fallbacks, Handoff};
use crate::front::backends::Waiting;
use crate::front::routing::Pick;
use crate::front::{Conn, refuse};
use crate::stats::FrontWord;

/// Log a refusal by a queue at most once every ten seconds per kind
/// (`what`).
fn log_refused(what: &'static str, backend: &str, limit: u64) {
    use std::sync::Mutex;
    static LAST: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());
    let Ok(mut last) = LAST.lock() else { return };
    let now = Instant::now();
    match last.iter_mut().find(|(w, _)| *w == what) {
        Some((_, t)) if now.duration_since(*t) < Duration::from_secs(10) => return,
        Some((_, t)) => *t = now,
        None => last.push((what, now)),
    }
    warn!(
        backend,
        limit, "{what}: closing the connection (logged at most every 10 s)"
    );
}

impl Front {
    /// `w` waits for a slot of backend `i` of service `si` (its queue
    /// refuses it if full: the client is reset).
    pub(super) fn wait_for(&mut self, si: usize, i: usize, w: Waiting) {
        let table = self.counters.table().clone();
        let (backends, queues) = self.services.backends_and_queues(si);
        if let Err(w) = backends.enqueue(queues, i, w, &table) {
            let b = backends.get(i);
            let limit = u64::from(b.spec().maxqueue.unwrap_or(0));
            log_refused("backend queue full (maxqueue)", &b.spec().name, limit);
            self.release(&w.conn);
            refuse(&w.conn.stream);
        }
    }

    /// Hand connections waiting for a slot of backend `i` of service `si`
    /// out while it has free slots: its own queue oldest first, then the
    /// oldest that wait for another backend of the service and may go to
    /// any. False if no worker could take one (the rest wait on).
    fn serve_queue(&mut self, si: usize, i: usize) -> bool {
        if !self.services.get(si).backends().in_use(i) {
            return true;
        }
        let id = self.services.get(si).backends().get(i).id();
        let retries = self.services.get(si).retries();
        let table = self.counters.table().clone();
        loop {
            let backends = self.services.get(si).backends();
            if !backends.slot_free(i) {
                return true;
            }
            let queues = self.services.queues();
            let from = if queues.head(id).is_some() {
                id
            } else {
                match queues.oldest_unpinned(|o| o != id && backends.index_of(o).is_some()) {
                    Some(o) => o,
                    None => return true,
                }
            };
            let Some(at) = backends.index_of(from) else {
                return true;
            };
            let (backends, queues) = self.services.backends_and_queues(si);
            let Some(w) = backends.dequeue(queues, at, &table) else {
                return true;
            };
            let ip = w.conn.ip();
            let Some(slot) = self.services.get_mut(si).routing_mut().pick_worker(ip) else {
                let (backends, queues) = self.services.backends_and_queues(si);
                backends.put_back(queues, at, w, &table);
                return false;
            };
            let (routing, backends) = self.services.get_mut(si).parts_mut();
            backends.record_wait(at, w.since.elapsed(), &table);
            let fallbacks = w
                .fallbacks
                .unwrap_or_else(|| routing.fallbacks_for(ip, i, backends, retries));
            if let Err(conn) = self.hand(slot, w.conn, si, i, fallbacks) {
                // (Views and slots disagreed.) First in line again.
                let back = Waiting::new(conn, w.since, w.pinned, w.fallbacks);
                let (backends, queues) = self.services.backends_and_queues(si);
                backends.put_back(queues, at, back, &table);
                return false;
            }
        }
    }

    /// Hand out what waits wherever a slot is free (after anything that
    /// may have freed one or changed who may take it).
    pub(super) fn serve_queues(&mut self) {
        if self.services.queues().total() == 0 || self.frozen() || self.stopping() {
            return;
        }
        self.recount(None);
        for si in 0..self.services.len() {
            for i in 0..self.services.get(si).backends().list().len() {
                if self.services.queues().total() == 0 || !self.serve_queue(si, i) {
                    return;
                }
            }
        }
    }

    /// Count the limited backends' open connections again: of service
    /// `si`, or of every service (`None`).
    pub(super) fn recount(&mut self, si: Option<usize>) {
        let any = |f: &Front, s: usize| f.services.get(s).backends().any_limited();
        let which: Vec<usize> = match si {
            Some(s) => vec![s],
            None => (0..self.services.len()).collect(),
        };
        if !which.iter().any(|&s| any(self, s)) {
            return;
        }
        self.sync_received();
        let cells = self.workers.live_cells();
        for s in which {
            self.services
                .get_mut(s)
                .backends_mut()
                .recount_limited(self.counters.table(), &cells);
        }
    }

    /// Workers reported that connections on these limited backends ended:
    /// their slots go to who waits, now.
    pub(super) fn released(&mut self, ids: &[u32]) {
        if self.frozen() || self.stopping() {
            return;
        }
        self.recount(None);
        for &id in ids {
            if let Some((si, i)) = self.services.of_backend(id) {
                if !self.serve_queue(si, i) {
                    break;
                }
            }
        }
    }

    /// The backends changed (health, admin state, limits, the list, the
    /// services): who waits for a backend that takes no connection now
    /// (down, disabled, removed, a backup standing by) is placed again, a
    /// sticky client too (it waits for its own backend unless that is
    /// down); then every free slot is served.
    pub(super) fn queues_changed(&mut self) {
        if self.services.queues().total() == 0 || self.frozen() || self.stopping() {
            return;
        }
        let table = self.counters.table().clone();
        let mut moved = self.services.orphans();
        for si in 0..self.services.len() {
            let (backends, queues) = self.services.backends_and_queues(si);
            for i in 0..backends.list().len() {
                if !backends.in_use(i) && backends.queue_len(i) > 0 {
                    moved.extend(backends.take_queue(queues, i, &table));
                }
            }
        }
        self.recount(None);
        for w in moved {
            self.place_again(w);
        }
        self.serve_queues();
        self.flush();
    }

    /// The service a waiting connection is for, if it still exists.
    fn service_of(&self, conn: &Conn) -> Option<usize> {
        conn.service
            .and_then(|id| self.services.index_of(id))
            .or_else(|| self.services.single().then_some(0))
    }

    /// A connection that waited is placed as if new, keeping when its
    /// wait began.
    fn place_again(&mut self, w: Waiting) {
        let ip = w.conn.ip();
        let Some(si) = self.service_of(&w.conn) else {
            // Its service is gone (removed by a reload).
            self.counters.bump(FrontWord::FailedFront, 1);
            self.release(&w.conn);
            refuse(&w.conn.stream);
            return;
        };
        let service = self.services.get_mut(si);
        let retries = service.retries();
        let (routing, backends) = service.parts_mut();
        match routing.pick_backend(ip, backends, retries) {
            Pick::Go(i, fallbacks) => match routing.pick_worker(ip) {
                Some(slot) => {
                    if let Err(conn) = self.hand(slot, w.conn, si, i, fallbacks) {
                        self.ledger.requeue(vec![conn]);
                    }
                }
                None => self.ledger.requeue(vec![w.conn]),
            },
            Pick::Wait { backend, pinned } => {
                self.wait_for(si, backend, Waiting::new(w.conn, w.since, pinned, None));
            }
            Pick::Nowhere => {
                self.counters.bump(FrontWord::FailedFront, 1);
                self.release(&w.conn);
                refuse(&w.conn.stream);
            }
        }
    }

    /// When the next wait ends (for the queue task), if anything waits.
    pub fn queue_deadline(&self) -> Option<Instant> {
        let global = self.settings.get().queue_timeout();
        self.services.queue_deadline(global)
    }

    /// What the queue task waits on (see `backends::queue`).
    pub fn queue_watch(&mut self) -> std::io::Result<(OwnedFd, Rc<tokio::sync::Notify>)> {
        self.services.queues_mut().watch()
    }

    /// Waits that reached their service's queue timeout (`queue-timeout`,
    /// else its connect timeout): each goes to a backend of its
    /// service the policy allows that has room, or is closed (reset).
    pub fn expire_waits(&mut self) {
        if self.frozen() || self.stopping() {
            return;
        }
        let global = self.settings.get().queue_timeout();
        let table = self.counters.table().clone();
        let now = Instant::now();
        let expired = self.services.expired_waits(now, global);
        if expired.is_empty() {
            return;
        }
        self.recount(None);
        for (id, w) in expired {
            let ip = w.conn.ip();
            let Some((si, i)) = self.services.of_backend(id) else {
                self.release(&w.conn);
                refuse(&w.conn.stream);
                continue;
            };
            let service = self.services.get_mut(si);
            let retries = service.retries();
            let timeout = service.config().queue_timeout();
            let (routing, backends) = service.parts_mut();
            backends.expired(i, w.since, now, &table);
            let elsewhere = routing.pick_with_room(ip, backends, retries);
            match (elsewhere, routing.pick_worker(ip)) {
                (Some((b, fallbacks)), Some(slot)) => {
                    debug!(client.addr = %w.conn.peer, "queue timeout: another backend has room");
                    if let Err(conn) = self.hand(slot, w.conn, si, b, fallbacks) {
                        self.ledger.requeue(vec![conn]);
                    }
                }
                _ => {
                    let name = backends.get(i).spec().name.clone();
                    log_refused(
                        "waited --queue-timeout for a backend slot",
                        &name,
                        timeout.as_millis() as u64,
                    );
                    self.release(&w.conn);
                    refuse(&w.conn.stream);
                }
            }
        }
        self.flush();
    }

    /// The clients of these waiting connections went away (their epoll
    /// tokens fired): they leave the queue.
    pub fn queue_abandoned(&mut self, tokens: &[u64]) {
        if self.frozen() {
            return;
        }
        let table = self.counters.table().clone();
        for &t in tokens {
            let Some((id, w)) = self.services.queues_mut().remove_token(t) else {
                continue;
            };
            if let Some((si, i)) = self.services.of_backend(id) {
                self.services
                    .get_mut(si)
                    .backends_mut()
                    .abandoned(i, &table);
            }
            debug!(client.addr = %w.conn.peer, waited = ?w.since.elapsed(), "client left the queue");
            self.release(&w.conn);
        }
        self.publish_pending();
        self.update_paused();
    }

    /// A worker gave a connection back (its planned backend failed and the
    /// next to try is limited): it goes to the first of those backends
    /// with a free slot, else waits for the first that may queue it, else
    /// is closed. They are all its service's.
    pub(super) fn returned(&mut self, slot: usize, id: u64, h: Handoff, fd: OwnedFd) {
        let key = self.client_key(h.client.ip());
        let per_ip = self.settings.limits().per_ip().is_some();
        // It is the process's no more: its counts come back with it.
        let tally = self.workers.slot_mut(slot).proc_mut(id).and_then(|p| {
            if per_ip {
                p.ip_sub(key, 1);
            }
            p.untrack(h.conn)
        });
        let conn = self.conn_of_handoff(std::net::TcpStream::from(fd), &h, tally);
        if self.stopping() {
            self.release(&conn);
            return;
        }
        let ip = conn.ip();
        let list: Vec<u32> = std::iter::once(h.backend)
            .chain(h.fallbacks.as_slice().iter().copied())
            .collect();
        let Some(si) = list
            .iter()
            .find_map(|&b| self.services.of_backend(b).map(|(s, _)| s))
        else {
            debug!(client.addr = %conn.peer, "its backends are gone; closing client");
            self.counters.bump(FrontWord::FailedFront, 1);
            self.release(&conn);
            refuse(&conn.stream);
            return;
        };
        self.recount(Some(si));
        let usable = |f: &Front, k: usize| {
            let backends = f.services.get(si).backends();
            backends
                .index_of(list[k])
                .filter(|&i| backends.get(i).enabled())
        };
        let rest = |k: usize| Fallbacks::new(&list[k + 1..]);
        for k in 0..list.len() {
            let Some(i) = usable(self, k) else { continue };
            if !self.services.get(si).backends().has_room(i) {
                continue;
            }
            match self.services.get_mut(si).routing_mut().pick_worker(ip) {
                Some(slot) => {
                    if let Err(conn) = self.hand(slot, conn, si, i, rest(k)) {
                        self.ledger.requeue(vec![conn]);
                    }
                }
                None => self.ledger.requeue(vec![conn]),
            }
            self.flush();
            return;
        }
        for k in 0..list.len() {
            let Some(i) = usable(self, k) else { continue };
            let backends = self.services.get(si).backends();
            if backends.maxconn(i).is_some() && backends.queue_has_room(i) {
                let w = Waiting::new(conn, Instant::now(), false, Some(rest(k)));
                self.wait_for(si, i, w);
                return;
            }
        }
        debug!(client.addr = %conn.peer, "no backend left to try; closing client");
        self.counters.bump(FrontWord::FailedFront, 1);
        self.release(&conn);
        refuse(&conn.stream);
    }

    /// Close every waiting connection (shutdown).
    pub(super) fn close_queues(&mut self) -> usize {
        let table = self.counters.table().clone();
        for s in self.services.iter_mut() {
            s.backends_mut().forget_queued(&table);
        }
        let closed = self.services.queues_mut().close_all();
        for c in &closed {
            self.release(c);
        }
        closed.len()
    }

    /// `ctl backend maxconn ADDR N|off [--service S]`: a lowered limit
    /// closes nothing (what is open stays; new connections wait); a
    /// raised one serves the queue at once.
    pub fn set_backend_maxconn(
        &mut self,
        service: Option<&str>,
        name: &str,
        maxconn: Option<u32>,
    ) -> Result<String, AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let si = self.service(service)?;
        let i = self.services.get(si).backends().target(name)?;
        let service_name = self.services.get(si).name().to_string();
        let backends = self.services.get_mut(si).backends_mut();
        let spec_name = backends.get(i).spec().name.clone();
        let old = backends.maxconn(i);
        backends.set_maxconn(i, maxconn);
        self.recount(Some(si));
        self.settings
            .note_maxconn(&service_name, &spec_name, maxconn);
        let show = |m: Option<u32>| m.map_or("off".to_string(), |n| n.to_string());
        info!(service = %service_name, backend = %spec_name, from = %show(old), to = %show(maxconn), "backend connection limit changed");
        self.backends_changed(si);
        let open = self.services.get(si).backends().open(i);
        Ok(match maxconn {
            Some(n) if open > u64::from(n) => format!(
                "backend {spec_name} maxconn {} -> {n} ({open} open stay; new connections wait until fewer than {n} are)",
                show(old)
            ),
            _ => format!(
                "backend {spec_name} maxconn {} -> {}",
                show(old),
                show(maxconn)
            ),
        })
    }
}
