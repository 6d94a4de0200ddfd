//! The wiring of connection limits and queues (`maxconn=`, `maxqueue=`,
//! `--queue-timeout`): how a connection that must wait joins a backend's
//! queue, how a freed slot goes to the oldest waiting connection at once,
//! what a timeout, a client that leaves, a backend that goes away and a
//! connection a worker gives back do. The state is the `Backends` part's
//! (`backends::limits`, `backends::queue`); the policy's side is
//! `Routing::pick_backend`. DESIGN.md, "Connection limits and queues",
//! says why it is built this way.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Front;
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
    /// `w` waits for a slot of backend `i` (its queue refuses it if full:
    /// the client is reset).
    pub(super) fn wait_for(&mut self, i: usize, w: Waiting) {
        let table = self.counters.table().clone();
        if let Err(w) = self.backends.enqueue(i, w, &table) {
            let b = self.backends.get(i);
            let limit = u64::from(b.spec().maxqueue.unwrap_or(0));
            log_refused("backend queue full (maxqueue)", &b.spec().name, limit);
            self.release_ip(w.conn.ip());
            refuse(&w.conn.stream);
        }
    }

    /// Hand connections waiting for a slot of backend `i` out while it has
    /// free slots: its own queue oldest first, then the oldest that wait
    /// for another backend and may go to any. False if no worker could
    /// take one (the rest wait on).
    fn serve_queue(&mut self, i: usize) -> bool {
        if !self.backends.in_use(i) {
            return true;
        }
        let id = self.backends.get(i).id();
        loop {
            if !self.backends.slot_free(i) {
                return true;
            }
            let queues = self.backends.queues();
            let from = if queues.head(id).is_some() {
                id
            } else {
                let backends = &self.backends;
                match queues.oldest_unpinned(|o| o != id && backends.index_of(o).is_some()) {
                    Some(o) => o,
                    None => return true,
                }
            };
            let Some(at) = self.backends.index_of(from) else {
                return true;
            };
            let table = self.counters.table().clone();
            let Some(w) = self.backends.dequeue(at, &table) else {
                return true;
            };
            let ip = w.conn.ip();
            let Some(slot) = self.routing.pick_worker(ip) else {
                self.backends.put_back(at, w, &table);
                return false;
            };
            self.backends.record_wait(at, w.since.elapsed(), &table);
            let retries = self.settings.retries();
            let fallbacks = w
                .fallbacks
                .unwrap_or_else(|| self.routing.fallbacks_for(ip, i, &self.backends, retries));
            if let Err(conn) = self.hand(slot, w.conn, i, fallbacks) {
                // (Views and slots disagreed.) First in line again.
                let back = Waiting::new(conn, w.since, w.pinned, w.fallbacks);
                self.backends.put_back(at, back, &table);
                return false;
            }
        }
    }

    /// Hand out what waits wherever a slot is free (after anything that
    /// may have freed one or changed who may take it).
    pub(super) fn serve_queues(&mut self) {
        if self.backends.queues().total() == 0 || self.frozen() || self.stopping() {
            return;
        }
        self.recount();
        for i in 0..self.backends.list().len() {
            if self.backends.queues().total() == 0 || !self.serve_queue(i) {
                break;
            }
        }
    }

    /// Count the limited backends' open connections again.
    pub(super) fn recount(&mut self) {
        if !self.backends.any_limited() {
            return;
        }
        self.sync_received();
        let cells = self.workers.live_cells();
        self.backends.recount_limited(self.counters.table(), &cells);
    }

    /// Workers reported that connections on these limited backends ended:
    /// their slots go to who waits, now.
    pub(super) fn released(&mut self, ids: &[u32]) {
        if self.frozen() || self.stopping() {
            return;
        }
        self.recount();
        for &id in ids {
            if let Some(i) = self.backends.index_of(id) {
                if !self.serve_queue(i) {
                    break;
                }
            }
        }
    }

    /// The backends changed (health, admin state, limits, the list): who
    /// waits for a backend that takes no connection now (down, disabled,
    /// removed, a backup standing by) is placed again, a sticky client
    /// too (it waits for its own backend unless that is down); then
    /// every free slot is served.
    pub(super) fn queues_changed(&mut self) {
        if self.backends.queues().total() == 0 || self.frozen() || self.stopping() {
            return;
        }
        let table = self.counters.table().clone();
        let mut moved = self.backends.orphans();
        for i in 0..self.backends.list().len() {
            if !self.backends.in_use(i) && self.backends.queue_len(i) > 0 {
                moved.extend(self.backends.take_queue(i, &table));
            }
        }
        self.recount();
        for w in moved {
            self.place_again(w);
        }
        self.serve_queues();
        self.flush();
    }

    /// A connection that waited is placed as if new, keeping when its
    /// wait began.
    fn place_again(&mut self, w: Waiting) {
        let ip = w.conn.ip();
        let retries = self.settings.retries();
        match self.routing.pick_backend(ip, &self.backends, retries) {
            Pick::Go(i, fallbacks) => match self.routing.pick_worker(ip) {
                Some(slot) => {
                    if let Err(conn) = self.hand(slot, w.conn, i, fallbacks) {
                        self.ledger.requeue(vec![conn]);
                    }
                }
                None => self.ledger.requeue(vec![w.conn]),
            },
            Pick::Wait { backend, pinned } => {
                self.wait_for(backend, Waiting::new(w.conn, w.since, pinned, None));
            }
            Pick::Nowhere => {
                self.counters.bump(FrontWord::FailedFront, 1);
                self.release_ip(ip);
                refuse(&w.conn.stream);
            }
        }
    }

    /// When the next wait ends (for the queue task), if anything waits.
    pub fn queue_deadline(&self) -> Option<Instant> {
        let timeout = self.settings.get().queue_timeout();
        self.backends.queues().next_deadline(timeout)
    }

    /// What the queue task waits on (see `backends::queue`).
    pub fn queue_watch(&mut self) -> std::io::Result<(OwnedFd, Rc<tokio::sync::Notify>)> {
        self.backends.queues_mut().watch()
    }

    /// Waits that reached `--queue-timeout`: each goes to a backend the
    /// policy allows that has room, or is closed (reset).
    pub fn expire_waits(&mut self) {
        if self.frozen() || self.stopping() {
            return;
        }
        let timeout = self.settings.get().queue_timeout();
        let table = self.counters.table().clone();
        let expired = self.backends.expired(Instant::now(), timeout, &table);
        if expired.is_empty() {
            return;
        }
        self.recount();
        let retries = self.settings.retries();
        for (i, w) in expired {
            let ip = w.conn.ip();
            let elsewhere = self.routing.pick_with_room(ip, &self.backends, retries);
            match (elsewhere, self.routing.pick_worker(ip)) {
                (Some((b, fallbacks)), Some(slot)) => {
                    debug!(client.addr = %w.conn.peer, "queue timeout: another backend has room");
                    if let Err(conn) = self.hand(slot, w.conn, b, fallbacks) {
                        self.ledger.requeue(vec![conn]);
                    }
                }
                _ => {
                    let name = self.backends.get(i).spec().name.clone();
                    log_refused(
                        "waited --queue-timeout for a backend slot",
                        &name,
                        timeout.as_millis() as u64,
                    );
                    self.release_ip(ip);
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
            if let Some(w) = self.backends.abandoned(t, &table) {
                debug!(client.addr = %w.conn.peer, waited = ?w.since.elapsed(), "client left the queue");
                self.release_ip(w.conn.ip());
            }
        }
        self.publish_pending();
        self.update_paused();
    }

    /// A worker gave a connection back (its planned backend failed and the
    /// next to try is limited): it goes to the first of those backends
    /// with a free slot, else waits for the first that may queue it, else
    /// is closed.
    pub(super) fn returned(&mut self, slot: usize, id: u64, h: Handoff, fd: OwnedFd) {
        let conn = Conn::of_handoff(std::net::TcpStream::from(fd), &h);
        if self.settings.limits().per_ip().is_some() {
            let key = self.client_key(conn.ip());
            if let Some(p) = self.workers.slot_mut(slot).proc_mut(id) {
                p.ip_sub(key, 1);
            }
        }
        if self.stopping() {
            self.release_ip(conn.ip());
            return;
        }
        self.recount();
        let list: Vec<u32> = std::iter::once(h.backend)
            .chain(h.fallbacks.as_slice().iter().copied())
            .collect();
        let usable = |f: &Front, k: usize| {
            f.backends
                .index_of(list[k])
                .filter(|&i| f.backends.get(i).enabled())
        };
        let rest = |k: usize| Fallbacks::new(&list[k + 1..]);
        let ip = conn.ip();
        for k in 0..list.len() {
            let Some(i) = usable(self, k) else { continue };
            if !self.backends.has_room(i) {
                continue;
            }
            match self.routing.pick_worker(ip) {
                Some(slot) => {
                    if let Err(conn) = self.hand(slot, conn, i, rest(k)) {
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
            if self.backends.maxconn(i).is_some() && self.backends.queue_has_room(i) {
                let w = Waiting::new(conn, Instant::now(), false, Some(rest(k)));
                self.wait_for(i, w);
                return;
            }
        }
        debug!(client.addr = %conn.peer, "no backend left to try; closing client");
        self.counters.bump(FrontWord::FailedFront, 1);
        self.release_ip(ip);
        refuse(&conn.stream);
    }

    /// Close every waiting connection (shutdown).
    pub(super) fn close_queues(&mut self) -> usize {
        let table = self.counters.table().clone();
        let closed = self.backends.close_queues(&table);
        for ip in &closed {
            self.release_ip(*ip);
        }
        closed.len()
    }

    /// `ctl backend maxconn ADDR N|off`: a lowered limit closes nothing
    /// (what is open stays; new connections wait); a raised one serves
    /// the queue at once.
    pub fn set_backend_maxconn(
        &mut self,
        name: &str,
        maxconn: Option<u32>,
    ) -> Result<String, super::super::AdminError> {
        use super::super::AdminError;
        self.handle(super::super::Event::Change)
            .map_err(AdminError::Refused)?;
        let i = self.backends.target(name)?;
        let spec_name = self.backends.get(i).spec().name.clone();
        let old = self.backends.maxconn(i);
        self.backends.set_maxconn(i, maxconn);
        self.recount();
        self.settings.note_maxconn(&spec_name, maxconn);
        let show = |m: Option<u32>| m.map_or("off".to_string(), |n| n.to_string());
        info!(backend = %spec_name, from = %show(old), to = %show(maxconn), "backend connection limit changed");
        self.backends_changed();
        let open = self.backends.open(i);
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
