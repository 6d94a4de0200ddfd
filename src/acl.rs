//! Access control by client network: CIDR parsing, allow/deny lists with a
//! lookup that stays fast with many thousands of entries, and the key a
//! per-IP connection limit counts a client under.
//!
//! Addresses are compared in one form: an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 client)
//! is the IPv4 address, for clients and for entries alike (so
//! `::ffff:10.0.0.0/104` is `10.0.0.0/8`). Other IPv6 entries match IPv6
//! clients only: `::/0` is "every IPv6 client", not every client.
//!
//! An entry with host bits set (`10.1.2.3/8`) is accepted and masked to
//! its network (`10.0.0.0/8`), as HAProxy does;
//! [`Cidr::parse_noting_host_bits`] tells the caller so it can warn (as
//! nginx does). A bare address is a host route (`/32`, `/128`). Host names
//! are refused: an ACL must not change with DNS.
//!
//! An [`Acl`] is an immutable value: an edit ([`Acl::with`],
//! [`Acl::without`]) builds a new one, to be swapped in whole. Both it and
//! [`Networks`] (one plain list, for `--accept-proxy`) serialize as their
//! entries in text form, so they travel inside the configuration (an
//! upgrade hands it over whole) and are rebuilt on the other side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

mod forms;

use forms::AclEntries;
pub use forms::Networks;

/// An IP network: an address with its host bits cleared and a prefix
/// length. IPv4 networks (and IPv4-mapped IPv6 ones) are always IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR. Every message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("empty network (expected an address like 10.0.0.0/8 or 2001:db8::/32)")]
    Empty,
    #[error(
        "'{0}' is a host name; a network must be an IP address with an optional /prefix (like 10.0.0.0/8)"
    )]
    HostName(String),
    #[error("'{0}' is not an IP address (expected something like 10.0.0.0/8 or 2001:db8::/32)")]
    BadAddress(String),
    #[error("'{text}': the prefix length must be a number from 0 to {max}")]
    BadPrefix { text: String, max: u8 },
}

impl Cidr {
    /// The network of `addr` with `prefix` leading bits (host bits are
    /// cleared). `None` when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => {
                let net = Ipv6Addr::from(u128::from(a) & mask128(prefix));
                Some(match net.to_ipv4_mapped() {
                    Some(v4) if prefix >= 96 => Cidr {
                        addr: IpAddr::V4(v4),
                        prefix: prefix - 96,
                    },
                    _ => Cidr {
                        addr: IpAddr::V6(net),
                        prefix,
                    },
                })
            }
            _ => None,
        }
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Is `ip` in this network? (`ip` IPv4-mapped counts as IPv4.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Parse `10.0.0.0/8`, `2001:db8::/32` or a bare address; also say
    /// whether the text had host bits set (which were cleared).
    pub fn parse_noting_host_bits(text: &str) -> Result<(Cidr, bool), CidrError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            if looks_like_host_name(addr_text) {
                CidrError::HostName(text.to_string())
            } else {
                CidrError::BadAddress(text.to_string())
            }
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bad_prefix = || CidrError::BadPrefix {
            text: text.to_string(),
            max,
        };
        let prefix = match prefix_text {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad_prefix())?
            }
            Some(_) => return Err(bad_prefix()),
        };
        let cidr = Cidr::new(addr, prefix).ok_or_else(bad_prefix)?;
        let had_host_bits = key_of(addr) != key_of(cidr.addr);
        Ok((cidr, had_host_bits))
    }

    /// First and last address, as integers.
    fn span(&self) -> Span {
        match self.addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                Span::V4(a, a | !mask32(self.prefix))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                Span::V6(a, a | !mask128(self.prefix))
            }
        }
    }
}

enum Span {
    V4(u32, u32),
    V6(u128, u128),
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    /// Like [`Cidr::parse_noting_host_bits`], host bits cleared silently.
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        Cidr::parse_noting_host_bits(text).map(|(cidr, _)| cidr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Letters beyond what an IP address holds, or a dotted name with a
/// letter: somebody wrote a host name.
fn looks_like_host_name(text: &str) -> bool {
    let name_chars = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    name_chars && text.bytes().any(|b| b.is_ascii_alphabetic())
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// An address as an integer, IPv4-mapped IPv6 as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    V4(u32),
    V6(u128),
}

fn key_of(ip: IpAddr) -> Key {
    match ip.to_canonical() {
        IpAddr::V4(a) => Key::V4(u32::from(a)),
        IpAddr::V6(a) => Key::V6(u128::from(a)),
    }
}

/// Networks as sorted, disjoint, merged address ranges: a lookup is one
/// binary search, however many entries there are.
#[derive(Debug, Clone, Default)]
struct Ranges {
    v4: Spans<u32>,
    v6: Spans<u128>,
}

impl Ranges {
    fn build(cidrs: &[Cidr]) -> Ranges {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for c in cidrs {
            match c.span() {
                Span::V4(a, b) => v4.push((a, b)),
                Span::V6(a, b) => v6.push((a, b)),
            }
        }
        Ranges {
            v4: Spans::merged(v4),
            v6: Spans::merged(v6),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match key_of(ip) {
            Key::V4(a) => self.v4.contains(a),
            Key::V6(a) => self.v6.contains(a),
        }
    }
}

/// Disjoint inclusive ranges `starts[i]..=ends[i]`, sorted. Starts are
/// kept apart from ends so the binary search touches half the memory.
#[derive(Debug, Clone, Default, PartialEq)]
struct Spans<T> {
    starts: Vec<T>,
    ends: Vec<T>,
}

impl<T: Ord + Copy> Spans<T> {
    fn merged(mut ranges: Vec<(T, T)>) -> Spans<T> {
        ranges.sort_unstable();
        let mut out = Spans {
            starts: Vec::with_capacity(ranges.len()),
            ends: Vec::with_capacity(ranges.len()),
        };
        for (start, end) in ranges {
            match out.ends.last_mut() {
                // CIDR ranges are nested or disjoint; overlap means nested.
                Some(last) if start <= *last => *last = (*last).max(end),
                _ => {
                    out.starts.push(start);
                    out.ends.push(end);
                }
            }
        }
        out
    }

    fn contains(&self, x: T) -> bool {
        let i = self.starts.partition_point(|&start| start <= x);
        i > 0 && x <= self.ends[i - 1]
    }
}

/// One list: its entries as written (sorted, no duplicates) and their
/// lookup form.
#[derive(Debug, Clone, Default)]
struct List {
    cidrs: Vec<Cidr>,
    ranges: Ranges,
}

impl List {
    fn new(mut cidrs: Vec<Cidr>) -> List {
        cidrs.sort_unstable();
        cidrs.dedup();
        let ranges = Ranges::build(&cidrs);
        List { cidrs, ranges }
    }

    fn has(&self, cidr: Cidr) -> bool {
        self.cidrs.binary_search(&cidr).is_ok()
    }

    fn without(&self, cidr: Cidr) -> List {
        List::new(self.cidrs.iter().copied().filter(|c| *c != cidr).collect())
    }

    fn with(&self, cidr: Cidr) -> List {
        let mut cidrs = self.cidrs.clone();
        cidrs.push(cidr);
        List::new(cidrs)
    }
}

/// Which list an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// The decision for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// A deny entry matched.
    Denied,
    /// There is an allow list and no entry of it matched.
    NotAllowed,
}

impl Verdict {
    pub fn admitted(self) -> bool {
        self == Verdict::Admit
    }
}

/// Allow and deny lists of client networks. A deny match always refuses;
/// when the allow list is not empty, only clients matching it are
/// admitted; with both empty everyone is. Equal when the entries are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "AclEntries", from = "AclEntries")]
pub struct Acl {
    allow: List,
    deny: List,
}

impl Acl {
    pub fn new(allow: impl IntoIterator<Item = Cidr>, deny: impl IntoIterator<Item = Cidr>) -> Acl {
        Acl {
            allow: List::new(allow.into_iter().collect()),
            deny: List::new(deny.into_iter().collect()),
        }
    }

    /// No entries at all: every client is admitted (the caller may skip
    /// the lookup).
    pub fn is_empty(&self) -> bool {
        self.allow.cidrs.is_empty() && self.deny.cidrs.is_empty()
    }

    pub fn admits(&self, ip: IpAddr) -> Verdict {
        if self.deny.ranges.contains(ip) {
            Verdict::Denied
        } else if !self.allow.cidrs.is_empty() && !self.allow.ranges.contains(ip) {
            Verdict::NotAllowed
        } else {
            Verdict::Admit
        }
    }

    /// The allow entries, sorted.
    pub fn allow(&self) -> &[Cidr] {
        &self.allow.cidrs
    }

    /// The deny entries, sorted.
    pub fn deny(&self) -> &[Cidr] {
        &self.deny.cidrs
    }

    /// Every entry with its list: allow entries first, each list sorted.
    pub fn entries(&self) -> impl Iterator<Item = (Action, Cidr)> + '_ {
        let allow = self.allow.cidrs.iter().map(|c| (Action::Allow, *c));
        allow.chain(self.deny.cidrs.iter().map(|c| (Action::Deny, *c)))
    }

    /// A copy with `cidr` in the `action` list (and taken out of the
    /// other, where the same network would contradict it). `None` when it
    /// is already there and not in the other: nothing to change.
    pub fn with(&self, action: Action, cidr: Cidr) -> Option<Acl> {
        let (to, other) = match action {
            Action::Allow => (&self.allow, &self.deny),
            Action::Deny => (&self.deny, &self.allow),
        };
        // Nothing to do only if it is in this list and not in the other
        // (a list built with the same network on both sides gets it
        // moved, like any other).
        if to.has(cidr) && !other.has(cidr) {
            return None;
        }
        let to = if to.has(cidr) {
            to.clone()
        } else {
            to.with(cidr)
        };
        let other = other.without(cidr);
        Some(match action {
            Action::Allow => Acl {
                allow: to,
                deny: other,
            },
            Action::Deny => Acl {
                allow: other,
                deny: to,
            },
        })
    }

    /// Which list `cidr` is in, if any (exactly this network, not one
    /// containing it).
    pub fn listed(&self, cidr: Cidr) -> Option<Action> {
        if self.allow.has(cidr) {
            Some(Action::Allow)
        } else if self.deny.has(cidr) {
            Some(Action::Deny)
        } else {
            None
        }
    }

    /// A copy without `cidr` in either list. `None` when it is in neither.
    pub fn without(&self, cidr: Cidr) -> Option<Acl> {
        if !self.allow.has(cidr) && !self.deny.has(cidr) {
            return None;
        }
        Some(Acl {
            allow: self.allow.without(cidr),
            deny: self.deny.without(cidr),
        })
    }
}

/// The address a per-IP connection limit counts `ip` under: an IPv4 (or
/// IPv4-mapped) address is itself; an IPv6 address is its network of
/// `ipv6_prefix` leading bits (64 counts a whole /64 as one client, since
/// one host commonly holds one; 128 or more: the whole address).
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
            u128::from(a) & mask128(ipv6_prefix.min(128)),
        )),
    }
}

#[cfg(test)]
mod tests;
