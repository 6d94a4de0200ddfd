//! Parsing of the textual values shared by flags and the config file:
//! listen addresses, backend specs with weights, worker counts.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use super::{ConfigError, MAX_WORKERS};

/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// A backend as configured: the name it was given (used as the metric label)
/// and the address it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// `host:port` exactly as written (without the weight).
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weight == 1 {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{},weight={}", self.name, self.weight)
        }
    }
}

/// Resolve `host:port` (IPv4, `[IPv6]:port` or a host name) to its first
/// address. Host names are looked up now, once.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
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
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host '{host}': {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("host '{host}' has no address"))
}

/// A listen address; `:8080` means all IPv4 interfaces.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    resolve(&full)
        .map_err(|e| ConfigError::invalid(format!("invalid listen address '{text}': {e}")))
}

/// `host:port[,weight=N]`.
pub fn parse_backend(text: &str) -> Result<BackendSpec, ConfigError> {
    let bad = |why: String| ConfigError::invalid(format!("invalid backend '{text}': {why}"));
    let mut parts = text.trim().split(',');
    let name = parts.next().unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(bad("empty address".into()));
    }
    let mut weight = 1;
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
                        bad(format!("weight must be 1..={MAX_WEIGHT}, got '{value}'"))
                    })?;
            }
            other => return Err(bad(format!("unknown option '{other}' (expected weight=N)"))),
        }
    }
    let addr = resolve(&name).map_err(bad)?;
    if addr.port() == 0 {
        return Err(bad("port 0 is not a backend port".into()));
    }
    Ok(BackendSpec { name, addr, weight })
}

/// `auto` (one per available core) or a count in 1..=MAX_WORKERS.
pub fn parse_workers(text: &str) -> Result<usize, ConfigError> {
    let text = text.trim();
    if text == "auto" {
        return Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS));
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        Ok(n) => Err(ConfigError::invalid(format!(
            "invalid worker count {n}: must be 1..={MAX_WORKERS} or auto"
        ))),
        Err(_) => Err(ConfigError::invalid(format!(
            "invalid worker count '{text}': expected a number or auto"
        ))),
    }
}
