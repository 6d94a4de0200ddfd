//! Backends as written (`HOST:PORT[,weight=N][,resolve][,send-proxy=v1|v2]`) and the
//! resolution of host names, shared by flags, the config file and `ctl
//! backend add`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use super::error::Invalid;
use crate::proxy_protocol::Version;

/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// A backend as configured: the name it was given (used as the metric label)
/// and the address it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendSpec {
    /// `host:port` exactly as written (without the weight); for a backend
    /// found by DNS discovery, its address.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// For a backend found by DNS discovery: the `host:port` it came from.
    pub group: Option<String>,
    /// Write a PROXY protocol header of this version before the client's
    /// bytes (`send-proxy=v1|v2`).
    #[serde(default)]
    pub send_proxy: Option<Version>,
}

/// A backend argument as written, before any resolution:
/// `HOST:PORT[,weight=N][,resolve]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendArg {
    pub name: String,
    pub weight: u32,
    /// Every address of the name is a backend, re-resolved while running.
    pub resolve: bool,
    pub send_proxy: Option<Version>,
}

/// A host name whose addresses are all backends, kept up to date by
/// re-resolving it (`HOST:PORT,resolve`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolveGroup {
    /// `host:port` as written.
    pub name: String,
    pub weight: u32,
    /// Every address found is a backend with this `send-proxy`.
    #[serde(default)]
    pub send_proxy: Option<Version>,
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        if let Some(v) = self.send_proxy {
            write!(f, ",send-proxy={v}")?;
        }
        Ok(())
    }
}

/// Check the shape of `host:port` (IPv4, `[IPv6]:port` or a host name).
pub(super) fn check_host_port(text: &str) -> Result<(), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected HOST:PORT".into());
    };
    if host.is_empty() {
        return Err("missing host before ':'".into());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("'{port}' is not a port number (0-65535)"));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err("IPv6 addresses must be written in brackets, like [::1]:80".into());
    }
    Ok(())
}

/// Resolve `host:port` (IPv4, `[IPv6]:port` or a host name) to its first
/// address. Host names are looked up now, once.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    // Never empty: an empty answer is an error.
    Ok(resolve_all(text)?[0])
}

/// Resolve `host:port` to every address the system resolver returns
/// (`/etc/hosts`, DNS, as `nsswitch.conf` says), in its order, without
/// duplicates. Blocks while the lookup runs.
pub fn resolve_all(text: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    check_host_port(text)?;
    let host = text.rsplit_once(':').map_or(text, |(h, _)| h);
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host '{host}': {e}"))?
    {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(format!("host '{host}' has no address"));
    }
    Ok(addrs)
}

/// The options a backend takes after its address.
const OPTIONS: [&str; 3] = ["weight", "resolve", "send-proxy"];

/// `host:port[,weight=N][,resolve][,send-proxy=v1|v2]`, syntax only
/// (nothing is resolved).
pub fn parse_backend_arg(text: &str) -> Result<BackendArg, Invalid> {
    let mut parts = text.trim().split(',');
    let name = parts.next().unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(Invalid::new(
            "expected HOST:PORT[,weight=N][,resolve][,send-proxy=v1|v2]",
        ));
    }
    let mut weight = 1;
    let mut resolve = false;
    let mut send_proxy = None;
    for opt in parts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key.trim() {
            "weight" => {
                weight = value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        Invalid::new(format!("weight must be 1..={MAX_WEIGHT}, got '{value}'"))
                    })?;
            }
            "resolve" if value.is_empty() => resolve = true,
            "send-proxy" => {
                send_proxy = Some(value.trim().parse::<Version>().map_err(|_| {
                    Invalid::new(format!(
                        "send-proxy must be v1 or v2 (the PROXY protocol version), got '{}'",
                        value.trim()
                    ))
                })?);
            }
            other => {
                return Err(Invalid::new(format!(
                    "unknown option '{other}' (expected weight=N, resolve or send-proxy=v1|v2)"
                ))
                .similar_a("option", other, OPTIONS));
            }
        }
    }
    if name.parse::<SocketAddr>().is_ok() {
        if resolve {
            return Err(Invalid::new("resolve needs a host name, not an address"));
        }
    } else {
        check_host_port(&name).map_err(|why| {
            let bad = Invalid::new(why);
            if name.parse::<u16>().is_ok() {
                bad.hint(format!(
                    "a backend needs a host too, like '127.0.0.1:{name}'"
                ))
            } else {
                bad
            }
        })?;
    }
    if name.rsplit_once(':').is_some_and(|(_, port)| port == "0") {
        return Err(Invalid::new("port 0 is not a backend port"));
    }
    Ok(BackendArg {
        name,
        weight,
        resolve,
        send_proxy,
    })
}

/// The backends one argument stands for: one (a host name's first
/// address), or with `resolve` one per address of the name, each named by
/// its address. Resolves now (blocking); the error says why a look-up failed.
pub fn expand_backend(arg: &BackendArg) -> Result<Vec<BackendSpec>, String> {
    if !arg.resolve {
        let addr = resolve(&arg.name)?;
        return Ok(vec![BackendSpec {
            name: arg.name.clone(),
            addr,
            weight: arg.weight,
            group: None,
            send_proxy: arg.send_proxy,
        }]);
    }
    let group = ResolveGroup {
        name: arg.name.clone(),
        weight: arg.weight,
        send_proxy: arg.send_proxy,
    };
    Ok(resolve_all(&arg.name)?
        .into_iter()
        .map(|addr| group_member(&group, addr))
        .collect())
}

/// The backend for one address of a `resolve` name.
pub fn group_member(group: &ResolveGroup, addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        name: addr.to_string(),
        addr,
        weight: group.weight,
        group: Some(group.name.clone()),
        send_proxy: group.send_proxy,
    }
}

/// `host:port[,weight=N][,send-proxy=v1|v2]`, one backend, resolved now (for `ctl backend
/// add`, where `resolve` has no place: discovery belongs in the config).
pub fn parse_backend(text: &str) -> Result<BackendSpec, String> {
    let bad = |why: String| format!("invalid backend '{text}': {why}");
    let arg = parse_backend_arg(text).map_err(|e| bad(e.to_string()))?;
    if arg.resolve {
        return Err(bad("resolve is for --backend and the config file".into()));
    }
    Ok(expand_backend(&arg).map_err(bad)?.remove(0))
}
