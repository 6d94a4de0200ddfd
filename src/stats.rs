//! The shared statistics table: every counter and gauge behind `/metrics`
//! and `ctl`, in one memory file (`memfd`) that the front creates and maps,
//! and every worker maps too.
//!
//! Why shared memory: a worker accounts for what it does (connections
//! opened and finished, bytes, connect failures, timings) by writing words
//! of its own cell, with no message and no wake-up of the front; the front
//! reads the words when it needs them (a least-conn pick, a scrape, a
//! draining backend's last connection). The channel then carries only what
//! needs the front to act. And because the table is a file, it survives
//! the front itself: an upgrade hands the same descriptor to the new front,
//! so every counter continues from its value.
//!
//! One writer per word. The front writes its own region, the per-slot
//! words, the per-backend *base* (what departed processes had counted) and
//! each process cell's `Handed`; a worker writes the rest of its own cell.
//! A single writer adds with a plain load and store (`bump`), so a counter
//! costs no locked instruction. The one exception is a process cell's
//! `Wake` flag, which the front sets and the worker clears with a swap.
//!
//! Layout, in 64-bit words: a header (magic, layout version, capacities),
//! the front's words ([`FrontWord`]), one group per worker slot
//! ([`SlotWord`]), one group per backend column with the front's base
//! ([`Col`]), the front's queue words per backend column ([`QueueWord`],
//! for backends with a connection limit), then one page-aligned cell per
//! worker process: its own words ([`ProcWord`]) followed by a [`Col`]
//! group per backend column. A backend
//! gets a column from the front (sent to workers with the backend table);
//! a process gets a cell when it is spawned and gives it back, folded into
//! the bases, when it is gone.

mod cells;
mod hist;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

pub use cells::{ColCell, ProcCell};
pub use hist::{CONNECT, Counts, DURATION, Hist, QUEUE_WAIT, nanos};

use crate::sys::SharedWords;

/// "RRSTATS\0": the first word of every table.
const MAGIC: u64 = u64::from_le_bytes(*b"RRSTATS\0");
/// Bumped whenever the layout changes: an upgrade between builds with
/// different layouts is refused (the new front could not read the old
/// workers' cells). 2: the histograms' buckets of [`hist`]. 3: the
/// queue words per backend column ([`QueueWord`]).
pub const LAYOUT: u64 = 3;

/// [`LAYOUT`] as this build declares it: decimal digits after a marker in
/// the binary's read-only data, read at run time ([`layout`]). What the
/// table header, [`Table::open`] and the upgrade handshake compare. (A
/// test copies the binary with other digits here to be a build of another
/// layout: the refusal it meets is the real one.)
#[used]
static LAYOUT_TAG: [u8; LAYOUT_TAG_LEN] = layout_tag(LAYOUT);
const LAYOUT_MARKER: &[u8] = b"rrproxy-stats-layout=";
const LAYOUT_TAG_LEN: usize = LAYOUT_MARKER.len() + 8;

const fn layout_tag(layout: u64) -> [u8; LAYOUT_TAG_LEN] {
    let mut tag = [b'0'; LAYOUT_TAG_LEN];
    let mut i = 0;
    while i < LAYOUT_MARKER.len() {
        tag[i] = LAYOUT_MARKER[i];
        i += 1;
    }
    let mut n = layout;
    let mut at = LAYOUT_TAG_LEN;
    while n > 0 && at > LAYOUT_MARKER.len() {
        at -= 1;
        tag[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    tag
}

/// The table layout this build reads and writes (see [`LAYOUT_TAG`]).
pub fn layout() -> u64 {
    let tag = crate::sys::read_static(&LAYOUT_TAG);
    let digits = &tag[LAYOUT_MARKER.len()..];
    if !digits.iter().all(u8::is_ascii_digit) {
        return LAYOUT;
    }
    digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'))
}

/// Upper bounds (nanoseconds) of the connection-duration histogram
/// buckets ([`DURATION`]).
pub const DURATION_BOUNDS: [u64; 18] = DURATION.bounds_ns;
/// Upper bounds (nanoseconds) of the backend connect-time histogram
/// buckets ([`CONNECT`]).
pub const CONNECT_BOUNDS: [u64; 17] = CONNECT.bounds_ns;

const HEADER_WORDS: usize = 16;
const FRONT_WORDS: usize = 64;
const SLOT_WORDS: usize = 8;
/// Words per backend column (in a process cell and in the base).
pub const COL_WORDS: usize = 32;
/// Words per backend column in the front's queue region.
pub const QUEUE_WORDS: usize = 24;
const PROC_HEAD_WORDS: usize = 48;
const PAGE_WORDS: usize = 4096 / 8;

/// The front's own words: counters it alone increments, gauges it sets,
/// and the bases of the process-wide counters of departed workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum FrontWord {
    Accepted,
    AcceptEmfile,
    AcceptOther,
    HandoffFailures,
    /// Connections recovered from a dead worker's channel.
    Recovered,
    /// Clients closed by the front: no enabled backend to try.
    FailedFront,
    RefusedPerIp,
    PolicyChanges,
    Pending,
    Paused,
    OpenFds,
    MaxFds,
    WorkerLimit,
    /// Base of [`ProcWord::Failed`].
    FailedBase,
    /// Base of [`ProcWord::Redispatched`].
    RedispatchedBase,
    /// Base of [`ProcWord::FirstByteTimeouts`].
    FirstByteTimeoutsBase,
    /// Base of [`ProcWord::DurationSumNs`] and the duration buckets.
    DurationSumNsBase,
    DurationBucketBase0,
    /// Clients refused by the access list (after the duration buckets).
    Denied = 17 + DURATION_BOUNDS.len() + 1,
    /// Connections from `--accept-proxy` sources closed for want of a
    /// valid PROXY header, one word per reason (see
    /// [`FrontWord::header_error`]).
    HeaderNotProxy,
    HeaderMalformed,
    HeaderOversized,
    HeaderTruncated,
    HeaderTimeout,
    HeaderUnsupported,
    HeaderIo,
    /// Base of [`ProcWord::AccessLogDropped`].
    AccessLogDroppedBase,
    /// Base of [`ProcWord::LogDropped`].
    LogDroppedBase,
}

impl FrontWord {
    /// The word counting header errors of `why`'s kind.
    pub fn header_error(why: &crate::proxy_protocol::HeaderError) -> FrontWord {
        use crate::proxy_protocol::HeaderError as E;
        match why {
            E::NotProxy => FrontWord::HeaderNotProxy,
            E::Malformed(_) => FrontWord::HeaderMalformed,
            E::Oversized { .. } => FrontWord::HeaderOversized,
            E::Truncated => FrontWord::HeaderTruncated,
            E::Timeout => FrontWord::HeaderTimeout,
            E::Unsupported(_) => FrontWord::HeaderUnsupported,
            E::Io(_) => FrontWord::HeaderIo,
        }
    }

    /// The header error words, in the order of
    /// [`HeaderError::REASONS`](crate::proxy_protocol::HeaderError::REASONS).
    pub const HEADER_ERRORS: [FrontWord; 7] = [
        FrontWord::HeaderNotProxy,
        FrontWord::HeaderMalformed,
        FrontWord::HeaderOversized,
        FrontWord::HeaderTruncated,
        FrontWord::HeaderTimeout,
        FrontWord::HeaderUnsupported,
        FrontWord::HeaderIo,
    ];
}

// The duration buckets end where `Denied` begins, and every word fits.
const _: () = assert!(
    FrontWord::Denied as usize
        == FrontWord::DurationBucketBase0 as usize + DURATION_BOUNDS.len() + 1
);
const _: () = assert!((FrontWord::LogDroppedBase as usize) < FRONT_WORDS);
// The worker's access-log drop count sits right after its histogram.
const _: () = {
    let word = ProcWord::DurationBucket0 as usize + DURATION_BOUNDS.len() + 1;
    assert!(ProcWord::AccessLogDropped as usize == word);
    assert!((ProcWord::LogDropped as usize) < PROC_HEAD_WORDS);
};

/// Per worker slot, written by the front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SlotWord {
    /// Connections handed to the slot over its life.
    Handed,
    Restarts,
    /// Bases of the slot's departed processes' byte counters.
    BytesInBase,
    BytesOutBase,
}

/// One backend column: in a process cell, what that process did on the
/// backend; in the base, what departed processes had done, plus the
/// front's own [`Col::CheckFailures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Col {
    /// Connections on this backend now (a gauge; never folded).
    Active,
    /// Connections established.
    Conns,
    /// Connections planned for this backend that another one served.
    Redispatch,
    FailRefused,
    FailTimeout,
    FailOther,
    /// Bytes sent to the backend.
    BytesUp,
    /// Bytes received from the backend.
    BytesDown,
    ConnectSumNs,
    ConnectBucket0,
    /// Failed active health checks (base only; the front's).
    CheckFailures = 9 + CONNECT_BOUNDS.len() + 1,
}

/// The front's words about one backend's queue (`maxconn=`), one group
/// per backend column after the bases. Front-owned, never folded: the
/// front alone queues, and the table outlives it across upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum QueueWord {
    /// Connections that waited in the queue (counted as they join it).
    Queued,
    /// Waits ended by `--queue-timeout`.
    Timeouts,
    /// Connections closed because the queue was full (`maxqueue=`).
    Overflows,
    /// Clients that went away while they waited.
    Abandoned,
    /// Connections waiting now (a gauge).
    Length,
    /// The wait histogram ([`QUEUE_WAIT`]): its sum, then its buckets.
    WaitSumNs,
    WaitBucket0,
}

const _: () = assert!(
    QueueWord::WaitSumNs as usize + Hist::<{ QUEUE_WAIT.bounds_ns.len() }>::WORDS <= QUEUE_WORDS
);

/// The head of a process cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ProcWord {
    /// The worker's pid (written by the worker at start).
    Pid,
    /// Connections handed to this process (written by the front).
    Handed,
    /// Set by the front when it waits for this worker to make room;
    /// swapped back to 0 by the worker, which then says so.
    Wake,
    /// Handoffs taken out of the channel.
    Received,
    /// Connections the worker is done with (served or failed).
    Finished,
    /// Connections closed without reaching any backend.
    Failed,
    /// Connections served by another backend than the planned one.
    Redispatched,
    /// Bytes received from clients.
    BytesIn,
    /// Bytes sent to clients.
    BytesOut,
    /// The sequence number of the last backend table applied.
    ConfigSeq,
    /// Clients closed for sending nothing within the first-byte timeout.
    FirstByteTimeouts,
    DurationSumNs,
    DurationBucket0,
    /// Access log lines dropped: the queue to the writer thread was full,
    /// or the write failed. Written by two threads of the worker (its
    /// event loop and its access-log writer), so with an atomic add
    /// ([`ProcCell::add_shared`]), not `bump`.
    AccessLogDropped = 12 + DURATION_BOUNDS.len() + 1,
    /// The worker's own log lines dropped because stderr did not keep up
    /// (its running total, set by its event loop as connections finish).
    LogDropped,
}

/// Why a table could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("statistics table: {0}")]
    Io(#[from] io::Error),
    #[error("statistics table: not an rrproxy table (bad magic)")]
    Magic,
    #[error("statistics table layout {found} is not this build's layout {mine}")]
    Layout { found: u64, mine: u64 },
    #[error("statistics table header is inconsistent: {0}")]
    Header(&'static str),
}

/// A mapped statistics table.
pub struct Table {
    fd: OwnedFd,
    map: SharedWords,
    slots: usize,
    columns: usize,
    procs: usize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.slots)
            .field("columns", &self.columns)
            .field("procs", &self.procs)
            .finish()
    }
}

/// Where each region starts: front words, slots, bases, queues, cells.
struct Offsets {
    slot: usize,
    base: usize,
    queue: usize,
    procs: usize,
}

fn offsets(slots: usize, columns: usize) -> Offsets {
    let slot = HEADER_WORDS + FRONT_WORDS;
    let base = slot + slots * SLOT_WORDS;
    let queue = base + columns * COL_WORDS;
    let procs = (queue + columns * QUEUE_WORDS).div_ceil(PAGE_WORDS) * PAGE_WORDS;
    Offsets {
        slot,
        base,
        queue,
        procs,
    }
}

fn proc_words(columns: usize) -> usize {
    (PROC_HEAD_WORDS + columns * COL_WORDS).div_ceil(PAGE_WORDS) * PAGE_WORDS
}

fn total_words(slots: usize, columns: usize, procs: usize) -> Option<usize> {
    let p = offsets(slots, columns).procs;
    proc_words(columns).checked_mul(procs)?.checked_add(p)
}

/// Add `n` to a word this process alone writes (no locked instruction).
#[inline]
pub fn bump(word: &AtomicU64, n: u64) {
    word.store(
        word.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Read a word.
#[inline]
pub fn get(word: &AtomicU64) -> u64 {
    word.load(Ordering::Relaxed)
}

/// Set a word this process alone writes.
#[inline]
pub fn set(word: &AtomicU64, v: u64) {
    word.store(v, Ordering::Relaxed);
}

impl Table {
    /// Create a zeroed table for `slots` worker slots, `columns` backend
    /// columns and `procs` process cells (the front, at start).
    pub fn create(slots: usize, columns: usize, procs: usize) -> Result<Table, StatsError> {
        let words =
            total_words(slots, columns, procs).ok_or(StatsError::Header("capacities overflow"))?;
        let fd = rustix::fs::memfd_create(
            "rrproxy-stats",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        rustix::fs::ftruncate(&fd, (words * 8) as u64).map_err(io::Error::from)?;
        // Its size is fixed for good: every process maps all of it, and a
        // shorter file would make their reads fault (see `SharedWords`).
        // Nothing may add or remove a seal afterwards. (Punching holes,
        // as `clear_cell` does, is not growing or shrinking.)
        rustix::fs::fcntl_add_seals(
            &fd,
            rustix::fs::SealFlags::SHRINK
                | rustix::fs::SealFlags::GROW
                | rustix::fs::SealFlags::SEAL,
        )
        .map_err(io::Error::from)?;
        let map = SharedWords::map(fd.as_fd(), words)?;
        let w = map.words();
        set(&w[1], layout());
        set(&w[2], slots as u64);
        set(&w[3], columns as u64);
        set(&w[4], procs as u64);
        // The magic last: a reader that sees it sees the rest.
        w[0].store(MAGIC, Ordering::Release);
        Ok(Table {
            fd,
            map,
            slots,
            columns,
            procs,
        })
    }

    /// Map an existing table (a worker, or the front after an upgrade),
    /// checking its header.
    pub fn open(fd: OwnedFd) -> Result<Table, StatsError> {
        let head = SharedWords::map(fd.as_fd(), HEADER_WORDS)?;
        let h = head.words();
        if h[0].load(Ordering::Acquire) != MAGIC {
            return Err(StatsError::Magic);
        }
        let layout = get(&h[1]);
        if layout != self::layout() {
            return Err(StatsError::Layout {
                found: layout,
                mine: self::layout(),
            });
        }
        let cap = |i: usize, max: usize, what| {
            usize::try_from(get(&h[i]))
                .ok()
                .filter(|&v| v > 0 && v <= max)
                .ok_or(StatsError::Header(what))
        };
        let slots = cap(2, 1 << 16, "slot count")?;
        let columns = cap(3, 1 << 16, "column count")?;
        let procs = cap(4, 1 << 17, "process count")?;
        let words =
            total_words(slots, columns, procs).ok_or(StatsError::Header("capacities overflow"))?;
        drop(head);
        let map = SharedWords::map(fd.as_fd(), words)?;
        Ok(Table {
            fd,
            map,
            slots,
            columns,
            procs,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new descriptor for the same table (to hand to a worker).
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    pub fn procs(&self) -> usize {
        self.procs
    }

    fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }

    pub fn front(&self, w: FrontWord) -> &AtomicU64 {
        &self.words()[HEADER_WORDS + w as usize]
    }

    /// The `i`th duration bucket base (front region).
    pub fn duration_bucket_base(&self, i: usize) -> &AtomicU64 {
        &self.words()[HEADER_WORDS + FrontWord::DurationBucketBase0 as usize + i]
    }

    /// The base of the connection-duration histogram (front region): its
    /// sum, then its buckets.
    pub fn duration_base(&self) -> &[AtomicU64] {
        let start = HEADER_WORDS + FrontWord::DurationSumNsBase as usize;
        &self.words()[start..start + Hist::<{ DURATION_BOUNDS.len() }>::WORDS]
    }

    pub fn slot(&self, slot: usize, w: SlotWord) -> &AtomicU64 {
        let s = offsets(self.slots, self.columns).slot;
        &self.words()[s + slot.min(self.slots - 1) * SLOT_WORDS + w as usize]
    }

    /// The base (front-owned) group of backend column `col`.
    pub fn base(&self, col: usize) -> &[AtomicU64] {
        let b = offsets(self.slots, self.columns).base;
        let start = b + col.min(self.columns - 1) * COL_WORDS;
        &self.words()[start..start + COL_WORDS]
    }

    /// The front's queue group of backend column `col`.
    pub fn queue(&self, col: usize) -> QueueCell<'_> {
        let q = offsets(self.slots, self.columns).queue;
        let start = q + col.min(self.columns - 1) * QUEUE_WORDS;
        QueueCell {
            words: &self.words()[start..start + QUEUE_WORDS],
        }
    }

    fn cell_words(&self, cell: usize) -> &[AtomicU64] {
        let p = offsets(self.slots, self.columns).procs;
        let size = proc_words(self.columns);
        let start = p + cell.min(self.procs - 1) * size;
        &self.words()[start..start + size]
    }

    /// Process cell `cell`.
    pub fn cell(&self, cell: usize) -> ProcCell<'_> {
        ProcCell::new(self.cell_words(cell), self.columns)
    }

    /// Zero process cell `cell` so a new process can have it. Only when no
    /// process writes it any more.
    pub fn clear_cell(&self, cell: usize) {
        let p = offsets(self.slots, self.columns).procs;
        let size = proc_words(self.columns);
        let start = p + cell.min(self.procs - 1) * size;
        // Give the pages back (they read as zeros); fall back to stores.
        let punched = rustix::fs::fallocate(
            &self.fd,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            (start * 8) as u64,
            (size * 8) as u64,
        );
        if punched.is_err() {
            for w in self.cell_words(cell) {
                set(w, 0);
            }
        }
    }
}

/// One backend column's queue words (the front writes them alone).
#[derive(Clone, Copy)]
pub struct QueueCell<'a> {
    words: &'a [AtomicU64],
}

impl<'a> QueueCell<'a> {
    pub fn get(&self, w: QueueWord) -> u64 {
        get(&self.words[w as usize])
    }

    pub fn bump(&self, w: QueueWord, n: u64) {
        bump(&self.words[w as usize], n);
    }

    pub fn set(&self, w: QueueWord, v: u64) {
        set(&self.words[w as usize], v);
    }

    /// The wait histogram's words: sum, then buckets.
    pub fn wait(&self) -> &'a [AtomicU64] {
        let start = QueueWord::WaitSumNs as usize;
        &self.words[start..start + Hist::<{ QUEUE_WAIT.bounds_ns.len() }>::WORDS]
    }

    /// A connection waited `d` (served, or timed out).
    pub fn record_wait(&self, d: std::time::Duration) {
        QUEUE_WAIT.record(self.wait(), d);
    }

    /// Zero the group (a column given to a new backend).
    pub fn clear(&self) {
        for w in self.words {
            set(w, 0);
        }
    }
}

#[cfg(test)]
mod tests;
