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
//!
//! Connection limits (`maxconn=`): a backend that is full is skipped the
//! way HAProxy skips a server at its `maxconn`: round-robin and
//! least-conn pick among the backends with room; only when every one is
//! full does the connection wait, in the queue of the backend the policy
//! would have picked (least-conn counts waiting connections, so queues
//! stay even). A sticky client waits for its own backend (that is what
//! sticky means), or, if that queue is full too, goes to its next choice
//! with room. Without any limit in force nothing of this runs.

use std::net::IpAddr;

use crate::channel::{Fallbacks, MAX_FALLBACKS};
use crate::policy::{self, BackendView, Policy, PolicyName, PolicyOptions, Why, WorkerView};

use super::Backends;

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// To this backend (index) now, then these if it cannot be reached.
    Go(usize, Fallbacks),
    /// Every backend it may use is at its connection limit: it waits for
    /// this one (`pinned`: for this one alone, a sticky client).
    Wait { backend: usize, pinned: bool },
    /// Nowhere: every backend is disabled or draining.
    Nowhere,
}

pub struct Routing {
    policy: Box<dyn Policy>,
    /// Parallel to the worker slots: what the policy sees.
    views: Vec<WorkerView>,
    /// Slots whose view is routable.
    routable: usize,
    /// Sum of the views' `active`.
    total_active: u64,
    /// Reused for the backend views without the full ones.
    scratch: Vec<BackendView>,
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
            scratch: Vec::new(),
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

    /// Where a connection from `ip` goes: a backend (index) and the ones
    /// (ids) to try after it (`retries` of them at most, policy-ordered,
    /// only backends with room), or the backend to wait for when every one
    /// it may use is full. When every backend is down, fails open: tries
    /// the enabled ones anyway (logged) rather than refuse.
    pub fn pick_backend(&mut self, ip: IpAddr, backends: &Backends, retries: usize) -> Pick {
        self.choose(ip, backends, retries, true)
    }

    /// [`Routing::pick_backend`]; `log`: say so when failing open (a dry
    /// run does not).
    fn choose(&mut self, ip: IpAddr, backends: &Backends, retries: usize, log: bool) -> Pick {
        let fail_open;
        let base: &[BackendView] = if backends.any_routable() {
            backends.views()
        } else {
            fail_open = backends.fail_open_views();
            if !fail_open.iter().any(|v| v.routable) {
                return Pick::Nowhere;
            }
            if log {
                super::log_fail_open();
            }
            &fail_open
        };
        if !backends.any_full() {
            return match pick(&mut self.policy, ip, base, retries, backends) {
                Some((first, fallbacks)) => Pick::Go(first, fallbacks),
                None => Pick::Nowhere,
            };
        }
        let mut open = std::mem::take(&mut self.scratch);
        backends.open_views(base, &mut open);
        let result = if self.policy.name() == PolicyName::Sticky {
            match self.policy.pick_backend(ip, base) {
                None => Pick::Nowhere,
                Some(first) if backends.has_room(first) => Pick::Go(
                    first,
                    fallbacks(&mut self.policy, ip, first, &open, retries, backends),
                ),
                Some(first) if backends.queue_has_room(first) => Pick::Wait {
                    backend: first,
                    pinned: true,
                },
                // Its queue is full too: its next choice with room, else
                // it is refused by its own queue.
                Some(first) => match pick(&mut self.policy, ip, &open, retries, backends) {
                    Some((next, fallbacks)) => Pick::Go(next, fallbacks),
                    None => Pick::Wait {
                        backend: first,
                        pinned: true,
                    },
                },
            }
        } else {
            match pick(&mut self.policy, ip, &open, retries, backends) {
                Some((first, fallbacks)) => Pick::Go(first, fallbacks),
                None => match self.policy.pick_backend(ip, base) {
                    Some(backend) => Pick::Wait {
                        backend,
                        pinned: false,
                    },
                    None => Pick::Nowhere,
                },
            }
        };
        self.scratch = open;
        result
    }

    /// A backend with room for a connection from `ip`, if any (a wait
    /// that timed out), with its fallbacks.
    pub fn pick_with_room(
        &mut self,
        ip: IpAddr,
        backends: &Backends,
        retries: usize,
    ) -> Option<(usize, Fallbacks)> {
        let mut open = std::mem::take(&mut self.scratch);
        backends.open_views(backends.views(), &mut open);
        let found = pick(&mut self.policy, ip, &open, retries, backends);
        self.scratch = open;
        found
    }

    /// What a connection from `ip` would get now, without changing
    /// anything: [`Routing::pick_worker`] and [`Routing::pick_backend`], in
    /// the order dispatch calls them, run on a copy of the policy (the
    /// same code, the same views), and the policy's reasons.
    pub fn dry_run(&self, ip: IpAddr, backends: &Backends, retries: usize) -> DryRun {
        let mut copy = Routing {
            policy: self.policy.boxed_clone(),
            views: self.views.clone(),
            routable: self.routable,
            total_active: self.total_active,
            scratch: Vec::new(),
        };
        let why = self.policy.why(ip, &self.views, backends.views());
        let slot = copy.pick_worker(ip);
        let fail_open = !backends.any_routable();
        // Dispatch asks for a backend only once it has a slot.
        let (backend, queued) = match slot.map(|_| copy.choose(ip, backends, retries, false)) {
            Some(Pick::Go(first, fallbacks)) => (Some((first, fallbacks, fail_open)), false),
            Some(Pick::Wait { backend, .. }) => {
                (Some((backend, Fallbacks::default(), fail_open)), true)
            }
            Some(Pick::Nowhere) | None => (None, false),
        };
        DryRun {
            slot,
            backend,
            queued,
            why,
            workers: self.views.clone(),
        }
    }

    /// The backends (ids) to try after `first` for a connection from `ip`
    /// (one that waited for `first` and now has its slot).
    pub fn fallbacks_for(
        &mut self,
        ip: IpAddr,
        first: usize,
        backends: &Backends,
        retries: usize,
    ) -> Fallbacks {
        let mut open = std::mem::take(&mut self.scratch);
        backends.open_views(backends.views(), &mut open);
        let f = fallbacks(&mut self.policy, ip, first, &open, retries, backends);
        self.scratch = open;
        f
    }
}

/// What [`Routing::dry_run`] found.
pub struct DryRun {
    /// The slot; `None`: no worker can take a connection now (it waits).
    pub slot: Option<usize>,
    /// The backend (index), its fallbacks (ids), and whether every backend
    /// was down (failing open); `None`: none enabled, or no slot.
    pub backend: Option<(usize, Fallbacks, bool)>,
    /// The backend is at its connection limit: the connection would wait
    /// in its queue.
    pub queued: bool,
    pub why: Why,
    /// The views the worker pick read.
    pub workers: Vec<WorkerView>,
}

/// The policy's pick among `views`, and its fallbacks there.
fn pick(
    policy: &mut Box<dyn Policy>,
    ip: IpAddr,
    views: &[BackendView],
    retries: usize,
    backends: &Backends,
) -> Option<(usize, Fallbacks)> {
    let first = policy.pick_backend(ip, views)?;
    Some((
        first,
        fallbacks(policy, ip, first, views, retries, backends),
    ))
}

/// The policy's fallbacks for `first` among `views`, as backend ids.
fn fallbacks(
    policy: &mut Box<dyn Policy>,
    ip: IpAddr,
    first: usize,
    views: &[BackendView],
    retries: usize,
    backends: &Backends,
) -> Fallbacks {
    let mut idx = [0usize; MAX_FALLBACKS];
    let n = policy.fallbacks(ip, first, views, &mut idx[..retries.min(MAX_FALLBACKS)]);
    let mut ids = [0u32; MAX_FALLBACKS];
    for (id, &i) in ids.iter_mut().zip(&idx[..n]) {
        *id = backends.get(i).id();
    }
    Fallbacks::new(&ids[..n])
}
