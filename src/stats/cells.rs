//! Typed access to one process cell and to one backend column group.
//!
//! The methods that write are meant for the cell's single writer (the
//! worker, except `Handed` and `Wake`, see the module above); readers use
//! [`ProcCell::get`] and [`ColCell::get`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{COL_WORDS, CONNECT, Col, DURATION, Hist, PROC_HEAD_WORDS, ProcWord, bump, get, set};
use crate::channel::FailReason;

/// One process cell.
#[derive(Clone, Copy)]
pub struct ProcCell<'a> {
    words: &'a [AtomicU64],
    columns: usize,
}

impl<'a> ProcCell<'a> {
    pub(super) fn new(words: &'a [AtomicU64], columns: usize) -> ProcCell<'a> {
        ProcCell { words, columns }
    }

    pub fn word(&self, w: ProcWord) -> &'a AtomicU64 {
        &self.words[w as usize]
    }

    pub fn get(&self, w: ProcWord) -> u64 {
        get(self.word(w))
    }

    pub fn bump(&self, w: ProcWord, n: u64) {
        bump(self.word(w), n);
    }

    pub fn set(&self, w: ProcWord, v: u64) {
        set(self.word(w), v);
    }

    /// Add `n` to a word more than one thread of this process writes
    /// (a locked add: only for rare events).
    pub fn add_shared(&self, w: ProcWord, n: u64) {
        self.word(w).fetch_add(n, Ordering::Relaxed);
    }

    pub fn duration_bucket(&self, i: usize) -> &'a AtomicU64 {
        &self.words[ProcWord::DurationBucket0 as usize + i]
    }

    /// The connection-duration histogram's words: sum, then buckets.
    pub fn duration(&self) -> &'a [AtomicU64] {
        let start = ProcWord::DurationSumNs as usize;
        &self.words[start..start + Hist::<{ DURATION.bounds_ns.len() }>::WORDS]
    }

    /// A connection lasted `d`.
    #[inline]
    pub fn record_duration(&self, d: Duration) {
        DURATION.record(self.duration(), d);
    }

    /// Backend column `col` of this cell, if the table has it.
    pub fn col(&self, col: usize) -> Option<ColCell<'a>> {
        if col >= self.columns {
            return None;
        }
        let start = PROC_HEAD_WORDS + col * COL_WORDS;
        Some(ColCell {
            words: &self.words[start..start + COL_WORDS],
        })
    }

    /// The front asks to be told when this worker makes room. The caller
    /// must then issue a `SeqCst` fence before it reads `Finished` and
    /// `Received` (see [`ProcCell::finish`] for why).
    pub fn request_wake(&self) {
        self.word(ProcWord::Wake).store(1, Ordering::SeqCst);
    }

    /// The worker: `n` more connections are finished; was a wake-up asked
    /// for (and now taken)?
    ///
    /// This and the front's `request_wake` then read form a Dekker
    /// pattern: the worker stores `Finished` then loads `Wake`; the front
    /// stores `Wake` then loads `Finished` (and `Received`). If each side
    /// could see its load before its own store became visible to the
    /// other (a store-buffer reordering, which x86 does too), the worker
    /// would see no wake-up asked for and the front would see no room
    /// made: the listeners would stay paused until the next upkeep tick. A
    /// `SeqCst` fence on each side between the store and the load rules
    /// that out: of the two fences, the one that comes later in their
    /// single total order sees the other side's store.
    pub fn finish(&self, n: u64) -> bool {
        bump(self.word(ProcWord::Finished), n);
        // Orders this worker's store of `Finished` (and its earlier stores
        // of `Received`) before its load of `Wake` below. Pairs with the
        // fence in `Front::request_wakes`, which orders the front's store
        // of `Wake` before its loads of `Finished` and `Received`.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.take_wake()
    }

    /// The worker: was a wake-up asked for (and now taken)? Use
    /// [`ProcCell::finish`] after counting, which fences first.
    pub fn take_wake(&self) -> bool {
        let w = self.word(ProcWord::Wake);
        w.load(Ordering::Relaxed) != 0 && w.swap(0, Ordering::SeqCst) != 0
    }
}

/// One backend column group (of a process cell, or the base).
#[derive(Clone, Copy)]
pub struct ColCell<'a> {
    words: &'a [AtomicU64],
}

impl<'a> ColCell<'a> {
    /// View a base group (from [`super::Table::base`]).
    pub fn of(words: &'a [AtomicU64]) -> ColCell<'a> {
        ColCell { words }
    }

    pub fn word(&self, w: Col) -> &'a AtomicU64 {
        &self.words[w as usize]
    }

    pub fn get(&self, w: Col) -> u64 {
        get(self.word(w))
    }

    pub fn bump(&self, w: Col, n: u64) {
        bump(self.word(w), n);
    }

    pub fn connect_bucket(&self, i: usize) -> &'a AtomicU64 {
        &self.words[Col::ConnectBucket0 as usize + i]
    }

    /// One more connection on this backend now.
    pub fn active_up(&self) {
        bump(self.word(Col::Active), 1);
    }

    /// One fewer connection on this backend now.
    pub fn active_down(&self) {
        let w = self.word(Col::Active);
        set(w, get(w).saturating_sub(1));
    }

    /// The connect-time histogram's words: sum, then buckets.
    pub fn connect(&self) -> &'a [AtomicU64] {
        let start = Col::ConnectSumNs as usize;
        &self.words[start..start + Hist::<{ CONNECT.bounds_ns.len() }>::WORDS]
    }

    /// Connected, after `connect_time`.
    #[inline]
    pub fn opened(&self, connect_time: Duration) {
        bump(self.word(Col::Conns), 1);
        CONNECT.record(self.connect(), connect_time);
    }

    pub fn failed(&self, reason: FailReason) {
        let w = match reason {
            FailReason::Refused => Col::FailRefused,
            FailReason::Timeout => Col::FailTimeout,
            FailReason::Other => Col::FailOther,
        };
        bump(self.word(w), 1);
    }

    /// Zero the group (its writer only, when the column changes owner).
    pub fn clear(&self) {
        for w in self.words {
            set(w, 0);
        }
    }

    /// Add every counter of `other` (not the `Active` gauge) into this
    /// group (the front folding a departed process into the base).
    pub fn absorb(&self, other: ColCell<'_>) {
        for (i, (mine, theirs)) in self.words.iter().zip(other.words).enumerate() {
            if i != Col::Active as usize && i != Col::CheckFailures as usize {
                bump(mine, get(theirs));
            }
        }
    }
}
