//! Backend health: active TCP connect checks from the front every
//! `--health-interval`, and passive marking from workers' connect failures.
//!
//! Active: `fall` consecutive failed checks mark a backend down; `rise`
//! consecutive good checks bring it back.
//!
//! Passive: `fall` failed connects by workers within [`PASSIVE_WINDOW`],
//! with no successful connect in between, mark a backend down (a success,
//! read from the statistics table when a failure arrives, starts the count
//! again, so transient failures under load do not take a healthy backend
//! out). With active checks on, the checks bring it back; with them off,
//! it is tried again after [`PASSIVE_COOLDOWN`].
//!
//! A down backend gets no new connections; if every backend is down, the
//! front fails open and tries them anyway (logged), rather than refusing
//! clients.
//!
//! A check of a `send-proxy` backend writes a PROXY header saying "no
//! client" (v2 `LOCAL`, v1 `PROXY UNKNOWN`) after connecting, as HAProxy
//! does, so a backend that requires the header neither logs an error nor
//! drops the check. Then `--health-send` is written and `--health-expect`
//! read (see `probe`); with neither, the check passes once connected and
//! the header written. Checks leave from the backend's source addresses
//! (`config::sources`), one after the other round by round.
//!
//! A failed check says why: the first failure after a success is logged
//! with its reason, the reason goes with the "backend down" line, and
//! `ctl backends` shows the last check's result.

mod probe;

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Front, Shared};
use crate::config::sources;
use crate::stats::{Col, ColCell};
use probe::{Failure, Plan};

/// Failed connects must fall within this window to mark a backend down.
pub const PASSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Without active checks, a passively failed backend is tried again after
/// this long.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Per-backend check state.
#[derive(Debug, Default, Clone)]
pub struct CheckState {
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// Passive: failed connects in the current window, when it began, and
    /// how many connections had been established when last looked.
    pub passive_fails: u32,
    pub passive_since: Option<Instant>,
    pub conns_seen: u64,
    /// Marked down by traffic (not by checks), at this time.
    pub passive_down: Option<Instant>,
    /// The last active check: passed, or why not; `None` before the first.
    pub last: Option<Result<(), String>>,
    /// Came up (health, enable, added) while running, at this time: slow
    /// start ramps from here (see `Backends::refresh_ramps`). `None` at
    /// start, and once the ramp is over.
    pub up_since: Option<Instant>,
}

/// Run active checks until the front shuts down.
pub async fn run(front: Shared) {
    // Round by round, each backend's checks take its source addresses in
    // turn.
    let mut round: usize = 0;
    loop {
        let plan = {
            let f = front.borrow();
            if f.state.shutting_down {
                return;
            }
            let cfg = f.config.load();
            cfg.health.interval.map(|interval| {
                let targets: Vec<(u32, Plan)> = f
                    .backends
                    .list
                    .iter()
                    .map(|b| {
                        let from = sources::of(&b.spec, &cfg.source);
                        let plan = Plan {
                            addr: b.spec.addr,
                            source: (!from.is_empty()).then(|| from[round % from.len()]),
                            send_proxy: b.spec.send_proxy,
                            send: cfg.probe.send.clone(),
                            expect: cfg.probe.expect.clone(),
                            timeout: cfg.health.timeout,
                        };
                        (b.id, plan)
                    })
                    .collect();
                (interval, targets)
            })
        };
        let Some((interval, targets)) = plan else {
            // Checks are off; look again later in case a reload turns them
            // on.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        round = round.wrapping_add(1);
        let checks = targets
            .into_iter()
            .map(|(id, plan)| async move { (id, probe::check(&plan).await) });
        let results = join_all(checks).await;
        {
            let mut f = front.borrow_mut();
            if !f.state.frozen {
                for (id, result) in results {
                    f.check_result(id, result);
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Run futures concurrently on this thread and collect their outputs.
async fn join_all<F: std::future::Future + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let handles: Vec<_> = futs.map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

impl Front {
    /// Apply one active check of backend `id`.
    pub fn check_result(&mut self, id: u32, result: Result<(), Failure>) {
        let health = self.config.load().health;
        let Some(i) = self.backends.index_of(id) else {
            return;
        };
        let b = &mut self.backends.list[i];
        let was = b.healthy;
        match result {
            Ok(()) => {
                b.check.consecutive_fail = 0;
                b.check.consecutive_ok = b.check.consecutive_ok.saturating_add(1);
                b.check.last = Some(Ok(()));
                if !b.healthy && b.check.consecutive_ok >= health.rise {
                    b.healthy = true;
                    b.check.passive_down = None;
                }
            }
            Err(why) => {
                let why = why.to_string();
                b.check.consecutive_ok = 0;
                b.check.consecutive_fail = b.check.consecutive_fail.saturating_add(1);
                crate::stats::bump(
                    ColCell::of(self.counters.table.base(b.column)).word(Col::CheckFailures),
                    1,
                );
                if b.check.consecutive_fail == 1 && b.healthy {
                    info!(backend = %b.spec.name, reason = %why, fall = health.fall, "health check failed");
                }
                b.check.last = Some(Err(why));
                if b.healthy && b.check.consecutive_fail >= health.fall {
                    b.healthy = false;
                }
            }
        }
        if b.healthy != was {
            self.health_changed(i, "check");
        }
    }

    /// A worker could not connect to backend `id`.
    pub fn passive_failure(&mut self, id: u32) {
        let fall = self.config.load().health.fall;
        let Some(i) = self.backends.index_of(id) else {
            return;
        };
        let conns = {
            let col = self.backends.list[i].column;
            let cells = self.live_cells();
            let table = &self.counters.table;
            ColCell::of(table.base(col)).get(Col::Conns)
                + cells
                    .iter()
                    .filter_map(|&c| table.cell(c).col(col))
                    .map(|c| c.get(Col::Conns))
                    .sum::<u64>()
        };
        let now = Instant::now();
        let b = &mut self.backends.list[i];
        let c = &mut b.check;
        let fresh = c.conns_seen != conns
            || c.passive_since
                .is_none_or(|t| now.duration_since(t) > PASSIVE_WINDOW);
        c.conns_seen = conns;
        if fresh {
            // A connect succeeded since the last failure, or the window
            // passed: count from one again.
            c.passive_fails = 1;
            c.passive_since = Some(now);
        } else {
            c.passive_fails = c.passive_fails.saturating_add(1);
        }
        if b.healthy && c.passive_fails >= fall {
            b.healthy = false;
            c.passive_down = Some(now);
            c.consecutive_ok = 0;
            c.passive_fails = 0;
            c.passive_since = None;
            self.health_changed(i, "traffic");
        }
    }

    /// Without active checks, give passively failed backends another go.
    pub(super) fn passive_cooldowns(&mut self) {
        if self.config.load().health.interval.is_some() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.backends.list.len() {
            let b = &mut self.backends.list[i];
            if let Some(t) = b.check.passive_down {
                if !b.healthy && now.duration_since(t) >= PASSIVE_COOLDOWN {
                    b.healthy = true;
                    b.check.passive_down = None;
                    info!(backend = %b.spec.name, after = ?PASSIVE_COOLDOWN, "backend back in rotation (no health checks to confirm; traffic will tell)");
                    self.health_changed(i, "cooldown");
                }
            }
        }
    }

    fn health_changed(&mut self, i: usize, source: &'static str) {
        let health = self.config.load().health;
        let b = &mut self.backends.list[i];
        if b.healthy {
            info!(backend = %b.spec.name, rise = health.rise, source, "backend up");
            b.check.up_since = Some(Instant::now());
        } else {
            let reason = match (&b.check.last, source) {
                (Some(Err(why)), "check") => why.as_str(),
                _ => "connects from workers failed",
            };
            warn!(backend = %b.spec.name, fall = health.fall, source, reason, "backend down");
            b.check.up_since = None;
        }
        // Slow start, if it has one, begins now.
        self.backends.refresh_ramps(self.config.load().slow_start);
        self.backends.refresh_routable();
        if !self.backends.any_routable() {
            warn!("every backend is down: failing open (connections are still tried)");
        }
        self.config_changed();
        self.publish();
    }
}
