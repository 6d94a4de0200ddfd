//! The front's periodic look, a few times a second: what workers counted
//! (in-flight handoffs trimmed, drained backends dropped), processes past
//! their deadline (not ready in time, not drained in time) or hung (not
//! reading their channel) killed, slots without a worker given one,
//! passively failed backends brought back when no health check will,
//! slow starts moved along, and connections still waiting handed out.
//!
//! Workers send nothing per connection, so this is where slow-moving
//! consequences of their counts are noticed; anything urgent (a worker
//! making room the front waits for, a connect failure) comes as an event.

use std::time::Duration;

use super::Shared;

/// How often the front looks.
pub const TICK: Duration = Duration::from_millis(250);
/// A worker that has had handoffs (or control frames) to read for this
/// long and read none is hung: it is killed, its queue recovered and the
/// slot respawned, as after a crash.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Look every [`TICK`] until the front exits.
pub async fn run(front: Shared) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut f = front.borrow_mut();
        if f.finished() || (f.stopping() && f.workers_gone()) {
            return;
        }
        f.upkeep();
    }
}
