//! The control socket: a Unix stream socket speaking a line protocol, like
//! HAProxy's runtime API, so `socat - UNIX-CONNECT:PATH` works by hand and
//! `rrproxy ctl` is a thin client.
//!
//! Protocol: the client sends one command per line; each reply ends with an
//! empty line. Errors start with `error:`. Add `--json` to a command for a
//! one-line JSON reply. Each client gets its own task with a line-length
//! limit and an idle timeout, so a client that sends garbage, or nothing,
//! cannot block the front or other clients. The socket is created mode 0600
//! and removed on exit.

mod client;
mod commands;
pub mod table;
mod top;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

pub use client::run as ctl;
pub use commands::{BackendRow, Status, WorkerRow};
pub use top::run as top;

use crate::front::Shared;

/// Longest accepted command line.
pub const MAX_LINE: usize = 4096;
/// A client silent for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most control clients at once.
const MAX_CLIENTS: usize = 64;

/// A bound control socket.
pub struct Control {
    pub path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

/// Bind the control socket at `path`, mode 0600. A stale socket file from a
/// previous run is replaced; one a live process answers on is an error.
pub fn bind(path: &Path) -> Result<Control, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {} is in use by another process (use --control PATH or --control off)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale control socket {}: {e}", path.display()))?;
    }
    // Bind under a temporary name, restrict it, then move it into place, so
    // the socket is never reachable with looser permissions.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let fail = |e: std::io::Error| format!("cannot create control socket {}: {e}", path.display());
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(Control {
        path: path.to_path_buf(),
        listener,
    })
}

impl Control {
    /// Serve a control socket that is already bound (taken over from the
    /// previous front in an upgrade).
    pub fn adopt(
        path: PathBuf,
        listener: std::os::unix::net::UnixListener,
    ) -> std::io::Result<Control> {
        listener.set_nonblocking(true)?;
        Ok(Control { path, listener })
    }

    /// A second descriptor for the socket (kept for a handover).
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(self.listener.try_clone()?.into())
    }
}

/// Wait while the front is frozen for an upgrade; false if it has handed
/// over (this process is leaving).
async fn wait_unfrozen(front: &Shared) -> bool {
    loop {
        let thaw = {
            let f = front.borrow();
            if f.state.handed_over {
                return false;
            }
            if !f.state.frozen {
                return true;
            }
            f.state.thaw.clone()
        };
        let waiting = thaw.notified();
        if front.borrow().state.frozen && !front.borrow().state.handed_over {
            waiting.await;
        }
    }
}

/// Remove the socket file on exit.
pub fn unlink(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        debug!(cause = %err, path = %path.display(), "could not remove control socket");
    }
}

/// Accept control clients until the front stops.
pub async fn serve(front: Shared, control: Control) {
    let listener = match UnixListener::from_std(control.listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(cause = %err, "control socket unusable");
            return;
        }
    };
    let clients = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!(cause = %err, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if clients.get() >= MAX_CLIENTS {
            let mut s = stream;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                s.write_all(b"error: too many control clients\n\n"),
            )
            .await;
            continue;
        }
        clients.set(clients.get() + 1);
        let front = front.clone();
        let clients = clients.clone();
        tokio::task::spawn_local(async move {
            session(front, stream).await;
            clients.set(clients.get() - 1);
        });
    }
}

/// One client: read lines, answer each, until EOF, `quit`, a bad line or
/// the idle timeout.
async fn session(front: Shared, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let mut limited = limited;
        let got = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
        let reply = match got {
            Err(_) => {
                let _ = send(&mut write, "error: idle timeout, closing\n").await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > MAX_LINE => {
                let _ = send(
                    &mut write,
                    &format!("error: command longer than {MAX_LINE} bytes, closing\n"),
                )
                .await;
                return;
            }
            Ok(Ok(_)) => {
                let Ok(text) = std::str::from_utf8(&line) else {
                    if send(&mut write, "error: command is not valid UTF-8\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                };
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let words: Vec<&str> = text.split_whitespace().collect();
                if table::lookup(&words).is_ok_and(|(_, a, _)| a == table::Action::Quit) {
                    return;
                }
                if !wait_unfrozen(&front).await {
                    let _ = send(
                        &mut write,
                        "error: this front has handed over to a new one; reconnect\n",
                    )
                    .await;
                    return;
                }
                commands::execute(&front, text).await
            }
        };
        let sent = send(&mut write, &reply.text).await;
        if reply.handed_over {
            // The operator has the answer: this front may go now.
            crate::front::upgrade::hand_over(&front);
            return;
        }
        if sent.is_err() {
            return;
        }
    }
}

/// Write a reply followed by the empty line that ends it.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &str) -> std::io::Result<()> {
    let mut out = reply.trim_end_matches('\n').to_string();
    out.push_str("\n\n");
    match tokio::time::timeout(Duration::from_secs(10), write.write_all(out.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
