//! The control socket: a Unix stream socket speaking a line protocol, like
//! HAProxy's runtime API, so `socat - UNIX-CONNECT:PATH` works by hand and
//! `rrproxy ctl` is a thin client.
//!
//! Protocol: the client sends one command per line; each reply ends with an
//! empty line. Errors start with `error:`. Add `--json` to a command for a
//! one-line JSON reply. Each client gets its own task with a line-length
//! limit and an idle timeout, so a client that sends garbage, or nothing,
//! cannot block the front or other clients. The socket is created mode 0600
//! and removed on exit; only root and the proxy's own user are served
//! (`SO_PEERCRED`; see `socket` for where the socket lives and what it may
//! replace).

mod client;
mod commands;
mod socket;
pub mod table;
mod top;

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

pub use crate::front::{BackendRow, Status, WorkerRow};
pub use client::run as ctl;
pub use socket::{Control, bind, check_path, private_dir, unlink};
pub use top::run as top;

use crate::front::Shared;

/// Longest accepted command line.
pub const MAX_LINE: usize = 4096;
/// A client silent for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most control clients at once.
const MAX_CLIENTS: usize = 64;

impl Control {
    /// Serve a control socket that is already bound (taken over from the
    /// previous front in an upgrade).
    pub fn adopt(
        path: std::path::PathBuf,
        listener: std::os::unix::net::UnixListener,
    ) -> std::io::Result<Control> {
        listener.set_nonblocking(true)?;
        socket::adopted(&path);
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
            if f.phase().handed_over() {
                return false;
            }
            if !f.frozen() {
                return true;
            }
            f.thaw_notify()
        };
        let waiting = thaw.notified();
        let wait = {
            let f = front.borrow();
            f.frozen() && !f.phase().handed_over()
        };
        if wait {
            waiting.await;
        }
    }
}

/// Returns once this front has handed over to a new one (an upgrade).
async fn handed_over(front: &Shared) {
    loop {
        let thaw = front.borrow().thaw_notify();
        // Registered before the check: the hand-over wakes it either way.
        let waiting = thaw.notified();
        if front.borrow().phase().handed_over() {
            return;
        }
        waiting.await;
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
    let me = rustix::process::geteuid().as_raw();
    loop {
        // Once this front has handed over, it accepts no one: clients wait
        // in the socket's queue, which the new front shares, and it answers
        // them (one accepted here now would be closed unanswered when this
        // process exits).
        let accepted = tokio::select! {
            biased;
            () = handed_over(&front) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!(cause = %err, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // tokio's `peer_cred`, not rustix's: a client in another PID
        // namespace (`rrproxy ctl` on the host, the proxy in a container)
        // has pid 0 here, which rustix's `UCred` (a non-zero `Pid`) cannot
        // hold: it came back as an error and the client was turned away.
        match stream.peer_cred() {
            Ok(cred) if socket::peer_allowed(cred.uid(), me) => {}
            Ok(cred) => {
                socket::log_refused(cred.uid(), cred.pid().unwrap_or(0));
                refuse(
                    stream,
                    "error: permission denied: only root and the proxy's user may use this socket\n\n",
                );
                continue;
            }
            Err(err) => {
                debug!(cause = %err, "cannot read a control client's credentials; closing it");
                continue;
            }
        }
        if clients.get() >= MAX_CLIENTS {
            refuse(stream, "error: too many control clients\n\n");
            continue;
        }
        clients.set(clients.get() + 1);
        let front = front.clone();
        let clients = clients.clone();
        front.borrow_mut().session_opened();
        tokio::task::spawn_local(async move {
            session(front.clone(), stream).await;
            clients.set(clients.get() - 1);
            // A front that handed over leaves once its sessions are done.
            front.borrow_mut().session_closed();
        });
    }
}

/// Tell a client why it is turned away, without waiting on it: the reply
/// fits the socket buffer, and one that does not read it is not our concern.
fn refuse(stream: UnixStream, why: &str) {
    let _ = stream.try_write(why.as_bytes());
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
        // A front that hands over answers no further line: the client's
        // next one goes to the new front (it reconnects).
        let got = tokio::select! {
            biased;
            () = handed_over(&front) => return,
            got = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)) => got,
        };
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
