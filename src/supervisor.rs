//! Worker slots and the processes in them: the front's `Workers` part.
//!
//! A slot is a stable number 0..N-1 (the `worker` metric label). It holds
//! at most one `Serving` process, plus a `Starting` one (a respawn, or a
//! replacement in a rolling restart) and `Retiring` predecessors that
//! finish their connections. Each process has a cell of the statistics
//! table, given back (folded into the bases by the front) when it is gone.
//!
//! What this part owns and keeps true:
//! - every process has a deadline for its present role: a starting one
//!   must report ready within [`READY_TIMEOUT`], a retiring one must be
//!   gone by its drain deadline; past it, it is killed
//!   ([`Workers::kill_overdue`]), in every phase;
//! - a slot that is not parked always gets a process again
//!   ([`Workers::unstaffed`] says which lack one; the front starts them,
//!   after the crash backoff of `respawn` when the last one crashed);
//! - statistics cells: each live process holds exactly one; when none is
//!   free a slot waits for one, and the front may free the cell of the
//!   oldest retiring process ([`Workers::oldest_retiring`]) so a slot never
//!   stays without a worker because drains hold every cell;
//! - a rolling restart (`roll`) replaces every slot at once and lets the
//!   old processes drain together.
//!
//! This module knows processes, not backends or policies: spawning by
//! re-executing the front's own binary (`process`), respawn backoff and
//! parking (`respawn`), the hand-over of all of it (`state`). The front
//! drives it (see `front`), so nothing here depends on the front.

mod proc;
pub mod process;
pub mod respawn;
mod roll;
mod state;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::channel::Down;
use crate::channel::fdpass::{self, Channel};
use crate::logging::LogOptions;

pub use proc::{Refused, Tally, WorkerProc};
pub use process::{Exe, spawn_worker};
pub use state::WorkersState;

/// Most handed-off connections that may wait unread in one worker's channel.
pub const MAX_UNREAD: u64 = 512;
/// A worker whose handoffs have waited this long unread gets no new ones
/// until it reads (a busy worker reads its channel every loop turn; one
/// that does not is stopped or hung, and the watchdog replaces it).
pub const UNREAD_PATIENCE: Duration = Duration::from_millis(500);
/// How long a new worker may take to report ready before it is killed
/// (and, like a crash, replaced).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra grace after the drain timeout before a retiring worker is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

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

/// A worker slot.
pub struct Slot {
    index: usize,
    procs: Vec<WorkerProc>,
    /// Crash-looping: no respawn until an operator restarts the workers.
    parked: bool,
    /// A respawn is scheduled (after a crash's backoff).
    respawn_scheduled: bool,
    /// Times of recent unexpected exits (for backoff and parking).
    crashes: VecDeque<Instant>,
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

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn procs(&self) -> &[WorkerProc] {
        &self.procs
    }

    pub fn parked(&self) -> bool {
        self.parked
    }

    pub fn crashes(&self) -> usize {
        self.crashes.len()
    }

    pub fn serving(&self) -> Option<&WorkerProc> {
        self.procs.iter().find(|p| p.role == Role::Serving)
    }

    pub fn serving_mut(&mut self) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.role == Role::Serving)
    }

    /// The process that serves, or else the one starting.
    pub fn current(&self) -> Option<&WorkerProc> {
        self.serving()
            .or_else(|| self.procs.iter().find(|p| p.role == Role::Starting))
    }

    pub fn proc(&self, id: u64) -> Option<&WorkerProc> {
        self.procs.iter().find(|p| p.id == id)
    }

    pub fn proc_mut(&mut self, id: u64) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.id == id)
    }

    pub fn procs_mut(&mut self) -> impl Iterator<Item = &mut WorkerProc> {
        self.procs.iter_mut()
    }

    /// The process with handoffs batched this round, if any.
    pub fn batched_mut(&mut self) -> Option<&mut WorkerProc> {
        self.procs.iter_mut().find(|p| p.has_batch())
    }

    /// Has a process that serves or will (starting).
    pub fn staffed(&self) -> bool {
        self.procs.iter().any(|p| p.role != Role::Retiring)
    }

    /// A respawn is scheduled (a crash's backoff is running).
    pub fn respawn_pending(&self) -> bool {
        self.respawn_scheduled
    }

    /// The respawn scheduled after a crash is due now.
    pub fn respawn_due(&mut self) {
        self.respawn_scheduled = false;
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
    /// Logging options passed on to workers.
    pub log: LogOptions,
    /// With `--cpu-affinity`: the CPU of each worker slot.
    pub cpus: Option<Vec<usize>>,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("every statistics cell is in use (by processes still draining)")]
    NoCell,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The front's `Workers` part: the slots, their processes, the statistics
/// cells they use, and a rolling restart in progress.
pub struct Workers {
    slots: Vec<Slot>,
    plan: SpawnPlan,
    /// Statistics cells not in use.
    free_cells: Vec<usize>,
    next_proc: u64,
    /// Most connections one worker process may hold (its descriptor budget
    /// or `--max-conns-per-worker`).
    per_proc_cap: u64,
    /// The open-file limit workers run with.
    nofile: u64,
    roll: Option<roll::Roll>,
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
            roll: None,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn slot(&self, slot: usize) -> &Slot {
        &self.slots[slot]
    }

    pub fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        &mut self.slots[slot]
    }

    pub fn plan(&self) -> &SpawnPlan {
        &self.plan
    }

    pub fn per_proc_cap(&self) -> u64 {
        self.per_proc_cap
    }

    pub fn set_per_proc_cap(&mut self, cap: u64) {
        self.per_proc_cap = cap;
    }

    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// A number that differs between calls (a jitter seed).
    pub fn seed(&self) -> u64 {
        self.next_proc ^ u64::from(std::process::id())
    }

    pub fn procs(&self) -> impl Iterator<Item = &WorkerProc> {
        self.slots.iter().flat_map(|s| &s.procs)
    }

    pub fn procs_mut(&mut self) -> impl Iterator<Item = &mut WorkerProc> {
        self.slots.iter_mut().flat_map(|s| &mut s.procs)
    }

    /// Every live process, with its slot.
    pub fn procs_by_slot(&self) -> impl Iterator<Item = (usize, &WorkerProc)> {
        self.slots
            .iter()
            .flat_map(|s| s.procs.iter().map(move |p| (s.index, p)))
    }

    /// The cells of every live process.
    pub fn live_cells(&self) -> Vec<usize> {
        self.procs().map(|p| p.cell).collect()
    }

    pub fn all_gone(&self) -> bool {
        self.slots.iter().all(|s| s.procs.is_empty())
    }

    pub fn any_serving(&self) -> bool {
        self.slots.iter().any(|s| s.serving().is_some())
    }

    pub fn all_parked(&self) -> bool {
        self.slots.iter().all(|s| s.parked)
    }

    /// Give a cell back (the front has folded and cleared it).
    pub fn give_cell(&mut self, cell: usize) {
        if !self.free_cells.contains(&cell) {
            self.free_cells.push(cell);
        }
    }

    /// Start a new worker process in `slot`: a fresh channel whose first
    /// frames (the hello with its cell and `table`'s descriptor, then
    /// `frames`) are queued before the process runs, so they fit. It takes
    /// connections once it reports ready, which it must do within
    /// [`READY_TIMEOUT`].
    pub fn spawn(
        &mut self,
        slot: usize,
        table: BorrowedFd<'_>,
        frames: &[Vec<u8>],
        now: Instant,
    ) -> Result<u64, SpawnError> {
        let cell = self.free_cells.pop().ok_or(SpawnError::NoCell)?;
        match self.spawn_in(slot, cell, table, frames, now) {
            Ok(id) => Ok(id),
            Err(err) => {
                self.free_cells.push(cell);
                Err(err.into())
            }
        }
    }

    fn spawn_in(
        &mut self,
        slot: usize,
        cell: usize,
        table: BorrowedFd<'_>,
        frames: &[Vec<u8>],
        now: Instant,
    ) -> io::Result<u64> {
        let (front_end, worker_end) = fdpass::pair()?;
        let mut hello = Vec::new();
        Down::Hello {
            cell: cell as u32,
            build: crate::version::build_id().to_string(),
        }
        .encode(&mut hello)
        .map_err(io::Error::other)?;
        fdpass::send_raw(front_end.as_fd(), &hello, &[table])?;
        for frame in frames {
            fdpass::send_raw(front_end.as_fd(), frame, &[])?;
        }
        // Everything that can fail is done before the process exists, so
        // no error path leaves a child unwatched and unreaped (`spawn_worker`
        // kills and reaps its child itself if it cannot watch it).
        let channel = Rc::new(Channel::new(front_end)?);
        let cpu = self.plan.cpus.as_ref().and_then(|c| c.get(slot).copied());
        let (pid, pidfd) = spawn_worker(&self.plan.exe, slot, &worker_end, &self.plan.log, cpu)?;
        let id = self.next_proc;
        self.next_proc += 1;
        self.slots[slot].procs.push(WorkerProc::new(
            id,
            pid,
            Role::Starting,
            cell,
            channel,
            worker_end,
            Rc::new(pidfd),
            Some(now + READY_TIMEOUT),
        ));
        tracing::debug!(slot, pid, cell, "worker spawned");
        Ok(id)
    }

    /// Take a gone process out of its slot.
    pub fn remove(&mut self, slot: usize, id: u64) -> Option<WorkerProc> {
        let procs = &mut self.slots[slot].procs;
        let pos = procs.iter().position(|p| p.id == id)?;
        Some(procs.remove(pos))
    }

    /// Process `id` of `slot` reported ready with `build`: it serves, and
    /// the slot's previous serving process retires (told by `drain`, gone
    /// by `deadline`). Returns the pids retired.
    pub fn ready(
        &mut self,
        slot: usize,
        id: u64,
        build: String,
        drain: &[u8],
        now: Instant,
        deadline: Instant,
    ) -> Vec<u32> {
        let s = &mut self.slots[slot];
        let Some(p) = s.proc_mut(id) else {
            return Vec::new();
        };
        p.ready(build);
        let mut retired = Vec::new();
        for old in s
            .procs
            .iter_mut()
            .filter(|p| p.id != id && p.role == Role::Serving)
        {
            old.retire(now, deadline);
            old.queue_control(drain.to_vec());
            retired.push(old.pid);
        }
        retired
    }

    /// Slots that are not parked and have no process serving or starting,
    /// and no respawn already on its way.
    pub fn unstaffed(&self) -> Vec<usize> {
        self.slots
            .iter()
            .filter(|s| !s.parked && !s.respawn_scheduled && !s.staffed())
            .map(|s| s.index)
            .collect()
    }

    /// What a policy sees of `slot`: the connections its processes hold,
    /// and whether its serving process can take one more now (not full,
    /// no control frame waiting, under its cap, not too many unread or
    /// unread too long; the slot not parked). `counts(cell)` is a cell's
    /// (`Finished`, `Received`).
    pub fn view(&self, slot: usize, counts: impl Fn(usize) -> (u64, u64)) -> (u64, bool) {
        let s = &self.slots[slot];
        let mut active = 0;
        let mut routable = false;
        for p in &s.procs {
            let (finished, received) = counts(p.cell);
            let (held, unread) = p.load(finished, received);
            active += held;
            routable |= p.role == Role::Serving
                && !p.full
                && p.outbox.is_empty()
                && held < self.per_proc_cap
                && unread < MAX_UNREAD
                && !p.stuck(unread, UNREAD_PATIENCE);
        }
        (active, routable && !s.parked)
    }

    /// Every serving process is at its connection cap.
    pub fn all_at_cap(&self, counts: impl Fn(usize) -> (u64, u64)) -> bool {
        let serving: Vec<&WorkerProc> = self.slots.iter().filter_map(|s| s.serving()).collect();
        !serving.is_empty()
            && serving.iter().all(|p| {
                let (finished, received) = counts(p.cell);
                p.load(finished, received).0 >= self.per_proc_cap
            })
    }

    /// The retiring process that began retiring first, and its slot.
    pub fn oldest_retiring(&self) -> Option<(usize, &WorkerProc)> {
        self.procs_by_slot()
            .filter(|(_, p)| p.role == Role::Retiring)
            .min_by_key(|(_, p)| p.retired_at)
    }

    /// Free a statistics cell for a slot without a worker: kill the process
    /// that began retiring first (its connections are cut; its exit gives
    /// its cell back). Returns its slot and pid; `None` if one such kill is
    /// already on its way, or nothing retires.
    pub fn reclaim_cell(&mut self) -> Option<(usize, u32)> {
        if self.procs().any(|p| p.reclaimed) {
            return None;
        }
        let (slot, id) = self.oldest_retiring().map(|(slot, p)| (slot, p.id))?;
        let p = self.slots[slot].proc_mut(id)?;
        p.reclaimed = true;
        p.kill();
        Some((slot, p.pid))
    }

    /// Tell every process to finish and exit (shutdown): each retires,
    /// gone by `deadline`.
    pub fn retire_all(&mut self, drain: &[u8], now: Instant, deadline: Instant) {
        for p in self.procs_mut() {
            p.retire(now, deadline);
            p.queue_control(drain.to_vec());
        }
    }

    /// Kill processes past their role's deadline: starting ones not ready
    /// in time, retiring ones not drained in time. Returns (slot, pid,
    /// role) of each.
    pub fn kill_overdue(&mut self, now: Instant) -> Vec<(usize, u32, Role)> {
        let mut killed = Vec::new();
        for s in &mut self.slots {
            for p in s.procs.iter_mut().filter(|p| p.overdue(now)) {
                p.kill();
                killed.push((s.index, p.pid, p.role));
                // Once: the exit comes soon; do not repeat.
                p.deadline = None;
            }
        }
        killed
    }

    /// The watchdog's look (`received`: a cell's `Received` count): kill
    /// processes that have had handoffs or control frames to read for
    /// `limit` and read none. Returns (slot, pid, unread) of each.
    pub fn kill_hung(
        &mut self,
        received: impl Fn(usize) -> u64,
        now: Instant,
        limit: Duration,
    ) -> Vec<(usize, u32, u64)> {
        let mut killed = Vec::new();
        for s in &mut self.slots {
            for p in &mut s.procs {
                let got = received(p.cell);
                if p.hung(got, now, limit) {
                    p.kill();
                    killed.push((s.index, p.pid, p.handed.saturating_sub(got)));
                }
            }
        }
        killed
    }

    /// SIGKILL every process.
    pub fn kill_all(&self) {
        for p in self.procs() {
            p.kill();
        }
    }
}
