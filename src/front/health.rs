//! Backend health: active TCP connect checks from the front every
//! `--health-interval`, and passive marking from workers' connect failures.
//!
//! `fall` consecutive failures (checks or real connects) mark a backend
//! down; `rise` consecutive good checks bring it back. A down backend gets
//! no new connections; if every backend is down, the front fails open and
//! tries them anyway (logged), rather than refusing clients.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::{info, warn};

use super::{Front, Shared};

/// Per-backend check state.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckState {
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
}

/// Run active checks until the front shuts down.
pub async fn run(front: Shared) {
    loop {
        let (interval, timeout, targets) = {
            let f = front.borrow();
            if f.shutting_down {
                return;
            }
            let cfg = f.config.load();
            let Some(interval) = cfg.health.interval else {
                return;
            };
            let targets: Vec<(u32, SocketAddr)> = f
                .backends
                .list
                .iter()
                .map(|b| (b.id, b.spec.addr))
                .collect();
            (interval, cfg.health.timeout, targets)
        };
        let checks = targets
            .into_iter()
            .map(|(id, addr)| async move { (id, check(addr, timeout).await) });
        let results = futures_join_all(checks).await;
        {
            let mut f = front.borrow_mut();
            for (id, ok) in results {
                f.check_result(id, ok, true);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Run futures concurrently on this thread and collect their outputs.
async fn futures_join_all<F: std::future::Future + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
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

async fn check(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

impl Front {
    /// Apply one health observation for backend `id`. `active` is true for
    /// a check by the front, false for a worker's failed connect.
    pub fn check_result(&mut self, id: u32, ok: bool, active: bool) {
        let health = self.config.load().health;
        if health.interval.is_none() {
            return;
        }
        let Some(i) = self.backends.index_of(id) else {
            return;
        };
        let b = &mut self.backends.list[i];
        let was = b.healthy;
        if ok {
            b.check.consecutive_fail = 0;
            if active {
                b.check.consecutive_ok = b.check.consecutive_ok.saturating_add(1);
            }
            if !b.healthy && b.check.consecutive_ok >= health.rise {
                b.healthy = true;
            }
        } else {
            b.check.consecutive_ok = 0;
            b.check.consecutive_fail = b.check.consecutive_fail.saturating_add(1);
            if active {
                b.metrics.check_failures.increment(1);
            }
            if b.healthy && b.check.consecutive_fail >= health.fall {
                b.healthy = false;
            }
        }
        if b.healthy != was {
            b.metrics.up.set(if b.healthy { 1.0 } else { 0.0 });
            if b.healthy {
                info!(backend = %b.spec.name, rise = health.rise, "backend up");
            } else {
                warn!(
                    backend = %b.spec.name,
                    fall = health.fall,
                    source = if active { "check" } else { "traffic" },
                    "backend down"
                );
            }
            self.backends.refresh_routable();
            if !self.backends.any_routable() {
                warn!("every backend is down: failing open (connections are still tried)");
            }
            self.broadcast_config();
        }
    }

    /// A worker could not connect to backend `id`.
    pub fn passive_failure(&mut self, id: u32) {
        self.check_result(id, false, false);
    }
}
