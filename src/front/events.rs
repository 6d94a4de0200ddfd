//! Applying what workers report: readiness, connection opened on which
//! backend, connect failures, closes, bytes moved. This is how the front
//! knows the live counts that least-conn and the metrics need.

use tracing::info;

use super::Front;
use crate::channel::{Event, Up};
use crate::supervisor::Role;

impl Front {
    /// Handle one message from the worker process `id` in `slot`.
    pub fn on_up(&mut self, slot: usize, id: u64, up: Up) {
        match up {
            Up::Ready { pid } => self.worker_ready(slot, id, pid),
            Up::Events(events) => {
                for ev in events {
                    self.on_event(slot, id, ev);
                }
                self.refresh_view(slot, self.per_proc_cap);
                if self.backends.reap_drained() {
                    self.backends_changed();
                }
                self.update_paused();
            }
        }
    }

    fn worker_ready(&mut self, slot: usize, id: u64, pid: u32) {
        let drain_frame = self.drain_frame(self.config.load().drain_timeout);
        let s = &mut self.slots[slot];
        let Some(p) = s.proc_mut(id) else { return };
        if p.role != Role::Starting {
            return;
        }
        p.role = Role::Serving;
        // The newcomer takes over the slot; a predecessor finishes what it
        // has and exits (rolling restart).
        for old in s
            .procs
            .iter_mut()
            .filter(|p| p.id != id && p.role == Role::Serving)
        {
            old.role = Role::Retiring;
            old.queue_control(drain_frame.clone());
            info!(
                slot,
                old_pid = old.pid,
                new_pid = pid,
                "worker replaced; old one draining"
            );
        }
        s.metrics.up.set(1.0);
        info!(slot, pid, "worker up");
        self.arm_watchers();
        if !self.announced_ready {
            self.announced_ready = true;
            crate::front::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("accepting connections"),
            ]);
        }
        self.refresh_view(slot, self.per_proc_cap);
        self.retry_pending();
        self.update_paused();
        self.changed.notify_waiters();
    }

    fn on_event(&mut self, slot: usize, id: u64, ev: Event) {
        match ev {
            Event::Opened {
                planned,
                backend,
                connect_time,
            } => {
                if planned != backend {
                    if let Some(p) = self.slots[slot].proc_mut(id) {
                        p.reassign(planned, backend);
                    }
                    self.backends.sub_active_id(planned, 1);
                    if let Some(i) = self.backends.index_of(planned) {
                        self.backends.list[i].metrics.redispatches.increment(1);
                    }
                    if let Some(i) = self.backends.index_of(backend) {
                        self.backends.add_active(i);
                    }
                    self.fm.redispatched.increment(1);
                }
                if let Some(i) = self.backends.index_of(backend) {
                    let b = &mut self.backends.list[i];
                    b.total += 1;
                    b.metrics.connections.increment(1);
                    b.metrics.connect_time.record(connect_time.as_secs_f64());
                }
            }
            Event::ConnectFailed { backend, reason } => {
                if let Some(i) = self.backends.index_of(backend) {
                    self.backends.list[i].record_failure(reason);
                }
                self.passive_failure(backend);
            }
            Event::Closed {
                backend,
                opened,
                client,
                duration,
            } => {
                if let Some(p) = self.slots[slot].proc_mut(id) {
                    p.unassign(backend, 1);
                    p.ip_sub(client, 1);
                }
                self.backends.sub_active_id(backend, 1);
                self.release_ip(client);
                if opened {
                    self.fm.duration.record(duration.as_secs_f64());
                } else {
                    self.fm.failed.increment(1);
                }
            }
            Event::FirstByteTimeout { .. } => {
                metrics::counter!(crate::metrics::FIRST_BYTE_TIMEOUTS).increment(1);
            }
            Event::Received { count } => {
                if let Some(p) = self.slots[slot].proc_mut(id) {
                    p.unread = p.unread.saturating_sub(u64::from(count));
                }
            }
            Event::Bytes { backend, up, down } => {
                let sm = &self.slots[slot].metrics;
                sm.bytes_in.increment(up);
                sm.bytes_out.increment(down);
                if let Some(i) = self.backends.index_of(backend) {
                    let bm = &self.backends.list[i].metrics;
                    bm.bytes_out.increment(up);
                    bm.bytes_in.increment(down);
                }
            }
        }
    }
}
