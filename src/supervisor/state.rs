//! The `Workers` part across an upgrade: what it says of itself
//! ([`Workers::handover`]) and how the new front's part is made from that
//! ([`Workers::from_handover`]). Each process's descriptors (the front's
//! channel end, the worker's end, the pidfd) travel beside the value, in
//! slot order. Deadlines travel as the time left, so a process retiring
//! when the upgrade came is still killed on time by the new front.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Role, Slot, SpawnPlan, WorkerProc, Workers};
use crate::channel::fdpass::Channel;
use crate::handover::FdSource;

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkersState {
    slots: Vec<SlotState>,
    next_proc: u64,
    cpus: Option<Vec<usize>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SlotState {
    parked: bool,
    procs: Vec<ProcState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProcState {
    id: u64,
    pid: u32,
    role: Role,
    cell: usize,
    build: Option<String>,
    handed: u64,
    inflight: Vec<u32>,
    received_seen: u64,
    ips: Vec<(IpAddr, u32)>,
    /// (Absent from a build before service limits: none.)
    #[serde(default)]
    counted: Vec<(u64, super::Tally)>,
    outbox: Vec<Vec<u8>>,
    full: bool,
    /// Milliseconds left before its role's deadline.
    deadline_ms: Option<u64>,
    /// Milliseconds since it began to retire.
    retired_ms: Option<u64>,
}

impl Workers {
    /// What this part hands to a new front; its descriptors are pushed on
    /// `fds`. The front is frozen and has flushed its batches.
    pub fn handover<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> WorkersState {
        let now = Instant::now();
        let slots = self
            .slots
            .iter()
            .map(|s| SlotState {
                parked: s.parked,
                procs: s
                    .procs
                    .iter()
                    .map(|p| {
                        fds.push(p.channel.as_fd());
                        fds.push(p.worker_end.as_fd());
                        fds.push(p.pidfd.as_fd());
                        ProcState {
                            id: p.id,
                            pid: p.pid,
                            role: p.role,
                            cell: p.cell,
                            build: p.build.clone(),
                            handed: p.handed,
                            inflight: p.inflight.iter().copied().collect(),
                            received_seen: p.received_seen,
                            ips: p.ips.iter().map(|(&ip, &n)| (ip, n)).collect(),
                            counted: p.counted.iter().map(|(&c, &t)| (c, t)).collect(),
                            outbox: p.outbox.iter().cloned().collect(),
                            full: p.full,
                            deadline_ms: p
                                .deadline
                                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
                            retired_ms: p
                                .retired_at
                                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                        }
                    })
                    .collect(),
            })
            .collect();
        WorkersState {
            slots,
            next_proc: self.next_proc,
            cpus: self.plan.cpus.clone(),
        }
    }

    /// The part a new front takes over from `state`, with `cells` cells in
    /// the statistics table. Returns it and the (slot, id) of every
    /// process, whose reports and exit the front must watch.
    pub fn from_handover(
        state: WorkersState,
        fds: &mut FdSource,
        mut plan: SpawnPlan,
        cells: usize,
        per_proc_cap: u64,
        nofile: u64,
    ) -> Result<(Workers, Vec<(usize, u64)>), String> {
        plan.cpus = state.cpus;
        let mut workers = Workers::new(0, cells, plan, per_proc_cap, nofile);
        workers.next_proc = state.next_proc;
        let now = Instant::now();
        let mut adopted = Vec::new();
        for (i, s) in state.slots.into_iter().enumerate() {
            let mut slot = Slot::new(i);
            slot.parked = s.parked;
            for p in s.procs {
                let front_end = fds.next(&format!("worker {}'s channel", p.pid))?;
                let worker_end = fds.next(&format!("worker {}'s channel", p.pid))?;
                let pidfd = fds.next(&format!("worker {}'s pidfd", p.pid))?;
                let channel = Channel::new(front_end).map_err(|e| e.to_string())?;
                if p.cell >= cells {
                    return Err(format!("worker {} has no cell {}", p.pid, p.cell));
                }
                workers.free_cells.retain(|&c| c != p.cell);
                let mut proc = WorkerProc::new(
                    p.id,
                    p.pid,
                    p.role,
                    p.cell,
                    Rc::new(channel),
                    worker_end,
                    Rc::new(pidfd),
                    p.deadline_ms.map(|ms| now + Duration::from_millis(ms)),
                );
                proc.build = p.build;
                proc.handed = p.handed;
                proc.inflight = p.inflight.into_iter().collect();
                proc.received_seen = p.received_seen;
                proc.ips = p.ips.into_iter().collect();
                proc.counted = p.counted.into_iter().collect();
                proc.outbox = p.outbox.into_iter().collect();
                proc.full = p.full;
                proc.retired_at = p
                    .retired_ms
                    .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now));
                adopted.push((i, p.id));
                slot.procs.push(proc);
            }
            workers.slots.push(slot);
        }
        Ok((workers, adopted))
    }
}
