//! `[[service]]` tables: several services in one proxy, each with its own
//! listeners, backends, policy and per-connection settings.
//!
//! A service is built like the top level: its table's keys, else the
//! top-level key or flag it inherits, else the default, each checked by
//! the same validator, each error naming the file's `path:line:column`.
//! Its `listen` and `backends` are its own (the top-level ones, and the
//! `--listen` and `--backend` flags, make the implicit service named
//! `default`). The result is one [`Config`] per service, whose global
//! settings (workers, metrics, control, ...) are the top level's.
//!
//! Rules across services ([`check`]): names are `[a-z0-9_-]`, 1 to 32
//! characters, unique, and not `default`; several services share a
//! listen address only when they route by `sni`, with at most one without
//! `sni` (the fallback for what no name matched); no name is claimed twice
//! on one listener; services sharing a listener agree on what belongs to
//! the listening socket (defer-accept, backlog, accept-proxy and its
//! header timeout). A listener with an `sni` service defaults to
//! defer-accept (the kernel hands over a connection once its ClientHello
//! has arrived) unless one of its services says otherwise.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{ConfigError, Invalid};
use super::file::{self, FileConfig, List, LoadedFile, Raw};
use super::values::{self, Limit};
use super::{Config, Flags, ServiceLimits};
use crate::sni::names::Pattern;

/// The name of the service the top-level keys and the flags make.
pub const DEFAULT_SERVICE: &str = "default";
/// Most services one proxy runs.
pub const MAX_SERVICES: usize = 64;
/// Longest service name.
pub const MAX_NAME_LEN: usize = 32;

/// One named service, as it runs: its name, its server names (`sni`,
/// normalised; empty: it does not route by name) and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub sni: Vec<String>,
    /// Its settings (global ones as the top level's; `services` empty).
    pub config: Config,
}

/// A `[[service]]` table as written: the per-service keys, with the
/// top-level meanings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceTable {
    pub name: Raw,
    pub sni: Option<Spanned<List>>,
    pub listen: Option<Spanned<List>>,
    pub backends: Option<Spanned<List>>,
    pub policy: Option<Raw>,
    pub sticky_ipv6_prefix: Option<Raw>,
    pub connect_timeout: Option<Raw>,
    pub idle_timeout: Option<Raw>,
    pub client_first_byte_timeout: Option<Raw>,
    pub retries: Option<Raw>,
    pub allow: Option<Spanned<List>>,
    pub deny: Option<Spanned<List>>,
    pub accept_proxy: Option<Spanned<List>>,
    pub proxy_header_timeout: Option<Raw>,
    pub defer_accept: Option<Raw>,
    pub backlog: Option<Raw>,
    pub health_interval: Option<Raw>,
    pub health_timeout: Option<Raw>,
    pub health_send: Option<Raw>,
    pub health_expect: Option<Raw>,
    pub rise: Option<Raw>,
    pub fall: Option<Raw>,
    pub slow_start: Option<Raw>,
    pub source: Option<Spanned<List>>,
    pub resolve_interval: Option<Raw>,
    pub queue_timeout: Option<Raw>,
    /// The service's own limits (see [`ServiceLimits`]): not inherited.
    pub max_conns: Option<Raw>,
    pub max_conns_per_ip: Option<Raw>,
}

/// The keys and flags a service builds from: the top level's, with the
/// table's keys in place of the inherited ones (and of the flags that
/// would override them), and its own `listen` and `backends`.
fn merged(top: &FileConfig, flags: &Flags, t: &ServiceTable) -> (FileConfig, Flags) {
    let mut keys = FileConfig {
        service: None,
        listen: t.listen.clone(),
        backends: t.backends.clone(),
        ..top.clone()
    };
    let mut f = flags.clone();
    f.listen.clear();
    f.backend.clear();
    macro_rules! own {
        ($($key:ident => |$f:ident| $clear:expr;)*) => {$(
            if t.$key.is_some() {
                keys.$key = t.$key.clone();
                let $f = &mut f;
                $clear;
            }
        )*};
    }
    own! {
        policy => |f| f.policy = None;
        sticky_ipv6_prefix => |f| f.sticky_ipv6_prefix = None;
        connect_timeout => |f| f.tuning.connect_timeout = None;
        idle_timeout => |f| f.tuning.idle_timeout = None;
        client_first_byte_timeout => |f| f.tuning.client_first_byte_timeout = None;
        retries => |f| f.tuning.retries = None;
        allow => |f| f.access.allow.clear();
        deny => |f| f.access.deny.clear();
        accept_proxy => |f| f.access.accept_proxy.clear();
        proxy_header_timeout => |f| f.access.proxy_header_timeout = None;
        defer_accept => |f| f.tuning.defer_accept = false;
        backlog => |f| f.tuning.backlog = None;
        health_interval => |f| f.tuning.health_interval = None;
        health_timeout => |f| f.tuning.health_timeout = None;
        health_send => |f| f.tuning.health_send = None;
        health_expect => |f| f.tuning.health_expect = None;
        rise => |f| f.tuning.rise = None;
        fall => |f| f.tuning.fall = None;
        slow_start => |f| f.tuning.slow_start = None;
        source => |f| f.source = None;
        resolve_interval => |f| f.tuning.resolve_interval = None;
        queue_timeout => |f| f.tuning.queue_timeout = None;
    }
    (keys, f)
}

/// Whether a service's defer-accept was said (its key, else the
/// top level's key or flag).
fn defer_said(file: &LoadedFile, flags: &Flags, t: Option<&ServiceTable>) -> bool {
    t.is_some_and(|t| t.defer_accept.is_some())
        || file.keys.defer_accept.is_some()
        || flags.tuning.defer_accept
}

/// A service's name, checked.
fn name(file: &LoadedFile, t: &ServiceTable) -> Result<String, ConfigError> {
    let raw = t.name.get_ref();
    let bad = |why: &str| {
        ConfigError::value(
            file.origin("name", t.name.span()),
            file::shown(raw),
            Invalid::new(why.to_string()),
        )
    };
    let toml::Value::String(name) = raw else {
        return Err(bad("expected a string"));
    };
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(bad(&format!(
            "expected 1 to {MAX_NAME_LEN} characters among a-z, 0-9, '_' and '-'"
        )));
    }
    if name == DEFAULT_SERVICE {
        return Err(bad(
            "'default' is the service the top-level keys and the flags make; choose another name",
        ));
    }
    Ok(name.clone())
}

/// A service's own connection limits, from its table only: the
/// top-level `max-conns` and `max-conns-per-ip` (and their flags) are the
/// proxy's and apply beside them.
fn own_limits(file: &LoadedFile, t: &ServiceTable) -> Result<ServiceLimits, ConfigError> {
    let one = |key: &str, raw: &Option<Raw>, max: fn(&str) -> Result<Limit, Invalid>| {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let shown = file::shown(raw.get_ref());
        let text = file::text(raw.get_ref()).unwrap_or_else(|| shown.clone());
        max(&text)
            .map(|l| l.0)
            .map_err(|why| ConfigError::value(file.origin(key, raw.span()), shown, why))
    };
    Ok(ServiceLimits {
        max_conns: one("max-conns", &t.max_conns, values::limit_u64)?,
        max_conns_per_ip: one("max-conns-per-ip", &t.max_conns_per_ip, values::limit_u32)?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    })
}

/// Build every `[[service]]` of `file` (the top level is built already:
/// `top`), then check the rules across them.
pub(super) fn build(
    flags: &Flags,
    file: &LoadedFile,
    tables: &[ServiceTable],
    top: &mut Config,
) -> Result<Vec<Service>, ConfigError> {
    let rule = |key: &str, span: std::ops::Range<usize>, message: String| ConfigError::Rule {
        origin: file.origin(key, span),
        message,
    };
    if tables.len() > MAX_SERVICES {
        return Err(rule(
            "name",
            tables[MAX_SERVICES].name.span(),
            format!(
                "too many services: {} (at most {MAX_SERVICES})",
                tables.len()
            ),
        ));
    }
    let mut services: Vec<Service> = Vec::with_capacity(tables.len());
    let mut said = Vec::with_capacity(tables.len());
    for t in tables {
        let name = name(file, t)?;
        if services.iter().any(|s| s.name == name) {
            return Err(rule(
                "name",
                t.name.span(),
                format!("service '{name}' is defined twice"),
            ));
        }
        if t.listen.is_none() {
            return Err(rule(
                "name",
                t.name.span(),
                format!("service '{name}' has no `listen`"),
            ));
        }
        if t.backends.is_none() {
            return Err(rule(
                "name",
                t.name.span(),
                format!("service '{name}' has no `backends`"),
            ));
        }
        let mut sni = Vec::new();
        if let Some(list) = &t.sni {
            for item in file::items(list) {
                let text = file::text(item.value).unwrap_or_else(|| file::shown(item.value));
                let pattern = Pattern::parse(&text).map_err(|why| {
                    ConfigError::value(
                        file.origin("sni", item.span.clone()),
                        text.clone(),
                        Invalid::new(why.to_string()),
                    )
                })?;
                sni.push(pattern.to_string());
            }
            if sni.is_empty() {
                return Err(rule(
                    "sni",
                    list.span(),
                    "an empty list: give server names, or leave `sni` out (the service then takes what no name matches)".into(),
                ));
            }
        }
        let (keys, f) = merged(&file.keys, flags, t);
        let mut config = super::build::build_one(&f, Some(&file.with_keys(keys)), false)?;
        config.services = Vec::new();
        config.own_limits = own_limits(file, t)?;
        services.push(Service { name, sni, config });
        said.push(defer_said(file, flags, Some(t)));
    }
    let top_said = defer_said(file, flags, None);
    check(file, tables, top, &mut services, top_said, &said)?;
    Ok(services)
}

/// One service's claim on a listen address.
struct Claim<'a> {
    name: &'a str,
    /// Index in `services`; `None`: the default service.
    index: Option<usize>,
    sni: &'a [String],
}

/// The rules across services, on the services built from `tables` and the
/// default one (`top`, when it has backends); sets defer-accept on SNI
/// listeners where nobody said it.
fn check(
    file: &LoadedFile,
    tables: &[ServiceTable],
    top: &mut Config,
    services: &mut [Service],
    top_said: bool,
    said: &[bool],
) -> Result<(), ConfigError> {
    let listen_span = |i: usize, addr: SocketAddr| {
        let list = tables[i].listen.as_ref().expect("checked: listen is given");
        let items = file::items(list);
        let at = services[i].config.listen.iter().position(|&a| a == addr);
        at.and_then(|k| items.get(k).map(|it| it.span.clone()))
            .unwrap_or_else(|| list.span())
    };
    // Every address and the services on it, in order.
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let has_default = !top.backends.is_empty();
    if has_default {
        addrs.extend(top.listen.iter().copied());
    }
    for s in services.iter() {
        for &a in &s.config.listen {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    let mut defer_on: Vec<(Option<usize>, bool)> = Vec::new();
    for addr in addrs {
        let mut claims: Vec<Claim> = Vec::new();
        if has_default && top.listen.contains(&addr) {
            claims.push(Claim {
                name: super::DEFAULT_SERVICE,
                index: None,
                sni: &[],
            });
        }
        for (i, s) in services.iter().enumerate() {
            if s.config.listen.contains(&addr) {
                claims.push(Claim {
                    name: &s.name,
                    index: Some(i),
                    sni: &s.sni,
                });
            }
        }
        // The span to point at for a claim (a default claim: the first
        // named service on the address, which is what made it shared).
        let at = |c: &Claim| {
            let i = c
                .index
                .or_else(|| claims.iter().find_map(|c| c.index))
                .unwrap_or(0);
            listen_span(i, addr)
        };
        let fallbacks: Vec<&Claim> = claims.iter().filter(|c| c.sni.is_empty()).collect();
        if fallbacks.len() > 1 {
            return Err(ConfigError::Rule {
                origin: file.origin("listen", at(fallbacks[1])),
                message: format!(
                    "services {} and {} both listen on {addr} without `sni`: on a shared listener every service but one (the fallback) routes by `sni`",
                    fallbacks[0].name, fallbacks[1].name
                ),
            });
        }
        let patterns = claims.iter().flat_map(|c| {
            c.sni
                .iter()
                .filter_map(move |p| Pattern::parse(p).ok().map(|p| (c.name.to_string(), p)))
        });
        if let Some(o) = crate::sni::names::overlaps(patterns).first() {
            let i = services
                .iter()
                .position(|s| s.name == o.second)
                .unwrap_or(0);
            let span = tables[i]
                .sni
                .as_ref()
                .map_or(tables[i].name.span(), |l| l.span());
            return Err(ConfigError::Rule {
                origin: file.origin("sni", span),
                message: format!("{o} ({addr})"),
            });
        }
        // What belongs to the socket must agree.
        let routes_by_name = claims.iter().any(|c| !c.sni.is_empty());
        let nobody_said = claims.iter().all(|c| match c.index {
            None => !top_said,
            Some(i) => !said[i],
        });
        let socket = |c: &Claim| {
            let cfg = c.index.map_or(&*top, |i| &services[i].config);
            let defer = cfg.defer_accept || (routes_by_name && nobody_said);
            (
                defer,
                cfg.backlog,
                cfg.accept_proxy.clone(),
                cfg.proxy_header_timeout,
            )
        };
        let first = socket(&claims[0]);
        for c in &claims[1..] {
            let other = socket(c);
            let what = if other.0 != first.0 {
                "defer-accept"
            } else if other.1 != first.1 {
                "backlog"
            } else if other.2 != first.2 {
                "accept-proxy"
            } else if other.3 != first.3 {
                "proxy-header-timeout"
            } else {
                continue;
            };
            return Err(ConfigError::Rule {
                origin: file.origin("listen", at(c)),
                message: format!(
                    "services {} and {} share {addr} but not their {what}: it belongs to the listening socket, so they must agree",
                    claims[0].name, c.name
                ),
            });
        }
        if routes_by_name && nobody_said {
            for c in &claims {
                defer_on.push((c.index, true));
            }
        }
    }
    for (index, on) in defer_on {
        match index {
            None => top.defer_accept |= on,
            Some(i) => services[i].config.defer_accept |= on,
        }
    }
    Ok(())
}

impl Config {
    /// Every service: the default one (when the top level has backends)
    /// first, then the named ones in their order; each as (name, sni,
    /// settings).
    pub fn service_list(&self) -> Vec<(&str, &[String], &Config)> {
        let mut out = Vec::with_capacity(1 + self.services.len());
        if !self.backends.is_empty() {
            out.push((DEFAULT_SERVICE, &[][..], self));
        }
        for s in &self.services {
            out.push((s.name.as_str(), s.sni.as_slice(), &s.config));
        }
        out
    }

    /// Change the settings of service `name` (the top level for
    /// `default`); false if there is none.
    pub fn update_service(&mut self, name: &str, change: impl FnOnce(&mut Config)) -> bool {
        if name == DEFAULT_SERVICE {
            change(self);
            return true;
        }
        match self.services.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                change(&mut s.config);
                true
            }
            None => false,
        }
    }

    /// Every address some service listens on, each once, in order.
    pub fn all_listen(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (_, _, c) in self.service_list() {
            for &a in &c.listen {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}
