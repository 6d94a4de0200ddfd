//! Which service each listening address leads to: one service, or the
//! service whose `sni` names match the ClientHello's server name (with
//! the service without `sni` on that address as the fallback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hashbrown::HashMap;

use super::Service;
use crate::acl::Networks;
use crate::sni::names::{Pattern, SniMap};

/// Where a listener's connections go.
pub struct Route {
    /// `accept-proxy` of the services on it (they agree).
    trusted: Arc<Networks>,
    /// By service index.
    kind: Kind,
}

enum Kind {
    One(usize),
    Names(SniMap<usize>),
}

impl Route {
    pub fn trusted(&self) -> &Networks {
        &self.trusted
    }

    /// The service, when the listener does not route by name.
    pub fn direct(&self) -> Option<usize> {
        match &self.kind {
            Kind::One(i) => Some(*i),
            Kind::Names(_) => None,
        }
    }

    /// The service for server name `host` (the most specific match, else
    /// the fallback; `None` for a connection without a name: the
    /// fallback), when the listener routes by name.
    pub fn by_name(&self, host: Option<&str>) -> Option<usize> {
        match &self.kind {
            Kind::One(i) => Some(*i),
            Kind::Names(map) => map.route(host).copied(),
        }
    }

    /// The service whose names match `host` (most specific first), not
    /// counting the fallback.
    pub fn matched(&self, host: &str) -> Option<usize> {
        match &self.kind {
            Kind::One(_) => None,
            Kind::Names(map) => map.lookup(host).copied(),
        }
    }

    /// The service that takes what no name matched, if any.
    pub fn fallback(&self) -> Option<usize> {
        match &self.kind {
            Kind::One(i) => Some(*i),
            Kind::Names(map) => map.fallback().copied(),
        }
    }
}

#[derive(Default)]
pub struct Routes {
    map: HashMap<SocketAddr, Route>,
    any_sni: bool,
}

impl Routes {
    /// The routes of the services not leaving, by index in `list`.
    pub fn build(list: &[Service]) -> Routes {
        let mut map: HashMap<SocketAddr, Route> = HashMap::new();
        let mut any_sni = false;
        for (i, s) in list.iter().enumerate().filter(|(_, s)| !s.leaving) {
            for &addr in &s.config.listen {
                let route = map.entry(addr).or_insert_with(|| Route {
                    trusted: s.config.accept_proxy.clone(),
                    kind: Kind::Names(SniMap::new()),
                });
                let Kind::Names(names) = &mut route.kind else {
                    continue;
                };
                if s.sni.is_empty() {
                    names.set_fallback(i);
                }
                for p in &s.sni {
                    match Pattern::parse(p) {
                        Ok(p) => {
                            let _ = names.insert(p, i);
                        }
                        Err(err) => {
                            tracing::warn!(service = %s.name, cause = %err, "sni name skipped")
                        }
                    }
                }
            }
        }
        // A listener whose only service does not route by name goes there.
        for route in map.values_mut() {
            if let Kind::Names(names) = &route.kind {
                match (names.is_empty(), names.fallback()) {
                    (true, Some(&i)) => route.kind = Kind::One(i),
                    _ => any_sni = true,
                }
            }
        }
        Routes { map, any_sni }
    }

    /// The route of the listener a connection came in on (`local`: the
    /// socket's local address; a listener on a wildcard address is found
    /// by its port).
    pub fn get(&self, local: SocketAddr) -> Option<&Route> {
        self.map.get(&local).or_else(|| {
            let any = match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            self.map.get(&SocketAddr::new(any, local.port()))
        })
    }

    /// No listener routes by name and every one leads to one service.
    pub fn single(&self) -> bool {
        !self.any_sni && self.map.values().all(|r| matches!(r.kind, Kind::One(0)))
    }

    pub fn any_sni(&self) -> bool {
        self.any_sni
    }

    /// The listening addresses whose every service (of `list`, not
    /// leaving) is `full`.
    pub fn held(&self, list: &[Service], full: impl Fn(&Service) -> bool) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for &addr in self.map.keys() {
            let mut on = list
                .iter()
                .filter(|s| !s.leaving && s.config.listen.contains(&addr))
                .peekable();
            if on.peek().is_some() && on.all(&full) {
                out.push(addr);
            }
        }
        out
    }
}
