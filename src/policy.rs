//! Balancing policies: for each connection, which worker slot and which
//! backend. One file per policy behind the [`Policy`] trait.
//!
//! Policies see the world through small views the front keeps up to date
//! ([`WorkerView`], [`BackendView`]), indexed by slot and by position in
//! the backend list, so a pick allocates nothing and takes no lock.

mod least_conn;
mod round_robin;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use clap::ValueEnum;

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;

/// The policy names users type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum PolicyName {
    /// Strict rotation over live workers and healthy backends.
    #[value(name = "round-robin")]
    RoundRobin,
    /// Fewest active connections.
    #[value(name = "least-conn")]
    LeastConn,
    /// Same client IP, same backend and worker (consistent hashing).
    #[value(name = "sticky")]
    Sticky,
}

impl PolicyName {
    pub const ALL: [PolicyName; 3] = [
        PolicyName::RoundRobin,
        PolicyName::LeastConn,
        PolicyName::Sticky,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::RoundRobin => "round-robin",
            PolicyName::LeastConn => "least-conn",
            PolicyName::Sticky => "sticky",
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown policy '{s}': expected round-robin, least-conn or sticky")
            })
    }
}

/// What a policy may know about one worker slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerView {
    /// Ready, not draining, channel not full and under its limit.
    pub routable: bool,
    /// Connections handed to the slot and not yet closed.
    pub active: u64,
}

/// What a policy may know about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    /// Stable identity from [`backend_key`] of the backend's name, the same
    /// in every process and every rrproxy instance.
    pub key: u64,
    pub weight: u32,
    /// Healthy, enabled and not draining.
    pub routable: bool,
    /// Connections currently counted on this backend (all workers).
    pub active: u64,
}

/// A balancing policy. Implementations keep only their own bookkeeping
/// (rotation counters, hash tables); the live counts come in the views.
pub trait Policy: Send {
    fn name(&self) -> PolicyName;

    /// Choose a slot among the routable workers, or `None` if there is none.
    fn pick_worker(&mut self, client: IpAddr, workers: &[WorkerView]) -> Option<usize>;

    /// Choose a backend among the routable ones, or `None` if there is none.
    fn pick_backend(&mut self, client: IpAddr, backends: &[BackendView]) -> Option<usize>;

    /// The backend set or the weights changed (not just health): rebuild
    /// whatever tables depend on them. `backends` is the new list, in the
    /// order later picks will index.
    fn rebuild(&mut self, backends: &[BackendView]) {
        let _ = backends;
    }
}

/// Settings that tune a policy without changing which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Sticky: how many leading bits of an IPv6 client address decide its
    /// backend and worker (128 = the whole address, 64 = its /64).
    pub sticky_ipv6_prefix: u8,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            sticky_ipv6_prefix: 128,
        }
    }
}

/// Make a fresh policy for `name`, prepared for `backends`.
pub fn build(name: PolicyName, backends: &[BackendView], opts: &PolicyOptions) -> Box<dyn Policy> {
    let _ = opts;
    let mut policy: Box<dyn Policy> = match name {
        PolicyName::RoundRobin => Box::new(RoundRobin::default()),
        PolicyName::LeastConn => Box::new(LeastConn::default()),
        // Until sticky lands.
        PolicyName::Sticky => Box::new(RoundRobin::default()),
    };
    policy.rebuild(backends);
    policy
}

/// A stable 64-bit key for a backend name: FNV-1a, then a 64-bit finalizer.
/// Fixed and seedless on purpose: every process computes the same key.
pub fn backend_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A strong 64-bit mixing function (the splitmix64 finalizer).
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
