//! The front's `Counters` part: the shared-memory statistics table every
//! process counts in, the snapshot of names and states the metrics
//! endpoint renders with, and folding a departed process's counts into
//! the bases (so no counter ever goes back). Across an upgrade the table
//! itself passes over (its descriptor), with the counts that live only in
//! the front (failed look-ups per `resolve` name, the front's own dropped
//! log lines).

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::handover::FdSource;
use crate::metrics::{BackendLabel, Exporter, SlotLabel, Snapshot};
use crate::policy::PolicyName;
use crate::stats::{
    self, ColCell, DURATION_BOUNDS, FrontWord, ProcCell, ProcWord, SlotWord, Table,
};

pub struct Counters {
    table: Arc<Table>,
    /// What `/metrics` renders with; changed under its lock.
    snapshot: Arc<Mutex<Snapshot>>,
    /// Set once this front has handed over to a new one: the metrics
    /// endpoint stops accepting (the new front serves the shared socket).
    handed_over: tokio::sync::watch::Sender<bool>,
}

/// The counters across an upgrade (the table's descriptor travels beside).
#[derive(Debug, Serialize, Deserialize)]
pub struct CountersState {
    resolve_failures: Vec<(String, u64)>,
    /// The old front's own dropped log lines (workers count theirs in the
    /// statistics table, which passes over whole).
    log_lines_dropped: u64,
}

impl Counters {
    pub fn new(table: Arc<Table>) -> Counters {
        Counters {
            table,
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            handed_over: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
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

    /// Bytes from and to clients through `slot` over its life: its
    /// departed processes' (the bases) and its live ones' (`cells`).
    pub fn slot_bytes(&self, slot: usize, cells: &[usize]) -> (u64, u64) {
        let over = |w| {
            cells
                .iter()
                .map(|&c| self.table.cell(c).get(w))
                .sum::<u64>()
        };
        (
            self.slot_get(slot, SlotWord::BytesInBase) + over(ProcWord::BytesIn),
            self.slot_get(slot, SlotWord::BytesOutBase) + over(ProcWord::BytesOut),
        )
    }

    pub fn slot_bump(&self, slot: usize, w: SlotWord, n: u64) {
        stats::bump(self.table.slot(slot, w), n);
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        match self.snapshot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Publish names and states for `/metrics` (when slots, processes,
    /// backends, health or the policy change; not per connection).
    pub fn publish(
        &self,
        policy: PolicyName,
        slots: Vec<SlotLabel>,
        backends: Vec<BackendLabel>,
        services: Vec<crate::metrics::ServiceLabel>,
        ready: bool,
    ) {
        let cells = slots.iter().flat_map(|s| s.cells.iter().copied()).collect();
        let mut snap = self.lock();
        snap.policy = Some(policy);
        snap.slots = slots;
        snap.cells = cells;
        snap.backends = backends;
        snap.services = services;
        snap.ready = ready;
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

    /// A process of `slot` using `cell` is gone: add what it counted to
    /// the bases and stop rendering its cell (under the snapshot lock, so
    /// a scrape sees it exactly once), then clear the cell for reuse.
    /// `columns` are the backends' (column, table sequence from which the
    /// column is theirs): a column counts only for its present owner.
    pub fn fold(&self, slot: usize, cell: usize, columns: impl Iterator<Item = (usize, u64)>) {
        let table = &self.table;
        let dead = table.cell(cell);
        {
            let mut snap = self.lock();
            stats::bump(
                table.slot(slot, SlotWord::BytesInBase),
                dead.get(ProcWord::BytesIn),
            );
            stats::bump(
                table.slot(slot, SlotWord::BytesOutBase),
                dead.get(ProcWord::BytesOut),
            );
            let front = |w| table.front(w);
            for (base, word) in [
                (FrontWord::FailedBase, ProcWord::Failed),
                (FrontWord::RedispatchedBase, ProcWord::Redispatched),
                (
                    FrontWord::FirstByteTimeoutsBase,
                    ProcWord::FirstByteTimeouts,
                ),
                (FrontWord::AccessLogDroppedBase, ProcWord::AccessLogDropped),
                (FrontWord::LogDroppedBase, ProcWord::LogDropped),
                (FrontWord::DurationSumNsBase, ProcWord::DurationSumNs),
            ] {
                stats::bump(front(base), dead.get(word));
            }
            for i in 0..=DURATION_BOUNDS.len() {
                stats::bump(
                    table.duration_bucket_base(i),
                    stats::get(dead.duration_bucket(i)),
                );
            }
            let applied = dead.get(ProcWord::ConfigSeq);
            for (column, column_seq) in columns {
                if applied < column_seq {
                    continue;
                }
                if let Some(col) = dead.col(column) {
                    ColCell::of(table.base(column)).absorb(col);
                }
            }
            snap.cells.retain(|&c| c != cell);
            for s in &mut snap.slots {
                s.cells.retain(|&c| c != cell);
            }
        }
        table.clear_cell(cell);
    }

    /// What the counters hand to a new front; the table's descriptor is
    /// pushed on `fds`.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> CountersState {
        fds.push(self.table.fd());
        CountersState {
            resolve_failures: self.lock().resolve_failures.clone(),
            log_lines_dropped: crate::logging::dropped_lines(),
        }
    }

    pub fn from_handover(state: CountersState, fds: &mut FdSource) -> Result<Counters, String> {
        let table = Table::open(fds.next("the statistics table")?).map_err(|e| e.to_string())?;
        let counters = Counters::new(Arc::new(table));
        counters.lock().resolve_failures = state.resolve_failures;
        crate::logging::inherit_dropped(state.log_lines_dropped);
        Ok(counters)
    }
}
