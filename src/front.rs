//! The front process: owns the listening sockets, the worker slots and all
//! state; accepts connections and hands them to workers; serves the control
//! socket; reacts to signals (SIGTERM/SIGINT drain and exit, SIGHUP reload,
//! SIGUSR2 rolling restart).
//!
//! It runs one single-threaded event loop. `run` sets it up and tears it
//! down; `core` holds the state and the dispatch hot path.

mod admin;
mod backends;
mod core;
mod events;
mod health;
mod limits;
mod listener;
mod resolver;
mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

pub use self::core::{Conn, Front, Shared};
pub use admin::{AdminError, set_policy_metric};
pub use backends::Admin;
pub use limits::fd_budget;

use crate::cli::{LogArgs, ProxyArgs};
use crate::config::{Config, ConfigError};
use crate::metrics::Readiness;
use crate::supervisor::Role;

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
    #[error("cannot serve metrics on {addr}: {source}")]
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
    #[error("{0}")]
    Fatal(String),
}

/// Extra grace after the drain timeout before stragglers are killed.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Most connections one worker process may hold under this config.
pub fn proc_cap(config: &Config, nofile: u64) -> u64 {
    let budget = fd_budget(nofile);
    config
        .limits
        .max_conns_per_worker
        .map_or(budget, |n| n.min(budget))
}

/// Start the proxy from command-line flags and run until shut down.
pub fn run(args: ProxyArgs, log: LogArgs) -> Result<(), FrontError> {
    let config = Config::load(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FrontError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(config, Some(args), log, None))
}

/// What `serve` tells its caller once it is accepting (the demo uses it).
#[derive(Debug, Clone)]
pub struct Started {
    pub listen: Vec<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
    pub control: Option<PathBuf>,
}

/// Run the front with `config` on the current LocalSet until shutdown.
/// `args` (if any) is re-read on SIGHUP.
pub async fn serve(
    config: Config,
    args: Option<ProxyArgs>,
    log: LogArgs,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), FrontError> {
    let nofile = crate::sys::raise_nofile_limit();
    let listeners = match activated_listeners()? {
        Some(inherited) => {
            info!(
                count = inherited.len(),
                "using listening sockets from the service manager (socket activation); --listen ignored"
            );
            inherited
        }
        None => {
            let mut bound = Vec::new();
            for &addr in &config.listen {
                let l = listener::bind(addr, config.backlog)
                    .map_err(|source| FrontError::Listen { addr, source })?;
                bound.push(l);
            }
            bound
        }
    };
    let listen_addrs: Vec<_> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let readiness = Readiness::default();
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let handle = crate::metrics::install().map_err(FrontError::Fatal)?;
            let ep = crate::metrics::start_endpoint(addr, handle, readiness.clone())
                .map_err(|source| FrontError::Metrics { addr, source })?;
            Some(ep.addr)
        }
        None => None,
    };
    let control = match &config.control {
        Some(path) => Some(crate::control::bind(path).map_err(FrontError::Control)?),
        None => None,
    };
    let exe = std::env::current_exe().map_err(FrontError::Exe)?;
    let worker_cpus = if config.cpu_affinity {
        match crate::sys::cpu_plan(&crate::sys::allowed_cpus(), config.workers) {
            Some((front_cpu, workers)) => {
                if let Err(err) = crate::sys::pin_to_cpu(front_cpu) {
                    warn!(cause = %err, "cannot pin the front to a CPU");
                }
                info!(front = front_cpu, workers = ?workers, "CPU affinity");
                Some(workers)
            }
            None => {
                warn!("cannot read the allowed CPUs; --cpu-affinity ignored");
                None
            }
        }
    } else {
        None
    };
    let cap = proc_cap(&config, nofile);
    let summary = config.summary();
    let shared = Arc::new(ArcSwap::from_pointee(config));
    let front = Front::new(shared.clone(), exe, log, cap, readiness);
    {
        let mut f = front.borrow_mut();
        f.listen_addrs = listen_addrs.clone();
        f.metrics_addr = metrics_addr;
        f.nofile = nofile;
        f.reload_args = args;
        f.worker_cpus = worker_cpus;
        for slot in 0..f.slots.len() {
            f.start_worker(slot)
                .map_err(|source| FrontError::Spawn { slot, source })?;
        }
    }
    info!(config = %summary, nofile, per_worker_limit = cap, "rrproxy starting");
    let accept_tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::task::spawn_local(listener::accept_loop(front.clone(), l)))
        .collect();
    tokio::task::spawn_local(health::run(front.clone()));
    tokio::task::spawn_local(resolver::run(front.clone()));
    tokio::task::spawn_local(stats_loop(front.clone()));
    let control_path = control.as_ref().map(|c| c.path.clone());
    if let Some(c) = control {
        tokio::task::spawn_local(crate::control::serve(front.clone(), c));
    }
    if let Some(tx) = started {
        let _ = tx.send(Started {
            listen: listen_addrs.clone(),
            metrics: metrics_addr,
            control: control_path.clone(),
        });
    }
    for a in &listen_addrs {
        info!(listen = %a, "listening");
    }
    if let Some(a) = metrics_addr {
        info!(metrics = %format!("http://{a}/metrics"), "serving metrics");
    }

    let outcome = wait_for_stop(&front).await;
    notify(&[sd_notify::NotifyState::Stopping]);

    // Drain: stop accepting at once, let workers finish, then exit.
    let drain_timeout = shared.load().drain_timeout;
    info!(timeout = ?drain_timeout, "shutting down: draining connections");
    for t in &accept_tasks {
        t.abort();
    }
    for t in accept_tasks {
        let _ = t.await; // the listeners close as their tasks end
    }
    front.borrow_mut().begin_shutdown();
    wait_for_workers(&front, drain_timeout + KILL_GRACE).await;
    if let Some(path) = &control_path {
        crate::control::unlink(path);
    }
    info!("rrproxy stopped");
    outcome
}

/// Wait for a stop signal, handling reload and restart signals meanwhile.
async fn wait_for_stop(front: &Shared) -> Result<(), FrontError> {
    let mut term = signal(SignalKind::terminate()).map_err(FrontError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(FrontError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(FrontError::Runtime)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(FrontError::Runtime)?;
    let changed = front.borrow().changed.clone();
    loop {
        let notified = changed.notified();
        if let Some(why) = front.borrow().fatal.clone() {
            return Err(FrontError::Fatal(why));
        }
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()) }
            _ = hup.recv() => {
                info!("SIGHUP received: reloading configuration");
                let args = front.borrow().reload_args.clone();
                let _ = reload(front, args.as_ref()).await;
            }
            _ = usr2.recv() => {
                info!("SIGUSR2 received: rolling restart of the workers");
                if let Err(why) = crate::supervisor::rolling::start(front.clone()) {
                    warn!("SIGUSR2 ignored: {why}");
                }
            }
            () = notified => {}
        }
    }
}

/// Re-read the config file and apply it; an invalid file changes nothing.
pub async fn reload(front: &Shared, args: Option<&ProxyArgs>) -> Result<Vec<String>, String> {
    let Some(args) = args.cloned() else {
        return Err("this proxy was not started from a config it can re-read".into());
    };
    reloading_notice();
    let result = tokio::task::spawn_blocking(move || Config::reload(&args)).await;
    notify(&[sd_notify::NotifyState::Ready]);
    match result {
        Ok(Ok(config)) => Ok(front.borrow_mut().apply_config(config)),
        Ok(Err(err)) => {
            error!(cause = %err, "reload rejected: keeping the running configuration");
            Err(format!("reload rejected: {err}"))
        }
        Err(err) => Err(format!("reload failed: {err}")),
    }
}

/// Wait until every worker process has exited, killing stragglers after
/// `limit`.
async fn wait_for_workers(front: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let changed = front.borrow().changed.clone();
        let notified = changed.notified();
        if front.borrow().slots.iter().all(|s| s.procs.is_empty()) {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            for p in front.borrow().slots.iter().flat_map(|s| &s.procs) {
                warn!(
                    pid = p.pid,
                    active = p.active,
                    "worker did not drain in time; killing it"
                );
                p.kill();
            }
            // Give the kernel a moment to deliver the exits.
            wait_reaped(front, Duration::from_secs(2)).await;
            if !front.borrow().slots.iter().all(|s| s.procs.is_empty()) {
                warn!("workers did not exit after SIGKILL; giving up waiting");
            }
            return;
        }
    }
}

async fn wait_reaped(front: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !front.borrow().slots.iter().all(|s| s.procs.is_empty()) {
        let changed = front.borrow().changed.clone();
        if tokio::time::timeout_at(deadline, changed.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

impl Front {
    /// Stop taking connections and tell every worker to drain.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let pending = self.pending.len();
        for conn in self.pending.drain(..) {
            drop(conn); // never handed out: the client sees the close
        }
        if pending > 0 {
            warn!(pending, "closed connections that were waiting for a worker");
        }
        let drain = self.drain_frame(self.config.load().drain_timeout);
        for slot in &mut self.slots {
            for p in &mut slot.procs {
                p.role = Role::Retiring;
                p.queue_control(drain.clone());
            }
        }
        self.arm_watchers();
        self.refresh_all_views();
    }

    pub fn drain_frame(&self, timeout: Duration) -> Vec<u8> {
        let mut frame = Vec::new();
        if let Err(err) = (crate::channel::Down::Drain { timeout }).encode(&mut frame) {
            warn!(cause = %err, "cannot encode drain");
        }
        frame
    }
}

/// Refresh the summary gauges once a second.
async fn stats_loop(front: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let f = front.borrow();
        if f.shutting_down {
            return;
        }
        f.publish_stats();
    }
}

/// Listening sockets inherited through systemd socket activation, if any.
fn activated_listeners() -> Result<Option<Vec<std::net::TcpListener>>, FrontError> {
    let fds = sd_notify::listen_fds()
        .map_err(|e| FrontError::Control(format!("invalid socket activation environment: {e}")))?;
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut out = Vec::new();
    for fd in fds {
        let l = crate::sys::adopt_listener(fd)
            .map_err(|e| FrontError::Control(format!("socket activation: {e}")))?;
        out.push(l);
    }
    Ok(Some(out))
}

/// Tell the service manager (systemd `Type=notify`) about a state change.
/// Does nothing when not started by one.
pub(crate) fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!(cause = %err, "cannot notify the service manager");
    }
}

fn reloading_notice() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}

/// Log that every backend is down and connections are tried anyway, at
/// most once every ten seconds.
pub(crate) fn log_fail_open() {
    use std::sync::Mutex;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST.lock() else { return };
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        *last = Some(Instant::now());
        warn!("every backend is down: failing open, trying them anyway");
    }
}
