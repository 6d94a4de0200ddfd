//! Acting on what workers report: readiness (with their build), connect
//! failures (passive health), closes (per-client counts), draining on a
//! signal, and wake-ups when they have made room.

use tracing::{error, info, warn};

use super::Front;
use crate::channel::{Event, Up};
use crate::supervisor::Role;

impl Front {
    /// Handle one message from the worker process `id` in `slot`.
    pub fn on_up(&mut self, slot: usize, id: u64, up: Up) {
        match up {
            Up::Ready { pid, build } => self.worker_ready(slot, id, pid, build),
            Up::Events(events) => {
                for ev in events {
                    self.on_event(slot, id, ev);
                }
                self.refresh_all_views();
                if !self.ledger.pending.is_empty() {
                    self.retry_pending();
                }
            }
        }
    }

    fn worker_ready(&mut self, slot: usize, id: u64, pid: u32, build: String) {
        let mine = crate::version::build_id();
        let drain = self.drain_frame();
        let s = &mut self.workers.slots[slot];
        let Some(p) = s.proc_mut(id) else { return };
        if p.role != Role::Starting {
            return;
        }
        if build != mine {
            // It cannot happen (workers run the front's own image), but if
            // it does, two builds must not serve side by side.
            error!(
                slot,
                pid,
                worker_build = %build,
                front_build = %mine,
                "worker reports another build than the front: refusing it"
            );
            p.kill();
            return;
        }
        p.role = Role::Serving;
        p.build = Some(build);
        // The newcomer takes over the slot; a predecessor finishes what it
        // has and exits (rolling restart).
        for old in s
            .procs
            .iter_mut()
            .filter(|p| p.id != id && p.role == Role::Serving)
        {
            old.role = Role::Retiring;
            old.queue_control(drain.clone());
            info!(
                slot,
                old_pid = old.pid,
                new_pid = pid,
                "worker replaced; old one draining"
            );
        }
        info!(slot, pid, "worker up");
        self.arm_watchers();
        if !self.state.announced_ready && !self.state.upgrading {
            self.state.announced_ready = true;
            super::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("accepting connections"),
            ]);
        }
        self.refresh_view(slot);
        self.publish();
        self.retry_pending();
        self.update_paused();
        self.state.changed.notify_waiters();
    }

    fn on_event(&mut self, slot: usize, id: u64, ev: Event) {
        match ev {
            Event::ConnectFailed { backend, .. } => self.passive_failure(backend),
            Event::Closed { client } => self.closed(slot, id, client),
            Event::Draining => {
                let Some(p) = self.workers.slots[slot].proc_mut(id) else {
                    return;
                };
                if p.role == Role::Retiring {
                    return;
                }
                let pid = p.pid;
                let was_serving = p.role == Role::Serving;
                p.role = Role::Retiring;
                warn!(
                    slot,
                    pid, "worker was told to stop by a signal: draining it"
                );
                if was_serving && !self.state.shutting_down {
                    // Keep the slot serving: a replacement, as in a roll.
                    self.replace_worker(slot);
                }
                self.refresh_view(slot);
                self.publish();
            }
            Event::Wake => {}
        }
    }
}
