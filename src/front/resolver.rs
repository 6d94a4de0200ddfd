//! DNS service discovery: the host names given as `--backend NAME:PORT,resolve`
//! are looked up again every `--resolve-interval`, through the system
//! resolver (`/etc/hosts`, DNS, whatever `nsswitch.conf` says), on a
//! blocking thread so the front's event loop never waits for DNS.
//!
//! Every address of a name is a backend named by its address. An address
//! that appears is added (health-checked like any other backend); one that
//! disappears is drained like `ctl backend remove`: no new connections,
//! the ones in flight finish. A look-up that fails or comes back empty
//! changes nothing (the last known addresses keep serving): it is logged
//! once when it starts failing and once when it recovers, and counted in
//! `rrproxy_resolve_failures_total{name}`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::{info, warn};

use super::Shared;
use crate::config::resolve_all;

/// The longest one look-up may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Re-resolve the `resolve` names until the front shuts down.
pub async fn run(front: Shared) {
    // Names whose last look-up failed (to log the change, not every try).
    let mut failing: HashSet<String> = HashSet::new();
    loop {
        let interval = {
            let f = front.borrow();
            let cfg = f.config();
            for g in &cfg.resolve {
                // Every name's failure series exists from the start (at 0).
                f.counters().resolve_known(&g.name);
            }
            cfg.resolve_interval
        };
        // With discovery off, look again later in case a reload turns it on.
        tokio::time::sleep(interval.unwrap_or(Duration::from_secs(5))).await;
        let (interval, groups) = {
            let f = front.borrow();
            if f.stopping() {
                return;
            }
            let cfg = f.config();
            (cfg.resolve_interval, cfg.resolve.clone())
        };
        if interval.is_none() {
            continue;
        }
        for group in groups {
            let name = group.name.clone();
            let lookup = tokio::task::spawn_blocking(move || resolve_all(&name));
            let result = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("look-up task failed: {e}")),
                Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
            };
            if front.borrow().stopping() {
                return;
            }
            // A reload during the look-up may have dropped or changed the
            // name: apply only what the config still asks for.
            if !front.borrow().config().resolve.contains(&group) {
                continue;
            }
            match result {
                Ok(addrs) => {
                    if failing.remove(&group.name) {
                        info!(name = %group.name, addresses = addrs.len(), "backend name resolves again");
                    }
                    front.borrow_mut().apply_resolved(&group, &addrs);
                }
                Err(why) => {
                    front.borrow().counters().resolve_failed(&group.name);
                    if failing.insert(group.name.clone()) {
                        warn!(name = %group.name, cause = %why, "backend name does not resolve; keeping its last known addresses");
                    }
                }
            }
        }
    }
}

/// What a look-up changes in one group: the addresses to add and the
/// addresses whose backends to drain.
pub fn diff(current: &[SocketAddr], resolved: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let add = resolved
        .iter()
        .filter(|a| !current.contains(a))
        .copied()
        .collect();
    let gone = current
        .iter()
        .filter(|a| !resolved.contains(a))
        .copied()
        .collect();
    (add, gone)
}

#[cfg(test)]
mod tests {
    use super::diff;
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn diff_adds_the_new_and_drains_the_vanished() {
        let cur = [a("10.0.0.1:80"), a("10.0.0.2:80")];
        let new = [a("10.0.0.2:80"), a("10.0.0.3:80")];
        assert_eq!(
            diff(&cur, &new),
            (vec![a("10.0.0.3:80")], vec![a("10.0.0.1:80")])
        );
        assert_eq!(diff(&cur, &cur), (vec![], vec![]));
    }
}
