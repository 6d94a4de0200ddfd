//! The front process's state and what it does with it: accepting and
//! dispatching connections, supervising worker processes, keeping backend
//! state, and handing all of it over to a new front on an upgrade.
//!
//! The state is one [`Front`] value owned by the front's single-threaded
//! event loop (`Rc<RefCell<Front>>`, never borrowed across an await), made
//! of named parts. Each part owns its fields (private) and the invariants
//! between them, and says what it is for a hand-over (`handover` /
//! `from_handover`):
//!
//! - `settings` ([`Settings`]): the configuration in force, what `ctl`
//!   changed since the file was applied, the flags to re-read it with;
//! - `listeners` ([`Listeners`]): the listening sockets (and the metrics and
//!   control sockets, for a hand-over) and whether they accept now;
//! - `workers` ([`crate::supervisor::Workers`]): slots, their processes,
//!   statistics cells, deadlines, the rolling restart;
//! - `backends` ([`Backends`]): the backend table, health and admin state;
//! - `access` ([`Access`]): who a connection's client is (PROXY headers
//!   from `--accept-proxy` sources) and whether it is served (ACLs);
//! - `routing` ([`Routing`]): the policy and the per-slot views it picks
//!   from;
//! - `ledger` ([`Ledger`]): the connections waiting for a worker and the
//!   per-client counts;
//! - `counters` ([`Counters`]): the statistics table and what `/metrics`
//!   renders from it;
//! - `life` ([`Lifecycle`]): where the proxy is in its life, a [`Phase`]
//!   moved only by the pure state machine in `phase`.
//!
//! `impl Front` (in `wiring`, one file) is the wiring between the parts.
//! The tasks that drive the front (accept loops, worker watchers, health
//! checks, discovery, upkeep, the upgrade conversation) live beside it and
//! call into it. Wiring the front to signals, the control socket and the
//! metrics endpoint is the job of [`crate::proxy`]; nothing here depends
//! on it.

mod access;
mod backends;
mod counters;
pub mod explain;
mod flow;
mod health;
mod ledger;
mod lifecycle;
mod limits;
mod listener;
pub mod phase;
mod report;
mod resolver;
mod routing;
mod services;
mod settings;
pub mod status;
pub mod upgrade;
mod upkeep;
mod waiting;
mod watch;
mod wiring;

pub use access::{Access, AclView, MAX_HEADER_WAITS};
pub use backends::{Admin, Backend, Backends};
pub use counters::Counters;
pub use ledger::{Conn, Ledger, Tally};
pub use lifecycle::Lifecycle;
pub use limits::fd_budget;
pub use listener::{Listeners, accept_loop, bind as bind_listener};
pub use phase::{Event, Phase, Step};
pub use report::{BackendRow, ServiceRow, Status, WorkerRow};
pub use routing::Routing;
pub use services::{Service, Services};
pub use settings::Settings;
pub use wiring::{Front, Parts, Shared};
pub(crate) use wiring::{defer_plan, listen_plan};

use std::rc::Rc;

use crate::config::{Config, ConfigError};

/// Why the front could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}{}", metrics_tip(.source))]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the status page on {addr}: {source}")]
    Status {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(String),
    #[error("cannot start worker {slot}: {source}")]
    Spawn { slot: usize, source: std::io::Error },
    #[error("cannot find the rrproxy executable to start workers: {0}")]
    Exe(std::io::Error),
    #[error("cannot start the event loop: {0}")]
    Runtime(std::io::Error),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Privileges(String),
    #[error("cannot create the statistics table: {0}")]
    Stats(#[from] crate::stats::StatsError),
    #[error("upgrade: {0}")]
    Upgrade(String),
    #[error("{0}")]
    Fatal(String),
}

/// What to do about a metrics address in use (the default one is the same
/// for every instance on the host).
fn metrics_tip(err: &std::io::Error) -> &'static str {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        " (another rrproxy? give this one --metrics HOST:PORT with a free port, or --metrics off)"
    } else {
        ""
    }
}

/// Why an admin request was refused. The message is shown to the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("no backend named '{0}' (see `backends`)")]
    NoSuchBackend(String),
    #[error("backend '{0}' already exists")]
    Exists(String),
    #[error("cannot remove '{0}': it is the last backend")]
    LastBackend(String),
    #[error("backend '{0}' is being removed")]
    Draining(String),
    #[error("too many backends (at most {0}, counting those still draining)")]
    TooMany(usize),
    #[error("{0}")]
    Refused(&'static str),
    /// The command names no service, or one that does not exist.
    #[error("{0}")]
    Service(String),
    /// The backend cannot be added as given (its source addresses).
    #[error("{0}")]
    Invalid(String),
}

/// What applying the config file did, line by line, for the log and the
/// `ctl` reply.
#[derive(Debug, Default, Clone)]
pub struct ReloadReport {
    pub notes: Vec<String>,
}

/// Close a client connection with a reset: it was refused, not served.
pub fn refuse(stream: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Start the front's background tasks: health checks, DNS discovery and
/// the periodic upkeep.
pub fn start_tasks(front: &Shared) {
    tokio::task::spawn_local(health::run(front.clone()));
    tokio::task::spawn_local(resolver::run(front.clone()));
    tokio::task::spawn_local(upkeep::run(front.clone()));
    tokio::task::spawn_local(waiting::run(Rc::downgrade(front)));
}

/// Re-read the config file and apply it (SIGHUP, `config reload`); a file
/// that does not load, or cannot apply, changes nothing.
pub async fn reload(front: &Shared) -> Result<ReloadReport, String> {
    let flags = front.borrow_mut().reload_flags()?;
    notify_reloading();
    let result = tokio::task::spawn_blocking(move || Config::reload(&flags)).await;
    notify(&[sd_notify::NotifyState::Ready]);
    match result {
        Ok(Ok(config)) => {
            let mut f = front.borrow_mut();
            let applied = f
                .apply_file(config)
                .map_err(|why| format!("reload rejected: {why}"));
            let text = match &applied {
                Ok(r) if r.notes.is_empty() => "configuration reloaded".to_string(),
                Ok(r) => format!("configuration reloaded: {}", r.notes.join("; ")),
                Err(why) => why.clone(),
            };
            f.record_event(crate::status::EventKind::Reload, text);
            if let Err(why) = &applied {
                tracing::error!("{why}");
            }
            applied
        }
        Ok(Err(err)) => {
            tracing::error!(cause = %err, "reload rejected: keeping the running configuration");
            let why = format!("reload rejected: {err}");
            front
                .borrow_mut()
                .record_event(crate::status::EventKind::Reload, why.clone());
            Err(why)
        }
        Err(err) => Err(format!("reload failed: {err}")),
    }
}

/// Most connections one worker process may hold under this config.
pub fn proc_cap(config: &Config, nofile: u64) -> u64 {
    let budget = fd_budget(nofile);
    config
        .limits
        .max_conns_per_worker
        .map_or(budget, |n| n.min(budget))
}

/// Log that every backend is down and connections are tried anyway, at
/// most once every ten seconds.
pub(crate) fn log_fail_open() {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST.lock() else { return };
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(Instant::now());
        tracing::warn!("every backend is down: failing open, trying them anyway");
    }
}

/// Tell the service manager (systemd `Type=notify`) about a state change.
/// Does nothing when not started by one.
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(cause = %err, "cannot notify the service manager");
    }
}

/// `RELOADING=1` with the timestamp systemd wants.
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}
