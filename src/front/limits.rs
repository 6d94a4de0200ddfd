//! Connection limits: global (`--max-conns`), per worker
//! (`--max-conns-per-worker`, and always the worker's descriptor budget)
//! and per client IP (`--max-conns-per-ip`).
//!
//! The global and per-worker limits pause accepting, so clients wait in the
//! kernel backlog and proceed when a connection ends; nothing is accepted
//! only to be dropped. The per-IP limit refuses (closes) only the
//! connections of the client over its limit.

use std::net::IpAddr;

use tracing::debug;

use super::Front;

/// How many connections a worker with `nofile` descriptors can hold.
pub fn fd_budget(nofile: u64) -> u64 {
    crate::sys::fd_plan(nofile).conns
}

impl Front {
    /// Connections the front has accepted and not yet seen closed.
    pub fn total_active(&self) -> u64 {
        self.worker_views.iter().map(|w| w.active).sum::<u64>() + self.pending.len() as u64
    }

    /// At `--max-conns`: stop accepting until a connection ends.
    pub fn at_global_limit(&self) -> bool {
        self.config
            .load()
            .limits
            .max_conns
            .is_some_and(|max| self.total_active() >= max)
    }

    fn ip_limit(&self) -> Option<u32> {
        self.config.load().limits.max_conns_per_ip
    }

    /// Count a new connection from `ip`; false if that client is at its
    /// limit (the caller refuses the connection).
    pub fn admit_ip(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.ip_limit() else {
            return true;
        };
        let n = self.per_ip.entry(ip).or_default();
        if *n >= max {
            debug!(client.addr = %ip, limit = max, "per-IP limit reached; refusing");
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` ended.
    pub fn release_ip(&mut self, ip: IpAddr) {
        self.release_ip_n(ip, 1);
    }

    pub fn release_ip_n(&mut self, ip: IpAddr, k: u32) {
        if self.per_ip.is_empty() {
            return;
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(k);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Whether per-IP counts are being kept (the limit is set).
    pub fn tracks_ips(&self) -> bool {
        self.ip_limit().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_scales_with_limit_and_has_a_floor() {
        assert_eq!(fd_budget(64), 8);
        assert_eq!(fd_budget(1024), (1024 - 64 - 256) / 2);
        // Most descriptors go to connections: two each.
        assert_eq!(fd_budget(20_000), (20_000 - 64 - 2048) / 2);
        assert!(fd_budget(1 << 20) > 500_000);
    }
}
