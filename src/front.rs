//! The front process's state and what it does with it: accepting and
//! dispatching connections, supervising worker processes, keeping backend
//! state, and handing all of it over to a new front on an upgrade.
//!
//! The state is one [`Front`] value owned by the front's single-threaded
//! event loop (`Rc<RefCell<Front>>`, never borrowed across an await), made
//! of a few named parts, each owning its invariants:
//!
//! - `listeners` ([`Listeners`]): the listening sockets and whether they
//!   accept now;
//! - `workers` ([`crate::supervisor::Workers`]): slots and their processes;
//! - `backends` ([`Backends`]): the backend table, health and admin state;
//! - `access` ([`Access`]): who a connection's client is (PROXY headers
//!   from `--accept-proxy` sources) and whether it is served (ACLs);
//! - `ledger` ([`Ledger`]): the connections the front is accountable for
//!   (pending, handed and not yet taken, per client IP);
//! - `counters` ([`Counters`]): the statistics table and what `/metrics`
//!   renders from it;
//! - `state` ([`State`]): where the front is in its life.
//!
//! A handover (see `upgrade`) is assembled from exactly these parts.
//! Wiring the front to signals, the control socket and the metrics
//! endpoint is the job of [`crate::proxy`]; nothing here depends on it.

mod access;
mod admin;
mod backends;
mod core;
mod counters;
mod events;
mod health;
mod ledger;
pub mod lifecycle;
mod limits;
mod listener;
mod logs;
mod resolver;
pub mod rolling;
pub mod upgrade;
mod upkeep;
mod views;

pub use self::core::{Conn, Front, Shared, State, refuse};
pub use access::{Access, AclView, MAX_HEADER_WAITS};
pub use admin::{AdminError, Overrides, ReloadReport};
pub use backends::{Admin, Backend, Backends};
pub use counters::Counters;
pub use ledger::Ledger;
pub use limits::fd_budget;
pub use listener::{Listeners, accept_loop, bind as bind_listener};

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

/// Start the front's background tasks: health checks, DNS discovery and
/// the periodic upkeep.
pub fn start_tasks(front: &Shared) {
    tokio::task::spawn_local(health::run(front.clone()));
    tokio::task::spawn_local(resolver::run(front.clone()));
    tokio::task::spawn_local(upkeep::run(front.clone()));
}

/// Re-read the config file and apply it; an invalid file changes nothing.
pub async fn reload(front: &Shared) -> Result<ReloadReport, String> {
    let Some(args) = front.borrow().state.reload_args.clone() else {
        return Err("this proxy was not started from a config it can re-read".into());
    };
    if args.config.is_none() {
        return Err(
            "nothing to reload: this proxy was started without --config (its flags are fixed; restart it to change them)"
                .into(),
        );
    }
    notify_reloading();
    let result = tokio::task::spawn_blocking(move || Config::reload(&args)).await;
    notify(&[sd_notify::NotifyState::Ready]);
    match result {
        Ok(Ok(config)) => {
            let applied = front.borrow_mut().apply_config(config);
            if let Err(why) = &applied {
                tracing::error!("{why}");
            }
            applied
        }
        Ok(Err(err)) => {
            tracing::error!(cause = %err, "reload rejected: keeping the running configuration");
            Err(format!("reload rejected: {err}"))
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
