//! The wiring: [`Front`] holds the parts, and `impl Front` is how they act
//! together. Each part keeps its own state and invariants behind its
//! methods; what crosses parts is here and in the files beside it, one
//! per section: the accept path (`accept`: route to a service, admit,
//! dispatch, flush), workers (`workers`: start, ready, reports, exit,
//! staffing, the rolling restart), the lifecycle (`life`: events through
//! the phase machine, and the actions it asks for), views and pausing
//! (`views`), run-time changes and reloads (`changes`), health,
//! upkeep and the hand-over (`upkeep`), and what the status page and
//! `ctl explain` read (`observe`). DESIGN.md's "life of a
//! connection" follows a connection through these functions.
//!
//! The front is owned by its single-threaded event loop
//! (`Rc<RefCell<Front>>`, never borrowed across an await).

mod accept;
mod changes;
mod life;
mod observe;
mod queue;
mod reload;
mod tally;
mod upkeep;
mod views;
mod workers;

use observe::in_service;
pub(crate) use reload::{defer_plan, listen_plan};

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::backends::Waiting;
use super::phase::{Action, Event, Phase};
use super::report::{self, BackendRow, ServiceRow, Status, WorkerRow};
use super::routing::Pick;
use super::services::{Services, SniWaits};
use super::settings::{Plan, Settings};
use super::{
    Access, AclView, Admin, AdminError, Conn, Counters, Ledger, Lifecycle, Listeners, ReloadReport,
    Tally, access, notify, refuse,
};
use crate::acl::Action as AclAction;
use crate::channel::{AccessLog, Event as WorkerEvent, Handoff, MAX_FDS, Up};
use crate::config::{BackendSpec, Config, ResolveGroup};
use crate::policy::{PolicyName, WorkerView};
use crate::stats::{Col, FrontWord, ProcWord, SlotWord};
use crate::status::EventKind;
use crate::supervisor::respawn::{AfterCrash, CRASH_WINDOW};
use crate::supervisor::{
    MAX_UNREAD, READY_TIMEOUT, Refused, Role, SpawnError, WorkerProc, Workers,
};

pub type Shared = Rc<RefCell<Front>>;

pub struct Front {
    /// Weak handle to ourselves, for spawning tasks from `&mut self`.
    me: Weak<RefCell<Front>>,
    settings: Settings,
    listeners: Listeners,
    workers: Workers,
    services: Services,
    /// Connections waiting for their ClientHello (SNI listeners).
    sni_waits: SniWaits,
    access: Access,
    ledger: Ledger,
    counters: Counters,
    life: Lifecycle,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

/// The parts a front is assembled from (at start, or from a hand-over).
pub struct Parts {
    pub settings: Settings,
    pub listeners: Listeners,
    pub workers: Workers,
    pub services: Services,
    pub sni_waits: SniWaits,
    pub access: Access,
    pub ledger: Ledger,
    pub counters: Counters,
    pub life: Lifecycle,
}

impl Front {
    pub fn assemble(p: Parts) -> Shared {
        Rc::new_cyclic(|me| {
            RefCell::new(Front {
                me: me.clone(),
                settings: p.settings,
                listeners: p.listeners,
                workers: p.workers,
                services: p.services,
                sni_waits: p.sni_waits,
                access: p.access,
                ledger: p.ledger,
                counters: p.counters,
                life: p.life,
                scratch: Vec::with_capacity(2 + MAX_FDS * crate::channel::HANDOFF_LEN + 2),
            })
        })
    }

    /// Start an accept loop per listening socket.
    pub fn start_listeners(front: &Shared) {
        let mut f = front.borrow_mut();
        f.publish_service_limits();
        f.listeners.start(front);
    }

    // ---- Read-only views for the front's tasks and the control socket.

    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    pub fn config(&self) -> std::sync::Arc<Config> {
        self.settings.get()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn phase(&self) -> &Phase {
        self.life.phase()
    }

    pub fn life(&self) -> &Lifecycle {
        &self.life
    }

    pub fn frozen(&self) -> bool {
        self.life.phase().frozen()
    }

    pub fn stopping(&self) -> bool {
        self.life.phase().stopping()
    }

    pub fn finished(&self) -> bool {
        self.life.phase().finished()
    }

    pub fn workers_gone(&self) -> bool {
        self.workers.all_gone()
    }

    pub fn thaw_notify(&self) -> Rc<tokio::sync::Notify> {
        self.life.thaw_notify()
    }

    pub fn count(&self, word: FrontWord, n: u64) {
        self.counters.bump(word, n);
    }

    /// The policy of service `service` (the only one when `None`).
    pub fn policy(&self, service: Option<&str>) -> Result<PolicyName, String> {
        let i = self.services.named(service)?;
        Ok(self.services.get(i).routing().policy())
    }

    /// Connections the front has accepted and not yet seen finished
    /// (those waiting for a backend slot included).
    pub fn total_active(&self) -> u64 {
        self.services.total_active()
            + self.ledger.pending() as u64
            + self.services.queues().total() as u64
    }

    pub fn status(&self) -> Status {
        let cfg = self.settings.get();
        let phase = self.life.phase();
        let (mut backends, mut up) = (0, 0);
        for s in self.services.iter() {
            backends += s.backends().list().len();
            up += s.backends().views().iter().filter(|v| v.routable).count();
        }
        Status {
            version: crate::version::VERSION,
            build: crate::version::build_id(),
            pid: std::process::id(),
            uptime_seconds: self.life.uptime().as_secs(),
            phase: phase.name(),
            policy: self.services.get(0).routing().policy(),
            services: self.services.iter().map(|s| s.name().to_string()).collect(),
            listen: self
                .listeners
                .addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            metrics: self.listeners.metrics_addr().map(|a| a.to_string()),
            workers: cfg.workers,
            workers_up: self
                .workers
                .slots()
                .iter()
                .filter(|s| s.serving().is_some())
                .count(),
            backends,
            backends_up: up,
            active_connections: self.services.total_active(),
            total_connections: report::handed(&self.workers, &self.counters),
            pending_connections: self.ledger.pending(),
            queued_connections: self.services.queues().total(),
            accepting: !self.listeners.paused(),
            rolling_restart: phase.rolling(),
            upgrading: phase.upgrading(),
            last_restart: self.life.last_roll().map(|r| match r {
                Ok(m) => m.clone(),
                Err(m) => format!("failed: {m}"),
            }),
            builds: report::builds(&self.workers),
            drain_timeout_seconds: cfg.drain_timeout.as_secs_f64(),
        }
    }

    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        report::workers(
            &self.workers,
            self.services.get(0).routing(),
            &self.counters,
        )
    }

    /// Every backend of service `service` (of every service when `None`).
    pub fn backend_rows(&self, service: Option<&str>) -> Result<Vec<BackendRow>, String> {
        let cells = self.workers.live_cells();
        let pick = match service {
            Some(_) => Some(self.services.named(service)?),
            None => None,
        };
        Ok(self
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| pick.is_none_or(|p| p == *i))
            .flat_map(|(_, s)| report::backends(s.name(), s.backends(), &cells, &self.counters))
            .collect())
    }

    pub fn service_rows(&self) -> Vec<ServiceRow> {
        report::services(&self.services, &self.workers.live_cells(), &self.counters)
    }

    /// The access lists of service `service` (the only one when `None`).
    pub fn acl_view(&self, service: Option<&str>) -> Result<AclView, String> {
        let i = self.services.named(service)?;
        let mut view = self.access.view();
        let acl = self.services.get(i).acl();
        view.allow = acl.allow().to_vec();
        view.deny = acl.deny().to_vec();
        Ok(view)
    }
}
