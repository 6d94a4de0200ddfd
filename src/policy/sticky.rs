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

use super::{BackendView, Policy, PolicyName, WorkerView, client_key, mix64, neg_ln_unit};

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

#[derive(Debug)]
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
            let score = mix64(h ^ mix64(slot as u64 ^ SEED_SLOT));
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
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::policy::{PolicyOptions, backend_key, build};

    fn views(weights: &[u32]) -> Vec<BackendView> {
        let view = |(i, &weight)| BackendView {
            key: backend_key(&format!("10.1.0.{i}:80")),
            weight,
            routable: true,
            active: 0,
            ramp: crate::policy::RAMP_FULL,
        };
        weights.iter().enumerate().map(view).collect()
    }

    fn built(v: &[BackendView]) -> Sticky {
        let mut s = Sticky::new(128);
        s.rebuild(v);
        s
    }

    fn ips(n: u32) -> impl Iterator<Item = IpAddr> {
        (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    /// The key of each client's backend (keys survive reindexing).
    fn keys(s: &mut Sticky, v: &[BackendView], n: u32) -> Vec<u64> {
        let key = |ip| v[s.pick_backend(ip, v).unwrap()].key;
        ips(n).map(key).collect()
    }

    fn workers(n: usize) -> Vec<WorkerView> {
        let w = WorkerView {
            routable: true,
            active: 0,
        };
        vec![w; n]
    }

    /// Backend and slot (of 8) for `ip`.
    fn pick(s: &mut dyn Policy, ip: IpAddr, v: &[BackendView]) -> (usize, usize) {
        (
            s.pick_backend(ip, v).unwrap(),
            s.pick_worker(ip, &workers(8)).unwrap(),
        )
    }

    #[test]
    fn same_ip_same_backend_and_slot() {
        let ip6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        for n in [3, 32] {
            let v = views(&vec![1; n]);
            let mut s = built(&v);
            for ip in [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), ip6] {
                let first = pick(&mut s, ip, &v);
                assert!((0..100).all(|_| pick(&mut s, ip, &v) == first));
            }
        }
    }

    #[test]
    fn fresh_instances_agree_whatever_the_order() {
        for n in [3, 32] {
            let v = views(&vec![2; n]);
            let mut a = build(PolicyName::Sticky, &v, &PolicyOptions::default());
            let mut b = built(&v);
            let rev: Vec<_> = v.iter().rev().copied().collect();
            let mut c = built(&rev);
            for ip in ips(1000) {
                let (i, slot) = pick(&mut *a, ip, &v);
                assert_eq!(pick(&mut b, ip, &v), (i, slot));
                assert_eq!(rev[c.pick_backend(ip, &rev).unwrap()].key, v[i].key);
            }
        }
    }

    #[test]
    fn golden_answers_never_change() {
        // Pins the hash definition: every rrproxy version must agree.
        let v = views(&[1, 2, 3, 4, 5]);
        let mut s = built(&v);
        let got: String = ips(40)
            .map(|ip| pick(&mut s, ip, &v))
            .map(|(b, w)| format!("{b}{w}"))
            .collect();
        assert_eq!(
            got,
            "47334104322247333434443321203106123627174233142511363725151730220041330626233234"
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        for (n, gone) in [(3, 1), (32, 5)] {
            let v = views(&vec![1; n]);
            let mut s = built(&v);
            let before = keys(&mut s, &v, 10_000);
            let mut less = v.clone();
            less.remove(gone);
            s.rebuild(&less);
            let after = keys(&mut s, &less, 10_000);
            assert!(before.contains(&v[gone].key));
            for (b, a) in before.iter().zip(&after) {
                assert!(*b == v[gone].key || a == b, "a kept backend's client moved");
            }
        }
    }

    #[test]
    fn adding_a_fourth_moves_about_a_quarter_to_it() {
        let v4 = views(&[1, 1, 1, 1]);
        let mut s = built(&v4[..3]);
        let before = keys(&mut s, &v4[..3], 10_000);
        s.rebuild(&v4);
        let after = keys(&mut s, &v4, 10_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| a != b);
        assert!(moved.clone().all(|(_, &a)| a == v4[3].key));
        let frac = moved.count() as f64 / 10_000.0;
        assert!((0.23..0.27).contains(&frac), "moved {frac}");
    }

    #[test]
    fn a_down_backend_fails_over_and_comes_back() {
        // Also enough down that some buckets' whole cached ranking is.
        let cases: [(usize, &[usize]); 3] = [(3, &[1]), (32, &[1]), (32, &[1, 2, 3, 4, 6, 7])];
        for (n, down) in cases {
            let mut v = views(&vec![1; n]);
            let mut s = built(&v);
            let before = keys(&mut s, &v, 10_000);
            down.iter().for_each(|&i| v[i].routable = false);
            let during = keys(&mut s, &v, 10_000);
            for (b, d) in before.iter().zip(&during) {
                let was_down = down.iter().any(|&i| v[i].key == *b);
                assert!(was_down != (d == b), "only the down backends' clients move");
            }
            down.iter().for_each(|&i| v[i].routable = true);
            assert_eq!(keys(&mut s, &v, 10_000), before);
        }
    }

    #[test]
    fn weights_are_honoured() {
        let v = views(&[1, 3]);
        let got = keys(&mut built(&v), &v, 10_000);
        let heavy = got.iter().filter(|&&k| k == v[1].key).count();
        assert!((7_200..7_800).contains(&heavy), "weight 3: {heavy}");
    }

    #[test]
    fn equal_backends_share_evenly() {
        let v = views(&[1, 1, 1]);
        let got = keys(&mut built(&v), &v, 30_000);
        for b in &v {
            let c = got.iter().filter(|&&k| k == b.key).count();
            assert!((9_500..=10_500).contains(&c), "{c} of 30000");
        }
    }

    #[test]
    fn a_down_slot_moves_only_its_clients() {
        let mut s = Sticky::new(128);
        let mut w = workers(4);
        let before: Vec<_> = ips(4000).map(|ip| s.pick_worker(ip, &w).unwrap()).collect();
        assert!((0..4).all(|slot| before.iter().filter(|&&b| b == slot).count() > 900));
        w[2].routable = false;
        for (ip, &b) in ips(4000).zip(&before) {
            let now = s.pick_worker(ip, &w).unwrap();
            assert!(now != 2 && (b == 2 || now == b));
        }
    }

    #[test]
    fn ipv6_prefix_groups_a_slash_64() {
        let v = views(&[1, 1, 1, 1]);
        let (mut p64, mut all) = (Sticky::new(64), built(&v));
        p64.rebuild(&v);
        let net = |low| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0001_u128 << 64 | low));
        let first = pick(&mut p64, net(1), &v);
        let mut spread = std::collections::HashSet::new();
        for ip in (0..200).map(|i| net(u128::from(mix64(i)))) {
            assert_eq!(pick(&mut p64, ip, &v), first);
            spread.insert(pick(&mut all, ip, &v).0);
        }
        assert_eq!(spread.len(), 4, "by default the whole address counts");
    }

    #[test]
    fn ipv4_mapped_hashes_as_ipv4() {
        let v = views(&[1, 1, 1]);
        let mut s = built(&v);
        for v4 in ips(1000) {
            let IpAddr::V4(a) = v4 else { unreachable!() };
            let mapped = IpAddr::V6(a.to_ipv6_mapped());
            assert_eq!(pick(&mut s, mapped, &v), pick(&mut s, v4, &v));
        }
    }

    #[test]
    fn cache_gives_exactly_the_full_scan_answer() {
        let mut v = views(&(1..=40).collect::<Vec<_>>());
        let mut s = built(&v);
        let full = |ip, v: &[BackendView]| scan(bucket_of(client_key(ip, 128)).1, v);
        for round in 0..8u64 {
            for (i, b) in v.iter_mut().enumerate() {
                b.routable = round == 0 || mix64(round << 8 | i as u64) % 4 != 0;
            }
            assert!(ips(5000).all(|ip| s.pick_backend(ip, &v) == full(ip, &v)));
        }
        // A list changed without a rebuild is scanned, not misread.
        v.iter_mut().for_each(|b| b.routable = true);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let i = s.pick_backend(ip, &v).unwrap();
        v.swap(i, (i + 1) % 40);
        assert_eq!(s.pick_backend(ip, &v), Some((i + 1) % 40));
    }

    #[test]
    fn none_only_when_nothing_is_routable() {
        for n in [1, 2, 3, 32] {
            let mut v = views(&vec![1; n]);
            let mut w = workers(4);
            let mut s = built(&v);
            // Shorter lists than the cached ranking; the last one left.
            v[..n - 1].iter_mut().for_each(|b| b.routable = false);
            assert!(ips(100).all(|ip| s.pick_backend(ip, &v) == Some(n - 1)));
            v.iter_mut().for_each(|b| b.routable = false);
            w.iter_mut().for_each(|w| w.routable = false);
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            assert_eq!(s.pick_backend(ip, &v).or(s.pick_worker(ip, &w)), None);
            assert_eq!(s.pick_backend(ip, &[]).or(s.pick_worker(ip, &[])), None);
        }
    }

    #[test]
    fn fallbacks_are_where_the_client_goes_once_its_backend_is_down() {
        let mut v = views(&[1, 2, 1, 3, 1, 1, 2]);
        let mut s = built(&v);
        for ip in ips(500) {
            let first = s.pick_backend(ip, &v).unwrap();
            let mut next = [0usize; 4];
            let n = s.fallbacks(ip, first, &v, &mut next);
            assert_eq!(n, 4);
            assert!(!next[..n].contains(&first));
            // With the first down, the client lands on its first fallback;
            // with that one down too, on the second.
            v[first].routable = false;
            assert_eq!(s.pick_backend(ip, &v), Some(next[0]), "{ip}");
            v[next[0]].routable = false;
            assert_eq!(s.pick_backend(ip, &v), Some(next[1]), "{ip}");
            // The scan agrees with the cached ranking.
            let mut scanned = [0usize; 4];
            v[first].routable = true;
            v[next[0]].routable = true;
            let (_, bh) = bucket_of(client_key(ip, 128));
            assert_eq!(scan_top(bh, first, &v, &mut scanned), 4);
            assert_eq!(scanned, next);
        }
    }

    #[test]
    fn a_ramping_backend_takes_back_its_clients_as_the_ramp_allows_once_each() {
        let mut v = views(&[1, 1, 1, 1]);
        let mut s = built(&v);
        let n = 20_000;
        let full = keys(&mut s, &v, n);
        let target = v[2].key;
        let theirs = full.iter().filter(|&&k| k == target).count();
        let mut back_before = vec![false; n as usize];
        for pct in [0u32, 5, 25, 50, 75, 100] {
            v[2].ramp = crate::policy::RAMP_FULL * pct / 100;
            let now = keys(&mut s, &v, n);
            let mut back = 0;
            for (i, (f, k)) in full.iter().zip(&now).enumerate() {
                if *f != target {
                    // Other clients never move.
                    assert_eq!(f, k);
                    continue;
                }
                let is_back = *k == target;
                // Once back, back for good.
                assert!(is_back || !back_before[i], "client {i} flapped at {pct}%");
                back_before[i] = is_back;
                back += usize::from(is_back);
            }
            let frac = back as f64 / theirs as f64;
            assert!(
                (frac - f64::from(pct) / 100.0).abs() < 0.03,
                "{pct}%: {back} of {theirs} back"
            );
            // The cache and the full scan agree under a ramp too.
            for ip in ips(2000) {
                let bh = bucket_of(client_key(ip, 128)).1;
                assert_eq!(s.pick_backend(ip, &v), scan(bh, &v));
            }
        }
        // Held back everywhere: the best routable is taken anyway.
        let mut only = views(&[1]);
        only[0].ramp = 0;
        let mut one = built(&only);
        assert!(ips(100).all(|ip| one.pick_backend(ip, &only) == Some(0)));
    }
}
