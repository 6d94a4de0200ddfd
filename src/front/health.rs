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

use std::time::Duration;

use super::Shared;
use crate::config::sources;

pub use probe::{Failure, Plan};

/// Run active checks until the front shuts down.
pub async fn run(front: Shared) {
    // Round by round, each backend's checks take its source addresses in
    // turn.
    let mut round: usize = 0;
    loop {
        let plan = {
            let f = front.borrow();
            if f.stopping() {
                return;
            }
            // Rounds at the shortest interval of any service; each
            // service's backends with its own probe, timeout and sources.
            let services = f.services();
            let interval = services
                .iter()
                .filter_map(|s| s.config().health.interval)
                .min();
            interval.map(|interval| {
                let mut targets: Vec<(u32, Plan)> = Vec::new();
                for s in services.iter() {
                    let cfg = s.config();
                    if cfg.health.interval.is_none() {
                        continue;
                    }
                    for b in s.backends().list() {
                        let from = sources::of(b.spec(), &cfg.source);
                        let plan = Plan {
                            addr: b.spec().addr,
                            source: (!from.is_empty()).then(|| from[round % from.len()]),
                            send_proxy: b.spec().send_proxy,
                            send: cfg.probe.send.clone(),
                            expect: cfg.probe.expect.clone(),
                            timeout: cfg.health.timeout,
                        };
                        targets.push((b.id(), plan));
                    }
                }
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
        front.borrow_mut().check_results(results);
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
