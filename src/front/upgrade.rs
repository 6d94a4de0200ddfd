//! Upgrading the whole proxy without refusing a connection: the front
//! first, then the workers one slot at a time.
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
//! the backlog, and replaces the old workers one by one. If the new binary
//! is missing, is not rrproxy, exits, rejects the config, speaks another
//! protocol or is not ready in time, the old front thaws and goes on as if
//! nothing happened (tableflip's rule), and the command fails with why.

pub mod state;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::{info, warn};

use super::{Shared, notify, notify_reloading};
use crate::handover::{self, Hello, Link, Msg};

/// How long the new binary may take to say hello, and then to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

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
/// changed.
pub async fn upgrade(front: &Shared, path: Option<PathBuf>) -> Result<String, String> {
    {
        let mut f = front.borrow_mut();
        if f.state.shutting_down {
            return Err("the proxy is shutting down".into());
        }
        if f.state.upgrading {
            return Err("an upgrade is already in progress (one at a time)".into());
        }
        if f.state.rolling {
            return Err(
                "the workers are still being replaced after the last upgrade; try again when `ctl status` shows it done"
                    .into(),
            );
        }
        f.state.upgrading = true;
    }
    let result = run(front, path).await;
    let mut f = front.borrow_mut();
    if let Err(why) = &result {
        warn!("upgrade failed, nothing changed: {why}");
        f.state.upgrading = false;
        thaw(&mut f);
        notify(&[sd_notify::NotifyState::Ready]);
    }
    result
}

fn thaw(f: &mut super::Front) {
    if f.state.frozen {
        f.state.frozen = false;
        f.state.thaw.notify_waiters();
        f.resume_header_reads();
        f.arm_watchers();
        f.refresh_all_views();
        f.retry_pending();
        f.update_paused();
    }
}

async fn run(front: &Shared, path: Option<PathBuf>) -> Result<String, String> {
    let (exe, argv) = {
        let f = front.borrow();
        (
            path.unwrap_or_else(|| f.state.exe_path.clone()),
            f.state.argv.clone(),
        )
    };
    check_binary(&exe).await?;
    notify_reloading();
    let (ours, theirs) = crate::channel::fdpass::pair().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(argv.iter().skip(1))
        .env(handover::ENV, crate::sys::raw(&theirs.as_fd()).to_string())
        .stdin(Stdio::null());
    if let Some(arg0) = argv.first() {
        cmd.arg0(arg0);
    }
    crate::sys::inherit_fd(&mut cmd, crate::sys::raw(&theirs.as_fd()));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(theirs);
    let new_pid = child.id();
    info!(path = %exe.display(), pid = new_pid, "upgrade: new front started");
    let link = Link::new(ours).map_err(|e| e.to_string())?;
    let outcome = converse(front, &link, &exe).await;
    match &outcome {
        Ok(_) => {
            // The new front is its own master now; not our child to reap.
            drop(child);
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    outcome
}

/// Talk to the new front until it commits or fails.
async fn converse(front: &Shared, link: &Link, exe: &Path) -> Result<String, String> {
    let shown = exe.display();
    let hello = match next(link, "to start").await? {
        Msg::Hello(h) => h,
        Msg::Error(why) => return Err(format!("the new binary {shown} refused to start: {why}")),
        other => return Err(format!("the new binary {shown} said {other:?} first")),
    };
    if let Some(why) = hello.incompatibility() {
        let _ = link.send(&Msg::Abort(why.clone())).await;
        return Err(why);
    }
    // Freeze: from here until commit or abort nothing changes.
    let (json, fds) = {
        let mut f = front.borrow_mut();
        f.flush();
        f.state.frozen = true;
        f.suspend_header_reads();
        f.update_paused();
        f.refresh_all_views();
        let (value, fds) = state::capture(&f);
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
    match next(link, "to take over").await? {
        Msg::Ready => {}
        Msg::Error(why) => {
            return Err(format!(
                "the new front ({shown}) could not take over: {why}"
            ));
        }
        other => return Err(format!("the new front ({shown}) said {other:?}")),
    }
    // Point of no return.
    notify(&[sd_notify::NotifyState::MainPid(hello.pid)]);
    link.send(&Msg::Commit)
        .await
        .map_err(|e| format!("the new front ({shown}) went away before the commit: {e}"))?;
    let build = &hello.build[..hello.build.len().min(12)];
    let msg = format!(
        "front upgraded: pid {} -> {} (rrproxy {}, build {build}); the workers are being replaced one at a time",
        std::process::id(),
        hello.pid,
        hello.version
    );
    info!("{msg}");
    Ok(msg)
}

/// After a successful upgrade (and after the operator got the reply): let
/// the old front exit.
pub fn hand_over(front: &Shared) {
    let mut f = front.borrow_mut();
    f.state.handed_over = true;
    f.counters.hand_over();
    f.state.changed.notify_waiters();
    // Control sessions waiting on the freeze answer "reconnect"; worker
    // channel readers stay frozen for good.
    f.state.thaw.notify_waiters();
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

/// The new front's side: say hello, take the state, rebuild, say ready,
/// wait for the commit. Returns the rebuilt front (frozen; the caller
/// thaws it and starts serving).
pub async fn take_over(
    link: &Link,
    plan: crate::supervisor::SpawnPlan,
    nofile: u64,
    state: super::State,
) -> Result<state::Rebuilt, String> {
    link.send(&Msg::Hello(Hello::mine()))
        .await
        .map_err(|e| format!("cannot reach the running front: {e}"))?;
    let (json, fds) = match link.recv().await {
        Ok(Some(Msg::State(json, fds))) => (json, fds),
        Ok(Some(Msg::Abort(why))) => return Err(format!("the running front declined: {why}")),
        Ok(Some(other)) => return Err(format!("unexpected {other:?} from the running front")),
        Ok(None) => return Err("the running front went away".into()),
        Err(e) => return Err(format!("receiving the handover: {e}")),
    };
    let value: state::Handover = match serde_json::from_slice(&json) {
        Ok(v) => v,
        Err(e) => {
            let why = format!("cannot read the handover: {e}");
            let _ = link.send(&Msg::Error(why.clone())).await;
            return Err(why);
        }
    };
    let rebuilt = match state::rebuild(value, fds, plan, nofile, state) {
        Ok(r) => r,
        Err(why) => {
            let _ = link.send(&Msg::Error(why.clone())).await;
            return Err(why);
        }
    };
    link.send(&Msg::Ready)
        .await
        .map_err(|e| format!("the running front went away: {e}"))?;
    match link.recv().await {
        Ok(Some(Msg::Commit)) => Ok(rebuilt),
        // The old front died after we were ready: nobody else serves.
        Ok(None) => {
            warn!("the previous front went away before committing; taking over");
            Ok(rebuilt)
        }
        Ok(Some(Msg::Abort(why))) => Err(format!("the running front aborted: {why}")),
        Ok(Some(other)) => Err(format!("unexpected {other:?} from the running front")),
        Err(e) => Err(format!("waiting for the commit: {e}")),
    }
}

/// Start serving after a commit: thaw, accept, then replace the old
/// workers one slot at a time.
pub fn commit(front: &Shared) {
    {
        let mut f = front.borrow_mut();
        f.state.upgrading = false;
        thaw(&mut f);
        f.state.announced_ready = true;
        let paused_us = state::unix_micros().saturating_sub(f.state.frozen_at_us);
        info!(
            paused_ms = paused_us as f64 / 1000.0,
            "accepting again: clients waited in the listen backlog for at most this long"
        );
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("accepting connections (upgraded)"),
    ]);
    if let Err(why) = super::rolling::start(front.clone()) {
        warn!("cannot replace the workers after the upgrade: {why}");
    }
}
