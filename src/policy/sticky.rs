//! Sticky: the client's IP address (never its port) decides its backend
//! and its worker slot, identically in every rrproxy process and instance
//! that has the same backend list. Owns the client buckets, the rendezvous
//! draws and a lazily filled cache of per-bucket rankings.
//!
//! Algorithm:
//! 1. The address is hashed by [`client_key`] (fixed seeds, never the
//!    process's random hasher; IPv4-mapped IPv6 as IPv4; other IPv6
//!    masked to its leading `ipv6_prefix` bits, 128 = the whole address).
//! 2. The top `BUCKET_BITS` bits of that hash name the client's bucket.
//!    The bucket count is fixed forever, so it never depends on the list.
//! 3. Backends: weighted rendezvous (highest random weight) per bucket.
//!    Each backend draws `-ln(u) * (1 / weight)`, `u` in (0, 1) from
//!    `mix64(bucket_hash ^ backend.key)`; the smallest draw wins (ties by
//!    key), i.e. the highest `weight / -ln(u)`. A backend's draw depends
//!    only on the bucket, its key and its weight, so removing a backend
//!    moves exactly the buckets it won, an added one takes ≈ w/Σw of them,
//!    a down one's buckets go to their own next choice and come back, and
//!    backend `i` wins with probability `w_i / Σw` (minimum of exponential
//!    clocks). The logarithm is [`super::neg_ln_unit`], bit-identical on
//!    every platform.
//! 4. A bucket's best `TOP` backends are cached on first use after each
//!    `rebuild` (which only copies keys and weights and bumps an epoch; the
//!    ranking work, O(N) per bucket, falls on the first pick that needs
//!    it). A pick takes the first routable cached one; if all are down it
//!    scans the whole list for the best routable draw, which is the same
//!    answer the full ranking gives. No allocation, no lock.
//! 5. Worker slots: plain (unweighted) rendezvous on the full client hash
//!    over the routable slots, slot `s` keyed by `mix64(s ^ SEED_SLOT)`.
//! 6. Slow start: the ranking always uses the configured weights. A
//!    routable backend that is ramping up (`ramp` below
//!    [`super::RAMP_FULL`]) is taken by a bucket only if the bucket's ramp
//!    draw for it, `mix64(bucket_hash ^ key ^ SEED_RAMP)`'s top 16 bits,
//!    is below `ramp`; otherwise the bucket goes on down its ranking. So a
//!    client whose first choice is ramping goes there with probability =
//!    the ramp fraction; whether it does is fixed per client (bucket) and
//!    backend, and since the ramp only rises, a client that has moved
//!    back stays back: each client moves at most once, never flaps. If
//!    every routable backend is held back this way, the best routable one
//!    is taken anyway.

use std::net::IpAddr;

use super::{BackendView, Policy, PolicyName, Why, WorkerView, client_key, mix64, neg_ln_unit};

/// log2 of the number of client buckets. Part of the hash definition:
/// changing it re-deals every client.
const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// Backends cached per bucket: the choice and every fallback.
const TOP: usize = 1 + crate::channel::MAX_FALLBACKS;

// Fixed seeds (arbitrary constants). Changing one re-deals every client.
const SEED_BUCKET: u64 = 0xa409_3822_299f_31d0;
const SEED_SLOT: u64 = 0x082e_fa98_ec4e_6c89;
const SEED_RAMP: u64 = 0x4528_21e6_38d0_1377;

const EMPTY: u32 = u32::MAX;
const UNFILLED: Entry = Entry {
    epoch: 0,
    top: [EMPTY; TOP],
};

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `Sticky::epoch` when filled; 0 = never.
    epoch: u32,
    /// Backend indices, best first; [`EMPTY`] past the end of a short list.
    top: [u32; TOP],
}

#[derive(Debug, Clone)]
pub struct Sticky {
    ipv6_prefix: u8,
    /// The list the cache was ranked for, from the last `rebuild`.
    keys: Vec<u64>,
    weights: Vec<u32>,
    inv_weights: Vec<f64>,
    /// [`BUCKETS`] entries (1 MiB), allocated by the first rebuild.
    cache: Vec<Entry>,
    epoch: u32,
}

impl Sticky {
    /// `ipv6_prefix`: leading bits of an IPv6 address that count (128 =
    /// all; larger values are treated as 128).
    pub fn new(ipv6_prefix: u8) -> Sticky {
        Sticky {
            ipv6_prefix: ipv6_prefix.min(128),
            keys: Vec::new(),
            weights: Vec::new(),
            inv_weights: Vec::new(),
            cache: Vec::new(),
            epoch: 1,
        }
    }

    /// The cached ranking of `bucket`, filled now if stale.
    fn ranking(&mut self, bucket: usize, bh: u64) -> [u32; TOP] {
        let epoch = self.epoch;
        let entry = &mut self.cache[bucket];
        if entry.epoch != epoch {
            let mut top = [(0.0, 0, EMPTY); TOP];
            for (i, (&key, &inv_w)) in self.keys.iter().zip(&self.inv_weights).enumerate() {
                let d = draw(bh, key, inv_w);
                let mut j = TOP;
                while j > 0 && (top[j - 1].2 == EMPTY || beats(d, key, top[j - 1].0, top[j - 1].1))
                {
                    j -= 1;
                }
                if j < TOP {
                    top.copy_within(j..TOP - 1, j + 1);
                    top[j] = (d, key, i as u32);
                }
            }
            *entry = Entry {
                epoch,
                top: top.map(|t| t.2),
            };
        }
        entry.top
    }
}

/// Slot `slot`'s rendezvous score for the client hash `h` (highest wins).
fn slot_score(h: u64, slot: usize) -> u64 {
    mix64(h ^ mix64(slot as u64 ^ SEED_SLOT))
}

/// The client's bucket and that bucket's rendezvous hash.
fn bucket_of(client_hash: u64) -> (usize, u64) {
    let bucket = (client_hash >> (64 - BUCKET_BITS)) as usize;
    (bucket, mix64(bucket as u64 ^ SEED_BUCKET))
}

/// A backend's draw for a bucket: an exponential variable of rate
/// `weight`, given `inv_w` = [`inv_weight`]. Smallest wins.
fn draw(bucket_hash: u64, key: u64, inv_w: f64) -> f64 {
    neg_ln_unit(mix64(bucket_hash ^ key)) * inv_w
}

/// `1 / weight`, correctly rounded, so cached and scanned draws agree.
fn inv_weight(weight: u32) -> f64 {
    1.0 / f64::from(weight.max(1))
}

/// Ranking order: smaller draw, then smaller key.
fn beats(d: f64, key: u64, other_d: f64, other_key: u64) -> bool {
    d < other_d || (d == other_d && key < other_key)
}

/// Whether a bucket takes backend `b` now: always, unless it is ramping
/// up (slow start) and the bucket's ramp draw for it is not yet below
/// the ramp.
fn admits(bh: u64, b: &BackendView) -> bool {
    b.ramp >= super::RAMP_FULL || (mix64(bh ^ b.key ^ SEED_RAMP) >> 48) < u64::from(b.ramp)
}

/// The best routable backend for a bucket that admits it, else the best
/// routable one, by a full scan of the views.
fn scan(bh: u64, backends: &[BackendView]) -> Option<usize> {
    let mut best: Option<(f64, u64, usize)> = None;
    let mut admitted: Option<(f64, u64, usize)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !b.routable {
            continue;
        }
        let d = draw(bh, b.key, inv_weight(b.weight));
        if best.is_none_or(|(bd, bk, _)| beats(d, b.key, bd, bk)) {
            best = Some((d, b.key, i));
        }
        if admits(bh, b) && admitted.is_none_or(|(bd, bk, _)| beats(d, b.key, bd, bk)) {
            admitted = Some((d, b.key, i));
        }
    }
    admitted.or(best).map(|(_, _, i)| i)
}

/// The best routable backends other than `first` for a bucket, best
/// first, by a full scan of the views.
fn scan_top(bh: u64, first: usize, backends: &[BackendView], out: &mut [usize]) -> usize {
    let mut best: [(f64, u64); TOP] = [(f64::INFINITY, u64::MAX); TOP];
    let want = out.len().min(TOP);
    let mut k = 0;
    for (i, b) in backends.iter().enumerate() {
        if i == first || !b.routable {
            continue;
        }
        let d = draw(bh, b.key, inv_weight(b.weight));
        let mut at = k;
        while at > 0 && beats(d, b.key, best[at - 1].0, best[at - 1].1) {
            at -= 1;
        }
        if at < want {
            let end = (k + 1).min(want);
            best.copy_within(at..end - 1, at + 1);
            out.copy_within(at..end - 1, at + 1);
            best[at] = (d, b.key);
            out[at] = i;
            k = end;
        }
    }
    k
}

impl Policy for Sticky {
    fn name(&self) -> PolicyName {
        PolicyName::Sticky
    }

    fn pick_worker(&mut self, client: IpAddr, workers: &[WorkerView]) -> Option<usize> {
        let h = client_key(client, self.ipv6_prefix);
        let mut best: Option<(u64, usize)> = None;
        for (slot, w) in workers.iter().enumerate() {
            if !w.routable {
                continue;
            }
            let score = slot_score(h, slot);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, slot));
            }
        }
        best.map(|(_, slot)| slot)
    }

    fn pick_backend(&mut self, client: IpAddr, backends: &[BackendView]) -> Option<usize> {
        let (bucket, bh) = bucket_of(client_key(client, self.ipv6_prefix));
        // The cache only serves the list it was ranked for.
        if !self.cache.is_empty() && !backends.is_empty() && backends.len() == self.keys.len() {
            for i in self.ranking(bucket, bh) {
                let Some(b) = backends.get(i as usize) else {
                    break; // EMPTY: the whole list was in the ranking.
                };
                if (b.key, b.weight) != (self.keys[i as usize], self.weights[i as usize]) {
                    break; // List changed without a rebuild: scan.
                }
                if b.routable && admits(bh, b) {
                    return Some(i as usize);
                }
            }
        }
        scan(bh, backends)
    }

    /// The client's next choices after `first`, from its bucket's cached
    /// ranking when it is current, else by a scan.
    fn fallbacks(
        &mut self,
        client: IpAddr,
        first: usize,
        backends: &[BackendView],
        out: &mut [usize],
    ) -> usize {
        let (bucket, bh) = bucket_of(client_key(client, self.ipv6_prefix));
        if !self.cache.is_empty() && !backends.is_empty() && backends.len() == self.keys.len() {
            let mut k = 0;
            let mut whole = false;
            for i in self.ranking(bucket, bh) {
                let Some(b) = backends.get(i as usize) else {
                    whole = true; // EMPTY: the whole list was ranked.
                    break;
                };
                if (b.key, b.weight) != (self.keys[i as usize], self.weights[i as usize]) {
                    return scan_top(bh, first, backends, out);
                }
                if i as usize != first && b.routable && k < out.len() {
                    out[k] = i as usize;
                    k += 1;
                }
            }
            if k == out.len() || whole {
                return k;
            }
        }
        scan_top(bh, first, backends, out)
    }

    fn boxed_clone(&self) -> Box<dyn Policy> {
        Box::new(self.clone())
    }

    /// The scores the picks compare: slots by [`slot_score`],
    /// backends by `weight / -ln(u)` (the inverse of the draw, so the
    /// highest wins), each with whether the bucket takes it while it ramps.
    fn why(&self, client: IpAddr, workers: &[WorkerView], backends: &[BackendView]) -> Why {
        let h = client_key(client, self.ipv6_prefix);
        let (bucket, bh) = bucket_of(h);
        Why::Sticky {
            bucket,
            slot_scores: (0..workers.len())
                .map(|s| slot_score(h, s) as f64 / u64::MAX as f64)
                .collect(),
            backend_scores: backends
                .iter()
                .map(|b| 1.0 / draw(bh, b.key, inv_weight(b.weight)))
                .collect(),
            ramp_admits: backends.iter().map(|b| admits(bh, b)).collect(),
        }
    }

    fn rebuild(&mut self, backends: &[BackendView]) {
        self.keys.clear();
        self.keys.extend(backends.iter().map(|b| b.key));
        self.weights.clear();
        self.weights.extend(backends.iter().map(|b| b.weight));
        self.inv_weights.clear();
        self.inv_weights
            .extend(backends.iter().map(|b| inv_weight(b.weight)));
        if self.cache.is_empty() {
            self.cache = vec![UNFILLED; BUCKETS];
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Wrapped: forget every entry so none looks current.
            self.cache.iter_mut().for_each(|e| e.epoch = 0);
            self.epoch = 1;
        }
    }
}

#[cfg(test)]
mod tests;
