//! rrproxy as PID 1 (a container's entrypoint): a small init in front of
//! the front.
//!
//! Why: when PID 1 of a PID namespace dies, the kernel kills every other
//! process in it, so a front that is PID 1 takes its workers, and every
//! connection they hold, down with it. A plain init such as tini is no
//! cure: it exits when its one child does, and in an upgrade the front
//! that tini started hands over to a new front and exits.
//!
//! What: when the proxy finds it is PID 1, before it starts any thread it
//! becomes this init instead. The init
//! - starts the real front as its child: the same command line, run from
//!   the binary at the path this process was started from, with
//!   `NOTIFY_SOCKET` naming a datagram socket of the init's own (in a
//!   fresh mode-0700 directory), so the front talks to it exactly as it
//!   talks to systemd under `Type=notify`;
//! - reaps every process that ends: its own children, and the orphans the
//!   kernel gives PID 1 (workers whose front died, a front that handed
//!   over in an upgrade, whatever `docker exec` left behind);
//! - forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the current
//!   front (the "main" process); PID 1 gets no other signal from inside
//!   its namespace unless it asks for it, so nothing else can kill it;
//! - follows an upgrade the way systemd does: the old front sends
//!   `MAINPID=<new pid>` just before it commits, and from then on the new
//!   front (a child of the old one until that exits, then the init's) is
//!   the main process; a later restart runs the binary the new front runs;
//! - decides when to exit: when the main front exits after a stop (the
//!   init forwarded SIGTERM/SIGINT, or the front exited 0), the init exits
//!   with the front's status once every other process has ended, waiting
//!   at most [`LINGER`]. When the main front dies in any other way (a
//!   signal, a non-zero status), the init starts a new front at once, like
//!   systemd's `Restart=on-failure`, while the dead front's workers finish
//!   their connections; if fronts keep dying it waits longer each time
//!   (see [`backoff`]). A first front that never gets ready (a bad flag or
//!   config) is not retried: the init exits with its status, as the proxy
//!   would without it, and so does a later front that fails [`GIVE_UP`]
//!   times in a row before it is ready.
//!
//! Notifications other than `MAINPID=` are passed on to the init's own
//! `NOTIFY_SOCKET`, if it has one (a container run with sd_notify support),
//! so the outside world still hears `READY=1` and `STOPPING=1`.
//!
//! The init stays single-threaded: a current-thread tokio runtime for the
//! signals and the socket, logs written straight to stderr, the front
//! started with `std::process::Command` (fork-and-exec of a
//! single-threaded process).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::net::UnixDatagram;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::logging::LogOptions;

mod ends;
mod notify;

use ends::{End, backoff, descendants, parent_of};
use notify::{Notification, Relay};

/// How long the init waits, once the main front has exited for good, for
/// the other processes (a crashed front's workers still draining) to end.
/// The orchestrator's own stop timeout (`docker stop -t`, the pod's
/// termination grace period) may end it sooner.
pub const LINGER: Duration = Duration::from_secs(30);
/// A front that has been ready this long is stable: its death restarts a
/// new one at once again.
pub const STABLE: Duration = Duration::from_secs(30);
/// The longest wait before starting a new front.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Fronts that may die in a row before they are ready; then the init gives
/// up and exits with the last one's status.
pub const GIVE_UP: u32 = 5;

/// Should this process be the init? True when it is PID 1.
pub fn wanted() -> bool {
    rustix::process::getpid().is_init()
}

/// Be PID 1 for the proxy started with `argv` until it is stopped; returns
/// the exit status for the process.
pub fn run(argv: &[OsString], log: &LogOptions) -> ExitCode {
    crate::logging::init_direct(log, "init");
    let relay = match Relay::bind() {
        Ok(relay) => relay,
        Err(why) => {
            error!("init: {why}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            error!("init: cannot start the event loop: {err}");
            return ExitCode::FAILURE;
        }
    };
    let exe = std::env::current_exe()
        .ok()
        .or_else(|| argv.first().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let init = Init {
        argv: argv.to_vec(),
        exe,
        notify_path: relay.path.clone(),
        main: None,
        stopping: false,
        ever_ready: false,
        fails: 0,
        unready: 0,
        last_code: 0,
        restart_at: None,
        done: None,
    };
    let Relay { socket, dir, path } = relay;
    let code = runtime.block_on(init.serve(socket));
    notify::remove(&dir, &path);
    ExitCode::from(code)
}

/// The front the init signals and watches.
struct Front {
    pid: Pid,
    /// When it said `READY=1`.
    ready: Option<Instant>,
}

struct Init {
    argv: Vec<OsString>,
    /// What a (re)start runs.
    exe: PathBuf,
    notify_path: PathBuf,
    main: Option<Front>,
    /// A stop was asked for: no more restarts.
    stopping: bool,
    /// Some front has said `READY=1`.
    ever_ready: bool,
    /// Fronts that died in a row (the backoff).
    fails: u32,
    /// Fronts that died in a row before they were ready.
    unready: u32,
    /// The last main front's status, as an exit code.
    last_code: u8,
    restart_at: Option<Instant>,
    /// Winding down: the exit code, and when to stop waiting for the rest.
    done: Option<(u8, Instant)>,
}

impl Init {
    async fn serve(mut self, socket: std::os::unix::net::UnixDatagram) -> u8 {
        let kinds = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
            SignalKind::child(),
        ];
        let mut streams = Vec::new();
        for kind in kinds {
            match signal(kind) {
                Ok(s) => streams.push(s),
                Err(err) => {
                    error!("init: cannot catch signal {}: {err}", kind.as_raw_value());
                    return 1;
                }
            }
        }
        let [term, int, hup, usr1, usr2, chld] = &mut streams[..] else {
            return 1;
        };
        let socket = match UnixDatagram::from_std(socket) {
            Ok(s) => s,
            Err(err) => {
                error!("init: cannot watch the notify socket: {err}");
                return 1;
            }
        };
        if let Err(err) = self.start_front() {
            error!(
                "init: cannot start the front ({}): {err}",
                self.exe.display()
            );
            return 1;
        }
        loop {
            let restart = self.restart_at;
            let linger = self.done.map(|(_, until)| until);
            tokio::select! {
                _ = term.recv() => self.stop(Signal::TERM, "SIGTERM"),
                _ = int.recv() => self.stop(Signal::INT, "SIGINT"),
                _ = hup.recv() => self.forward(Signal::HUP, "SIGHUP"),
                _ = usr1.recv() => self.forward(Signal::USR1, "SIGUSR1"),
                _ = usr2.recv() => self.forward(Signal::USR2, "SIGUSR2"),
                _ = chld.recv() => {}
                ready = socket.readable() => {
                    if let Err(err) = ready {
                        warn!("init: notify socket: {err}");
                    }
                }
                () = at(restart) => {
                    self.restart_at = None;
                    self.restart();
                }
                () = at(linger) => {
                    let left = descendants();
                    warn!(
                        "init: {left} process(es) still running {LINGER:?} after the front exited; exiting (the kernel ends them)"
                    );
                    return self.done.map_or(self.last_code, |(code, _)| code);
                }
            }
            // Notifications first: a `MAINPID=` sent by a front that then
            // exited must be known before its exit is seen.
            self.read_notifications(&socket);
            let children = self.reap();
            if let Some((code, _)) = self.done {
                if !children {
                    info!("init: every process has ended; exiting with status {code}");
                    return code;
                }
            }
        }
    }

    /// Start a front; it becomes the main process.
    fn start_front(&mut self) -> io::Result<()> {
        let mut cmd = std::process::Command::new(&self.exe);
        if let Some(arg0) = self.argv.first() {
            cmd.arg0(arg0);
        }
        cmd.args(self.argv.iter().skip(1))
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env_remove(crate::handover::ENV);
        let child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32)
            .ok_or_else(|| io::Error::other("started a process without a pid"))?;
        // Not waited for through `child`: every child is reaped by `reap`.
        drop(child);
        info!(
            "init: started the front (pid {}, {})",
            pid.as_raw_nonzero(),
            self.exe.display()
        );
        self.main = Some(Front { pid, ready: None });
        Ok(())
    }

    fn restart(&mut self) {
        if self.stopping {
            return;
        }
        if let Err(err) = self.start_front() {
            error!(
                "init: cannot start a new front ({}): {err}",
                self.exe.display()
            );
            self.failed(1, None);
        }
    }

    fn stop(&mut self, sig: Signal, name: &str) {
        self.stopping = true;
        self.restart_at = None;
        match &self.main {
            Some(front) => {
                info!(
                    "init: {name}: passing it to the front (pid {}); exiting when it has stopped",
                    front.pid.as_raw_nonzero()
                );
                self.send(sig, name);
            }
            None => {
                info!("init: {name}: no front is running; exiting once every process has ended");
                if self.done.is_none() {
                    self.done = Some((self.last_code, Instant::now() + LINGER));
                }
            }
        }
    }

    fn forward(&mut self, sig: Signal, name: &str) {
        if self.main.is_some() {
            self.send(sig, name);
        } else {
            info!("init: {name} received while no front is running; dropped");
        }
    }

    fn send(&self, sig: Signal, name: &str) {
        if let Some(front) = &self.main {
            if let Err(err) = rustix::process::kill_process(front.pid, sig) {
                warn!(
                    "init: cannot pass {name} to the front (pid {}): {err}",
                    front.pid.as_raw_nonzero()
                );
            }
        }
    }

    fn read_notifications(&mut self, socket: &UnixDatagram) {
        let mut buf = [0u8; 4096];
        loop {
            match socket.try_recv(&mut buf) {
                Ok(n) => self.notified(&String::from_utf8_lossy(&buf[..n])),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    warn!("init: reading a notification: {err}");
                    return;
                }
            }
        }
    }

    fn notified(&mut self, text: &str) {
        let note = Notification::parse(text);
        if let Some(pid) = note.main_pid {
            self.follow(pid);
        }
        if note.ready {
            if let Some(front) = &mut self.main {
                front.ready.get_or_insert_with(Instant::now);
            }
            self.ever_ready = true;
            self.unready = 0;
        }
        if note.stopping {
            debug!("init: the front says it is stopping");
        }
        // Upward, minus what means nothing outside this namespace.
        let lines: Vec<sd_notify::NotifyState<'_>> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("MAINPID="))
            .map(sd_notify::NotifyState::Custom)
            .collect();
        if !lines.is_empty() {
            if let Err(err) = sd_notify::notify(&lines) {
                debug!("init: cannot pass a notification on: {err}");
            }
        }
    }

    /// `MAINPID=pid`: the front handed over to `pid` (its child).
    fn follow(&mut self, pid: i32) {
        let current = self.main.as_ref().map(|f| f.pid.as_raw_nonzero().get());
        if Some(pid) == current {
            return;
        }
        let Some(new) = Pid::from_raw(pid).filter(|_| pid > 0) else {
            warn!("init: ignoring MAINPID={pid}: not a process id");
            return;
        };
        let parent = parent_of(pid);
        if parent.is_none() || (parent != current && parent != Some(1)) {
            warn!("init: ignoring MAINPID={pid}: not a child of the running front");
            return;
        }
        info!(
            "init: the front handed over to pid {pid} (an upgrade); signals go to it from now on"
        );
        // A front started later runs what the new front runs (unless that
        // file is gone: then the path this init started from).
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            if !exe.to_string_lossy().ends_with(" (deleted)") {
                self.exe = exe;
            }
        }
        self.main = Some(Front {
            pid: new,
            ready: None,
        });
        if self.stopping {
            // Stopped during the handover: the new front must hear it too.
            self.send(Signal::TERM, "SIGTERM");
        }
    }

    /// Reap every child that has ended. Returns whether any child remains.
    fn reap(&mut self) -> bool {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => self.ended(pid, status),
                Ok(None) => return true,
                Err(rustix::io::Errno::CHILD) => return false,
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => {
                    warn!("init: wait: {err}");
                    return true;
                }
            }
        }
    }

    fn ended(&mut self, pid: Pid, status: WaitStatus) {
        let raw = pid.as_raw_nonzero().get();
        let how = End::from(status);
        if self.main.as_ref().is_none_or(|f| f.pid != pid) {
            debug!("init: process {raw} {how}");
            return;
        }
        let Some(front) = self.main.take() else {
            return;
        };
        let code = how.exit_code();
        self.last_code = code;
        if self.stopping || how == End::Code(0) {
            info!("init: the front (pid {raw}) {how}; exiting once every process has ended");
            self.done = Some((code, Instant::now() + LINGER));
            return;
        }
        warn!("init: the front (pid {raw}) {how}");
        self.failed(code, front.ready);
    }

    /// The main front died (or a new one could not start): start another,
    /// after the backoff, or give up.
    fn failed(&mut self, code: u8, ready: Option<Instant>) {
        if ready.is_some_and(|t| t.elapsed() >= STABLE) {
            self.fails = 0;
        }
        self.fails += 1;
        if ready.is_none() {
            self.unready += 1;
        }
        if !self.ever_ready || self.unready >= GIVE_UP {
            error!(
                "init: {}; giving up, exiting with status {code} once every process has ended",
                if self.ever_ready {
                    format!(
                        "{} fronts in a row died before they were ready",
                        self.unready
                    )
                } else {
                    "the front never got ready".to_string()
                }
            );
            self.done = Some((code, Instant::now() + LINGER));
            return;
        }
        let delay = backoff(self.fails);
        warn!(
            "init: starting a new front {}; the dead front's workers finish their connections meanwhile",
            if delay.is_zero() {
                "now".to_string()
            } else {
                format!("in {delay:?} (it keeps dying)")
            }
        );
        self.restart_at = Some(Instant::now() + delay);
    }
}

/// Sleep until `t`, or forever without one.
async fn at(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
