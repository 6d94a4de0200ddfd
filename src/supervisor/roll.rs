//! A rolling restart of the workers (after an upgrade): every slot gets a
//! replacement at once; as each replacement reports ready it takes the
//! slot's new connections and its predecessor drains, all predecessors at
//! the same time (so at most one draining process per slot, and the
//! restart takes about one drain, not one per slot). A slot is done once
//! no process older than its replacement is left. A replacement that
//! exits or is not ready in time fails that slot only: its old process
//! keeps serving, and the outcome says so.
//!
//! This is bookkeeping over the slots' processes; the front starts the
//! replacements and calls [`Workers::roll_progress`] when processes change.

use std::time::Instant;

use super::{Role, Workers};

/// Where one slot is in the restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RollSlot {
    /// Its replacement is still to be started (waiting for a free cell).
    Waiting,
    /// Replacement `id` is starting.
    Started(u64),
    /// Replacement `id` serves; older processes are draining.
    Draining(u64),
    Done,
    Failed(String),
}

/// A restart in progress.
#[derive(Debug)]
pub(super) struct Roll {
    pub(super) slots: Vec<RollSlot>,
    pub(super) started: Instant,
}

impl Workers {
    /// Begin replacing every slot's worker. Slots are unparked (an
    /// operator's restart is their way back); a process still starting
    /// from before (a respawn, or the previous front's restart) is stopped
    /// first: it holds no connection and would run the older build.
    /// Returns the slots that were parked.
    pub fn begin_roll(&mut self, now: Instant) -> Vec<usize> {
        let mut unparked = Vec::new();
        for slot in &mut self.slots {
            if slot.unpark() {
                unparked.push(slot.index);
            }
            for p in slot.procs.iter_mut().filter(|p| p.role == Role::Starting) {
                p.retire(now, now);
                p.kill();
            }
        }
        self.roll = Some(Roll {
            slots: vec![RollSlot::Waiting; self.slots.len()],
            started: now,
        });
        unparked
    }

    /// Give the restart up (the proxy stops).
    pub fn cancel_roll(&mut self) {
        self.roll = None;
    }

    pub fn rolling(&self) -> bool {
        self.roll.is_some()
    }

    /// Slots whose replacement is still to be started.
    pub fn roll_waiting(&self) -> Vec<usize> {
        match &self.roll {
            Some(r) => r
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == RollSlot::Waiting)
                .map(|(i, _)| i)
                .collect(),
            None => Vec::new(),
        }
    }

    /// `slot`'s replacement was started as process `id`.
    pub fn roll_started(&mut self, slot: usize, id: u64) {
        if let Some(s) = self.roll.as_mut().and_then(|r| r.slots.get_mut(slot)) {
            *s = RollSlot::Started(id);
        }
    }

    /// The process the restart started in `slot`, while it is starting.
    pub fn roll_replacement(&self, slot: usize) -> Option<u64> {
        match self.roll.as_ref()?.slots.get(slot)? {
            RollSlot::Started(id) => Some(*id),
            _ => None,
        }
    }

    /// `slot`'s replacement could not be started.
    pub fn roll_failed(&mut self, slot: usize, why: String) {
        if let Some(s) = self.roll.as_mut().and_then(|r| r.slots.get_mut(slot)) {
            *s = RollSlot::Failed(why);
        }
    }

    /// Look at every slot again; once all are done or failed, the restart
    /// is over and its outcome (for the log and `ctl status`) returned.
    pub fn roll_progress(&mut self) -> Option<Result<String, String>> {
        let roll = self.roll.as_mut()?;
        for (i, state) in roll.slots.iter_mut().enumerate() {
            let slot = &self.slots[i];
            let next = match state {
                RollSlot::Started(id) => match slot.proc(*id).map(|p| p.role) {
                    None | Some(Role::Retiring) => Some(RollSlot::Failed(
                        "the new worker exited before it was ready; the old one keeps serving"
                            .into(),
                    )),
                    Some(Role::Serving) => Some(RollSlot::Draining(*id)),
                    Some(Role::Starting) => None,
                },
                _ => None,
            };
            if let Some(next) = next {
                *state = next;
            }
            if let RollSlot::Draining(id) = *state {
                let older_left = slot
                    .procs
                    .iter()
                    .any(|p| p.id < id && p.role == Role::Retiring);
                if !older_left {
                    *state = RollSlot::Done;
                }
            }
        }
        let over = roll
            .slots
            .iter()
            .all(|s| matches!(s, RollSlot::Done | RollSlot::Failed(_)));
        if !over {
            return None;
        }
        let roll = self.roll.take()?;
        let secs = roll.started.elapsed().as_secs_f64();
        let replaced = roll.slots.iter().filter(|s| **s == RollSlot::Done).count();
        let failed: Vec<String> = roll
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                RollSlot::Failed(why) => Some(format!("worker {i}: {why}")),
                _ => None,
            })
            .collect();
        Some(if failed.is_empty() {
            Ok(format!(
                "workers restarted: {replaced} replaced in {secs:.1}s"
            ))
        } else {
            Err(format!(
                "restart of the workers: {replaced} replaced, {} not: {}",
                failed.len(),
                failed.join("; ")
            ))
        })
    }
}
