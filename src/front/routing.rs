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
use crate::policy::{self, BackendView, Policy, PolicyName, PolicyOptions, Why, WorkerView};

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
        let (first, fallbacks, fail_open) = pick(&mut *self.policy, ip, backends, retries)?;
        if fail_open {
            super::log_fail_open();
        }
        Some((first, fallbacks))
    }

    /// What a connection from `ip` would get now, without changing
    /// anything: [`Routing::pick_worker`] and [`Routing::pick_backend`], in
    /// the order dispatch calls them, run on a copy of the policy (the
    /// same code, the same views), and the policy's reasons.
    pub fn dry_run(&self, ip: IpAddr, backends: &Backends, retries: usize) -> DryRun {
        let mut copy = self.policy.boxed_clone();
        let why = self.policy.why(ip, &self.views, backends.views());
        let slot = copy.pick_worker(ip, &self.views);
        // Dispatch asks for a backend only once it has a slot.
        let backend = slot.and(pick(&mut *copy, ip, backends, retries));
        DryRun {
            slot,
            backend,
            why,
            workers: self.views.clone(),
        }
    }
}

/// What [`Routing::dry_run`] found.
pub struct DryRun {
    /// The slot; `None`: no worker can take a connection now (it waits).
    pub slot: Option<usize>,
    /// The backend (index), its fallbacks (ids), and whether every backend
    /// was down (failing open); `None`: none enabled, or no slot.
    pub backend: Option<(usize, Fallbacks, bool)>,
    pub why: Why,
    /// The views the worker pick read.
    pub workers: Vec<WorkerView>,
}

/// The pick of [`Routing::pick_backend`] on `policy`: the backend, its
/// fallbacks, and whether it failed open.
fn pick(
    policy: &mut dyn Policy,
    ip: IpAddr,
    backends: &Backends,
    retries: usize,
) -> Option<(usize, Fallbacks, bool)> {
    let pick = |policy: &mut dyn Policy, views: &[BackendView]| {
        let first = policy.pick_backend(ip, views)?;
        let mut idx = [0usize; MAX_FALLBACKS];
        let n = policy.fallbacks(ip, first, views, &mut idx[..retries.min(MAX_FALLBACKS)]);
        let mut ids = [0u32; MAX_FALLBACKS];
        for (id, &i) in ids.iter_mut().zip(&idx[..n]) {
            *id = backends.get(i).id();
        }
        Some((first, Fallbacks::new(&ids[..n])))
    };
    if let Some((first, fallbacks)) = pick(policy, backends.views()) {
        return Some((first, fallbacks, false));
    }
    let views = backends.fail_open_views();
    if views.iter().any(|v| v.routable) {
        return pick(policy, &views).map(|(first, fallbacks)| (first, fallbacks, true));
    }
    None
}
