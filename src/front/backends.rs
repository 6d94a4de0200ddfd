//! The front's backend table: configured backends with stable ids, their
//! admin and health state, live counts, and metric handles.
//!
//! The counts policies read live in [`BackendView`]s kept beside the list,
//! in the same order, so a pick reads a flat slice.

use std::net::SocketAddr;

use hashbrown::HashMap;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use serde::Serialize;

use crate::channel::{BackendEntry, FailReason};
use crate::config::BackendSpec;
use crate::metrics as m;
use crate::policy::{BackendView, backend_key};

/// What an operator asked of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Enabled,
    /// `backend disable`: no new connections; back with `backend enable`.
    Disabled,
    /// `backend remove`: no new connections; dropped once the last one ends.
    Draining,
}

pub struct Backend {
    pub id: u32,
    pub spec: BackendSpec,
    pub admin: Admin,
    /// Result of health checking (always true when checks are off).
    pub healthy: bool,
    pub total: u64,
    pub failures: u64,
    pub check: super::health::CheckState,
    pub metrics: BackendMetrics,
}

pub struct BackendMetrics {
    pub connections: Counter,
    pub active: Gauge,
    pub up: Gauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub fail_refused: Counter,
    pub fail_timeout: Counter,
    pub fail_other: Counter,
    pub connect_time: Histogram,
    pub check_failures: Counter,
    pub redispatches: Counter,
}

impl BackendMetrics {
    fn new(spec: &BackendSpec) -> BackendMetrics {
        let label = spec.name.clone();
        let fail = |reason: &'static str| {
            let c = counter!(m::BACKEND_CONNECT_FAILURES, "backend" => label.clone(), "reason" => reason);
            c.absolute(0);
            c
        };
        let zero = |c: Counter| {
            c.absolute(0);
            c
        };
        let bm = BackendMetrics {
            connections: zero(counter!(m::BACKEND_CONNECTIONS, "backend" => label.clone())),
            active: gauge!(m::BACKEND_ACTIVE, "backend" => label.clone()),
            up: gauge!(m::BACKEND_UP, "backend" => label.clone()),
            bytes_in: zero(counter!(m::BACKEND_BYTES_IN, "backend" => label.clone())),
            bytes_out: zero(counter!(m::BACKEND_BYTES_OUT, "backend" => label.clone())),
            fail_refused: fail("refused"),
            fail_timeout: fail("timeout"),
            fail_other: fail("other"),
            connect_time: histogram!(m::BACKEND_CONNECT_SECONDS, "backend" => label.clone()),
            check_failures: zero(counter!(m::BACKEND_CHECK_FAILURES, "backend" => label.clone())),
            redispatches: zero(counter!(m::BACKEND_REDISPATCHES, "backend" => label.clone())),
        };
        bm.active.set(0.0);
        bm.up.set(1.0);
        gauge!(m::BACKEND_WEIGHT, "backend" => label).set(f64::from(spec.weight));
        bm
    }
}

impl Backend {
    pub fn routable(&self) -> bool {
        self.admin == Admin::Enabled && self.healthy
    }

    /// Admin state allows traffic (health aside): the fail-open set.
    pub fn enabled(&self) -> bool {
        self.admin == Admin::Enabled
    }

    pub fn record_failure(&mut self, reason: FailReason) {
        self.failures += 1;
        match reason {
            FailReason::Refused => self.metrics.fail_refused.increment(1),
            FailReason::Timeout => self.metrics.fail_timeout.increment(1),
            FailReason::Other => self.metrics.fail_other.increment(1),
        }
    }
}

#[derive(Default)]
pub struct Backends {
    pub list: Vec<Backend>,
    /// Parallel to `list`: what policies see.
    pub views: Vec<BackendView>,
    by_id: HashMap<u32, usize>,
    next_id: u32,
}

impl Backends {
    pub fn new(specs: &[BackendSpec]) -> Backends {
        let mut b = Backends::default();
        for spec in specs {
            b.add(spec.clone());
        }
        b
    }

    /// Add a backend (enabled, healthy until checked). Returns its id.
    pub fn add(&mut self, spec: BackendSpec) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let metrics = BackendMetrics::new(&spec);
        self.views.push(BackendView {
            key: backend_key(&spec.name),
            weight: spec.weight,
            routable: true,
            active: 0,
        });
        self.list.push(Backend {
            id,
            spec,
            admin: Admin::Enabled,
            healthy: true,
            total: 0,
            failures: 0,
            check: Default::default(),
            metrics,
        });
        self.reindex();
        id
    }

    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn find(&self, name_or_addr: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|b| b.spec.name == name_or_addr || b.spec.addr.to_string() == name_or_addr)
    }

    /// Drop backends that are draining and have nothing left in flight.
    /// Returns true if the list changed.
    pub fn reap_drained(&mut self) -> bool {
        let before = self.list.len();
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].admin == Admin::Draining && self.views[i].active == 0 {
                let gone = self.list.remove(i);
                self.views.remove(i);
                gone.metrics.up.set(0.0);
                gone.metrics.active.set(0.0);
            } else {
                i += 1;
            }
        }
        if self.list.len() != before {
            self.reindex();
            true
        } else {
            false
        }
    }

    fn reindex(&mut self) {
        self.by_id = self
            .list
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
    }

    /// Recompute the routable flags from admin and health state.
    pub fn refresh_routable(&mut self) {
        for (b, v) in self.list.iter().zip(self.views.iter_mut()) {
            v.routable = b.routable();
        }
    }

    /// Views for a fail-open pick: every enabled backend counts as routable.
    pub fn fail_open_views(&self) -> Vec<BackendView> {
        self.list
            .iter()
            .zip(&self.views)
            .map(|(b, v)| BackendView {
                routable: b.enabled(),
                ..*v
            })
            .collect()
    }

    /// Backends not being removed.
    pub fn serving(&self) -> usize {
        self.list
            .iter()
            .filter(|b| b.admin != Admin::Draining)
            .count()
    }

    pub fn any_routable(&self) -> bool {
        self.views.iter().any(|v| v.routable)
    }

    /// Count a connection on backend `idx` (assigned or moved to it).
    pub fn add_active(&mut self, idx: usize) {
        let v = &mut self.views[idx];
        v.active += 1;
        self.list[idx].metrics.active.set(v.active as f64);
    }

    /// Uncount a connection from backend `id`, if it is still listed.
    pub fn sub_active_id(&mut self, id: u32, n: u64) {
        if let Some(idx) = self.index_of(id) {
            let v = &mut self.views[idx];
            v.active = v.active.saturating_sub(n);
            self.list[idx].metrics.active.set(v.active as f64);
        }
    }

    /// The table a worker needs: every listed backend, routable or not
    /// (so it can account for connections still on a drained one).
    pub fn worker_table(&self) -> Vec<BackendEntry> {
        self.list
            .iter()
            .map(|b| BackendEntry {
                id: b.id,
                addr: b.spec.addr,
                routable: b.routable(),
            })
            .collect()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(|b| b.spec.addr).collect()
    }
}
