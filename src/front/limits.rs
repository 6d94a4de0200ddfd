//! Connection limits: global (`--max-conns`), per worker
//! (`--max-conns-per-worker`, and always the worker's descriptor budget)
//! and per client IP (`--max-conns-per-ip`).
//!
//! The global and per-worker limits pause accepting (see `views`), so
//! clients wait in the kernel backlog and proceed when a connection ends;
//! nothing is accepted only to be dropped. The per-IP limit refuses
//! (closes) only the connections of the client over its limit (see
//! `ledger`).

/// How many connections a worker with `nofile` descriptors can hold.
pub fn fd_budget(nofile: u64) -> u64 {
    crate::sys::fd_plan(nofile).conns
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
