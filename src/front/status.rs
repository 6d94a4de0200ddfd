//! What the front tells the status page (`/status`, `/status.json`): a
//! [`Report`] gathered from the parts' read-only methods, only when the
//! endpoint's thread asks ([`answer`]); nothing is kept or counted for it
//! in between. Rates, paging and rendering happen on that thread.

use super::{Backends, Counters, Ledger, Lifecycle, Listeners, Routing, Shared};
use crate::config::Config;
use crate::stats::{Col, ColCell, FrontWord, ProcWord, SlotWord};
use crate::status::{
    BackendStatus, Health, Listener, Report, Requests, SCHEMA, Service, StateCounts, Totals,
    WorkerSlot,
};
use crate::supervisor::{Role, Slot, UNREAD_PATIENCE, Workers};

/// The name of the one service there is until services can be
/// configured.
pub const DEFAULT_SERVICE: &str = "default";

/// Answer the status page's requests until the endpoint's thread is gone.
pub async fn answer(front: Shared, mut requests: Requests) {
    while let Some(reply) = requests.recv().await {
        let report = {
            let mut f = front.borrow_mut();
            // What workers counted up to now (as `ctl status` does); not
            // while frozen for a hand-over.
            if !f.frozen() {
                f.refresh_all_views();
            }
            f.status_report()
        };
        let _ = reply.send(report);
    }
}

/// The parts a report is gathered from.
pub struct Parts<'a> {
    pub config: &'a Config,
    pub listeners: &'a Listeners,
    pub workers: &'a Workers,
    pub backends: &'a Backends,
    pub routing: &'a Routing,
    pub ledger: &'a Ledger,
    pub counters: &'a Counters,
    pub life: &'a Lifecycle,
}

/// Gather a report (every backend, no rates: the endpoint adds those).
pub fn gather(p: Parts<'_>) -> Report {
    let cells = p.workers.live_cells();
    let stopping = p.life.phase().stopping();
    let table = p.counters.table();
    let workers: Vec<WorkerSlot> = p
        .workers
        .slots()
        .iter()
        .map(|s| {
            let slot = s.index();
            let mine: Vec<usize> = s.procs().iter().map(|q| q.cell()).collect();
            let (bytes_in, bytes_out) = p.counters.slot_bytes(slot, &mine);
            WorkerSlot {
                slot,
                pid: s.current().map(|q| q.pid()),
                state: slot_state(s, p.counters, stopping),
                active: p.routing.view(slot).active,
                connections_total: p.counters.slot_get(slot, SlotWord::Handed),
                connection_rate: None,
                bytes_in_total: bytes_in,
                bytes_out_total: bytes_out,
                byte_rate: None,
                restarts: p.counters.slot_get(slot, SlotWord::Restarts),
                draining_pids: s
                    .procs()
                    .iter()
                    .filter(|q| q.role() == Role::Retiring)
                    .map(|q| q.pid())
                    .collect(),
            }
        })
        .collect();
    let checked = p.config.health.interval.is_some();
    let mut summary = StateCounts::default();
    let backends: Vec<BackendStatus> = p
        .backends
        .list()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let total = |w| p.backends.total(i, w, table, &cells);
            summary.count(b.state());
            BackendStatus {
                name: b.spec().name.clone(),
                address: b.spec().addr.to_string(),
                state: b.state(),
                weight: b.spec().weight,
                slow_start_percent: p.backends.ramp_percent(i).filter(|_| b.routable()),
                active: p.backends.active(i, table, &cells),
                connections_total: total(Col::Conns),
                connection_rate: None,
                share: 0.0,
                bytes_in_total: total(Col::BytesDown),
                bytes_out_total: total(Col::BytesUp),
                connect_failures_total: total(Col::FailRefused)
                    + total(Col::FailTimeout)
                    + total(Col::FailOther),
                check_failures_total: ColCell::of(table.base(b.column())).get(Col::CheckFailures),
                health: Health {
                    checked,
                    history: p.backends.check_history(i),
                    last: p.backends.last_check(i),
                },
                from: b.spec().group.clone(),
                maxconn: None,
                queued: None,
            }
        })
        .collect();
    let listen: Vec<String> = p.listeners.addrs().iter().map(|a| a.to_string()).collect();
    let mut listeners: Vec<Listener> = listen
        .iter()
        .map(|a| Listener {
            role: "proxy",
            address: a.clone(),
            service: Some(DEFAULT_SERVICE.to_string()),
        })
        .collect();
    let other = [
        ("metrics", p.listeners.metrics_addr().map(|a| a.to_string())),
        ("status", p.listeners.status_addr().map(|a| a.to_string())),
        (
            "control",
            p.listeners.control_path().map(|c| c.display().to_string()),
        ),
    ];
    for (role, address) in other {
        if let Some(address) = address {
            listeners.push(Listener {
                role,
                address,
                service: None,
            });
        }
    }
    let front = |w| p.counters.get(w);
    let over = |w| {
        cells
            .iter()
            .map(|&c| p.counters.cell(c).get(w))
            .sum::<u64>()
    };
    let now_ms = crate::status::unix_ms();
    Report {
        schema: SCHEMA,
        version: crate::version::VERSION.to_string(),
        build: crate::version::build_id().to_string(),
        pid: std::process::id(),
        phase: p.life.phase().name().to_string(),
        now_ms,
        started_ms: p.life.started_ms(),
        front_started_ms: p.life.front_started_ms(),
        uptime_seconds: now_ms.saturating_sub(p.life.started_ms()) / 1000,
        accepting: !p.listeners.paused(),
        totals: Totals {
            active_connections: p.routing.total_active() + p.ledger.pending() as u64,
            pending_connections: p.ledger.pending() as u64,
            accepted_total: front(FrontWord::Accepted),
            accepted_rate: None,
            denied_total: front(FrontWord::Denied),
            refused_per_ip_total: front(FrontWord::RefusedPerIp),
            failed_total: front(FrontWord::FailedFront)
                + front(FrontWord::FailedBase)
                + over(ProcWord::Failed),
            rate_window_seconds: None,
        },
        listeners,
        workers,
        services: vec![Service {
            name: DEFAULT_SERVICE.to_string(),
            policy: p.routing.policy().to_string(),
            listen,
            active_connections: backends.iter().map(|b| b.active).sum(),
            connection_rate: None,
            share_basis: "total",
            summary,
            backends_total: backends.len(),
            backends_matched: backends.len(),
            offset: 0,
            backends,
        }],
        events: p.life.events().events().rev().cloned().collect(),
    }
}

/// A slot's state for the page: `parked`; `ready`, or `hung` when its
/// serving process has left a handoff unread longer than
/// [`UNREAD_PATIENCE`] (policies skip it then); `starting`; with neither,
/// `draining`/`stopped` when the proxy stops, else `respawning`.
fn slot_state(s: &Slot, counters: &Counters, stopping: bool) -> &'static str {
    if s.parked() {
        return "parked";
    }
    if let Some(p) = s.serving() {
        let c = counters.cell(p.cell());
        let (_, unread) = p.load(c.get(ProcWord::Finished), c.get(ProcWord::Received));
        return if p.stuck(unread, UNREAD_PATIENCE) {
            "hung"
        } else {
            "ready"
        };
    }
    if s.procs().iter().any(|p| p.role() == Role::Starting) {
        return "starting";
    }
    match (stopping, s.procs().is_empty()) {
        (true, false) => "draining",
        (true, true) => "stopped",
        (false, _) => "respawning",
    }
}
