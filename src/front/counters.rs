//! The front's `Counters` part: the statistics table, the snapshot the
//! metrics endpoint renders with, and folding a departed process into the
//! bases.

use std::sync::{Arc, Mutex, MutexGuard};

use super::Front;
use crate::metrics::{BackendLabel, Exporter, SlotLabel, Snapshot};
use crate::stats::{
    self, ColCell, DURATION_BOUNDS, FrontWord, ProcCell, ProcWord, SlotWord, Table,
};

pub struct Counters {
    pub table: Arc<Table>,
    /// What `/metrics` renders with; changed under its lock.
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// Set once this front has handed over to a new one: the metrics
    /// endpoint stops accepting (the new front serves the shared socket).
    handed_over: tokio::sync::watch::Sender<bool>,
}

impl Counters {
    pub fn new(table: Arc<Table>) -> Counters {
        Counters {
            table,
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            handed_over: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn exporter(&self) -> Exporter {
        Exporter {
            table: self.table.clone(),
            snapshot: self.snapshot.clone(),
            handed_over: self.handed_over.subscribe(),
        }
    }

    /// This front has handed over: its metrics endpoint accepts no more.
    pub fn hand_over(&self) {
        self.handed_over.send_replace(true);
    }

    pub fn bump(&self, w: FrontWord, n: u64) {
        stats::bump(self.table.front(w), n);
    }

    pub fn set(&self, w: FrontWord, v: u64) {
        stats::set(self.table.front(w), v);
    }

    pub fn get(&self, w: FrontWord) -> u64 {
        stats::get(self.table.front(w))
    }

    pub fn cell(&self, cell: usize) -> ProcCell<'_> {
        self.table.cell(cell)
    }

    pub fn slot_get(&self, slot: usize, w: SlotWord) -> u64 {
        stats::get(self.table.slot(slot, w))
    }

    pub fn slot_bump(&self, slot: usize, w: SlotWord, n: u64) {
        stats::bump(self.table.slot(slot, w), n);
    }

    pub fn lock(&self) -> MutexGuard<'_, Snapshot> {
        match self.snapshot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A resolve name failed once more.
    pub fn resolve_failed(&self, name: &str) {
        let mut snap = self.lock();
        match snap.resolve_failures.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c += 1,
            None => snap.resolve_failures.push((name.to_string(), 1)),
        }
    }

    /// Make sure a resolve name's failure series exists (at 0).
    pub fn resolve_known(&self, name: &str) {
        let mut snap = self.lock();
        if !snap.resolve_failures.iter().any(|(n, _)| n == name) {
            snap.resolve_failures.push((name.to_string(), 0));
        }
    }
}

impl Front {
    /// Publish names and states for `/metrics` (not per connection: when
    /// slots, processes, backends, health or the policy change).
    pub fn publish(&self) {
        let slots: Vec<SlotLabel> = self
            .workers
            .slots
            .iter()
            .map(|s| SlotLabel {
                up: s.serving().is_some(),
                cells: s.procs.iter().map(|p| p.cell).collect(),
            })
            .collect();
        let cells = slots.iter().flat_map(|s| s.cells.iter().copied()).collect();
        let backends = self
            .backends
            .list
            .iter()
            .map(|b| BackendLabel {
                name: b.spec.name.clone(),
                column: b.column,
                up: b.routable(),
                weight: b.spec.weight,
            })
            .collect();
        let ready = !self.state.shutting_down && self.workers.any_serving();
        let mut snap = self.counters.lock();
        snap.policy = Some(self.policy.name());
        snap.slots = slots;
        snap.cells = cells;
        snap.backends = backends;
        snap.ready = ready;
    }

    /// The pending count, for `/metrics`.
    pub fn publish_pending(&self) {
        self.counters
            .set(FrontWord::Pending, self.ledger.pending.len() as u64);
    }

    /// The cells of every live process.
    pub fn live_cells(&self) -> Vec<usize> {
        self.workers.procs().map(|p| p.cell).collect()
    }

    /// A process of `slot` using `cell` is gone: add what it counted to the
    /// bases and stop rendering its cell (under the snapshot lock, so a
    /// scrape sees it exactly once), then clear the cell for reuse.
    pub fn fold_cell(&mut self, slot: usize, cell: usize) {
        let table = self.counters.table.clone();
        let dead = table.cell(cell);
        {
            let mut snap = self.counters.lock();
            stats::bump(
                table.slot(slot, SlotWord::BytesInBase),
                dead.get(ProcWord::BytesIn),
            );
            stats::bump(
                table.slot(slot, SlotWord::BytesOutBase),
                dead.get(ProcWord::BytesOut),
            );
            let front = |w| table.front(w);
            stats::bump(front(FrontWord::FailedBase), dead.get(ProcWord::Failed));
            stats::bump(
                front(FrontWord::RedispatchedBase),
                dead.get(ProcWord::Redispatched),
            );
            stats::bump(
                front(FrontWord::FirstByteTimeoutsBase),
                dead.get(ProcWord::FirstByteTimeouts),
            );
            stats::bump(
                front(FrontWord::AccessLogDroppedBase),
                dead.get(ProcWord::AccessLogDropped),
            );
            stats::bump(
                front(FrontWord::LogDroppedBase),
                dead.get(ProcWord::LogDropped),
            );
            stats::bump(
                front(FrontWord::DurationSumNsBase),
                dead.get(ProcWord::DurationSumNs),
            );
            for i in 0..=DURATION_BOUNDS.len() {
                stats::bump(
                    table.duration_bucket_base(i),
                    stats::get(dead.duration_bucket(i)),
                );
            }
            let applied = dead.get(ProcWord::ConfigSeq);
            for b in &self.backends.list {
                // Only what it counted for the column's present owner.
                if applied < b.column_seq {
                    continue;
                }
                if let Some(col) = dead.col(b.column) {
                    ColCell::of(table.base(b.column)).absorb(col);
                }
            }
            snap.cells.retain(|&c| c != cell);
            for s in &mut snap.slots {
                s.cells.retain(|&c| c != cell);
            }
        }
        table.clear_cell(cell);
        self.workers.give_cell(cell);
    }
}
