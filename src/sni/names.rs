//! The server names a service claims (`sni = ["www.example.com",
//! "*.example.com"]`): validating them ([`Pattern`]), finding the most
//! specific claim for a client's name ([`SniMap`]) and finding claims two
//! services make at once ([`overlaps`]).
//!
//! Rules:
//! - A pattern is a host name (the rules of [`super::host`]: letters,
//!   digits, `-`, `_`, labels of 1 to 63 characters, 253 in all; one
//!   trailing dot is dropped) or `*.` followed by one (`*.example.com`).
//!   Letters are matched without regard to case.
//! - `*` stands for exactly one label, as in a certificate (RFC 6125):
//!   `*.example.com` matches `www.example.com`, not `example.com` nor
//!   `a.b.example.com`. It may appear only as the whole first label.
//! - Most specific first: an exact name beats a wildcard. As a wildcard
//!   covers one label, a name has at most one wildcard that can match it
//!   (its own first label replaced by `*`), so two wildcards never compete:
//!   `*.example.com` and `*.com` match disjoint names.
//! - A name that matches no pattern goes to the fallback, if there is one.
//! - Refused: a lone `*` (the fallback is the service without `sni`), `*.`
//!   with nothing after it, `*` anywhere else (`a.*.b`, `**`, `*a.b`), and
//!   IP addresses (clients send no SNI for them).

use std::fmt;

use hashbrown::HashMap;

use super::host::{MAX_NAME_LEN, NameError, check_name, strip_root};

/// One validated, lowercase name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// A name, matched whole.
    Exact(Box<str>),
    /// `*.` and this domain: any one label, then the domain.
    Wildcard(Box<str>),
}

/// Why a pattern is refused; its message names the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sni name {pattern:?}: {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: PatternFault,
}

/// What is wrong with a refused pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternFault {
    LoneStar,
    NoDomain,
    MisplacedStar,
    Address,
    Name(NameError),
}

impl fmt::Display for PatternFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternFault::LoneStar => f.write_str(
                "a lone '*' is not a name (the service without sni takes what no name matches)",
            ),
            PatternFault::NoDomain => f.write_str("a wildcard needs a domain after '*.'"),
            PatternFault::MisplacedStar => {
                f.write_str("'*' may only be the whole first label, as in \"*.example.com\"")
            }
            PatternFault::Address => f.write_str(
                "an IP address is not a server name (TLS clients send no SNI for addresses)",
            ),
            PatternFault::Name(e) => e.fmt(f),
        }
    }
}

impl Pattern {
    /// Validate `text` as a pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let fault = |why| PatternError {
            pattern: text.to_string(),
            why,
        };
        if text == "*." {
            return Err(fault(PatternFault::NoDomain));
        }
        let name = strip_root(text.as_bytes());
        let (wildcard, rest) = match name.strip_prefix(b"*.") {
            Some(domain) => (true, domain),
            None if name == b"*" => return Err(fault(PatternFault::LoneStar)),
            None => (false, name),
        };
        if wildcard && rest.is_empty() {
            return Err(fault(PatternFault::NoDomain));
        }
        if rest.contains(&b'*') {
            return Err(fault(PatternFault::MisplacedStar));
        }
        let plain = std::str::from_utf8(name).unwrap_or_default();
        if plain.parse::<std::net::IpAddr>().is_ok()
            || plain
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok())
        {
            return Err(fault(PatternFault::Address));
        }
        check_name(rest).map_err(|e| fault(PatternFault::Name(e)))?;
        // A name the wildcard matches is at least as long as the pattern.
        if name.len() > MAX_NAME_LEN {
            return Err(fault(PatternFault::Name(NameError::TooLong)));
        }
        // check_name admits ASCII only.
        let lower: Box<str> = String::from_utf8_lossy(rest).to_ascii_lowercase().into();
        Ok(if wildcard {
            Pattern::Wildcard(lower)
        } else {
            Pattern::Exact(lower)
        })
    }

    /// Whether `host` (any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = strip_root(host.as_bytes());
        match self {
            Pattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            Pattern::Wildcard(domain) => match host.iter().position(|&b| b == b'.') {
                Some(dot) if dot > 0 => host[dot + 1..].eq_ignore_ascii_case(domain.as_bytes()),
                _ => false,
            },
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Pattern, PatternError> {
        Pattern::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Wildcard(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// Which value (a service) each name pattern of one listener leads to,
/// and the fallback for the rest.
#[derive(Debug, Clone)]
pub struct SniMap<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the domain after `*.`.
    wildcard: HashMap<Box<str>, T>,
    fallback: Option<T>,
}

impl<T> Default for SniMap<T> {
    fn default() -> SniMap<T> {
        SniMap {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            fallback: None,
        }
    }
}

impl<T> SniMap<T> {
    pub fn new() -> SniMap<T> {
        SniMap::default()
    }

    /// Let `pattern` lead to `value`. A pattern already claimed keeps its
    /// value, which is returned as the error.
    pub fn insert(&mut self, pattern: Pattern, value: T) -> Result<(), &T> {
        let (map, key) = match pattern {
            Pattern::Exact(name) => (&mut self.exact, name),
            Pattern::Wildcard(domain) => (&mut self.wildcard, domain),
        };
        match map.entry(key) {
            hashbrown::hash_map::Entry::Occupied(taken) => Err(taken.into_mut()),
            hashbrown::hash_map::Entry::Vacant(free) => {
                free.insert(value);
                Ok(())
            }
        }
    }

    /// What a name no pattern matches (or a connection without a name)
    /// leads to. Returns the previous fallback.
    pub fn set_fallback(&mut self, value: T) -> Option<T> {
        self.fallback.replace(value)
    }

    pub fn fallback(&self) -> Option<&T> {
        self.fallback.as_ref()
    }

    /// The value of the most specific pattern matching `host` (any case,
    /// one trailing dot ignored), without the fallback.
    pub fn lookup(&self, host: &str) -> Option<&T> {
        let host = strip_root(host.as_bytes());
        let mut buf = [0u8; MAX_NAME_LEN];
        let lower = buf.get_mut(..host.len())?;
        for (to, from) in lower.iter_mut().zip(host) {
            *to = from.to_ascii_lowercase();
        }
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(v) = self.exact.get(lower) {
            return Some(v);
        }
        let (label, domain) = lower.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(domain)
    }

    /// Where a connection goes: the most specific match of its name, else
    /// the fallback (also for a connection without a name).
    pub fn route(&self, host: Option<&str>) -> Option<&T> {
        host.and_then(|h| self.lookup(h)).or(self.fallback.as_ref())
    }

    /// Whether any name pattern is set (not counting the fallback).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// A pattern claimed twice on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap<S> {
    pub pattern: Pattern,
    pub first: S,
    pub second: S,
}

impl<S: fmt::Display + PartialEq> fmt::Display for Overlap<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.second {
            write!(
                f,
                "sni name \"{}\" is listed twice by service {}",
                self.pattern, self.first
            )
        } else {
            write!(
                f,
                "sni name \"{}\" is claimed by both service {} and service {} on the same listener",
                self.pattern, self.first, self.second
            )
        }
    }
}

/// Every pattern claimed more than once among `claims` (owner, pattern),
/// the claims of one listener, in order: each later claim of a pattern
/// against its first claimant. Spellings that differ only in case or a
/// trailing dot are the same pattern; an exact name and a wildcard that
/// covers it are not an overlap (the exact name wins).
pub fn overlaps<S: Clone>(claims: impl IntoIterator<Item = (S, Pattern)>) -> Vec<Overlap<S>> {
    let mut first: SniMap<S> = SniMap::new();
    let mut found = Vec::new();
    for (owner, pattern) in claims {
        if let Err(taken) = first.insert(pattern.clone(), owner.clone()) {
            found.push(Overlap {
                pattern,
                first: taken.clone(),
                second: owner,
            });
        }
    }
    found
}
