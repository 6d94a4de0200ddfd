//! The proxy as a program: builds the front from flags (or takes it over
//! from a previous front in an upgrade), wires it to signals, the control
//! socket and the metrics endpoint, and drains it on the way out.
//!
//! Signals (the front), each an event of the phase machine
//! (`front::phase`), which decides what it does in the phase the proxy is
//! in: SIGTERM and SIGINT stop (drain, exit; a second one stops at once;
//! during an upgrade everything stops); SIGHUP re-reads the config file;
//! SIGUSR2 upgrades the whole proxy onto the binary at the path it was
//! started from; SIGUSR1 makes every worker reopen the access log file;
//! every other terminating signal is caught and ignored. The loop here
//! only turns signals and the phase's deadline into events and ends when
//! the phase is final.
//!
//! With `--user`, everything that needs root is done first (listeners,
//! metrics and control sockets), then the front becomes that user (see
//! [`crate::privileges`]) before it starts any worker.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::Flags;
use crate::config::{Config, MAX_BACKENDS};
use crate::front::upgrade::TakeOver;
use crate::front::{self, Counters, Event, FrontError, Ledger, Listeners, Phase, Shared};
use crate::logging::LogOptions;
use crate::signals::{Caught, FrontSignals};
use crate::stats::{FrontWord, Table};
use crate::supervisor::{Exe, SpawnPlan, Workers};

/// Statistics columns beyond the backend limit, so a freed column need
/// not be reused at once.
const SPARE_COLUMNS: usize = 64;

/// Start the proxy from command-line flags and run until shut down; or,
/// when started by a running front to upgrade it, take over from it.
pub fn run(args: Flags, log: LogOptions) -> Result<(), FrontError> {
    let takeover = match crate::handover::inherited() {
        Some(Ok(fd)) => Some(fd),
        Some(Err(why)) => return Err(FrontError::Upgrade(why)),
        None => None,
    };
    // A new front loads its configuration exactly like a fresh start (the
    // file as it is now), and says why it cannot if it cannot.
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
        Some(fd) => local.block_on(&runtime, serve_upgraded(args, log, fd, config)),
        None => local.block_on(&runtime, serve(config, Some(args), log, None)),
    }
}

/// Take over from the running front that started this process, then serve.
async fn serve_upgraded(
    flags: Flags,
    log: LogOptions,
    fd: OwnedFd,
    config: Config,
) -> Result<(), FrontError> {
    // Caught before anything else: a stop passed on during the take-over
    // is kept, never the default action.
    let mut signals = FrontSignals::catch().map_err(FrontError::Runtime)?;
    let pid_file = config.pid_file.clone();
    // Started by a front that had dropped to --user: that user already.
    if let Some(who) = &config.run_as {
        crate::privileges::drop_to(who).map_err(FrontError::Privileges)?;
    }
    let nofile = crate::sys::raise_nofile_limit();
    let link = crate::handover::Link::new(fd).map_err(FrontError::Runtime)?;
    let exe = Exe::own().map_err(FrontError::Exe)?;
    let spawn = SpawnPlan {
        exe,
        log,
        cpus: None,
    };
    let outcome = front::upgrade::take_over(&link, spawn, nofile, flags, config, &mut signals)
        .await
        .map_err(FrontError::Upgrade)?;
    let (rebuilt, plan, stop) = match outcome {
        TakeOver::Serve {
            rebuilt,
            plan,
            stop,
        } => (rebuilt, plan, stop),
        TakeOver::Stopped => {
            info!("told to stop before taking over: the running front goes on; exiting");
            return Ok(());
        }
    };
    let front = rebuilt.front;
    if let Some(l) = rebuilt.metrics {
        let exporter = front.borrow().counters().exporter();
        crate::metrics::start_endpoint(l, exporter).map_err(FrontError::Runtime)?;
    }
    let control = rebuilt
        .control
        .map(|(path, l)| crate::control::Control::adopt(path, l))
        .transpose()
        .map_err(FrontError::Runtime)?;
    front::upgrade::commit(&front, plan, stop, link);
    // This front's pid from now on (the upgrade is done: a failure here
    // cannot undo it).
    if let Some(path) = &pid_file {
        if let Err(err) = crate::pidfile::write(path) {
            warn!(path = %path.display(), cause = %err, "cannot rewrite the pid file");
        }
    }
    info!(version = %crate::version::describe(), "rrproxy took over from the previous front");
    run_front(&front, control, None, signals).await
}

/// What `serve` tells its caller once it is accepting (the demo uses it).
#[derive(Debug, Clone)]
pub struct Started {
    pub listen: Vec<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
    pub control: Option<PathBuf>,
}

/// Statistics table capacities for `workers` slots: a process cell each
/// for every slot's worker, a replacement each (a rolling restart), and
/// room for two more generations still draining (workers told to stop by
/// SIGTERM while their connections finish), plus a few. Beyond that a slot
/// without a worker frees the cell of the oldest draining process (see
/// `supervisor`), so no number of stop waves leaves a slot empty.
fn table_for(workers: usize) -> Result<Table, FrontError> {
    Ok(Table::create(
        workers,
        MAX_BACKENDS + SPARE_COLUMNS,
        4 * workers + 4,
    )?)
}

/// Run the front with `config` on the current LocalSet until shutdown.
/// `args` (if any) is re-read on SIGHUP. (`rrproxy check` makes the same
/// checks short of binding: a check added here belongs in `preflight`.)
pub async fn serve(
    config: Config,
    args: Option<Flags>,
    log: LogOptions,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), FrontError> {
    let signals = FrontSignals::catch().map_err(FrontError::Runtime)?;
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
            for (addr, backlog) in front::listen_plan(&config) {
                let l = front::bind_listener(addr, backlog)
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
    for (addr, on) in front::defer_plan(&config) {
        if on {
            listeners
                .set_defer_accept_at(addr, true)
                .map_err(FrontError::Fatal)?;
        }
    }
    // One service: every listener is its own, inherited ones included
    // (their addresses need not be in the config).
    if config.defer_accept && config.services.is_empty() {
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
        listeners.keep_metrics(ep.addr, OwnedFd::from(l));
    }
    let owner = config.run_as.as_ref().map(|r| (r.uid, r.gid));
    let control = match &config.control {
        Some(path) => Some(crate::control::bind(path, owner).map_err(FrontError::Control)?),
        None => None,
    };
    if let Some(c) = &control {
        listeners.keep_control(c.path.clone(), c.dup_fd().map_err(FrontError::Runtime)?);
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
    let services = front::Services::new(&config, &table, config.workers);
    counters.set(FrontWord::MaxFds, nofile);
    counters.set(FrontWord::WorkerLimit, cap);
    let access = front::Access::new(&config);
    let front = front::Front::assemble(front::Parts {
        settings: front::Settings::new(config, args),
        listeners,
        workers,
        services,
        sni_waits: Default::default(),
        access,
        ledger: Ledger::default(),
        counters,
        life: front::Lifecycle::new(Phase::Starting),
    });
    front.borrow_mut().start_workers()?;
    if let Some(path) = pid_file {
        crate::pidfile::write(&path).map_err(|source| FrontError::PidFile { path, source })?;
    }
    info!(config = %summary, nofile, per_worker_limit = cap, version = %crate::version::describe(), "rrproxy starting");
    run_front(&front, control, started, signals).await
}

/// Start the front's tasks and serve until its life is over: every
/// signal, the phase's deadline and every change go through the phase
/// machine (see `front::phase`), which says when that is.
pub(crate) async fn run_front(
    front: &Shared,
    control: Option<crate::control::Control>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
    mut signals: FrontSignals,
) -> Result<(), FrontError> {
    let (listen_addrs, metrics_addr) = {
        let f = front.borrow();
        (f.listeners().addrs().to_vec(), f.listeners().metrics_addr())
    };
    front::Front::start_listeners(front);
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
    loop {
        let changed = front.borrow().life().changed();
        let notified = changed.notified();
        let (finished, deadline) = {
            let f = front.borrow();
            (f.finished(), f.phase().deadline())
        };
        if finished {
            break;
        }
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            caught = signals.next() => on_signal(front, caught),
            () = timer => {
                let _ = front.borrow_mut().handle(Event::Deadline);
            }
            () = notified => {}
        }
    }
    let f = front.borrow();
    if *f.phase() == Phase::Left {
        // Everything belongs to the new front now: leave without a word to
        // the workers, and leave the control socket where it is.
        info!("handed over to the new front; exiting");
        return Ok(());
    }
    if let Some(path) = &control_path {
        crate::control::unlink(path);
    }
    crate::pidfile::remove();
    info!("rrproxy stopped");
    match f.life().fatal() {
        Some(why) => Err(FrontError::Fatal(why.to_string())),
        None => Ok(()),
    }
}

/// A signal, as the phase machine's event (the long requests run as tasks
/// of their own: a reload reads the file off the loop, an upgrade talks to
/// the new front).
fn on_signal(front: &Shared, caught: Caught) {
    match caught {
        Caught::Term | Caught::Int => {
            info!("{} received", caught.name());
            if let Err(why) = front.borrow_mut().handle(Event::Stop) {
                info!("{}: {why}", caught.name());
            }
        }
        Caught::Hup => {
            info!("SIGHUP received: reloading configuration");
            let front = front.clone();
            tokio::task::spawn_local(async move {
                if let Err(why) = front::reload(&front).await {
                    warn!("SIGHUP: {why}");
                }
            });
        }
        Caught::Usr2 => {
            info!(
                "SIGUSR2 received: upgrading (front, then workers) onto the binary at the start path"
            );
            let front = front.clone();
            tokio::task::spawn_local(async move {
                // (A failure is logged by the upgrade itself.)
                if front::upgrade::upgrade(&front, None).await.is_ok() {
                    front::upgrade::hand_over(&front);
                }
            });
        }
        Caught::Usr1 => {
            info!("SIGUSR1 received: reopening the access log");
            match front.borrow_mut().reopen_access_log() {
                Ok(msg) => info!("{msg}"),
                Err(why) => warn!("SIGUSR1: {why}"),
            }
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
