//! Latency histograms kept in the statistics table.
//!
//! A histogram is a group of words owned by one writer: the sum of what it
//! recorded, in nanoseconds, then one count per bucket (not cumulative),
//! the last one for everything above the highest bound (`+Inf`). Workers
//! keep one per backend column of their cell (connect time) and one in
//! their cell's head (connection lifetime); the front folds a departed
//! process's words into the bases like every other counter, and the
//! exposition sums base and live cells per bucket, then makes them
//! cumulative (`_bucket{le}`, `_sum`, `_count`).
//!
//! Recording is integer work only: the duration in whole nanoseconds (one
//! multiply), its bucket from two small tables indexed by the value's
//! highest set bit (no division, no float, no search: consecutive bounds
//! are at least a factor 2 apart, so one power-of-two range holds at most
//! one bound and one comparison settles it), and two single-writer adds.
//!
//! The bounds are classic Prometheus buckets on a 1-2.5-5 ladder, so
//! `histogram_quantile` interpolates within a factor of 2.5 at most:
//!
//! - connect time, 100 us to 30 s: loopback and same-host connects take
//!   tens of microseconds, same-rack a few hundred, one zone about a
//!   millisecond, across zones or regions 2-50 ms. Above that a connect is
//!   slow for a reason: an accept queue that overflowed, or a SYN lost and
//!   sent again after Linux's 1 s initial retransmission timeout, then 2,
//!   4, 8 s more. The bounds 1, 2.5, 5, 10 and 30 s put one, two, three and
//!   four retransmissions each in a bucket of its own.
//! - connection lifetime, 1 ms to 1 h: request-response connections on a
//!   LAN last milliseconds to a second; pooled, keep-alive and streaming
//!   connections (databases, WebSockets) minutes to hours, where 60 s,
//!   5 min (a common idle timeout), 15 min and 1 h say which.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::{bump, get};

/// A histogram's bucket bounds: `N` finite upper bounds in nanoseconds,
/// ascending, each inclusive (Prometheus `le`), then `+Inf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hist<const N: usize> {
    pub bounds_ns: [u64; N],
    /// For each power of two `2^k`: how many bounds lie below it.
    below: [u8; 64],
    /// For each `2^k`: the first bound at or above it (`u64::MAX` if none),
    /// the only one that can lie within `[2^k, 2^(k+1))`.
    next: [u64; 64],
}

impl<const N: usize> Hist<N> {
    /// Bounds ascending, each at least twice the one before (checked when
    /// the constant is built).
    pub const fn new(bounds_ns: [u64; N]) -> Hist<N> {
        assert!(N > 0 && N < 64 && bounds_ns[0] > 0);
        let mut i = 1;
        while i < N {
            assert!(
                bounds_ns[i] / 2 >= bounds_ns[i - 1],
                "bounds at least a factor 2 apart"
            );
            i += 1;
        }
        let mut below = [0u8; 64];
        let mut next = [u64::MAX; 64];
        let mut k = 0;
        while k < 64 {
            let mut n = 0;
            while n < N && bounds_ns[n] < (1u64 << k) {
                n += 1;
            }
            below[k] = n as u8;
            if n < N {
                next[k] = bounds_ns[n];
            }
            k += 1;
        }
        Hist {
            bounds_ns,
            below,
            next,
        }
    }
}

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// `rrproxy_backend_connect_seconds`: from the worker starting the connect
/// to the backend until it is established (and, for a `send-proxy`
/// backend, the PROXY header written). Successful attempts only.
pub const CONNECT: Hist<17> = Hist::new([
    100 * US,
    250 * US,
    500 * US,
    MS,
    2_500 * US,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2_500 * MS,
    5 * S,
    10 * S,
    30 * S,
]);

/// `rrproxy_connection_duration_seconds`: from the worker taking the
/// client connection until both sides are closed.
pub const DURATION: Hist<18> = Hist::new([
    MS,
    2_500 * US,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2_500 * MS,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
    300 * S,
    900 * S,
    3600 * S,
]);

/// `rrproxy_backend_queue_wait_seconds`: how long a connection waited
/// in a backend's queue (`maxconn=`) before it was handed to a worker, or
/// until `--queue-timeout` ended the wait. 1 ms (a slot freed as it
/// arrived) to a minute, the 1-2.5-5 ladder.
pub const QUEUE_WAIT: Hist<15> = Hist::new([
    MS,
    2_500 * US,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2_500 * MS,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
]);

impl<const N: usize> Hist<N> {
    /// Words a histogram takes: its sum, then `N + 1` buckets.
    pub const WORDS: usize = N + 2;
    /// Buckets, `+Inf` included.
    pub const BUCKETS: usize = N + 1;

    /// The bucket of `ns`: how many bounds lie below it. With `2^k` the
    /// highest power of two not above `ns`, those are the bounds below
    /// `2^k` and, if `ns` is above it, the one bound that may lie in
    /// `[2^k, ns)`.
    #[inline]
    pub fn bucket(&self, ns: u64) -> usize {
        let k = (63 - (ns | 1).leading_zeros()) as usize & 63;
        usize::from(self.below[k]) + usize::from(ns > self.next[k])
    }

    /// Record `d` into `group` (this histogram's words: sum, then buckets),
    /// which the caller alone writes.
    #[inline]
    pub fn record(&self, group: &[AtomicU64], d: Duration) {
        let ns = nanos(d);
        if let (Some(sum), Some(count)) = (group.first(), group.get(1 + self.bucket(ns))) {
            bump(sum, ns);
            bump(count, 1);
        }
    }

    /// The bounds as Prometheus writes them (`le`), in seconds.
    pub fn le(&self) -> [String; N] {
        self.bounds_ns.map(|ns| (ns as f64 / 1e9).to_string())
    }
}

/// A histogram read out of the table: per-bucket counts (not cumulative)
/// and the sum in nanoseconds, added up over any number of groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl Counts {
    /// Zero, for a histogram of `buckets` buckets.
    pub fn new(buckets: usize) -> Counts {
        Counts {
            buckets: vec![0; buckets],
            sum_ns: 0,
        }
    }

    /// Back to zero (to read the next series into the same buffer).
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.sum_ns = 0;
    }

    /// Add one group's words (sum, then buckets).
    pub fn add(&mut self, group: &[AtomicU64]) {
        if let Some((sum, buckets)) = group.split_first() {
            self.sum_ns = self.sum_ns.wrapping_add(get(sum));
            for (mine, w) in self.buckets.iter_mut().zip(buckets) {
                *mine = mine.wrapping_add(get(w));
            }
        }
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |a, &b| a.wrapping_add(b))
    }
}

/// A duration in whole nanoseconds (saturating at about 584 years).
#[inline]
pub fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(S)
        .saturating_add(u64::from(d.subsec_nanos()))
}
