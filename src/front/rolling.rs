//! Rolling restart of the workers (the second half of an upgrade): replace
//! them one slot at a time so that no connection is lost.
//!
//! For each slot: start a replacement; wait until it reports ready (it then
//! takes the slot's new connections and the old process is told to drain);
//! wait for the old process to finish its connections, up to the drain
//! timeout (then it is killed); go on with the next slot. A replacement that
//! exits or does not become ready within [`READY_TIMEOUT`] aborts the
//! rollout and the old worker keeps serving.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Shared;
use super::lifecycle::KILL_GRACE;
use crate::stats::SlotWord;
use crate::supervisor::Role;

/// How long a replacement may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Start a rollout in the background. The receiver gets its outcome.
pub fn start(front: Shared) -> Result<oneshot::Receiver<Result<String, String>>, String> {
    {
        let mut f = front.borrow_mut();
        if f.state.shutting_down {
            return Err("shutting down".into());
        }
        if f.state.rolling {
            return Err("a restart of the workers is already in progress".into());
        }
        f.state.rolling = true;
    }
    let (tx, rx) = oneshot::channel();
    tokio::task::spawn_local(async move {
        let outcome = roll(&front).await;
        {
            let mut f = front.borrow_mut();
            f.state.rolling = false;
            f.state.last_roll = Some(outcome.clone());
            f.state.changed.notify_waiters();
        }
        match &outcome {
            Ok(msg) => info!("{msg}"),
            Err(msg) => warn!("{msg}"),
        }
        let _ = tx.send(outcome);
    });
    Ok(rx)
}

async fn roll(front: &Shared) -> Result<String, String> {
    let slots = front.borrow().workers.slots.len();
    for slot in 0..slots {
        if front.borrow().state.shutting_down {
            return Err("restart of the workers interrupted by shutdown".into());
        }
        let new_id = {
            let mut f = front.borrow_mut();
            if f.workers.slots[slot].unpark() {
                info!(slot, "worker slot unparked");
            }
            f.start_worker(slot).map_err(|e| {
                format!("restart of the workers aborted: cannot start worker {slot}: {e}")
            })?
        };
        wait_ready(front, slot, new_id).await?;
        front
            .borrow()
            .counters
            .slot_bump(slot, SlotWord::Restarts, 1);
        wait_retired(front, slot).await;
    }
    Ok(format!("workers restarted: {slots} replaced"))
}

/// Wait until the process `id` in `slot` serves, or fail the rollout.
async fn wait_ready(front: &Shared, slot: usize, id: u64) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let changed = front.borrow().state.changed.clone();
        let notified = changed.notified();
        let role = front.borrow().workers.slots[slot].proc(id).map(|p| p.role);
        match role {
            Some(Role::Serving) => return Ok(()),
            None => {
                return Err(format!(
                    "restart of the workers aborted: the new worker {slot} exited before becoming ready; the old one keeps serving"
                ));
            }
            Some(_) => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            if let Some(p) = front.borrow().workers.slots[slot].proc(id) {
                p.kill();
            }
            return Err(format!(
                "restart of the workers aborted: the new worker {slot} was not ready within {READY_TIMEOUT:?}; the old one keeps serving"
            ));
        }
    }
}

/// Wait for the retiring processes of `slot` to exit; kill them after the
/// drain timeout.
async fn wait_retired(front: &Shared, slot: usize) {
    let drain = front.borrow().config.load().drain_timeout;
    let deadline = Instant::now() + drain + KILL_GRACE;
    let mut killed = false;
    loop {
        let changed = front.borrow().state.changed.clone();
        let notified = changed.notified();
        if !front.borrow().workers.slots[slot]
            .procs
            .iter()
            .any(|p| p.role == Role::Retiring)
        {
            return;
        }
        let limit = if killed {
            Instant::now() + Duration::from_secs(2)
        } else {
            deadline
        };
        if tokio::time::timeout_at(limit, notified).await.is_err() {
            if killed {
                return;
            }
            for p in front.borrow().workers.slots[slot]
                .procs
                .iter()
                .filter(|p| p.role == Role::Retiring)
            {
                warn!(
                    slot,
                    pid = p.pid,
                    "old worker did not drain in time; killing it"
                );
                p.kill();
            }
            killed = true;
        }
    }
}
