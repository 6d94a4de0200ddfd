//! Sticky policy tests: stability, minimal movement, weights, the
//! cache against the full scan, fallbacks and slow start.

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
