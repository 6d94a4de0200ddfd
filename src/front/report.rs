//! What the front tells `ctl` about itself: `status`, a row per worker
//! slot, a row per backend. Built from the parts' read-only views; the
//! control socket renders them as a table or JSON.

use serde::Serialize;

use super::{Backends, Counters, Routing, Services};
use crate::policy::PolicyName;
use crate::stats::{Col, SlotWord};
use crate::supervisor::{Role, Workers};

/// `status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub build: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    /// Where the front is in its life (see DESIGN.md, "Lifecycle").
    pub phase: &'static str,
    /// The first service's policy (see `services` for each one's).
    pub policy: PolicyName,
    /// Every service's name.
    pub services: Vec<String>,
    pub listen: Vec<String>,
    pub metrics: Option<String>,
    pub workers: usize,
    pub workers_up: usize,
    pub backends: usize,
    pub backends_up: usize,
    pub active_connections: u64,
    pub total_connections: u64,
    pub pending_connections: usize,
    /// Waiting for a slot of a backend at its connection limit.
    pub queued_connections: usize,
    pub accepting: bool,
    pub rolling_restart: bool,
    pub upgrading: bool,
    /// How the last restart of the workers ended.
    pub last_restart: Option<String>,
    /// Worker processes by build id (more than one while an upgrade rolls).
    pub builds: Vec<String>,
    /// `--drain-timeout` (how long a restart of the workers may take
    /// depends on it).
    pub drain_timeout_seconds: f64,
}

/// One row of `workers`.
#[derive(Debug, Serialize)]
pub struct WorkerRow {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: &'static str,
    pub active: u64,
    pub total: u64,
    pub restarts: u64,
    /// The build the serving (or starting) process runs.
    pub build: Option<String>,
    /// Older processes of this slot still finishing their connections.
    pub draining_pids: Vec<u32>,
}

/// One row of `services`.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub name: String,
    pub listen: Vec<String>,
    /// Server names it takes on its listeners (empty: all of them, or
    /// what no other service's names match).
    pub sni: Vec<String>,
    pub policy: PolicyName,
    pub backends: usize,
    pub backends_up: usize,
    /// Connections its backends hold now (in flight included).
    pub active: u64,
    /// Connections routed to it so far.
    pub total: u64,
    /// Removed by a reload, draining.
    pub leaving: bool,
    /// Its own `max-conns`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u64>,
    /// Its own `max-conns-per-ip`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns_per_ip: Option<u32>,
    /// Connections its own limits count now (waiting, queued or
    /// proxied), when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<u64>,
}

/// One row of `backends`.
#[derive(Debug, Serialize)]
pub struct BackendRow {
    /// The service it belongs to.
    pub service: String,
    pub address: String,
    pub resolved: String,
    /// For a backend found by DNS discovery: the `host:port` it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The PROXY protocol version written to it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// `standby`: a backup backend, up, while a primary is up.
    pub state: &'static str,
    /// Takes connections only while no primary backend is up.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
    pub weight: u32,
    /// While slow start ramps it up: how far, in percent of its weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u8>,
    pub active: u64,
    /// Its connection limit (`maxconn=`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<u32>,
    /// Connections waiting for one of its slots now.
    pub queued: usize,
    /// Most that may wait (`maxqueue=`), if bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxqueue: Option<u32>,
    pub total: u64,
    /// Connects to it that failed (refused, timed out, other), in all.
    pub failures: u64,
    /// Active health checks of it that failed, in all.
    pub check_failures: u64,
    /// Of those, how many in a row up to the last check (0 once one
    /// passes).
    pub check_failures_in_a_row: u32,
    /// The last active health check: `ok`, or why it failed; absent
    /// before the first (or with checks off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

pub(super) fn services(
    services: &Services,
    cells: &[usize],
    counters: &Counters,
) -> Vec<ServiceRow> {
    let table = counters.table();
    services
        .iter()
        .map(|s| {
            let b = s.backends();
            ServiceRow {
                name: s.name().to_string(),
                listen: s.config().listen.iter().map(|a| a.to_string()).collect(),
                sni: s.sni().to_vec(),
                policy: s.routing().policy(),
                backends: b.list().len(),
                backends_up: b.views().iter().filter(|v| v.routable).count(),
                active: (0..b.list().len()).map(|i| b.active(i, table, cells)).sum(),
                total: s.connections(),
                leaving: s.leaving(),
                max_conns: s.config().own_limits.max_conns,
                max_conns_per_ip: s.config().own_limits.max_conns_per_ip,
                open: s
                    .config()
                    .own_limits
                    .any()
                    .then(|| s.label().open.load(std::sync::atomic::Ordering::Relaxed)),
            }
        })
        .collect()
}

pub(super) fn short(build: &str) -> String {
    build.chars().take(12).collect()
}

/// The builds the worker processes run, short and sorted.
pub(super) fn builds(workers: &Workers) -> Vec<String> {
    let mut builds: Vec<&str> = workers.procs().filter_map(|p| p.build()).collect();
    builds.sort();
    builds.dedup();
    builds.into_iter().map(short).collect()
}

/// Total connections handed to every slot over its life.
pub(super) fn handed(workers: &Workers, counters: &Counters) -> u64 {
    (0..workers.len())
        .map(|i| counters.slot_get(i, SlotWord::Handed))
        .sum()
}

pub(super) fn workers(workers: &Workers, routing: &Routing, counters: &Counters) -> Vec<WorkerRow> {
    workers
        .slots()
        .iter()
        .map(|s| {
            let current = s.current();
            WorkerRow {
                slot: s.index(),
                pid: current.map(|p| p.pid()),
                state: s.state(),
                active: routing.view(s.index()).active,
                total: counters.slot_get(s.index(), SlotWord::Handed),
                restarts: counters.slot_get(s.index(), SlotWord::Restarts),
                build: current.and_then(|p| p.build().map(short)),
                draining_pids: s
                    .procs()
                    .iter()
                    .filter(|p| p.role() == Role::Retiring)
                    .map(|p| p.pid())
                    .collect(),
            }
        })
        .collect()
}

pub(super) fn backends(
    service: &str,
    backends: &Backends,
    cells: &[usize],
    counters: &Counters,
) -> Vec<BackendRow> {
    let table = counters.table();
    backends
        .list()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let total = |w| backends.total(i, w, table, cells);
            let (check_failures, check_failures_in_a_row) = backends.check_failures(i, table);
            BackendRow {
                service: service.to_string(),
                address: b.spec().name.clone(),
                resolved: b.spec().addr.to_string(),
                from: b.spec().group.clone(),
                send_proxy: b.spec().send_proxy,
                state: backends.state(i),
                backup: b.spec().backup,
                weight: b.spec().weight,
                slow_start_percent: backends.ramp_percent(i).filter(|_| b.routable()),
                active: backends.active(i, table, cells),
                maxconn: b.spec().maxconn,
                queued: backends.queue_len(i),
                maxqueue: b.spec().maxqueue,
                total: total(Col::Conns),
                failures: total(Col::FailRefused) + total(Col::FailTimeout) + total(Col::FailOther),
                check_failures,
                check_failures_in_a_row,
                check: backends.last_check(i),
            }
        })
        .collect()
}
