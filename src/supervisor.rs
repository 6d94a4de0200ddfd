//! Worker slots and the processes in them: spawning by re-executing the
//! rrproxy binary, noticing exits, recovering connections still queued for
//! a dead worker, respawning with backoff, parking a crash-looping slot.
//!
//! A slot is a stable number 0..N-1 (the `worker` metric label). It holds
//! at most one `Serving` process, plus, during a rolling restart, a
//! `Starting` replacement or `Retiring` predecessors that finish their
//! connections.

mod process;
mod respawn;
pub mod rolling;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use hashbrown::HashMap;
use metrics::{Counter, Gauge, counter, gauge};
use serde::Serialize;
use tracing::debug;

use crate::channel::Handoff;
use crate::channel::fdpass::Channel;
use crate::metrics as m;

pub use process::spawn_worker;

/// Most handed-off connections that may wait unread in one worker's channel.
pub const MAX_UNREAD: u64 = 512;

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Spawned, has not reported ready yet.
    Starting,
    /// Takes new connections.
    Serving,
    /// Replaced or stopping: finishes its connections, takes no new ones.
    Retiring,
}

/// One worker process, as the front sees it.
pub struct WorkerProc {
    /// Unique for the front's lifetime (pids can be reused).
    pub id: u64,
    pub pid: u32,
    pub role: Role,
    /// The front's end of the channel.
    pub channel: Rc<Channel>,
    /// The worker's end, kept open by the front: if the worker dies, the
    /// handoffs it had not yet read are still queued here, with their
    /// descriptors, and can be given to another worker.
    pub worker_end: OwnedFd,
    /// The last send found the channel full; skip until it drains.
    pub full: bool,
    /// A task waits for the channel to drain (at most one per process).
    pub watched: bool,
    /// Control frames (config, drain) waiting for channel room; they go
    /// before any further handoff.
    pub outbox: VecDeque<Vec<u8>>,
    /// This accept round's handoffs and their descriptors.
    pub batch: Vec<Handoff>,
    pub batch_fds: Vec<OwnedFd>,
    /// Connections handed and not yet reported closed.
    pub active: u64,
    /// Connections handed (batched or sent) and not yet taken out of the
    /// channel by the worker:
    /// a worker that stops reading is skipped once this reaches
    /// [`MAX_UNREAD`], so a stalled worker holds back a bounded number of
    /// clients whatever the kernel's socket buffer would allow.
    pub unread: u64,
    /// `active`, split by backend id (to uncount them if the worker dies).
    pub per_backend: HashMap<u32, u64>,
    /// Open connections per client IP (only with `--max-conns-per-ip`).
    pub ips: HashMap<IpAddr, u32>,
    /// Connections handed over its life.
    pub handed: u64,
    pub spawned: Instant,
}

impl WorkerProc {
    pub fn assign(&mut self, backend: u32) {
        self.active += 1;
        *self.per_backend.entry(backend).or_default() += 1;
    }

    pub fn unassign(&mut self, backend: u32, n: u64) {
        self.active = self.active.saturating_sub(n);
        if let Some(c) = self.per_backend.get_mut(&backend) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.per_backend.remove(&backend);
            }
        }
    }

    pub fn ip_add(&mut self, ip: IpAddr) {
        *self.ips.entry(ip).or_default() += 1;
    }

    pub fn ip_sub(&mut self, ip: IpAddr, n: u32) {
        if let Some(c) = self.ips.get_mut(&ip) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.ips.remove(&ip);
            }
        }
    }

    /// Move one connection's accounting from `from` to `to` backend.
    pub fn reassign(&mut self, from: u32, to: u32) {
        self.unassign(from, 1);
        self.assign(to);
    }

    /// Queue a control frame and send what the channel takes.
    pub fn queue_control(&mut self, frame: Vec<u8>) {
        self.outbox.push_back(frame);
        self.flush_outbox();
    }

    /// Send queued control frames until the channel is full.
    pub fn flush_outbox(&mut self) {
        while let Some(frame) = self.outbox.front() {
            match self.channel.try_send(frame, &[]) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    self.full = true;
                    return;
                }
                Err(err) => {
                    debug!(pid = self.pid, cause = %err, "control frame not sent; worker going away");
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Ask the process to exit now (SIGKILL). Only while it is listed,
    /// that is, not yet reaped, so the pid cannot have been reused.
    pub fn kill(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Per-slot metric handles.
pub struct SlotMetrics {
    pub connections: Counter,
    pub active: Gauge,
    pub restarts: Counter,
    pub up: Gauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl SlotMetrics {
    fn new(index: usize) -> SlotMetrics {
        let label = index.to_string();
        let sm = SlotMetrics {
            connections: counter!(m::WORKER_CONNECTIONS, "worker" => label.clone()),
            active: gauge!(m::WORKER_ACTIVE, "worker" => label.clone()),
            restarts: counter!(m::WORKER_RESTARTS, "worker" => label.clone()),
            up: gauge!(m::WORKER_UP, "worker" => label.clone()),
            bytes_in: counter!(m::WORKER_BYTES_IN, "worker" => label.clone()),
            bytes_out: counter!(m::WORKER_BYTES_OUT, "worker" => label),
        };
        for c in [&sm.connections, &sm.restarts, &sm.bytes_in, &sm.bytes_out] {
            c.absolute(0);
        }
        sm.active.set(0.0);
        sm.up.set(0.0);
        sm
    }
}

/// A worker slot.
pub struct Slot {
    pub index: usize,
    pub procs: Vec<WorkerProc>,
    /// Crash-looping: no respawn until an operator restarts the workers.
    pub parked: bool,
    /// A respawn is scheduled.
    pub respawn_scheduled: bool,
    /// Times of recent unexpected exits (for backoff and parking).
    pub crashes: VecDeque<Instant>,
    pub restarts: u64,
    /// Connections handed to this slot over its life.
    pub handed: u64,
    pub metrics: SlotMetrics,
}

impl Slot {
    pub fn new(index: usize) -> Slot {
        Slot {
            index,
            procs: Vec::new(),
            parked: false,
            respawn_scheduled: false,
            crashes: VecDeque::new(),
            restarts: 0,
            handed: 0,
            metrics: SlotMetrics::new(index),
        }
    }

    pub fn serving(&self) -> Option<&WorkerProc> {
        self.procs.iter().find(|p| p.role == Role::Serving)
    }

    pub fn serving_mut(&mut self) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.role == Role::Serving)
    }

    pub fn proc_mut(&mut self, id: u64) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.id == id)
    }

    /// A word for `ctl workers`.
    pub fn state(&self) -> &'static str {
        if self.parked {
            "parked"
        } else if self.procs.iter().any(|p| p.role == Role::Starting) {
            if self.serving().is_some() {
                "restarting"
            } else {
                "starting"
            }
        } else if self.serving().is_some() {
            "up"
        } else if !self.procs.is_empty() {
            "draining"
        } else {
            "down"
        }
    }
}
