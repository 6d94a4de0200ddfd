//! The handover value: everything the front owns, as each of its parts
//! says it (`handover` / `from_handover` on the part), and nothing else.
//! Whatever is not here is lost in an upgrade, so this is also the honest
//! list of what the front owns.
//!
//! Descriptors travel beside the value, in the order the parts push them
//! (see `Front::handover`): the listeners (listening sockets, then the
//! metrics, control and status sockets), the statistics table, each worker
//! process's channel ends and pidfd (slot by slot), the connections
//! waiting for a worker, those whose PROXY header is still to be read,
//! those whose ClientHello is still to be read, then those waiting for a
//! backend slot (of every service); the new front takes them in the same
//! order ([`rebuild`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::front::access::AccessState;
use crate::front::backends::{Queues, WaitingState};
use crate::front::counters::CountersState;
use crate::front::ledger::LedgerState;
use crate::front::listener::ListenersState;
use crate::front::services::{Services, ServicesOut, ServicesState, SniWaits};
use crate::front::settings::SettingsState;
use crate::front::{
    Access, Counters, Front, Ledger, Lifecycle, Listeners, Parts, Phase, Settings, Shared,
};
use crate::handover::FdSource;
use crate::supervisor::{SpawnPlan, Workers, WorkersState};

/// The handover as the old front writes it (the backend table by
/// reference).
#[derive(Serialize)]
pub struct HandoverOut<'a> {
    pub settings: SettingsState,
    pub listeners: ListenersState,
    pub counters: CountersState,
    pub workers: WorkersState,
    pub ledger: LedgerState,
    pub access: AccessState,
    pub services: ServicesOut<'a>,
    /// The connections waiting for a backend slot, of every service.
    pub queue: Vec<WaitingState>,
    pub life: LifeState,
}

/// The handover as the new front reads it.
#[derive(Deserialize)]
pub struct Handover {
    settings: SettingsState,
    listeners: ListenersState,
    counters: CountersState,
    workers: WorkersState,
    ledger: LedgerState,
    access: AccessState,
    services: ServicesState,
    /// (Absent from the handover of a build before queues: none.)
    #[serde(default)]
    queue: Vec<WaitingState>,
    life: LifeState,
}

/// What of the lifecycle passes over.
#[derive(Debug, Serialize, Deserialize)]
pub struct LifeState {
    /// How the last restart of the workers ended.
    pub last_roll: Option<Result<String, String>>,
    /// When the old front stopped accepting (µs since the Unix epoch), so
    /// the new one can say how long clients waited in the backlog.
    pub frozen_at_us: u64,
    /// When the proxy started (ms since the Unix epoch; 0 from a front
    /// that did not say).
    #[serde(default)]
    pub started_ms: u64,
    /// The status page's last events.
    #[serde(default)]
    pub events: Vec<crate::status::Event>,
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
    /// The `--status` socket, to serve.
    pub status: Option<std::net::TcpListener>,
}

/// Rebuild the front from a handover (the new front), each part from what
/// it said of itself. Nothing runs yet: the front is taking over (frozen)
/// until the old one commits. `flags`: this front's own, to re-read the
/// configuration with later.
pub fn rebuild(
    h: Handover,
    fds: Vec<OwnedFd>,
    plan: SpawnPlan,
    nofile: u64,
    flags: crate::config::Flags,
) -> Result<Rebuilt, String> {
    let mut fds = FdSource::new(fds);
    let settings = Settings::from_handover(h.settings, Some(flags));
    let config = settings.get();
    let (listeners, served) = Listeners::from_handover(h.listeners, &mut fds)?;
    let counters = Counters::from_handover(h.counters, &mut fds)?;
    let table = counters.table().clone();
    let cap = crate::front::proc_cap(&config, nofile);
    let (workers, adopted) =
        Workers::from_handover(h.workers, &mut fds, plan, table.procs(), cap, nofile)?;
    let ledger = Ledger::from_handover(h.ledger, &mut fds)?;
    let access = Access::from_handover(&config, h.access, &mut fds, &counters)?;
    let mut services_state = h.services;
    let sni_waits =
        SniWaits::from_handover(std::mem::take(&mut services_state.sni_waits), &mut fds)?;
    let queues = Queues::from_handover(h.queue, &mut fds)?;
    let mut services = Services::from_handover(services_state, &table, workers.len());
    services.set_queues(queues, &table);
    let mut life = Lifecycle::new(Phase::TakingOver { stop: false });
    if let Some(outcome) = h.life.last_roll {
        life.set_last_roll(outcome);
    }
    life.set_frozen_at_us(h.life.frozen_at_us);
    life.take_over_history(h.life.started_ms, h.life.events);
    let front = Front::assemble(Parts {
        settings,
        listeners,
        workers,
        services,
        sni_waits,
        access,
        ledger,
        counters,
        life,
    });
    front.borrow_mut().adopted(adopted, nofile);
    Ok(Rebuilt {
        front,
        control: served.control,
        metrics: served.metrics,
        status: served.status,
    })
}
