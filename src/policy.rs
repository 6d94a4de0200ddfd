//! Balancing policies: for each connection, which worker slot and which
//! backend. One file per policy behind the [`Policy`] trait.
//!
//! Policies see the world through small views the front keeps up to date
//! ([`WorkerView`], [`BackendView`]), indexed by slot and by position in
//! the backend list, so a pick allocates nothing and takes no lock.

mod least_conn;
mod round_robin;
mod sticky;
mod why;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use clap::ValueEnum;

pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;
pub use why::Why;

/// The policy names users type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
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
    /// Its configured weight.
    pub weight: u32,
    /// Healthy, enabled and not draining.
    pub routable: bool,
    /// Connections currently counted on this backend (all workers).
    pub active: u64,
    /// Slow start: how far its share has ramped up, in 1/[`RAMP_FULL`]ths
    /// (`RAMP_FULL`: not ramping).
    pub ramp: u32,
}

/// [`BackendView::ramp`] of a backend at its full share.
pub const RAMP_FULL: u32 = 1 << 16;

impl BackendView {
    /// The weight round-robin and least-conn balance by: the configured
    /// weight scaled by the slow-start ramp (in 1/[`RAMP_FULL`]ths of a
    /// weight unit, so the ramp is smooth even at weight 1; scaling every
    /// backend alike changes no choice).
    pub fn effective_weight(&self) -> u64 {
        u64::from(self.weight.max(1)) * u64::from(self.ramp.clamp(1, RAMP_FULL))
    }
}

/// A balancing policy. Implementations keep only their own bookkeeping
/// (rotation counters, hash tables); the live counts come in the views.
pub trait Policy: Send {
    fn name(&self) -> PolicyName;

    /// Choose a slot among the routable workers, or `None` if there is none.
    fn pick_worker(&mut self, client: IpAddr, workers: &[WorkerView]) -> Option<usize>;

    /// Choose a backend among the routable ones, or `None` if there is none.
    fn pick_backend(&mut self, client: IpAddr, backends: &[BackendView]) -> Option<usize>;

    /// Where a connection planned for backend `first` goes if `first`
    /// cannot be reached: up to `out.len()` other routable backends, in
    /// the policy's order of preference, written to `out`; returns how
    /// many. So a failing backend's clients spread as the policy spreads
    /// clients, and a sticky client moves to its own next choice (where it
    /// will also land once the backend is marked down): it moves once.
    fn fallbacks(
        &mut self,
        client: IpAddr,
        first: usize,
        backends: &[BackendView],
        out: &mut [usize],
    ) -> usize;

    /// The backend set or the weights changed (not just health): rebuild
    /// whatever tables depend on them. `backends` is the new list, in the
    /// order later picks will index.
    fn rebuild(&mut self, backends: &[BackendView]) {
        let _ = backends;
    }

    /// A copy with the same state, for a dry run of the picks (`ctl
    /// explain` runs them on it: the same code, nothing changes here).
    fn boxed_clone(&self) -> Box<dyn Policy>;

    /// Why the picks for `client` come out as they do now: the state they
    /// read (read only).
    fn why(&self, client: IpAddr, workers: &[WorkerView], backends: &[BackendView]) -> Why;
}

/// Routable backends other than `first`, starting at `start` in list
/// order, into `out`; returns how many (the round-robin rotation and the
/// tie-breaking order of the others).
pub fn rotation_fallbacks(
    first: usize,
    start: usize,
    backends: &[BackendView],
    out: &mut [usize],
) -> usize {
    let n = backends.len();
    let mut k = 0;
    for step in 0..n {
        if k == out.len() {
            break;
        }
        let i = (start + step) % n;
        if i != first && backends[i].routable {
            out[k] = i;
            k += 1;
        }
    }
    k
}

/// Settings that tune a policy without changing which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    let mut policy: Box<dyn Policy> = match name {
        PolicyName::RoundRobin => Box::new(RoundRobin::default()),
        PolicyName::LeastConn => Box::new(LeastConn::default()),
        PolicyName::Sticky => Box::new(Sticky::new(opts.sticky_ipv6_prefix)),
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

/// A stable 64-bit key for a client address, from fixed seeds so every
/// process agrees. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) keys as
/// its IPv4 address; any other IPv6 address counts only its leading
/// `ipv6_prefix` bits (128 or more: all of it).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> u64 {
    const SEED_V4: u64 = 0x243f_6a88_85a3_08d3;
    const SEED_V6: u64 = 0x1319_8a2e_0370_7344;
    let v6 = match ip {
        IpAddr::V4(a) => return mix64(u64::from(u32::from(a)) ^ SEED_V4),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => return mix64(u64::from(u32::from(a)) ^ SEED_V4),
            None => u128::from(a),
        },
    };
    let mask = match ipv6_prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    };
    let v6 = v6 & mask;
    mix64(mix64((v6 >> 64) as u64 ^ SEED_V6) ^ v6 as u64)
}

/// A strong 64-bit mixing function (the splitmix64 finalizer).
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A hash turned into an exponential draw: `-ln(u)` for
/// `u = (h / 2^12 + 0.5) / 2^52`, strictly inside (0, 1), so the result is
/// finite and > 0. Basic IEEE operations only (no libm, whose `ln` may
/// differ in the last bit between platforms, and Rust never fuses them),
/// so every process and every build gets the same bits; relative error
/// ~1e-15.
pub fn neg_ln_unit(h: u64) -> f64 {
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let u = ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64);
    let bits = u.to_bits();
    // u >= 2^-53 is a normal number: split it into 2^e * m, m in [1, 2).
    let mut e = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172.
    let f = m - 1.0; // exact (Sterbenz)
    let s = f / (2.0 + f);
    let z = s * s;
    let series = 1.0
        + z * (1.0 / 3.0
            + z * (1.0 / 5.0
                + z * (1.0 / 7.0
                    + z * (1.0 / 9.0 + z * (1.0 / 11.0 + z * (1.0 / 13.0 + z * (1.0 / 15.0)))))));
    -(f64::from(e) * std::f64::consts::LN_2 + 2.0 * s * series)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn client_key_mapped_ipv4_and_prefixes() {
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        let key = |ip: IpAddr, p| client_key(ip, p);
        assert_eq!(key(v4.to_ipv6_mapped().into(), 64), key(v4.into(), 128));
        let net = |low: u128| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0001 << 64 | low));
        // Bit 63 from the right is outside a /64 but inside a /65.
        assert_eq!(key(net(0), 64), key(net(1 << 63 | 5), 64));
        assert_ne!(key(net(0), 65), key(net(1 << 63), 65));
        assert_ne!(key(net(0), 128), key(net(1), 128));
        assert_eq!(key(net(1), 128), key(net(1), 200));
        assert_eq!(key(net(1), 0), key(IpAddr::V6(Ipv6Addr::LOCALHOST), 0));
        assert_ne!(
            key(v4.into(), 128),
            key(Ipv4Addr::new(192, 0, 2, 8).into(), 128)
        );
    }

    #[test]
    fn neg_ln_unit_is_accurate_and_positive() {
        for h in (0..100_000u64).map(mix64).chain([0, 1, u64::MAX, 1 << 63]) {
            let u = ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
            let (ours, std) = (neg_ln_unit(h), -u.ln());
            assert!(
                ours > 0.0 && ((ours - std) / std).abs() < 1e-13,
                "{h}: {ours} vs {std}"
            );
        }
    }
}
