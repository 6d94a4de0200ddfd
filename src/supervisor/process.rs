//! Starting a worker process and seeing its end.
//!
//! A worker is the front's own binary re-executed with the hidden `worker`
//! role and its end of a fresh channel as the only inherited descriptor.
//! "Own binary" means the file the front itself runs (`/proc/self/exe`,
//! which names the running image even after a package upgrade renamed a
//! new file over the path), so a worker respawned after the file on disk
//! changed still runs the front's build.
//!
//! Each process is watched through a pidfd: it becomes readable when the
//! process ends, whether it is our child (then `waitid` reaps it and gives
//! its status) or a worker inherited from the previous front in an
//! upgrade (then only its end is known). Signals go through the pidfd too,
//! so a reused pid can never be hit.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions, pidfd_open, waitid};
use tokio::io::Interest;

use crate::logging::{LogFormat, LogOptions};
use crate::sys;

/// The executable workers are started from.
#[derive(Debug, Clone)]
pub struct Exe {
    /// What is executed.
    pub path: PathBuf,
    /// `argv[0]`, what `ps` shows: the path the front was started as.
    pub arg0: OsString,
}

impl Exe {
    /// The running image (through `/proc/self/exe`), shown as the path it
    /// was started from; the path itself if `/proc` is not mounted.
    pub fn own() -> io::Result<Exe> {
        let shown = std::env::current_exe()?;
        let magic = PathBuf::from("/proc/self/exe");
        let path = if magic.exists() {
            magic
        } else {
            tracing::warn!(
                "/proc is not mounted: workers start from {} (a changed file there would run a different build)",
                shown.display()
            );
            shown.clone()
        };
        Ok(Exe {
            path,
            arg0: shown.into_os_string(),
        })
    }
}

/// Spawn `exe worker --slot N --channel-fd FD` with `worker_end` inherited.
/// Returns the pid and a pidfd for it.
pub fn spawn_worker(
    exe: &Exe,
    slot: usize,
    worker_end: &impl AsFd,
    log: &LogOptions,
    cpu: Option<usize>,
) -> io::Result<(u32, OwnedFd)> {
    let fd = sys::raw(&worker_end.as_fd());
    let mut cmd = std::process::Command::new(&exe.path);
    cmd.arg0(&exe.arg0)
        .arg("worker")
        .arg("--slot")
        .arg(slot.to_string())
        .arg("--channel-fd")
        .arg(fd.to_string())
        .arg("--log-format")
        .arg(match log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
        .stdin(Stdio::null())
        // Meant for the front only: a worker must not talk to the service
        // manager, mistake the front's activated sockets for its own, or
        // take an upgrade handover.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove(crate::handover::ENV);
    if let Some(cpu) = cpu {
        cmd.arg("--cpu").arg(cpu.to_string());
    }
    for _ in 0..log.verbose {
        cmd.arg("-v");
    }
    for _ in 0..log.quiet {
        cmd.arg("-q");
    }
    sys::inherit_fd(&mut cmd, fd);
    let child = cmd.spawn()?;
    let pid = child.id();
    // Our child, not yet reaped (nobody waits for it but us), so the pid
    // is still its own.
    let pidfd = Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::other("spawned a process without a pid"))
        .and_then(|p| pidfd_open(p, PidfdFlags::empty()).map_err(io::Error::from));
    match pidfd {
        Ok(fd) => Ok((pid, fd)),
        Err(err) => {
            // Cannot watch it: do not leave it running unwatched.
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            Err(err)
        }
    }
}

/// Wait until the process behind `pidfd` has ended; describe how. Our own
/// child is reaped here; an adopted one's status is not ours to read.
pub async fn wait_exit(pidfd: &OwnedFd) -> String {
    let watch = match pidfd
        .try_clone()
        .and_then(|fd| sys::register(fd, Interest::READABLE))
    {
        Ok(w) => w,
        Err(err) => return format!("unknown (cannot watch the process: {err})"),
    };
    match watch.readable().await {
        Ok(mut guard) => guard.retain_ready(),
        Err(err) => return format!("unknown ({err})"),
    }
    match waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(st)) => {
            if let Some(code) = st.exit_status() {
                format!("exit status: {code}")
            } else if let Some(sig) = st.terminating_signal() {
                format!("killed by signal {sig}")
            } else {
                "ended".into()
            }
        }
        Ok(None) => "ended".into(),
        // Not our child (inherited in an upgrade): someone else reaps it.
        Err(_) => "ended (status not known: inherited from the previous front)".into(),
    }
}
