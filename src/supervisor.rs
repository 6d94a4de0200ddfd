//! Worker slots and the processes in them: the front's `Workers` part.
//!
//! A slot is a stable number 0..N-1 (the `worker` metric label). It holds
//! at most one `Serving` process, plus, during a rolling restart or an
//! upgrade, a `Starting` replacement or `Retiring` predecessors that finish
//! their connections. Each process has a cell of the statistics table,
//! given back (folded into the bases) when it is gone.
//!
//! This module knows processes, not connections or backends: spawning by
//! re-executing the front's own binary (`process`), respawn backoff and
//! parking (`respawn`). The front drives it (see `front::lifecycle`), so
//! nothing here depends on the front.

pub mod process;
pub mod respawn;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use hashbrown::HashMap;
use serde::Serialize;
use tracing::debug;

use crate::channel::Handoff;
use crate::channel::fdpass::Channel;
use crate::logging::LogOptions;

pub use process::{Exe, spawn_worker};

/// Most handed-off connections that may wait unread in one worker's channel.
pub const MAX_UNREAD: u64 = 512;
/// A worker whose handoffs have waited this long unread gets no new ones
/// until it reads (a busy worker reads its channel every loop turn; one
/// that does not is stopped or hung, and the watchdog replaces it).
pub const UNREAD_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Its cell in the statistics table.
    pub cell: usize,
    /// The build id it reported when ready.
    pub build: Option<String>,
    /// Inherited from a previous front (an upgrade): not our child, so its
    /// exit status cannot be read, only its end seen.
    pub adopted: bool,
    /// The front's end of the channel.
    pub channel: Rc<Channel>,
    /// The worker's end, kept open by the front: if the worker dies, the
    /// handoffs it had not yet read are still queued here, with their
    /// descriptors, and can be given to another worker.
    pub worker_end: OwnedFd,
    /// Readable once the process has exited.
    pub pidfd: Rc<OwnedFd>,
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
    /// Connections handed over its life (also in its cell, for readers).
    pub handed: u64,
    /// Backend ids of handoffs sent and not yet taken out of the channel,
    /// oldest first (the worker's `Received` count says how many went).
    pub inflight: VecDeque<u32>,
    /// The worker's `Received` count when `inflight` was last trimmed.
    pub received_seen: u64,
    /// Open connections per client IP (only with `--max-conns-per-ip`).
    pub ips: HashMap<IpAddr, u32>,
    pub spawned: Instant,
    /// Since when it has had handoffs to read and read none (watchdog).
    pub stalled_since: Option<(Instant, u64)>,
    /// Since when its oldest unread handoff has waited (roughly: reset
    /// whenever the worker takes any); `None` when it has none.
    pub unread_since: Option<Instant>,
}

impl WorkerProc {
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

    /// Queue a control frame and send what the channel takes.
    pub fn queue_control(&mut self, frame: Vec<u8>) {
        self.outbox.push_back(frame);
        self.flush_outbox();
    }

    /// Queue a config frame, replacing any config still waiting: only the
    /// latest table matters, so a stalled worker holds at most one.
    pub fn queue_config(&mut self, frame: Vec<u8>) {
        if let Some(old) = self
            .outbox
            .iter_mut()
            .find(|f| crate::channel::is_config(f))
        {
            *old = frame;
        } else {
            self.outbox.push_back(frame);
        }
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
                Err(err) if crate::channel::fdpass::is_transient(&err) => {
                    // Kernel memory is short: try again when woken.
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

    /// Ask the process to exit now (SIGKILL), through its pidfd, so a
    /// reused pid can never be hit.
    pub fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&*self.pidfd, rustix::process::Signal::KILL);
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
}

impl Slot {
    pub fn new(index: usize) -> Slot {
        Slot {
            index,
            procs: Vec::new(),
            parked: false,
            respawn_scheduled: false,
            crashes: VecDeque::new(),
        }
    }

    pub fn serving(&self) -> Option<&WorkerProc> {
        self.procs.iter().find(|p| p.role == Role::Serving)
    }

    pub fn serving_mut(&mut self) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.role == Role::Serving)
    }

    pub fn proc(&self, id: u64) -> Option<&WorkerProc> {
        self.procs.iter().find(|p| p.id == id)
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

/// How workers are started: what the front passes to each.
pub struct SpawnPlan {
    /// The front's own binary.
    pub exe: Exe,
    /// Logging flags passed on to workers.
    pub log: LogOptions,
    /// With `--cpu-affinity`: the CPU of each worker slot.
    pub cpus: Option<Vec<usize>>,
}

/// The front's `Workers` part: the slots, their processes, and the
/// statistics cells they use.
pub struct Workers {
    pub slots: Vec<Slot>,
    pub plan: SpawnPlan,
    /// Statistics cells not in use.
    free_cells: Vec<usize>,
    pub next_proc: u64,
    /// Most connections one worker process may hold (its descriptor budget
    /// or `--max-conns-per-worker`).
    pub per_proc_cap: u64,
    /// The open-file limit workers run with.
    pub nofile: u64,
}

impl Workers {
    pub fn new(
        slots: usize,
        cells: usize,
        plan: SpawnPlan,
        per_proc_cap: u64,
        nofile: u64,
    ) -> Workers {
        Workers {
            slots: (0..slots).map(Slot::new).collect(),
            plan,
            free_cells: (0..cells).rev().collect(),
            next_proc: 0,
            per_proc_cap,
            nofile,
        }
    }

    /// Take a free statistics cell.
    pub fn take_cell(&mut self) -> Option<usize> {
        self.free_cells.pop()
    }

    /// Give a cell back (already folded and cleared).
    pub fn give_cell(&mut self, cell: usize) {
        if !self.free_cells.contains(&cell) {
            self.free_cells.push(cell);
        }
    }

    /// Mark a cell as used (an adopted process keeps its cell).
    pub fn claim_cell(&mut self, cell: usize) {
        self.free_cells.retain(|&c| c != cell);
    }

    pub fn procs(&self) -> impl Iterator<Item = &WorkerProc> {
        self.slots.iter().flat_map(|s| &s.procs)
    }

    pub fn procs_mut(&mut self) -> impl Iterator<Item = &mut WorkerProc> {
        self.slots.iter_mut().flat_map(|s| &mut s.procs)
    }

    pub fn all_gone(&self) -> bool {
        self.slots.iter().all(|s| s.procs.is_empty())
    }

    pub fn any_serving(&self) -> bool {
        self.slots.iter().any(|s| s.serving().is_some())
    }
}
