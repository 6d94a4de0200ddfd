//! Connection limits (`maxconn=`, `maxqueue=`) on the `Backends` part:
//! how many connections are open on a limited backend, whether it has
//! room, and its queue (see `queue`).
//!
//! The count is exact across workers without a message per connection:
//! what is open on a backend is what the front has handed for it and no
//! worker has taken yet (`inflight`) plus what the workers hold on it
//! (the `Active` word of its column in each live cell, which a worker
//! raises before it counts the handoff received and lowers only after
//! the backend connection is closed). The front keeps the last such
//! count per limited backend (`open`), raises it by one at each hand-off
//! (so two hand-offs in a row never both see the last slot), and counts
//! again (`recount`) whenever it may have dropped: a worker's `Released`
//! report (sent as the backend connection of a limited backend closes),
//! a connection given back, a worker gone, a refused batch, and each
//! upkeep tick. Between counts it is never below the truth, so a slot is
//! never granted twice; a slot freed is seen as soon as its report is
//! read.
//!
//! A limited backend is *full* when its count is at its limit or
//! connections already wait for it (a new one must not overtake them);
//! policies then pick among the others ([`Backends::open_views`]).

use std::time::{Duration, Instant};

use super::{Backends, Queues, Waiting, held};
use crate::policy::BackendView;
use crate::stats::{QueueWord, Table};

impl Backends {
    /// Backend `i`'s connection limit, if it has one.
    pub fn maxconn(&self, i: usize) -> Option<u32> {
        self.list[i].spec.maxconn
    }

    /// Whether any backend has a connection limit.
    pub fn any_limited(&self) -> bool {
        !self.limited.is_empty()
    }

    /// Connections open on backend `i` as last counted (limited backends).
    pub fn open(&self, i: usize) -> u64 {
        self.list[i].open
    }

    /// Count backend `i`'s open connections again: in flight plus what the
    /// processes using `cells` hold. The caller has trimmed `inflight` by
    /// what the workers received first (`Front::sync_received`).
    pub fn recount(&mut self, i: usize, table: &Table, cells: &[usize]) {
        // Pairs with the worker raising `Active` before it counts the
        // handoff received: seen received, seen active.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let b = &mut self.list[i];
        b.open = b.inflight + held(table, cells, b.column);
    }

    /// Count every limited backend again.
    pub fn recount_limited(&mut self, table: &Table, cells: &[usize]) {
        for k in 0..self.limited.len() {
            let i = self.limited[k];
            self.recount(i, table, cells);
        }
    }

    /// A slot of backend `i` is free (or it has no limit).
    pub fn slot_free(&self, i: usize) -> bool {
        self.maxconn(i)
            .is_none_or(|max| self.list[i].open < u64::from(max))
    }

    /// Backend `i` can take a new connection now: a free slot and nobody
    /// waiting for it.
    pub fn has_room(&self, i: usize) -> bool {
        self.slot_free(i) && self.queue_len(i) == 0
    }

    /// Whether some limited backend is full.
    pub fn any_full(&self) -> bool {
        self.limited.iter().any(|&i| !self.has_room(i))
    }

    /// `base` (the views a pick starts from) with every full backend made
    /// unroutable, into `out`.
    pub fn open_views(&self, base: &[BackendView], out: &mut Vec<BackendView>) {
        out.clear();
        out.extend_from_slice(base);
        for &i in &self.limited {
            if !self.has_room(i) {
                if let Some(v) = out.get_mut(i) {
                    v.routable = false;
                }
            }
        }
    }

    /// Connections waiting for backend `i`.
    pub fn queue_len(&self, i: usize) -> usize {
        self.list[i].queued
    }

    /// Whether one more connection may wait for backend `i` (`maxqueue=`).
    pub fn queue_has_room(&self, i: usize) -> bool {
        self.list[i]
            .spec
            .maxqueue
            .is_none_or(|m| self.queue_len(i) < m as usize)
    }

    /// Count each backend's waiting connections in `queues` again, and
    /// put the lengths in the table (after a take-over, or a shutdown
    /// that closed them).
    pub fn queues_refreshed(&mut self, queues: &Queues, table: &Table) {
        for i in 0..self.list.len() {
            let n = queues.len(self.list[i].id);
            let b = &mut self.list[i];
            let v = &mut self.views[i];
            v.active = (v.active + n as u64).saturating_sub(b.queued as u64);
            b.queued = n;
            self.queue_changed(i, table);
        }
    }

    /// `w` waits for backend `i`; `Err(w)` if its queue is full.
    // (The connection itself comes back on refusal, as `dispatch` gives
    // back its `Conn`; boxing it would cost an allocation per wait.)
    #[allow(clippy::result_large_err)]
    pub fn enqueue(
        &mut self,
        queues: &mut Queues,
        i: usize,
        w: Waiting,
        table: &Table,
    ) -> Result<(), Waiting> {
        if !self.queue_has_room(i) {
            table
                .queue(self.list[i].column)
                .bump(QueueWord::Overflows, 1);
            return Err(w);
        }
        queues.push(self.list[i].id, w);
        self.list[i].queued += 1;
        table.queue(self.list[i].column).bump(QueueWord::Queued, 1);
        self.views[i].active += 1;
        self.queue_changed(i, table);
        Ok(())
    }

    /// `w`, just taken from backend `i`'s queue, could not be handed out:
    /// it waits again where it was (not counted as a new arrival).
    pub fn put_back(&mut self, queues: &mut Queues, i: usize, w: Waiting, table: &Table) {
        queues.push(self.list[i].id, w);
        self.list[i].queued += 1;
        self.views[i].active += 1;
        self.queue_changed(i, table);
    }

    /// Every waiting connection is about to be closed (shutdown): the
    /// views stop counting them.
    pub fn forget_queued(&mut self, table: &Table) {
        for i in 0..self.list.len() {
            let n = self.queue_len(i) as u64;
            let v = &mut self.views[i];
            v.active = v.active.saturating_sub(n);
            self.list[i].queued = 0;
            self.queue_changed(i, table);
        }
    }

    /// The oldest connection waiting for backend `i`, out of its queue.
    pub fn dequeue(&mut self, queues: &mut Queues, i: usize, table: &Table) -> Option<Waiting> {
        let w = queues.pop(self.list[i].id)?;
        self.left_queue(i, table);
        Some(w)
    }

    /// Every connection waiting for backend `i`, oldest first.
    pub fn take_queue(&mut self, queues: &mut Queues, i: usize, table: &Table) -> Vec<Waiting> {
        let all = queues.take_all(self.list[i].id);
        for _ in &all {
            self.left_queue(i, table);
        }
        all
    }

    /// A connection waiting for backend `i` left its queue because its
    /// client went away (the queues gave it up by its epoll token).
    pub fn abandoned(&mut self, i: usize, table: &Table) {
        self.left_queue(i, table);
        table
            .queue(self.list[i].column)
            .bump(QueueWord::Abandoned, 1);
    }

    /// A connection waiting for backend `i` since `since` reached the
    /// queue timeout at `now` (the queues gave it up): counted.
    pub fn expired(&mut self, i: usize, since: Instant, now: Instant, table: &Table) {
        self.left_queue(i, table);
        let q = table.queue(self.list[i].column);
        q.bump(QueueWord::Timeouts, 1);
        q.record_wait(now.saturating_duration_since(since));
    }

    /// Set backend `i`'s connection limit (`None`: none), by `ctl`.
    pub fn set_maxconn(&mut self, i: usize, maxconn: Option<u32>) {
        let mut spec = self.list[i].spec.clone();
        spec.maxconn = maxconn;
        if maxconn.is_none() {
            spec.maxqueue = None;
        }
        self.set_spec(i, spec);
    }

    /// A connection that waited `d` for backend `i` is handed out.
    pub fn record_wait(&self, i: usize, d: Duration, table: &Table) {
        table.queue(self.list[i].column).record_wait(d);
    }

    fn left_queue(&mut self, i: usize, table: &Table) {
        self.list[i].queued = self.list[i].queued.saturating_sub(1);
        let v = &mut self.views[i];
        v.active = v.active.saturating_sub(1);
        self.queue_changed(i, table);
    }

    fn queue_changed(&self, i: usize, table: &Table) {
        table
            .queue(self.list[i].column)
            .set(QueueWord::Length, self.queue_len(i) as u64);
    }
}
