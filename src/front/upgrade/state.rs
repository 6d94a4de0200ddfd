//! The handover value: everything the front owns, assembled from its parts
//! (and nothing else), and the front rebuilt from it on the other side.
//! Whatever is not here is lost in an upgrade, so this is also the honest
//! list of what the front owns.
//!
//! Descriptors travel beside the value, in this order: the listening
//! sockets, the metrics socket (if any), the control socket (if any), the
//! statistics table, then for each process (slot by slot) its channel end,
//! the worker's channel end and its pidfd, then each pending connection,
//! then each connection whose PROXY header is still to be read.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::acl::{Action, Cidr};
use crate::channel::fdpass::Channel;
use crate::config::{BackendSpec, Config};
use crate::front::admin::Overrides;
use crate::front::health::CheckState;
use crate::front::{
    Admin, Backend, Backends, Conn, Counters, Front, Ledger, Listeners, Shared, State,
};
use crate::policy::PolicyName;
use crate::stats::Table;
use crate::supervisor::{Role, Slot, SpawnPlan, WorkerProc, Workers};

#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    /// The configuration in force, run-time changes included.
    pub config: Config,
    pub listen: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub control: Option<PathBuf>,
    pub slots: Vec<SlotState>,
    pub next_proc: u64,
    pub cpus: Option<Vec<usize>>,
    pub backends: BackendsState,
    pub policy: PolicyName,
    pub pending: Vec<SocketAddr>,
    /// Parallel to `pending`: a PROXY header's destination, if any.
    #[serde(default)]
    pub pending_destinations: Vec<Option<SocketAddr>>,
    /// Connections from `--accept-proxy` sources whose header is still to
    /// be read (by their source address).
    #[serde(default)]
    pub header_waits: Vec<SocketAddr>,
    pub per_ip: Vec<(IpAddr, u32)>,
    pub next_conn: u64,
    pub overrides_policy: Option<PolicyName>,
    pub overrides_added: Vec<String>,
    pub overrides_removed: Vec<String>,
    #[serde(default)]
    pub overrides_acl: Vec<(Cidr, Option<Action>)>,
    pub resolve_failures: Vec<(String, u64)>,
    pub last_roll: Option<Result<String, String>>,
    /// When the old front stopped accepting (µs since the Unix epoch), so
    /// the new one can say how long clients waited in the backlog.
    #[serde(default)]
    pub frozen_at_us: u64,
    /// The old front's own dropped log lines (workers count theirs in the
    /// statistics table, which passes over whole).
    #[serde(default)]
    pub log_lines_dropped: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SlotState {
    pub parked: bool,
    pub procs: Vec<ProcState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProcState {
    pub id: u64,
    pub pid: u32,
    pub role: Role,
    pub cell: usize,
    pub build: Option<String>,
    pub handed: u64,
    pub inflight: Vec<u32>,
    pub received_seen: u64,
    pub ips: Vec<(IpAddr, u32)>,
    pub outbox: Vec<Vec<u8>>,
    pub full: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendsState {
    pub list: Vec<BackendState>,
    pub next_id: u32,
    pub free_columns: Vec<(usize, u64)>,
    pub next_column: usize,
    pub table_seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendState {
    pub id: u32,
    pub spec: BackendSpec,
    pub admin: Admin,
    pub healthy: bool,
    pub column: usize,
    pub column_seq: u64,
    pub inflight: u64,
}

/// Assemble the handover from the front's parts. The front must be frozen
/// (nothing may change between this and the new front's start).
pub fn capture(f: &Front) -> (Handover, Vec<BorrowedFd<'_>>) {
    let mut fds: Vec<BorrowedFd<'_>> = f.listeners.fds();
    if let Some((_, fd)) = &f.listeners.metrics {
        fds.push(fd.as_fd());
    }
    if let Some((_, fd)) = &f.listeners.control {
        fds.push(fd.as_fd());
    }
    fds.push(f.counters.table.fd());
    let slots = f
        .workers
        .slots
        .iter()
        .map(|s| SlotState {
            parked: s.parked,
            procs: s
                .procs
                .iter()
                .map(|p| {
                    fds.push(p.channel.as_fd());
                    fds.push(p.worker_end.as_fd());
                    fds.push(p.pidfd.as_fd());
                    ProcState {
                        id: p.id,
                        pid: p.pid,
                        role: p.role,
                        cell: p.cell,
                        build: p.build.clone(),
                        handed: p.handed,
                        inflight: p.inflight.iter().copied().collect(),
                        received_seen: p.received_seen,
                        ips: p.ips.iter().map(|(&ip, &n)| (ip, n)).collect(),
                        outbox: p.outbox.iter().cloned().collect(),
                        full: p.full,
                    }
                })
                .collect(),
        })
        .collect();
    for c in &f.ledger.pending {
        fds.push(c.stream.as_fd());
    }
    let header_waits = f.header_waits();
    for (_, fd) in &header_waits {
        fds.push(*fd);
    }
    let b = &f.backends;
    let backends = BackendsState {
        list: b
            .list
            .iter()
            .map(|b| BackendState {
                id: b.id,
                spec: b.spec.clone(),
                admin: b.admin,
                healthy: b.healthy,
                column: b.column,
                column_seq: b.column_seq,
                inflight: b.inflight,
            })
            .collect(),
        next_id: b.next_id,
        free_columns: b.free_columns.clone(),
        next_column: b.next_column,
        table_seq: b.table_seq,
    };
    let snap = f.counters.lock();
    let h = Handover {
        config: Config::clone(&f.config.load()),
        listen: f.listeners.addrs.clone(),
        metrics: f.listeners.metrics.as_ref().map(|(a, _)| *a),
        control: f.listeners.control.as_ref().map(|(p, _)| p.clone()),
        slots,
        next_proc: f.workers.next_proc,
        cpus: f.workers.plan.cpus.clone(),
        backends,
        policy: f.policy.name(),
        pending: f.ledger.pending.iter().map(|c| c.peer).collect(),
        pending_destinations: f.ledger.pending.iter().map(|c| c.destination).collect(),
        header_waits: header_waits.iter().map(|(peer, _)| *peer).collect(),
        per_ip: f.ledger.per_ip.iter().map(|(&ip, &n)| (ip, n)).collect(),
        next_conn: f.ledger.next_conn,
        overrides_policy: f.state.overrides.policy,
        overrides_added: f.state.overrides.added.iter().cloned().collect(),
        overrides_removed: f.state.overrides.removed.iter().cloned().collect(),
        overrides_acl: f
            .state
            .overrides
            .acl
            .iter()
            .map(|(&c, &a)| (c, a))
            .collect(),
        resolve_failures: snap.resolve_failures.clone(),
        last_roll: f.state.last_roll.clone(),
        frozen_at_us: unix_micros(),
        log_lines_dropped: crate::logging::dropped_lines(),
    };
    (h, fds)
}

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the new front gets besides the front itself.
pub struct Rebuilt {
    pub front: Shared,
    /// The control socket, to serve.
    pub control: Option<(PathBuf, std::os::unix::net::UnixListener)>,
    /// The metrics socket, to serve.
    pub metrics: Option<std::net::TcpListener>,
}

/// Rebuild the front from a handover (the new front). Nothing runs yet:
/// the front is frozen until the old one commits.
pub fn rebuild(
    h: Handover,
    fds: Vec<OwnedFd>,
    plan: SpawnPlan,
    nofile: u64,
    mut state: State,
) -> Result<Rebuilt, String> {
    let mut fds = fds.into_iter();
    let mut next = |what: &str| {
        fds.next()
            .ok_or_else(|| format!("handover is missing the descriptor of {what}"))
    };
    let mut sockets = Vec::new();
    for a in &h.listen {
        let fd = next(&format!("listener {a}"))?;
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        sockets.push(l);
    }
    let metrics = match h.metrics {
        Some(_) => Some(std::net::TcpListener::from(next("the metrics socket")?)),
        None => None,
    };
    let control = match &h.control {
        Some(p) => Some((
            p.clone(),
            std::os::unix::net::UnixListener::from(next("the control socket")?),
        )),
        None => None,
    };
    let table = Table::open(next("the statistics table")?).map_err(|e| e.to_string())?;
    let table = Arc::new(table);
    let counters = Counters::new(table.clone());
    let mut listeners = Listeners::new(sockets).map_err(|e| e.to_string())?;
    if let (Some(addr), Some(l)) = (h.metrics, &metrics) {
        let dup = l.try_clone().map_err(|e| e.to_string())?;
        listeners.metrics = Some((addr, OwnedFd::from(dup)));
    }
    if let Some((p, l)) = &control {
        let dup = l.try_clone().map_err(|e| e.to_string())?;
        listeners.control = Some((p.clone(), OwnedFd::from(dup)));
    }
    let cap = crate::front::proc_cap(&h.config, nofile);
    let mut workers = Workers::new(0, table.procs(), plan, cap, nofile);
    workers.plan.cpus = h.cpus.clone();
    workers.next_proc = h.next_proc;
    let mut adopted = Vec::new();
    for (i, s) in h.slots.into_iter().enumerate() {
        let mut slot = Slot::new(i);
        slot.parked = s.parked;
        for p in s.procs {
            let front_end = next(&format!("worker {}'s channel", p.pid))?;
            let worker_end = next(&format!("worker {}'s channel", p.pid))?;
            let pidfd = next(&format!("worker {}'s pidfd", p.pid))?;
            let channel = Channel::new(front_end).map_err(|e| e.to_string())?;
            workers.claim_cell(p.cell);
            slot.procs.push(WorkerProc {
                id: p.id,
                pid: p.pid,
                role: p.role,
                cell: p.cell,
                build: p.build,
                adopted: true,
                channel: Rc::new(channel),
                worker_end,
                pidfd: Rc::new(pidfd),
                full: p.full,
                watched: false,
                outbox: p.outbox.into_iter().collect(),
                batch: Vec::new(),
                batch_fds: Vec::new(),
                handed: p.handed,
                inflight: p.inflight.into_iter().collect(),
                received_seen: p.received_seen,
                ips: p.ips.into_iter().collect(),
                spawned: Instant::now(),
                stalled_since: None,
                unread_since: None,
            });
            adopted.push((i, p.id));
        }
        workers.slots.push(slot);
    }
    let mut pending = VecDeque::new();
    for (i, peer) in h.pending.iter().enumerate() {
        let fd = next(&format!("pending connection from {peer}"))?;
        pending.push_back(Conn {
            stream: std::net::TcpStream::from(fd),
            peer: *peer,
            destination: h.pending_destinations.get(i).copied().flatten(),
        });
    }
    let mut header_waits = Vec::new();
    for peer in &h.header_waits {
        let fd = next(&format!(
            "connection from {peer} waiting for its PROXY header"
        ))?;
        header_waits.push((*peer, fd));
    }
    let mut backends = Backends::new(table.columns());
    for b in h.backends.list {
        backends.restore(Backend {
            id: b.id,
            spec: b.spec,
            admin: b.admin,
            healthy: b.healthy,
            check: CheckState::default(),
            column: b.column,
            column_seq: b.column_seq,
            inflight: b.inflight,
        });
    }
    backends.next_id = h.backends.next_id;
    backends.free_columns = h.backends.free_columns;
    backends.next_column = h.backends.next_column;
    backends.table_seq = h.backends.table_seq;
    let ledger = Ledger {
        pending,
        per_ip: h.per_ip.into_iter().collect(),
        next_conn: h.next_conn,
    };
    {
        let mut snap = counters.lock();
        snap.resolve_failures = h.resolve_failures;
    }
    state.frozen = true;
    state.upgrading = true;
    state.last_roll = h.last_roll;
    state.frozen_at_us = h.frozen_at_us;
    crate::logging::inherit_dropped(h.log_lines_dropped);
    state.overrides = Overrides {
        policy: h.overrides_policy,
        added: h.overrides_added.into_iter().collect(),
        removed: h.overrides_removed.into_iter().collect(),
        acl: h.overrides_acl.into_iter().collect(),
    };
    let mut config = h.config;
    config.policy = h.policy;
    let front = Front::assemble(
        Arc::new(ArcSwap::from_pointee(config)),
        listeners,
        workers,
        backends,
        ledger,
        counters,
        state,
    );
    {
        let mut guard = front.borrow_mut();
        let f = &mut *guard;
        f.backends.refresh_routable();
        f.policy.rebuild(&f.backends.views);
        for (slot, id) in adopted {
            if let Some(p) = f.workers.slots[slot].proc(id) {
                f.watch_proc(slot, p);
            }
        }
        f.counters
            .set(crate::stats::FrontWord::WorkerLimit, f.workers.per_proc_cap);
        f.counters.set(crate::stats::FrontWord::MaxFds, nofile);
        // Read when the front thaws.
        f.adopt_header_waits(header_waits);
        f.publish();
    }
    Ok(Rebuilt {
        front,
        control,
        metrics,
    })
}
