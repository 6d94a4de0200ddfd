//! Frames from the front that a worker cannot use: a frame that does not
//! decode, one cut short, one whose descriptor list was cut (the worker
//! ran out of descriptors as they arrived). A worker skips such a frame
//! and keeps serving: it closes every descriptor that came with it (each
//! client sees its connection close), counts the connections it described
//! as taken and finished unserved in its statistics cell (so the front's
//! counts stay right; with per-client limits it also reports their
//! closes), and counts and logs it, at most one line a second.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Worker;
use crate::channel::{Event, Handoff};
use crate::stats::ProcWord;

/// Log at most one line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A worker's count of skipped frames and its log rate limit.
#[derive(Debug, Default)]
pub struct Skipped {
    total: Cell<u64>,
    last_log: Cell<Option<Instant>>,
    /// Skips since the last line.
    hidden: Cell<u64>,
}

impl Skipped {
    /// Skip one frame: close `fds`, count `conns` (the connections it
    /// described, when they could be read) as taken and finished unserved,
    /// count and maybe log. `worker` is `None` before the handshake is done
    /// (nothing was handed to this process yet).
    pub fn frame(
        &self,
        slot: usize,
        why: &str,
        fds: &mut Vec<OwnedFd>,
        conns: &[Handoff],
        worker: Option<&Worker>,
    ) {
        let closed = fds.len();
        fds.clear();
        if let Some(worker) = worker {
            // What the front handed: the connections the frame described,
            // or, when it could not be read, one per descriptor.
            let taken = if conns.is_empty() {
                closed
            } else {
                conns.len()
            } as u64;
            let cell = worker.cell();
            cell.bump(ProcWord::Received, taken);
            cell.bump(ProcWord::Failed, taken);
            let routes = worker.routes();
            for h in conns {
                if routes.config.report_closes {
                    worker.reporter.push(Event::Closed {
                        client: h.client.ip(),
                    });
                }
                if routes.entry(h.backend).is_some_and(|b| b.counted) {
                    worker.reporter.push(Event::Ended { conn: h.conn });
                }
            }
            worker.finished(taken);
        }
        self.total.set(self.total.get() + 1);
        self.log(|hidden, total| {
            warn!(
                slot,
                cause = why,
                closed_fds = closed,
                connections = conns.len(),
                suppressed = hidden,
                total,
                "skipped a bad frame from the front; still serving"
            );
        });
    }

    /// A receive that failed for a passing reason (out of memory): logged
    /// like a skip, not counted as one.
    pub fn transient(&self, slot: usize, err: &std::io::Error) {
        self.log(|hidden, _| {
            warn!(slot, cause = %err, suppressed = hidden, "channel receive failed; retrying");
        });
    }

    fn log(&self, line: impl FnOnce(u64, u64)) {
        let due = self.last_log.get().is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            line(self.hidden.replace(0), self.total.get());
            self.last_log.set(Some(Instant::now()));
        } else {
            self.hidden.set(self.hidden.get() + 1);
        }
    }
}
