//! The front's `Access` part: who the client of a connection is, and
//! whether it is served.
//!
//! - Access lists (`--allow`, `--deny`, `ctl acl`, SIGHUP): checked once
//!   per connection, on the client's address, before anything is handed to
//!   a worker or a backend touched. A refused client gets a reset, is
//!   counted in `rrproxy_denied_connections_total`, and logged at most once
//!   a second (with how many were not logged). The lists live in the
//!   [`Config`] (so an upgrade keeps `ctl` edits, and a reload reports the
//!   ones it undoes); this part holds a copy for the hot path, refreshed
//!   whenever the config changes ([`Access::configure`]).
//! - The per-IP limit (`--max-conns-per-ip`): a client over it is reset,
//!   counted in `rrproxy_refused_connections_total` and logged like a
//!   denial.
//! - PROXY headers from `--accept-proxy` sources (see `header`): the
//!   header's source is the client from then on, for the access list, the
//!   per-IP limit, the policy, the logs and `send-proxy`.
//!
//! With no list and no trusted source, a connection costs two tests of an
//! empty list here.

mod header;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Conn, Counters, refuse};
use crate::acl::{Acl, Action, Cidr, Networks, Verdict};
use crate::config::Config;
use crate::stats::FrontWord;

use header::Waiting;
pub use header::{AccessState, MAX_HEADER_WAITS};

pub struct Access {
    /// The access lists in force (the config's, shared).
    acl: Arc<Acl>,
    /// `--accept-proxy`: sources whose connections begin with a header.
    trusted: Arc<Networks>,
    header_timeout: Duration,
    /// Connections whose PROXY header is being read (see `header`).
    waiting: hashbrown::HashMap<u64, Waiting>,
    next_wait: u64,
    denied_log: Throttle,
    header_log: Throttle,
    limit_log: Throttle,
    /// Refusals by a service's own limits (a line a second at most).
    service_log: Throttle,
}

impl Access {
    pub fn new(config: &Config) -> Access {
        Access {
            acl: config.acl.clone(),
            trusted: config.accept_proxy.clone(),
            header_timeout: config.proxy_header_timeout,
            waiting: Default::default(),
            next_wait: 0,
            denied_log: Throttle::default(),
            header_log: Throttle::default(),
            limit_log: Throttle::default(),
            service_log: Throttle::default(),
        }
    }

    /// Take the lists and settings of a new config.
    pub fn configure(&mut self, config: &Config) {
        self.acl = config.acl.clone();
        self.trusted = config.accept_proxy.clone();
        self.header_timeout = config.proxy_header_timeout;
    }

    /// Must a connection from `ip` begin with a PROXY header?
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// Connections whose header is being read now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// As many header reads wait as may: stop accepting until one ends.
    pub fn full(&self) -> bool {
        self.waiting.len() >= MAX_HEADER_WAITS
    }
}

/// At most one log line a second; counts what it held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// `Some(lines held back since the last one)` when a line may go out.
    fn pass(&mut self) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

impl Access {
    /// `conn`'s client is at its per-IP limit (`limit`): reset it, count
    /// it and say so, like an access list denial (at most a line a second).
    pub fn refuse_at_limit(&mut self, conn: &Conn, limit: u32, counters: &Counters) {
        counters.bump(FrontWord::RefusedPerIp, 1);
        refuse(&conn.stream);
        if let Some(held) = self.limit_log.pass() {
            warn!(
                client.addr = %conn.peer,
                limit,
                also_refused_since_last_line = held,
                "client refused: at --max-conns-per-ip"
            );
        }
    }

    /// `conn` was refused by its service's own limit `limit` (`why`):
    /// reset, and logged at most once a second.
    pub fn refuse_by_service(&mut self, conn: &Conn, service: &str, limit: u64, why: &str) {
        refuse(&conn.stream);
        if let Some(held) = self.service_log.pass() {
            warn!(
                service,
                client.addr = %conn.peer,
                limit,
                also_refused_since_last_line = held,
                "client refused: {why}"
            );
        }
    }

    /// The access list's decision for `conn`'s client; a refused client is
    /// reset, counted and (at most once a second) logged. Nothing has been
    /// handed to a worker or a backend touched for a refused one.
    pub fn admits(&mut self, acl: &Acl, conn: &Conn, counters: &Counters) -> bool {
        if acl.is_empty() {
            return true;
        }
        let verdict = acl.admits(conn.ip());
        if verdict.admitted() {
            return true;
        }
        counters.bump(FrontWord::Denied, 1);
        refuse(&conn.stream);
        if let Some(held) = self.denied_log.pass() {
            let why = match verdict {
                Verdict::Denied => "a deny entry matches",
                _ => "not in the allow list",
            };
            warn!(
                client.addr = %conn.peer,
                why,
                also_refused_since_last_line = held,
                "client refused by the access list"
            );
        }
        false
    }

    /// For `ctl explain`: a service's access list `acl`'s decision for
    /// `ip` (the one [`Access::admits`] makes), and the entries that match
    /// it.
    pub fn explain(acl: &Acl, ip: std::net::IpAddr) -> (Verdict, Vec<(Action, Cidr)>) {
        let verdict = if acl.is_empty() {
            Verdict::Admit
        } else {
            acl.admits(ip)
        };
        let matching = acl.entries().filter(|(_, c)| c.contains(ip)).collect();
        (verdict, matching)
    }

    /// The running lists, for `ctl acl`.
    pub fn view(&self) -> AclView {
        AclView {
            allow: self.acl.allow().to_vec(),
            deny: self.acl.deny().to_vec(),
            accept_proxy: self.trusted.cidrs().to_vec(),
        }
    }
}

/// An edit of the access lists by `ctl acl`, worked out against the lists
/// in force.
pub struct AclEdit {
    pub cidr: Cidr,
    /// The lists after the edit; `None`: nothing changes.
    pub next: Option<Acl>,
    /// The reply.
    pub msg: String,
}

/// `ctl acl allow|deny CIDR` (`action` given) or `ctl acl remove CIDR`
/// (`None`) against the lists `cur`: the lists after, and what to say.
pub fn edit(cur: &Acl, action: Option<Action>, text: &str) -> Result<AclEdit, String> {
    let (cidr, host_bits) = Cidr::parse_noting_host_bits(text).map_err(|e| e.to_string())?;
    let before = cur.listed(cidr);
    let next = match action {
        Some(a) => cur.with(a, cidr),
        None => cur.without(cidr),
    };
    let Some(next) = next else {
        return match action {
            Some(a) => Ok(AclEdit {
                cidr,
                next: None,
                msg: format!("{cidr} is already in the {a} list; nothing changed"),
            }),
            None => Err(format!("{cidr} is in neither list (see `acl`)")),
        };
    };
    let mut msg = match (action, before) {
        (Some(a), Some(b)) => format!("{cidr} moved from the {b} list to the {a} list"),
        (Some(a), None) => format!("{cidr} added to the {a} list"),
        (None, Some(b)) => format!("{cidr} removed from the {b} list"),
        (None, None) => format!("{cidr} removed"),
    };
    if host_bits {
        msg.push_str(&format!(" (written {}: host bits cleared)", text.trim()));
    }
    if action == Some(Action::Allow) && cur.allow().is_empty() {
        msg.push_str("; the allow list was empty: from now on only clients in it are served");
    }
    if action.is_none() && before == Some(Action::Allow) && next.allow().is_empty() {
        msg.push_str("; the allow list is empty now: every client not denied is served");
    }
    Ok(AclEdit {
        cidr,
        next: Some(next),
        msg,
    })
}

/// What a reload to `new` undoes of the `ctl acl` edits in `edits`, one
/// note each.
pub fn reload_notes(
    edits: &std::collections::BTreeMap<Cidr, Option<Action>>,
    new: &Config,
) -> Vec<String> {
    let shown = |a: Option<Action>| match a {
        Some(a) => format!("in the {a} list"),
        None => "in neither list".to_string(),
    };
    edits
        .iter()
        .filter(|&(&cidr, &set)| new.acl.listed(cidr) != set)
        .map(|(&cidr, &set)| {
            format!(
                "acl {cidr} {} (set by ctl) -> {} (from the configuration)",
                shown(set),
                shown(new.acl.listed(cidr))
            )
        })
        .collect()
}

/// The running lists, for `ctl acl`.
#[derive(Debug, serde::Serialize)]
pub struct AclView {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// `--accept-proxy` sources (set by the configuration only).
    pub accept_proxy: Vec<Cidr>,
}

impl AclView {
    /// One line per entry, or what an empty list means.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if self.allow.is_empty() && self.deny.is_empty() {
            out.push("no access list: every client is served".to_string());
        }
        if self.allow.is_empty() && !self.deny.is_empty() {
            out.push("(no allow entry: every client not denied is served)".to_string());
        }
        out.extend(self.allow.iter().map(|c| format!("allow {c}")));
        out.extend(self.deny.iter().map(|c| format!("deny  {c}")));
        out.extend(
            self.accept_proxy
                .iter()
                .map(|c| format!("accept-proxy {c}  (PROXY header required; --accept-proxy)")),
        );
        out.join("\n")
    }
}

/// A PROXY header's client: its source, or for `LOCAL`/`UNKNOWN` the
/// connection's own peer; and its destination, if it names one.
fn client_of(
    header: &crate::proxy_protocol::Header,
    peer: SocketAddr,
) -> (SocketAddr, Option<SocketAddr>) {
    match *header {
        crate::proxy_protocol::Header::Tcp {
            source,
            destination,
        } => (source, Some(destination)),
        crate::proxy_protocol::Header::Local => (peer, None),
    }
}
