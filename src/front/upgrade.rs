//! Upgrading the whole proxy without refusing a connection: the front
//! first, then the workers (all replaced at once, each old one draining
//! while its replacement serves).
//!
//! Design (see the README, "Upgrades"): the running front starts the new
//! binary as a child with the same command line and a socket pair to talk
//! over (HAProxy passes listeners over a UNIX socket; nginx through exec;
//! Envoy's new process initialises fully before it takes over). The new
//! front loads and validates its configuration and says hello; only then
//! does the old one freeze (stop accepting, stop reading worker channels:
//! clients wait in the listen backlog) and send it everything it owns: the
//! listening, metrics and control sockets, the statistics table (every
//! counter continues from its value), each worker's channel and pidfd, the
//! connections waiting for a worker, and the state (see `state`). The new
//! front rebuilds itself, says ready, and the old one commits and exits
//! without touching a worker; the new front thaws, accepts what waited in
//! the backlog, and replaces the old workers. If the new binary is
//! missing, is not rrproxy, exits, rejects the config, speaks another
//! protocol or is not ready in time, the old front thaws and goes on as if
//! nothing happened (tableflip's rule), and the command fails with why.
//!
//! The new front applies the config file as it is now, with the rules and
//! the report of `config reload`: it loads the file as a fresh start would
//! (one that does not load refuses the upgrade), plans it against the
//! state it took over before it says ready (one that cannot apply refuses
//! the upgrade), sends the plan's notes with its ready, and applies it
//! once committed. Without `--config` there is no file: the running
//! configuration passes over as it is.
//!
//! Each step is a step of the phase machine (`phase::Step`): the
//! conversation asks the front before it goes on, so a stop that lands
//! during an upgrade is one transition: before the commit it cancels the
//! conversation (the new front is killed and reaped by [`NewFront`]'s
//! guard) and the proxy stops; after it, the stop is passed on to the new
//! front over the link, and the new front stops. For tests,
//! `RRPROXY_TEST_PAUSE_UPGRADE=<step>` (see [`PAUSE_ENV`]) holds the old
//! front's conversation at that step until the phase moves on (a stop) or
//! a minute passes; it is never passed on to the new front.

pub mod state;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::rc::Rc;

use tracing::{info, warn};

use super::phase::{Event, Phase, Step};
use super::settings::Plan;
use super::{Shared, notify, notify_reloading};
use crate::handover::{self, Hello, Link, Msg};

/// How long the new binary may take to say hello, and then to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Test hook: hold an upgrade at the step this names (`check`, `spawn`,
/// `hello`, `frozen`, `sent`, `ready`, `committed`). For tests only.
pub const PAUSE_ENV: &str = "RRPROXY_TEST_PAUSE_UPGRADE";

/// Check that `path` can be an rrproxy binary: it exists, is a regular
/// file, is executable, and says it is rrproxy.
async fn check_binary(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot use {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{shown} is a directory, not an rrproxy binary"));
    }
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0
        || rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_err()
    {
        return Err(format!("{shown} is not executable"));
    }
    let exe = path.to_path_buf();
    let probe =
        tokio::task::spawn_blocking(move || -> std::io::Result<Option<std::process::Output>> {
            let mut child = std::process::Command::new(&exe)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            child.wait_with_output().map(Some)
        });
    let out = match probe.await {
        Ok(Ok(Some(out))) => out,
        Ok(Ok(None)) => {
            return Err(format!(
                "{shown} --version did not answer within 5s: not rrproxy"
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot run {shown}: {e}")),
        Err(e) => return Err(format!("cannot run {shown}: {e}")),
    };
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.starts_with("rrproxy ") {
        return Err(format!(
            "{shown} is not rrproxy (`{shown} --version` {}{})",
            if out.status.success() {
                "printed ".to_string()
            } else {
                format!("exited with {}", out.status)
            },
            said.lines()
                .next()
                .map(|l| format!(" '{l}'"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// Upgrade onto `path` (or the binary at the path this front was started
/// from). Returns what happened, for the operator. On failure nothing has
/// changed. Refused (at once) unless the phase machine allows it.
pub async fn upgrade(front: &Shared, path: Option<PathBuf>) -> Result<String, String> {
    front.borrow_mut().handle(Event::Upgrade)?;
    let superseding = matches!(
        front.borrow().phase(),
        Phase::Upgrading { rolling: true, .. }
    );
    let task = tokio::task::spawn_local(run(front.clone(), path));
    front.borrow_mut().set_upgrade(Some(task.abort_handle()));
    let result = match task.await {
        Ok(result) => result,
        Err(err) if err.is_cancelled() => Err(
            "upgrade aborted: the proxy was told to stop (nothing of the new binary is left running)"
                .into(),
        ),
        Err(err) => Err(format!("the upgrade failed: {err}")),
    };
    let mut f = front.borrow_mut();
    f.set_upgrade(None);
    match result {
        Ok(msg) if superseding => Ok(format!(
            "{msg}\n  the restart of the workers that was under way is superseded: the new front replaces every worker"
        )),
        Ok(msg) => Ok(msg),
        Err(why) => {
            warn!("upgrade failed, nothing changed: {why}");
            f.record_event(
                crate::status::EventKind::Upgrade,
                format!("upgrade failed, nothing changed: {why}"),
            );
            let _ = f.handle(Event::UpgradeFailed);
            if !f.stopping() {
                notify(&[sd_notify::NotifyState::Ready]);
            }
            Err(why)
        }
    }
}

/// The new front, killed and reaped unless it took over.
struct NewFront {
    child: Option<std::process::Child>,
}

impl NewFront {
    /// It owns everything now: its own master, not our child to reap.
    fn committed(&mut self) {
        self.child = None;
    }
}

impl Drop for NewFront {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // SIGKILL was sent: this returns as soon as the kernel has
            // ended it.
            let _ = child.wait();
            warn!(pid = child.id(), "upgrade: the new front was stopped");
        }
    }
}

/// Hold the conversation at `step` if the test hook asks for it, until
/// the phase moves on or a minute passes.
async fn pause_at(front: &Shared, step: Step) {
    if std::env::var_os(PAUSE_ENV).is_none_or(|v| v != step.name()) {
        return;
    }
    warn!(
        step = step.name(),
        "upgrade paused at this step ({PAUSE_ENV}: a test hook)"
    );
    let here = front.borrow().phase().clone();
    let changed = front.borrow().life().changed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let moved = changed.notified();
        if *front.borrow().phase() != here {
            return;
        }
        if tokio::time::timeout_at(deadline, moved).await.is_err() {
            return;
        }
    }
}

/// Ask the phase machine whether the upgrade may go on to `step`.
fn step(front: &Shared, step: Step) -> Result<(), String> {
    front
        .borrow_mut()
        .upgrade_at(step)
        .map_err(|why| format!("the upgrade stopped before {}: {why}", step.name()))
}

async fn run(front: Shared, path: Option<PathBuf>) -> Result<String, String> {
    let (exe, argv) = {
        let f = front.borrow();
        (
            path.unwrap_or_else(|| f.life().exe_path().to_path_buf()),
            f.life().argv().to_vec(),
        )
    };
    pause_at(&front, Step::Check).await;
    check_binary(&exe).await?;
    notify_reloading();
    let (ours, theirs) = crate::channel::fdpass::pair().map_err(|e| e.to_string())?;
    // Everything that can fail before the child exists is done first.
    let link = Rc::new(Link::new(ours).map_err(|e| e.to_string())?);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(argv.iter().skip(1))
        .env(handover::ENV, crate::sys::raw(&theirs.as_fd()).to_string())
        .env_remove(PAUSE_ENV)
        .stdin(Stdio::null());
    if let Some(arg0) = argv.first() {
        cmd.arg0(arg0);
    }
    crate::sys::inherit_fd(&mut cmd, crate::sys::raw(&theirs.as_fd()));
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let mut new_front = NewFront { child: Some(child) };
    drop(theirs);
    info!(path = %exe.display(), "upgrade: new front started");
    step(&front, Step::Spawn)?;
    pause_at(&front, Step::Spawn).await;
    converse(&front, link, &exe, &mut new_front).await
}

/// Talk to the new front until it commits or fails.
async fn converse(
    front: &Shared,
    link: Rc<Link>,
    exe: &Path,
    new_front: &mut NewFront,
) -> Result<String, String> {
    let shown = exe.display();
    let hello = match next(&link, "to start").await? {
        Msg::Hello(h) => h,
        Msg::Error(why) => return Err(format!("the new binary {shown} refused to start: {why}")),
        other => return Err(format!("the new binary {shown} said {other:?} first")),
    };
    if let Some(why) = hello.incompatibility() {
        let _ = link.send(&Msg::Abort(why.clone())).await;
        return Err(why);
    }
    step(front, Step::Hello)?;
    pause_at(front, Step::Hello).await;
    // Freeze: from here until commit or abort nothing changes.
    step(front, Step::Frozen)?;
    pause_at(front, Step::Frozen).await;
    let (json, fds) = {
        let f = front.borrow();
        let (value, fds) = f.handover();
        let json =
            serde_json::to_vec(&value).map_err(|e| format!("cannot encode the handover: {e}"))?;
        let fds = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<OwnedFd>, _>>()
            .map_err(|e| format!("cannot hand over the descriptors: {e}"))?;
        (json, fds)
    };
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    link.send_state(&json, &borrowed)
        .await
        .map_err(|e| format!("cannot hand over to {shown}: {e}"))?;
    step(front, Step::Sent)?;
    pause_at(front, Step::Sent).await;
    let notes = match next(&link, "to take over").await? {
        Msg::Ready(notes) => notes,
        Msg::Error(why) => {
            return Err(format!(
                "the new front ({shown}) could not take over: {why}"
            ));
        }
        other => return Err(format!("the new front ({shown}) said {other:?}")),
    };
    step(front, Step::Ready)?;
    pause_at(front, Step::Ready).await;
    // Point of no return. From here a stop is passed on over the link.
    front.borrow_mut().set_successor(link.clone());
    step(front, Step::Committed)?;
    notify(&[sd_notify::NotifyState::MainPid(hello.pid)]);
    link.send(&Msg::Commit)
        .await
        .map_err(|e| format!("the new front ({shown}) went away before the commit: {e}"))?;
    new_front.committed();
    let build = &hello.build[..hello.build.len().min(12)];
    let mut msg = format!(
        "front upgraded: pid {} -> {} (rrproxy {}, build {build}); the workers are being replaced (each old one drains while its replacement serves)",
        std::process::id(),
        hello.pid,
        hello.version
    );
    for n in &notes {
        msg.push_str("\n  ");
        msg.push_str(n);
    }
    info!("{msg}");
    pause_at(front, Step::Committed).await;
    Ok(msg)
}

/// After a successful upgrade (and after the operator got the reply): let
/// the old front go.
pub fn hand_over(front: &Shared) {
    front.borrow_mut().hand_over();
}

/// The next message from the new front, within [`START_TIMEOUT`].
async fn next(link: &Link, what: &str) -> Result<Msg, String> {
    match tokio::time::timeout(START_TIMEOUT, link.recv()).await {
        Ok(Ok(Some(msg))) => Ok(msg),
        Ok(Ok(None)) => Err(format!(
            "the new binary exited before it was ready {what} (see its log line above)"
        )),
        Ok(Err(e)) => Err(format!("talking to the new binary: {e}")),
        Err(_) => Err(format!(
            "the new binary was not ready {what} within {START_TIMEOUT:?}"
        )),
    }
}

/// How a take-over ended.
pub enum TakeOver {
    /// Committed: serve (`plan`: the config file to apply; `stop`: a stop
    /// arrived meanwhile, so stop at once: `Event::Stop` for a signal,
    /// `Event::LinkStop` for one the old front passed on).
    Serve {
        rebuilt: Box<state::Rebuilt>,
        plan: Option<Box<Plan>>,
        stop: Option<Event>,
    },
    /// Told to stop before it was ready: the running front goes on.
    Stopped,
}

/// The new front's side: say hello, take the state, rebuild, plan the
/// config file (`config`, loaded from `flags` as a fresh start would), say
/// ready with the plan's notes, wait for the commit. A stop signal before
/// ready declines the take-over; after it, it is kept for when this front
/// owns everything. The rebuilt front is frozen; [`commit`] starts it.
pub async fn take_over(
    link: &Link,
    spawn: crate::supervisor::SpawnPlan,
    nofile: u64,
    flags: crate::config::Flags,
    config: crate::config::Config,
    signals: &mut crate::signals::FrontSignals,
) -> Result<TakeOver, String> {
    link.send(&Msg::Hello(Hello::mine()))
        .await
        .map_err(|e| format!("cannot reach the running front: {e}"))?;
    let received = tokio::select! {
        received = link.recv() => received,
        () = signals.stop() => {
            let _ = link.send(&Msg::Error("the new front was told to stop before it took over".into())).await;
            return Ok(TakeOver::Stopped);
        }
    };
    let (json, fds) = match received {
        Ok(Some(Msg::State(json, fds))) => (json, fds),
        Ok(Some(Msg::Abort(why))) => return Err(format!("the running front declined: {why}")),
        Ok(Some(other)) => return Err(format!("unexpected {other:?} from the running front")),
        Ok(None) => return Err("the running front went away".into()),
        Err(e) => return Err(format!("receiving the handover: {e}")),
    };
    let refuse = |why: String| async move {
        let _ = link.send(&Msg::Error(why.clone())).await;
        why
    };
    let value: state::Handover = match serde_json::from_slice(&json) {
        Ok(v) => v,
        Err(e) => return Err(refuse(format!("cannot read the handover: {e}")).await),
    };
    let has_file = flags.config.is_some();
    let rebuilt = match state::rebuild(value, fds, spawn, nofile, flags) {
        Ok(r) => r,
        Err(why) => return Err(refuse(why).await),
    };
    let (plan, notes) = if has_file {
        let planned = rebuilt.front.borrow_mut().plan_file(config);
        match planned {
            Ok(plan) => {
                let mut notes = vec!["configuration file applied".to_string()];
                notes.extend(plan.notes.iter().cloned());
                (Some(Box::new(plan)), notes)
            }
            Err(why) => {
                return Err(refuse(format!("its configuration cannot apply: {why}")).await);
            }
        }
    } else {
        (
            None,
            vec![
                "no config file (started without --config): the running configuration passes over as it is"
                    .to_string(),
            ],
        )
    };
    link.send(&Msg::Ready(notes))
        .await
        .map_err(|e| format!("the running front went away: {e}"))?;
    let mut stopped = None;
    loop {
        let received = tokio::select! {
            received = link.recv() => received,
            () = signals.stop() => {
                stopped = Some(Event::Stop);
                continue;
            }
        };
        match received {
            Ok(Some(Msg::Commit)) => break,
            // Passed on before the commit reached us: keep it.
            Ok(Some(Msg::Stop)) => {
                stopped.get_or_insert(Event::LinkStop);
            }
            // The old front died after we were ready: nobody else serves.
            Ok(None) => {
                warn!("the previous front went away before committing; taking over");
                break;
            }
            Ok(Some(Msg::Abort(why))) => return Err(format!("the running front aborted: {why}")),
            Ok(Some(other)) => return Err(format!("unexpected {other:?} from the running front")),
            Err(e) => return Err(format!("waiting for the commit: {e}")),
        }
    }
    Ok(TakeOver::Serve {
        rebuilt: Box::new(rebuilt),
        plan,
        stop: stopped,
    })
}

/// Start serving after a commit: apply the config file, thaw, accept,
/// replace the old workers (or, if told to stop meanwhile, stop). Then
/// watch the link for a stop the old front passes on.
pub fn commit(front: &Shared, plan: Option<Box<Plan>>, stop: Option<Event>, link: Link) {
    {
        let mut f = front.borrow_mut();
        if let Some(plan) = plan {
            f.apply_plan(*plan);
        }
        if stop == Some(Event::Stop) {
            let _ = f.handle(Event::Stop);
        }
        let paused_us = state::unix_micros().saturating_sub(f.life().frozen_at_us());
        f.record_event(
            crate::status::EventKind::Upgrade,
            format!(
                "this front (pid {}, rrproxy {}) took over; clients waited at most {:.1} ms",
                std::process::id(),
                crate::version::describe(),
                paused_us as f64 / 1000.0
            ),
        );
        let _ = f.handle(Event::TookOver);
        if stop == Some(Event::LinkStop) {
            let _ = f.handle(Event::LinkStop);
        }
        info!(
            paused_ms = paused_us as f64 / 1000.0,
            "accepting again: clients waited in the listen backlog for at most this long"
        );
    }
    let front = Rc::downgrade(front);
    tokio::task::spawn_local(async move {
        loop {
            match link.recv().await {
                Ok(Some(Msg::Stop)) => {
                    let Some(front) = front.upgrade() else { return };
                    info!("the previous front passed a stop on: stopping");
                    let _ = front.borrow_mut().handle(Event::LinkStop);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    });
}
