//! The proxy as a program: builds the front from flags (or takes it over
//! from a previous front in an upgrade), wires it to signals, the control
//! socket and the metrics endpoint, and drains it on the way out.
//!
//! Signals (the front): SIGTERM and SIGINT drain and exit (a second one
//! stops at once); SIGHUP re-reads the config file; SIGUSR2 upgrades the
//! whole proxy onto the binary at the path it was started from; SIGUSR1
//! makes every worker reopen the access log file; every other terminating
//! signal is caught and ignored.
//!
//! With `--user`, everything that needs root is done first (listeners,
//! metrics and control sockets), then the front becomes that user (see
//! [`crate::privileges`]) before it starts any worker.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::{LogArgs, ProxyArgs};
use crate::config::{Config, MAX_BACKENDS};
use crate::front::{
    self, Backends, Counters, FrontError, Ledger, Listeners, Shared, State, lifecycle,
};
use crate::privileges::RunAs;
use crate::stats::{FrontWord, Table};
use crate::supervisor::{Exe, SpawnPlan, Workers};

/// Statistics columns beyond the backend limit, so a freed column need
/// not be reused at once.
const SPARE_COLUMNS: usize = 64;

/// Start the proxy from command-line flags and run until shut down; or,
/// when started by a running front to upgrade it, take over from it.
pub fn run(args: ProxyArgs, log: LogArgs) -> Result<(), FrontError> {
    let takeover = match crate::handover::inherited() {
        Some(Ok(fd)) => Some(fd),
        Some(Err(why)) => return Err(FrontError::Upgrade(why)),
        None => None,
    };
    // A new front validates its configuration exactly like a fresh start,
    // and says why it cannot if it cannot.
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(err) => {
            if let Some(fd) = &takeover {
                crate::handover::refuse_now(
                    fd.as_fd(),
                    &format!("its configuration is invalid: {err}"),
                );
            }
            return Err(err.into());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FrontError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    match takeover {
        Some(fd) => local.block_on(
            &runtime,
            serve_upgraded(args, log, fd, config.run_as, config.pid_file),
        ),
        None => local.block_on(&runtime, serve(config, Some(args), log, None)),
    }
}

/// Take over from the running front that started this process, then serve.
async fn serve_upgraded(
    args: ProxyArgs,
    log: LogArgs,
    fd: OwnedFd,
    run_as: Option<RunAs>,
    pid_file: Option<PathBuf>,
) -> Result<(), FrontError> {
    // Started by a front that had dropped to --user: that user already.
    if let Some(who) = &run_as {
        crate::privileges::drop_to(who).map_err(FrontError::Privileges)?;
    }
    let nofile = crate::sys::raise_nofile_limit();
    let link = crate::handover::Link::new(fd).map_err(FrontError::Runtime)?;
    let exe = Exe::own().map_err(FrontError::Exe)?;
    let mut state = State::new();
    state.reload_args = Some(args);
    let plan = SpawnPlan {
        exe,
        log,
        cpus: None,
    };
    let rebuilt = front::upgrade::take_over(&link, plan, nofile, state)
        .await
        .map_err(FrontError::Upgrade)?;
    drop(link);
    let front = rebuilt.front;
    if let Some(l) = rebuilt.metrics {
        let exporter = front.borrow().counters.exporter();
        crate::metrics::start_endpoint(l, exporter).map_err(FrontError::Runtime)?;
    }
    let control = rebuilt
        .control
        .map(|(path, l)| crate::control::Control::adopt(path, l))
        .transpose()
        .map_err(FrontError::Runtime)?;
    front::upgrade::commit(&front);
    // This front's pid from now on (the upgrade is done: a failure here
    // cannot undo it).
    if let Some(path) = &pid_file {
        if let Err(err) = crate::pidfile::write(path) {
            warn!(path = %path.display(), cause = %err, "cannot rewrite the pid file");
        }
    }
    info!(version = %crate::version::describe(), "rrproxy took over from the previous front");
    run_front(&front, control, None).await
}

/// What `serve` tells its caller once it is accepting (the demo uses it).
#[derive(Debug, Clone)]
pub struct Started {
    pub listen: Vec<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
    pub control: Option<PathBuf>,
}

/// Statistics table capacities for `workers` slots: room for every slot's
/// process plus a replacement each, and a few more.
fn table_for(workers: usize) -> Result<Table, FrontError> {
    Ok(Table::create(
        workers,
        MAX_BACKENDS + SPARE_COLUMNS,
        2 * workers + 4,
    )?)
}

/// Run the front with `config` on the current LocalSet until shutdown.
/// `args` (if any) is re-read on SIGHUP. (`rrproxy check` makes the same
/// checks short of binding: a check added here belongs in `preflight`.)
pub async fn serve(
    config: Config,
    args: Option<ProxyArgs>,
    log: LogArgs,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), FrontError> {
    // Refuse before binding anything if the drop could not happen.
    if let Some(who) = &config.run_as {
        crate::privileges::check(who).map_err(FrontError::Privileges)?;
    }
    let nofile = crate::sys::raise_nofile_limit();
    let sockets = match activated_listeners()? {
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
                let l = front::bind_listener(addr, config.backlog)
                    .map_err(|source| FrontError::Listen { addr, source })?;
                bound.push(l);
            }
            bound
        }
    };
    let table = Arc::new(table_for(config.workers)?);
    let counters = Counters::new(table.clone());
    let mut listeners = Listeners::new(sockets).map_err(FrontError::Runtime)?;
    // Only when asked: sockets from the service manager keep the unit's
    // own DeferAcceptSec= otherwise.
    if config.defer_accept {
        listeners
            .set_defer_accept(true)
            .map_err(FrontError::Fatal)?;
    }
    if let Some(addr) = config.metrics {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|source| FrontError::Metrics { addr, source })?;
        let ep = crate::metrics::start_endpoint(
            l.try_clone().map_err(FrontError::Runtime)?,
            counters.exporter(),
        )
        .map_err(|source| FrontError::Metrics { addr, source })?;
        listeners.metrics = Some((ep.addr, OwnedFd::from(l)));
    }
    let owner = config.run_as.as_ref().map(|r| (r.uid, r.gid));
    let control = match &config.control {
        Some(path) => Some(crate::control::bind(path, owner).map_err(FrontError::Control)?),
        None => None,
    };
    if let Some(c) = &control {
        listeners.control = Some((c.path.clone(), c.dup_fd().map_err(FrontError::Runtime)?));
    }
    // Everything that needs root is done: become --user, for good, before
    // any worker starts (they start as that user).
    if let Some(who) = &config.run_as {
        crate::privileges::drop_to(who).map_err(FrontError::Privileges)?;
    }
    // The workers will open the access log as this user: say now if
    // they cannot.
    crate::access_log::check(&config.access_log).map_err(|source| FrontError::AccessLog {
        path: match &config.access_log {
            crate::channel::AccessLog::File(p) => p.clone(),
            _ => PathBuf::from("stderr"),
        },
        source,
    })?;
    let exe = Exe::own().map_err(FrontError::Exe)?;
    let cpus = cpu_plan(&config);
    let cap = front::proc_cap(&config, nofile);
    let summary = config.summary();
    let pid_file = config.pid_file.clone();
    let workers = Workers::new(
        config.workers,
        table.procs(),
        SpawnPlan { exe, log, cpus },
        cap,
        nofile,
    );
    let mut backends = Backends::new(table.columns());
    for spec in &config.backends {
        backends.add(spec.clone(), &table, 0);
    }
    let mut state = State::new();
    state.reload_args = args;
    counters.set(FrontWord::MaxFds, nofile);
    counters.set(FrontWord::WorkerLimit, cap);
    let shared = Arc::new(ArcSwap::from_pointee(config));
    let front = front::Front::assemble(
        shared,
        listeners,
        workers,
        backends,
        Ledger::default(),
        counters,
        state,
    );
    {
        let mut f = front.borrow_mut();
        for slot in 0..f.workers.slots.len() {
            f.start_worker(slot)
                .map_err(|source| FrontError::Spawn { slot, source })?;
        }
        f.publish();
    }
    if let Some(path) = pid_file {
        crate::pidfile::write(&path).map_err(|source| FrontError::PidFile { path, source })?;
    }
    info!(config = %summary, nofile, per_worker_limit = cap, version = %crate::version::describe(), "rrproxy starting");
    run_front(&front, control, started).await
}

/// Start the front's tasks, serve until stopped, then drain.
pub(crate) async fn run_front(
    front: &Shared,
    control: Option<crate::control::Control>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), FrontError> {
    let (listen_addrs, metrics_addr) = {
        let f = front.borrow();
        (
            f.listeners.addrs.clone(),
            f.listeners.metrics.as_ref().map(|(a, _)| *a),
        )
    };
    front.borrow_mut().listeners.start(front);
    front::start_tasks(front);
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

    let outcome = wait_for_stop(front).await;
    if front.borrow().state.handed_over {
        // Everything belongs to the new front now: leave without a word
        // to the workers, and leave the control socket where it is. Control
        // clients caught mid-way get a moment to hear "reconnect".
        info!("handed over to the new front; exiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Ok(());
    }
    front::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown(front).await;
    if let Some(path) = &control_path {
        crate::control::unlink(path);
    }
    crate::pidfile::remove();
    info!("rrproxy stopped");
    outcome
}

/// Drain: stop accepting at once, let workers finish (telling the operator
/// once what is still open and until when), then exit. A second SIGINT or
/// SIGTERM stops at once.
async fn shutdown(front: &Shared) {
    let drain_timeout = front.borrow().config.load().drain_timeout;
    {
        let mut f = front.borrow_mut();
        f.listeners.close();
        f.begin_shutdown();
    }
    let open = front.borrow().total_active();
    if open > 0 {
        warn!(
            open_connections = open,
            deadline = ?drain_timeout,
            "draining: waiting for open connections to finish (at most --drain-timeout); send SIGINT (Ctrl-C) or SIGTERM again to stop now"
        );
    } else {
        info!("shutting down: no connection open");
    }
    let again = async {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    tokio::select! {
        () = lifecycle::wait_for_workers(front, drain_timeout + lifecycle::KILL_GRACE) => {}
        () = again => {
            warn!("second stop signal: closing every connection now");
            for p in front.borrow().workers.procs() {
                p.kill();
            }
            lifecycle::wait_for_workers(front, Duration::from_secs(2)).await;
        }
    }
}

/// Wait for a stop signal, handling reload and upgrade signals meanwhile.
async fn wait_for_stop(front: &Shared) -> Result<(), FrontError> {
    use rustix::process::Signal as S;
    let mut term = signal(SignalKind::terminate()).map_err(FrontError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(FrontError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(FrontError::Runtime)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(FrontError::Runtime)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(FrontError::Runtime)?;
    crate::signals::ignore_unused(
        &[S::TERM, S::INT, S::HUP, S::USR2, S::USR1].map(|s| s.as_raw()),
        "front",
    );
    let changed = front.borrow().state.changed.clone();
    loop {
        let notified = changed.notified();
        if let Some(why) = front.borrow().state.fatal.clone() {
            return Err(FrontError::Fatal(why));
        }
        if front.borrow().state.handed_over {
            return Ok(());
        }
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()) }
            _ = hup.recv() => {
                info!("SIGHUP received: reloading configuration");
                let _ = front::reload(front).await;
            }
            _ = usr2.recv() => {
                info!("SIGUSR2 received: upgrading (front, then workers) onto the binary at the start path");
                let front = front.clone();
                tokio::task::spawn_local(async move {
                    // (A failure is logged by the upgrade itself.)
                    if front::upgrade::upgrade(&front, None).await.is_ok() {
                        front::upgrade::hand_over(&front);
                    }
                });
            }
            _ = usr1.recv() => {
                info!("SIGUSR1 received: reopening the access log");
                match front.borrow_mut().reopen_access_log() {
                    Ok(msg) => info!("{msg}"),
                    Err(why) => warn!("SIGUSR1: {why}"),
                }
            }
            () = notified => {}
        }
    }
}

fn cpu_plan(config: &Config) -> Option<Vec<usize>> {
    if !config.cpu_affinity {
        return None;
    }
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
