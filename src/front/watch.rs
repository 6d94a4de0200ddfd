//! The tasks that watch each worker process: one reads its reports until
//! its channel closes, one waits for its end. Both hold the front weakly
//! and stop at a freeze (a hand-over): what a worker says or does
//! meanwhile waits in its channel or its pidfd for whichever front owns it
//! next.

use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};

use tracing::warn;

use super::Front;
use crate::channel::fdpass::{Channel, Received};
use crate::channel::{MAX_FRAME, Up};
use crate::supervisor::process;

/// A future that resolves when the front thaws, if it is frozen now.
pub(crate) fn frozen_gate(
    front: &Weak<std::cell::RefCell<Front>>,
) -> Option<impl std::future::Future<Output = ()> + use<>> {
    let f = front.upgrade()?;
    let f = f.borrow();
    if !f.frozen() {
        return None;
    }
    let thaw = f.thaw_notify();
    Some(async move { thaw.notified().await })
}

/// Start the tasks that read process `id`'s reports and see its end.
pub(super) fn watch(
    front: &Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    channel: Rc<Channel>,
    pidfd: Rc<OwnedFd>,
) {
    tokio::task::spawn_local(read_events(front.clone(), slot, id, channel));
    tokio::task::spawn_local(wait_exit(front.clone(), slot, id, pidfd));
}

/// Read a worker's reports until its channel closes.
async fn read_events(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    channel: Rc<Channel>,
) {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let mut bad_frames = 0u64;
    loop {
        fds.clear();
        let received = channel
            .recv_gated(&mut buf, &mut fds, || frozen_gate(&front))
            .await;
        let n = match received {
            Ok(Received::Frame(n)) => n,
            Ok(Received::Closed) | Err(_) => return,
        };
        let Some(front) = front.upgrade() else { return };
        match Up::decode(&buf[..n]) {
            // A connection given back carries its descriptor; nothing
            // else carries one (any other is dropped).
            Ok(up @ Up::Returned(_)) => {
                let fd = (!fds.is_empty()).then(|| fds.remove(0));
                front.borrow_mut().on_up(slot, id, up, fd);
            }
            Ok(up) => front.borrow_mut().on_up(slot, id, up, None),
            Err(err) => {
                bad_frames += 1;
                if bad_frames.is_power_of_two() {
                    warn!(slot, cause = %err, count = bad_frames, "ignoring malformed frame from worker");
                }
            }
        }
    }
}

/// The reports still queued on a channel whose worker is gone (read now,
/// bounded: a dead worker adds nothing), each connection given back with
/// its descriptor.
pub(super) fn queued_reports(channel: &Channel) -> Vec<(Up, Option<OwnedFd>)> {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let mut out = Vec::new();
    for _ in 0..100_000 {
        fds.clear();
        match channel.try_recv(&mut buf, &mut fds) {
            Ok(Received::Frame(n)) => match Up::decode(&buf[..n]) {
                Ok(up @ Up::Events(_)) => out.push((up, None)),
                Ok(up @ Up::Returned(_)) if !fds.is_empty() => out.push((up, Some(fds.remove(0)))),
                _ => {}
            },
            _ => break,
        }
    }
    out
}

/// Wait for a worker's end (after any freeze), then tell the front.
async fn wait_exit(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    pidfd: Rc<OwnedFd>,
) {
    let status = process::wait_exit(&pidfd).await;
    while let Some(wait) = frozen_gate(&front) {
        wait.await;
    }
    if let Some(front) = front.upgrade() {
        front.borrow_mut().worker_exited(slot, id, status);
    }
}
