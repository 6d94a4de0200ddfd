//! Backends as written (`HOST:PORT[,OPTION...]`, the options in
//! `options`) and the resolution of host names, shared by flags, the
//! config file and `ctl backend add`.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::error::Invalid;
use super::options;
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
    /// Connect from these local addresses, in turn (`source=IP[;IP...]`);
    /// empty: `--source`, else the system's choice.
    #[serde(default)]
    pub source: Vec<IpAddr>,
    /// Slow start after coming up (`slow-start=D`); `Some(0)`: off, even
    /// with `--slow-start`; `None`: as `--slow-start` says.
    #[serde(default)]
    pub slow_start: Option<Duration>,
    /// At most this many connections open to it at once, across all
    /// workers (`maxconn=N`); more wait in its queue. `None`: no limit.
    #[serde(default)]
    pub maxconn: Option<u32>,
    /// At most this many connections wait in its queue (`maxqueue=M`;
    /// 0: none wait). `None`: no limit.
    #[serde(default)]
    pub maxqueue: Option<u32>,
    /// Takes connections only while no other (non-backup) backend is up
    /// (`backup`).
    #[serde(default)]
    pub backup: bool,
}

/// A backend argument as written, before any resolution:
/// `HOST:PORT[,OPTION...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendArg {
    pub name: String,
    pub weight: u32,
    /// Every address of the name is a backend, re-resolved while running.
    pub resolve: bool,
    pub send_proxy: Option<Version>,
    pub source: Vec<IpAddr>,
    pub slow_start: Option<Duration>,
    pub maxconn: Option<u32>,
    pub maxqueue: Option<u32>,
    pub backup: bool,
}

/// A host name whose addresses are all backends, kept up to date by
/// re-resolving it (`HOST:PORT,resolve`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolveGroup {
    /// `host:port` as written.
    pub name: String,
    pub weight: u32,
    /// Every address found is a backend with this `send-proxy`, `source`
    /// and `slow-start`.
    #[serde(default)]
    pub send_proxy: Option<Version>,
    #[serde(default)]
    pub source: Vec<IpAddr>,
    #[serde(default)]
    pub slow_start: Option<Duration>,
    #[serde(default)]
    pub maxconn: Option<u32>,
    #[serde(default)]
    pub maxqueue: Option<u32>,
    #[serde(default)]
    pub backup: bool,
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
        if !self.source.is_empty() {
            let ips: Vec<String> = self.source.iter().map(IpAddr::to_string).collect();
            write!(f, ",source={}", ips.join(";"))?;
        }
        match self.slow_start {
            None => {}
            Some(d) if d.is_zero() => write!(f, ",slow-start=off")?,
            Some(d) => write!(f, ",slow-start={}", humantime::format_duration(d))?,
        }
        if let Some(n) = self.maxconn {
            write!(f, ",maxconn={n}")?;
        }
        if let Some(n) = self.maxqueue {
            write!(f, ",maxqueue={n}")?;
        }
        if self.backup {
            write!(f, ",backup")?;
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

/// `host:port[,OPTION...]` (the options of `options::OPTIONS`), syntax
/// only (nothing is resolved).
pub fn parse_backend_arg(text: &str) -> Result<BackendArg, Invalid> {
    let mut parts = text.trim().split(',');
    let name = parts.next().unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(Invalid::new(format!("expected {}", options::syntax())));
    }
    let mut arg = BackendArg {
        name,
        weight: 1,
        ..BackendArg::default()
    };
    let mut seen = Vec::new();
    for opt in parts {
        options::apply(&mut arg, opt, &mut seen)?;
    }
    let (name, resolve) = (arg.name.as_str(), arg.resolve);
    if name.parse::<SocketAddr>().is_ok() {
        if resolve {
            return Err(Invalid::new("resolve needs a host name, not an address"));
        }
    } else {
        check_host_port(name).map_err(|why| {
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
    if arg.maxqueue.is_some() && arg.maxconn.is_none() {
        return Err(Invalid::new(
            "maxqueue needs maxconn (connections queue only above a connection limit)",
        ));
    }
    Ok(arg)
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
            source: arg.source.clone(),
            slow_start: arg.slow_start,
            maxconn: arg.maxconn,
            maxqueue: arg.maxqueue,
            backup: arg.backup,
        }]);
    }
    let group = ResolveGroup::of(arg);
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
        source: group.source.clone(),
        slow_start: group.slow_start,
        maxconn: group.maxconn,
        maxqueue: group.maxqueue,
        backup: group.backup,
    }
}

impl ResolveGroup {
    /// The group a `resolve` argument stands for.
    pub fn of(arg: &BackendArg) -> ResolveGroup {
        ResolveGroup {
            name: arg.name.clone(),
            weight: arg.weight,
            send_proxy: arg.send_proxy,
            source: arg.source.clone(),
            slow_start: arg.slow_start,
            maxconn: arg.maxconn,
            maxqueue: arg.maxqueue,
            backup: arg.backup,
        }
    }
}

/// `host:port[,OPTION...]`, one backend, resolved now (for `ctl backend
/// add`, where `resolve` has no place: discovery belongs in the config),
/// its sources checked against `global` (the running `--source`) and
/// this host's addresses.
pub fn parse_backend(text: &str, global: &[IpAddr]) -> Result<BackendSpec, String> {
    let bad = |why: String| format!("invalid backend '{text}': {why}");
    let arg = parse_backend_arg(text).map_err(|e| bad(e.to_string()))?;
    if arg.resolve {
        return Err(bad("resolve is for --backend and the config file".into()));
    }
    let spec = expand_backend(&arg).map_err(bad)?.remove(0);
    super::sources::check_family(&spec, global).map_err(bad)?;
    for &ip in &spec.source {
        super::sources::check_local(ip).map_err(bad)?;
    }
    Ok(spec)
}
