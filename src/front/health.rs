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
use std::time::Duration;

use super::Shared;
use crate::proxy_protocol::{Header, Version};

pub use super::backends::PASSIVE_COOLDOWN;

/// Run active checks until the front shuts down.
pub async fn run(front: Shared) {
    loop {
        let plan = {
            let f = front.borrow();
            if f.stopping() {
                return;
            }
            f.health_plan()
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
