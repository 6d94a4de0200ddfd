//! The front's `Routing` part: the balancing policy in force and what it
//! picks from, one view per worker slot (whether the slot can take a
//! connection now, and how many it holds), with the count of routable
//! slots and the total of connections kept in step with the views, so the
//! hot path reads them without a scan.
//!
//! A slot's view is worked out by the front from its processes and their
//! statistics cells (a few word reads for one slot, done when that slot is
//! picked) and set here with [`Routing::set`]; nothing on the accept path
//! scans every worker.

use std::net::IpAddr;

use crate::channel::{Fallbacks, MAX_FALLBACKS};
use crate::policy::{self, BackendView, Policy, PolicyName, PolicyOptions, WorkerView};

use super::Backends;

pub struct Routing {
    policy: Box<dyn Policy>,
    /// Parallel to the worker slots: what the policy sees.
    views: Vec<WorkerView>,
    /// Slots whose view is routable.
    routable: usize,
    /// Sum of the views' `active`.
    total_active: u64,
}

impl Routing {
    pub fn new(
        name: PolicyName,
        backends: &[BackendView],
        options: &PolicyOptions,
        slots: usize,
    ) -> Routing {
        Routing {
            policy: policy::build(name, backends, options),
            views: vec![WorkerView::default(); slots],
            routable: 0,
            total_active: 0,
        }
    }

    pub fn policy(&self) -> PolicyName {
        self.policy.name()
    }

    /// A fresh policy `name` (a switch, or new options for the same one).
    /// Returns the previous policy's name.
    pub fn switch(
        &mut self,
        name: PolicyName,
        backends: &[BackendView],
        options: &PolicyOptions,
    ) -> PolicyName {
        let old = self.policy.name();
        self.policy = policy::build(name, backends, options);
        old
    }

    /// The backend set or the weights changed.
    pub fn rebuild(&mut self, backends: &[BackendView]) {
        self.policy.rebuild(backends);
    }

    pub fn view(&self, slot: usize) -> WorkerView {
        self.views[slot]
    }

    /// Set what the policy sees of `slot`.
    pub fn set(&mut self, slot: usize, view: WorkerView) {
        let old = std::mem::replace(&mut self.views[slot], view);
        self.total_active = self.total_active - old.active + view.active;
        match (old.routable, view.routable) {
            (false, true) => self.routable += 1,
            (true, false) => self.routable -= 1,
            _ => {}
        }
    }

    pub fn routable_slots(&self) -> usize {
        self.routable
    }

    /// Connections held by the workers, as their views say.
    pub fn total_active(&self) -> u64 {
        self.total_active
    }

    /// The slot for a connection from `ip`, or `None` if none can take it.
    pub fn pick_worker(&mut self, ip: IpAddr) -> Option<usize> {
        self.policy.pick_worker(ip, &self.views)
    }

    /// The backend (index) for a connection from `ip`, and the ones (ids)
    /// to try after it (`retries` of them at most, policy-ordered). When
    /// every backend is down, fails open: tries the enabled ones anyway
    /// (logged) rather than refuse. `None`: every backend is disabled or
    /// draining.
    pub fn pick_backend(
        &mut self,
        ip: IpAddr,
        backends: &Backends,
        retries: usize,
    ) -> Option<(usize, Fallbacks)> {
        let pick = |policy: &mut Box<dyn Policy>, views: &[BackendView]| {
            let first = policy.pick_backend(ip, views)?;
            let mut idx = [0usize; MAX_FALLBACKS];
            let n = policy.fallbacks(ip, first, views, &mut idx[..retries.min(MAX_FALLBACKS)]);
            let mut ids = [0u32; MAX_FALLBACKS];
            for (id, &i) in ids.iter_mut().zip(&idx[..n]) {
                *id = backends.get(i).id();
            }
            Some((first, Fallbacks::new(&ids[..n])))
        };
        if let Some(p) = pick(&mut self.policy, backends.views()) {
            return Some(p);
        }
        let views = backends.fail_open_views();
        if views.iter().any(|v| v.routable) {
            super::log_fail_open();
            return pick(&mut self.policy, &views);
        }
        None
    }
}
