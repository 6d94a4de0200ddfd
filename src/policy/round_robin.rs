//! Round-robin: strict rotation over the routable workers, and smooth
//! weighted rotation (as in nginx) over the routable backends, so weights
//! 1:3 interleave as a b b b rather than a b b b in bursts. Backends are
//! weighted by their effective weight (a slow-starting one's ramps up).

use std::net::IpAddr;

use super::{BackendView, Policy, PolicyName, RAMP_FULL, Why, WorkerView};

#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    /// Next worker slot to try.
    next_worker: usize,
    /// Smooth weighted round-robin state, one entry per backend.
    current: Vec<i64>,
    /// Where the next fallback rotation starts (so a failing backend's
    /// share spreads over all the others, not onto its list neighbour).
    next_fallback: usize,
}

impl Policy for RoundRobin {
    fn name(&self) -> PolicyName {
        PolicyName::RoundRobin
    }

    fn pick_worker(&mut self, _client: IpAddr, workers: &[WorkerView]) -> Option<usize> {
        let n = workers.len();
        for step in 0..n {
            let slot = (self.next_worker + step) % n;
            if workers[slot].routable {
                self.next_worker = (slot + 1) % n;
                return Some(slot);
            }
        }
        None
    }

    fn pick_backend(&mut self, _client: IpAddr, backends: &[BackendView]) -> Option<usize> {
        if self.current.len() != backends.len() {
            self.current = vec![0; backends.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in backends.iter().enumerate() {
            if !b.routable {
                continue;
            }
            // (At most 1000 * 2^16 each: the sums fit easily.)
            let w = b.effective_weight() as i64;
            self.current[i] += w;
            total += w;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }

    fn fallbacks(
        &mut self,
        _client: IpAddr,
        first: usize,
        backends: &[BackendView],
        out: &mut [usize],
    ) -> usize {
        if backends.is_empty() {
            return 0;
        }
        let start = self.next_fallback % backends.len();
        self.next_fallback = start + 1;
        super::rotation_fallbacks(first, start, backends, out)
    }

    fn rebuild(&mut self, backends: &[BackendView]) {
        self.current = vec![0; backends.len()];
    }

    fn boxed_clone(&self) -> Box<dyn Policy> {
        Box::new(self.clone())
    }

    fn why(&self, _client: IpAddr, workers: &[WorkerView], backends: &[BackendView]) -> Why {
        // A pick on a list of another length starts every credit at 0.
        let fresh = self.current.len() != backends.len();
        Why::RoundRobin {
            next_slot: self.next_worker % workers.len().max(1),
            credit: (0..backends.len())
                .map(|i| match fresh {
                    true => 0.0,
                    false => self.current[i] as f64 / f64::from(RAMP_FULL),
                })
                .collect(),
            next_fallback: self.next_fallback % backends.len().max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<BackendView> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendView {
                key: i as u64,
                weight,
                routable: true,
                active: 0,
                ramp: crate::policy::RAMP_FULL,
            })
            .collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn rotates_workers_skipping_unroutable() {
        let mut rr = RoundRobin::default();
        let mut w = vec![
            WorkerView {
                routable: true,
                active: 0
            };
            3
        ];
        w[1].routable = false;
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick_worker(CLIENT, &w).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        w[0].routable = false;
        w[2].routable = false;
        assert_eq!(rr.pick_worker(CLIENT, &w), None);
    }

    #[test]
    fn weights_interleave_smoothly() {
        let mut rr = RoundRobin::default();
        let b = backends(&[1, 3]);
        let picks: Vec<_> = (0..8)
            .map(|_| rr.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
        // Never more than three in a row on the heavy backend.
        assert!(!picks.windows(4).any(|w| w.iter().all(|&i| i == 1)));
    }

    #[test]
    fn equal_weights_are_exact_rotation() {
        let mut rr = RoundRobin::default();
        let b = backends(&[1, 1, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_unroutable_backends() {
        let mut rr = RoundRobin::default();
        let mut b = backends(&[1, 1, 1]);
        b[1].routable = false;
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn fallbacks_rotate_over_the_others() {
        let mut rr = RoundRobin::default();
        let mut b = backends(&[1, 1, 1, 1, 1]);
        b[3].routable = false;
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..10 {
            let mut out = [0usize; 2];
            let n = rr.fallbacks(CLIENT, 0, &b, &mut out);
            assert_eq!(n, 2);
            assert!(!out.contains(&0) && !out.contains(&3), "{out:?}");
            assert_ne!(out[0], out[1]);
            firsts.insert(out[0]);
        }
        // A failing backend's share spreads over every other routable one.
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        let mut none = [0usize; 2];
        assert_eq!(rr.fallbacks(CLIENT, 0, &backends(&[1]), &mut none), 0);
    }

    #[test]
    fn a_ramping_backend_gets_its_ramped_share() {
        let mut rr = RoundRobin::default();
        let mut b = backends(&[1, 1, 2]);
        // A quarter of the way: weight 0.5 of 2.5.
        b[2].ramp = crate::policy::RAMP_FULL / 4;
        let picks: Vec<_> = (0..500)
            .map(|_| rr.pick_backend(CLIENT, &b).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 100);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 200);
        // At full ramp it is as if there were none.
        b[2].ramp = crate::policy::RAMP_FULL;
        let mut plain = RoundRobin::default();
        let mut ramped = RoundRobin::default();
        let unramped = backends(&[1, 1, 2]);
        for _ in 0..40 {
            assert_eq!(
                plain.pick_backend(CLIENT, &unramped),
                ramped.pick_backend(CLIENT, &b)
            );
        }
    }
}
