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
//! drops the check; the check passes once the header is written.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Front, Shared};
use crate::proxy_protocol::{Header, Version};
use crate::stats::{Col, ColCell};

/// Failed connects must fall within this window to mark a backend down.
pub const PASSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Without active checks, a passively failed backend is tried again after
/// this long.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Per-backend check state.
#[derive(Debug, Default, Clone, Copy)]
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
}

/// Run active checks until the front shuts down.
pub async fn run(front: Shared) {
    loop {
        let plan = {
            let f = front.borrow();
            if f.state.shutting_down {
                return;
            }
            let cfg = f.config.load();
            cfg.health.interval.map(|interval| {
                let targets: Vec<(u32, SocketAddr, Option<Version>)> = f
                    .backends
                    .list
                    .iter()
                    .map(|b| (b.id, b.spec.addr, b.spec.send_proxy))
                    .collect();
                (interval, cfg.health.timeout, targets)
            })
        };
        let Some((interval, timeout, targets)) = plan else {
            // Checks are off; look again later in case a reload turns them
            // on.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let checks =
            targets
                .into_iter()
                .map(|(id, addr, send_proxy)| async move {
                    (id, check(addr, timeout, send_proxy).await)
                });
        let results = join_all(checks).await;
        {
            let mut f = front.borrow_mut();
            if !f.state.frozen {
                for (id, ok) in results {
                    f.check_result(id, ok);
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

/// Connect (and, for a `send-proxy` backend, write a header with no
/// client) within `timeout`.
async fn check(addr: SocketAddr, timeout: Duration, send_proxy: Option<Version>) -> bool {
    use tokio::io::AsyncWriteExt;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if let Some(v) = send_proxy {
            stream.write_all(&Header::Local.encode(v)).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(())))
}

impl Front {
    /// Apply one active check of backend `id`.
    pub fn check_result(&mut self, id: u32, ok: bool) {
        let health = self.config.load().health;
        let Some(i) = self.backends.index_of(id) else {
            return;
        };
        let b = &mut self.backends.list[i];
        let was = b.healthy;
        if ok {
            b.check.consecutive_fail = 0;
            b.check.consecutive_ok = b.check.consecutive_ok.saturating_add(1);
            if !b.healthy && b.check.consecutive_ok >= health.rise {
                b.healthy = true;
                b.check.passive_down = None;
            }
        } else {
            b.check.consecutive_ok = 0;
            b.check.consecutive_fail = b.check.consecutive_fail.saturating_add(1);
            crate::stats::bump(
                ColCell::of(self.counters.table.base(b.column)).word(Col::CheckFailures),
                1,
            );
            if b.healthy && b.check.consecutive_fail >= health.fall {
                b.healthy = false;
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
        let b = &self.backends.list[i];
        if b.healthy {
            info!(backend = %b.spec.name, rise = health.rise, source, "backend up");
        } else {
            warn!(backend = %b.spec.name, fall = health.fall, source, "backend down");
        }
        self.backends.refresh_routable();
        if !self.backends.any_routable() {
            warn!("every backend is down: failing open (connections are still tried)");
        }
        self.config_changed();
        self.publish();
    }
}
