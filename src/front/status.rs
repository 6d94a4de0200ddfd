//! What the front tells the status page (`/status`, `/status.json`): a
//! [`Report`] gathered from the parts' read-only methods, only when the
//! endpoint's thread asks ([`answer`]); nothing is kept or counted for it
//! in between. Rates, paging and rendering happen on that thread.

use super::{Counters, Ledger, Lifecycle, Listeners, Services, Shared};
use crate::stats::{Col, ColCell, FrontWord, ProcWord, SlotWord};
use crate::status::{
    BackendStatus, Health, Listener, Report, Requests, SCHEMA, Service, StateCounts, Totals,
    WorkerSlot,
};
use crate::supervisor::{Role, Slot, UNREAD_PATIENCE, Workers};

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
    pub listeners: &'a Listeners,
    pub workers: &'a Workers,
    pub services: &'a Services,
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
                active: p.services.view(slot).active,
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
    let services: Vec<Service> = p
        .services
        .iter()
        .map(|s| service(s, table, &cells))
        .collect();
    let mut listeners: Vec<Listener> = Vec::new();
    for s in &services {
        for a in &s.listen {
            match listeners.iter_mut().find(|l| &l.address == a) {
                // An SNI listener: every service it routes to.
                Some(l) => {
                    let names = l.service.get_or_insert_with(String::new);
                    names.push_str(", ");
                    names.push_str(&s.name);
                }
                None => listeners.push(Listener {
                    role: "proxy",
                    address: a.clone(),
                    service: Some(s.name.clone()),
                }),
            }
        }
    }
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
            active_connections: p.services.total_active() + p.ledger.pending() as u64,
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
        services,
        events: p.life.events().events().rev().cloned().collect(),
    }
}

/// One service, every backend (no rates: the endpoint adds those).
fn service(s: &super::Service, table: &crate::stats::Table, cells: &[usize]) -> Service {
    let checked = s.config().health.interval.is_some();
    let bs = s.backends();
    let mut summary = StateCounts::default();
    let backends: Vec<BackendStatus> = bs
        .list()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let total = |w| bs.total(i, w, table, cells);
            summary.count(bs.state(i));
            BackendStatus {
                name: b.spec().name.clone(),
                address: b.spec().addr.to_string(),
                state: bs.state(i),
                weight: b.spec().weight,
                slow_start_percent: bs.ramp_percent(i).filter(|_| b.routable()),
                active: bs.active(i, table, cells),
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
                    history: bs.check_history(i),
                    last: bs.last_check(i),
                },
                from: b.spec().group.clone(),
                maxconn: bs.maxconn(i).map(u64::from),
                queued: bs.maxconn(i).map(|_| bs.queue_len(i) as u64),
            }
        })
        .collect();
    Service {
        name: s.name().to_string(),
        sni: s.sni().to_vec(),
        leaving: s.leaving(),
        policy: s.routing().policy().to_string(),
        listen: s.config().listen.iter().map(|a| a.to_string()).collect(),
        active_connections: backends.iter().map(|b| b.active).sum(),
        max_connections: s.config().own_limits.max_conns,
        limited_connections: s
            .config()
            .own_limits
            .max_conns
            .map(|_| s.label().open.load(std::sync::atomic::Ordering::Relaxed)),
        connection_rate: None,
        share_basis: "total",
        summary,
        backends_total: backends.len(),
        backends_matched: backends.len(),
        offset: 0,
        backends,
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
