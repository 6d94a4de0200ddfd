//! Rolling restart (`rrproxy ctl reload`, SIGUSR2): replace the workers one
//! slot at a time so that no connection is lost.
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

use super::Role;
use crate::front::Shared;

/// How long a replacement may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Start a rollout in the background. The receiver gets its outcome.
pub fn start(front: Shared) -> Result<oneshot::Receiver<Result<String, String>>, String> {
    {
        let mut f = front.borrow_mut();
        if f.shutting_down {
            return Err("shutting down".into());
        }
        if f.rolling {
            return Err("a rolling restart is already in progress".into());
        }
        f.rolling = true;
    }
    let (tx, rx) = oneshot::channel();
    tokio::task::spawn_local(async move {
        let outcome = roll(&front).await;
        front.borrow_mut().rolling = false;
        match &outcome {
            Ok(msg) => info!("{msg}"),
            Err(msg) => warn!("{msg}"),
        }
        let _ = tx.send(outcome);
    });
    Ok(rx)
}

async fn roll(front: &Shared) -> Result<String, String> {
    let slots = front.borrow().slots.len();
    for slot in 0..slots {
        if front.borrow().shutting_down {
            return Err("rolling restart interrupted by shutdown".into());
        }
        let new_id = {
            let mut f = front.borrow_mut();
            f.unpark(slot);
            f.start_worker(slot)
                .map_err(|e| format!("rolling restart aborted: cannot start worker {slot}: {e}"))?
        };
        wait_ready(front, slot, new_id).await?;
        {
            let mut f = front.borrow_mut();
            let s = &mut f.slots[slot];
            s.restarts += 1;
            s.metrics.restarts.increment(1);
        }
        wait_retired(front, slot).await;
    }
    Ok(format!("rolling restart done: {slots} workers replaced"))
}

/// Wait until the process `id` in `slot` serves, or fail the rollout.
async fn wait_ready(front: &Shared, slot: usize, id: u64) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let changed = front.borrow().changed.clone();
        let notified = changed.notified();
        let role = front.borrow().slots[slot]
            .procs
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.role);
        match role {
            Some(Role::Serving) => return Ok(()),
            None => {
                return Err(format!(
                    "rolling restart aborted: the new worker {slot} exited before becoming ready; the old one keeps serving"
                ));
            }
            Some(_) => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            if let Some(p) = front.borrow().slots[slot].procs.iter().find(|p| p.id == id) {
                p.kill();
            }
            return Err(format!(
                "rolling restart aborted: the new worker {slot} was not ready within {READY_TIMEOUT:?}; the old one keeps serving"
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
        let changed = front.borrow().changed.clone();
        let notified = changed.notified();
        if !front.borrow().slots[slot]
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
            for p in front.borrow().slots[slot]
                .procs
                .iter()
                .filter(|p| p.role == Role::Retiring)
            {
                warn!(
                    slot,
                    pid = p.pid,
                    active = p.active,
                    "old worker did not drain in time; killing it"
                );
                p.kill();
            }
            killed = true;
        }
    }
}
