//! Least-connections: owns only two rotation offsets; the live counts come
//! in the views.
//!
//! Workers: the routable slot with the fewest `active` connections.
//! Backends: the routable backend with the fewest active connections
//! *relative to its weight*, i.e. the smallest `active / weight`, compared
//! exactly by cross-multiplication (`a_i * w_j < a_j * w_i`, in `u128`).
//! The weight is the effective one: a slow-starting backend holds at most
//! its ramped share of the connections (idle backends tie at 0 whatever
//! their weights).
//!
//! Ties rotate: each scan starts one past the previous choice and keeps the
//! first of the tied minimums it meets, so an idle start spreads 0, 1, 2, …
//! instead of piling everything on slot 0 or backend 0. One pass, no
//! allocation.

use std::net::IpAddr;

use super::{BackendView, Policy, PolicyName, Why, WorkerView};

#[derive(Debug, Default, Clone)]
pub struct LeastConn {
    /// Where the next worker scan starts.
    next_worker: usize,
    /// Where the next backend scan starts.
    next_backend: usize,
}

/// Scan `items` from `*start` round to just before it, keep the first
/// routable one (`load` is `Some`) that no later one beats (`less(a, b)`:
/// load a is strictly smaller), and move the start one past it.
fn scan_min<T, L>(
    items: &[T],
    start: &mut usize,
    load: impl Fn(&T) -> Option<L>,
    less: impl Fn(&L, &L) -> bool,
) -> Option<usize> {
    let n = items.len();
    let first = if n == 0 { 0 } else { *start % n };
    let mut best: Option<(usize, L)> = None;
    let mut consider = |i: usize, item: &T| {
        // (Not a let chain: the crate supports Rust 1.85.)
        if let Some(l) = load(item) {
            if best.as_ref().is_none_or(|(_, b)| less(&l, b)) {
                best = Some((i, l));
            }
        }
    };
    for (j, item) in items[first..].iter().enumerate() {
        consider(first + j, item);
    }
    for (i, item) in items[..first].iter().enumerate() {
        consider(i, item);
    }
    let (chosen, _) = best?;
    *start = (chosen + 1) % n;
    Some(chosen)
}

impl Policy for LeastConn {
    fn name(&self) -> PolicyName {
        PolicyName::LeastConn
    }

    fn pick_worker(&mut self, _client: IpAddr, workers: &[WorkerView]) -> Option<usize> {
        scan_min(
            workers,
            &mut self.next_worker,
            |w| w.routable.then_some(w.active),
            |a, b| a < b,
        )
    }

    fn pick_backend(&mut self, _client: IpAddr, backends: &[BackendView]) -> Option<usize> {
        let load = |b: &BackendView| {
            let w = u128::from(b.effective_weight());
            b.routable.then_some((u128::from(b.active), w))
        };
        // a/wa < b/wb  <=>  a*wb < b*wa (weights are positive).
        scan_min(
            backends,
            &mut self.next_backend,
            load,
            |(a, wa), (b, wb)| a * wb < b * wa,
        )
    }

    /// The next least loaded (relative to weight), in order; ties in list
    /// order from where the last backend scan started.
    fn fallbacks(
        &mut self,
        _client: IpAddr,
        first: usize,
        backends: &[BackendView],
        out: &mut [usize],
    ) -> usize {
        let n = backends.len();
        if n == 0 || out.is_empty() {
            return 0;
        }
        let start = self.next_backend % n;
        let less = |i: usize, j: usize| {
            let (a, b) = (&backends[i], &backends[j]);
            u128::from(a.active) * u128::from(b.effective_weight())
                < u128::from(b.active) * u128::from(a.effective_weight())
        };
        let mut k = 0;
        for step in 0..n {
            let i = (start + step) % n;
            if i == first || !backends[i].routable {
                continue;
            }
            // Insert `i` into the sorted `out[..k]`, keeping the best.
            let mut at = k;
            while at > 0 && less(i, out[at - 1]) {
                at -= 1;
            }
            if at < out.len() {
                let end = (k + 1).min(out.len());
                out.copy_within(at..end - 1, at + 1);
                out[at] = i;
                k = end;
            }
        }
        k
    }

    fn boxed_clone(&self) -> Box<dyn Policy> {
        Box::new(self.clone())
    }

    fn why(&self, _client: IpAddr, workers: &[WorkerView], backends: &[BackendView]) -> Why {
        Why::LeastConn {
            worker_scan_from: self.next_worker % workers.len().max(1),
            backend_scan_from: self.next_backend % backends.len().max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn workers(active: &[u64]) -> Vec<WorkerView> {
        active
            .iter()
            .map(|&active| WorkerView {
                routable: true,
                active,
            })
            .collect()
    }

    fn backends(spec: &[(u32, u64)]) -> Vec<BackendView> {
        spec.iter()
            .enumerate()
            .map(|(i, &(weight, active))| BackendView {
                key: i as u64,
                weight,
                routable: true,
                active,
                ramp: crate::policy::RAMP_FULL,
            })
            .collect()
    }

    #[test]
    fn picks_the_least_loaded_worker() {
        let mut lc = LeastConn::default();
        let w = workers(&[5, 2, 7, 3]);
        for _ in 0..5 {
            assert_eq!(lc.pick_worker(CLIENT, &w), Some(1));
        }
    }

    #[test]
    fn picks_the_least_loaded_backend() {
        let mut lc = LeastConn::default();
        let b = backends(&[(1, 4), (1, 9), (1, 1), (1, 2)]);
        for _ in 0..5 {
            assert_eq!(lc.pick_backend(CLIENT, &b), Some(2));
        }
    }

    #[test]
    fn idle_ties_rotate() {
        let mut lc = LeastConn::default();
        let w = workers(&[0, 0, 0]);
        let picks: Vec<_> = (0..6)
            .map(|_| lc.pick_worker(CLIENT, &w).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let b = backends(&[(1, 0), (1, 0), (1, 0)]);
        let picks: Vec<_> = (0..6)
            .map(|_| lc.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ties_rotate_among_the_minimums_only() {
        let mut lc = LeastConn::default();
        let w = workers(&[1, 4, 1, 4]);
        let picks: Vec<_> = (0..4)
            .map(|_| lc.pick_worker(CLIENT, &w).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn counting_as_the_front_does_spreads_evenly() {
        let mut lc = LeastConn::default();
        let mut w = workers(&[0, 0, 0]);
        let mut b = backends(&[(1, 0), (3, 0)]);
        for _ in 0..12 {
            let s = lc.pick_worker(CLIENT, &w).unwrap();
            w[s].active += 1;
            let i = lc.pick_backend(CLIENT, &b).unwrap();
            b[i].active += 1;
        }
        assert!(w.iter().all(|w| w.active == 4), "{w:?}");
        assert_eq!((b[0].active, b[1].active), (3, 9));
    }

    #[test]
    fn load_is_relative_to_weight() {
        let mut lc = LeastConn::default();
        // 3 active on weight 3 ties with 1 active on weight 1: both pick.
        let b = backends(&[(3, 3), (1, 1)]);
        let picks: Vec<_> = (0..4)
            .map(|_| lc.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        // 4 on weight 3 (1.33) loses to 1 on weight 1 (1.0)...
        let b = backends(&[(3, 4), (1, 1)]);
        assert_eq!(lc.pick_backend(CLIENT, &b), Some(1));
        // ...and 2 on weight 3 (0.67) beats it.
        let b = backends(&[(3, 2), (1, 1)]);
        assert_eq!(lc.pick_backend(CLIENT, &b), Some(0));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let mut lc = LeastConn::default();
        let b = backends(&[(u32::MAX, u64::MAX), (1, u64::MAX / 2)]);
        assert_eq!(lc.pick_backend(CLIENT, &b), Some(0));
    }

    #[test]
    fn skips_unroutable() {
        let mut lc = LeastConn::default();
        let mut w = workers(&[0, 9, 5]);
        w[0].routable = false;
        assert_eq!(lc.pick_worker(CLIENT, &w), Some(2));
        let mut b = backends(&[(1, 0), (1, 9), (1, 5)]);
        b[0].routable = false;
        b[2].routable = false;
        assert_eq!(lc.pick_backend(CLIENT, &b), Some(1));
    }

    #[test]
    fn none_when_nothing_is_routable() {
        let mut lc = LeastConn::default();
        let mut w = workers(&[0, 0]);
        w.iter_mut().for_each(|w| w.routable = false);
        assert_eq!(lc.pick_worker(CLIENT, &w), None);
        assert_eq!(lc.pick_worker(CLIENT, &[]), None);
        let mut b = backends(&[(1, 0), (2, 0)]);
        b.iter_mut().for_each(|b| b.routable = false);
        assert_eq!(lc.pick_backend(CLIENT, &b), None);
        assert_eq!(lc.pick_backend(CLIENT, &[]), None);
    }

    #[test]
    fn survives_a_shrinking_list() {
        let mut lc = LeastConn::default();
        let w = workers(&[0; 8]);
        for _ in 0..7 {
            lc.pick_worker(CLIENT, &w);
        }
        // The start offset (7) is past the end of a 2-slot list.
        assert!(lc.pick_worker(CLIENT, &w[..2]).is_some());
    }

    #[test]
    fn fallbacks_are_the_next_least_loaded() {
        let mut lc = LeastConn::default();
        // Loads relative to weight: 4, 9, 0.5, 2, 3.
        let mut b = backends(&[(1, 4), (1, 9), (2, 1), (1, 2), (1, 3)]);
        let mut out = [0usize; 3];
        assert_eq!(lc.fallbacks(CLIENT, 2, &b, &mut out), 3);
        assert_eq!(out, [3, 4, 0]);
        b[3].routable = false;
        assert_eq!(lc.fallbacks(CLIENT, 2, &b, &mut out), 3);
        assert_eq!(out, [4, 0, 1]);
        let mut two = [0usize; 2];
        assert_eq!(lc.fallbacks(CLIENT, 4, &b[..2], &mut two), 2);
    }

    #[test]
    fn a_ramping_backend_holds_its_ramped_share_of_connections() {
        let mut lc = LeastConn::default();
        let mut b = backends(&[(1, 0), (1, 0)]);
        b[1].ramp = crate::policy::RAMP_FULL / 10;
        // Connections that stay open: the ramping one ends with a tenth
        // of the other's.
        for _ in 0..110 {
            let i = lc.pick_backend(CLIENT, &b).unwrap();
            b[i].active += 1;
        }
        assert_eq!((b[0].active, b[1].active), (100, 10));
        let mut out = [0usize; 1];
        // Its fallback order sees the same weights: 10/0.1 > 100/1.
        b[1].active = 11;
        assert_eq!(lc.fallbacks(CLIENT, 2, &[b[0], b[1], b[0]], &mut out), 1);
        assert_eq!(out, [0]);
    }
}
