//! The validated, immutable configuration, built from flags and an optional
//! TOML file (flags win). A change at run time is a new `Config` value that
//! replaces the old one whole; nothing mutates a `Config` in place.

mod build;
pub mod diff;
mod error;
pub mod escape;
mod file;
mod flags;
pub mod options;
mod parse;
pub mod services;
pub mod sources;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{BadValue, ConfigError, Invalid, Origin, closest};
pub use file::{FileConfig, LoadedFile};
pub use flags::{AccessFlags, Flags, RunFlags, Spelling, TuningFlags};
pub use parse::{
    BackendArg, BackendSpec, ResolveGroup, expand_backend, group_member, parse_backend,
    parse_backend_arg, resolve, resolve_all,
};
pub use services::{DEFAULT_SERVICE, MAX_SERVICES, Service};

use crate::acl::{Acl, Networks};
use crate::channel::{AccessLog, Splice};
use crate::policy::{PolicyName, PolicyOptions};

/// Most backends one proxy accepts (bounded so the worker table always fits
/// in one channel frame and metric cardinality stays sane).
pub const MAX_BACKENDS: usize = 1024;
/// Most `--retries`.
pub const MAX_RETRIES: u8 = crate::channel::MAX_FALLBACKS as u8;
/// Most worker processes.
pub const MAX_WORKERS: usize = 256;
/// Longest accepted duration setting (timeouts and intervals), so no
/// deadline computed from one can overflow `Instant` arithmetic.
/// (The error says "at most 24h": keep them together.)
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// `--proxy-header-timeout` when not given.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

fn default_proxy_header_timeout() -> Duration {
    PROXY_HEADER_TIMEOUT
}

/// Connection limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_conns: Option<u64>,
    pub max_conns_per_worker: Option<u64>,
    pub max_conns_per_ip: Option<u32>,
    /// Leading bits of an IPv6 address that make one client for the per-IP
    /// limit.
    pub per_ip_ipv6_prefix: u8,
}

/// A `[[service]]`'s own limits on its connections (`max-conns`,
/// `max-conns-per-ip` in its table). They are not inherited and do not
/// replace the proxy-wide [`Limits`]: both apply. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceLimits {
    /// The service's open connections at once.
    pub max_conns: Option<u64>,
    /// One client's open connections to this service at once.
    pub max_conns_per_ip: Option<u32>,
}

impl ServiceLimits {
    /// Whether either limit is set (its connections are counted).
    pub fn any(&self) -> bool {
        self.max_conns.is_some() || self.max_conns_per_ip.is_some()
    }
}

impl Limits {
    /// The per-IP limit in force: the one given, if any (never derived
    /// from `max_conns`: a limit nobody set refuses nobody).
    pub fn per_ip(&self) -> Option<u32> {
        self.max_conns_per_ip
    }
}

/// Active health checking. `interval` of `None` disables it (and passive
/// marking with it: nothing would bring a backend back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// What an active health check writes and expects
/// (`--health-send`, `--health-expect`); both empty: a plain connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Written after connecting (and after a `send-proxy` header).
    pub send: Vec<u8>,
    /// What the backend's first bytes must be, within the check timeout.
    pub expect: Vec<u8>,
}

/// Everything the running proxy is configured with. Serializable: an
/// upgrade hands the running value (with its run-time changes) to the new
/// front.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<BackendSpec>,
    /// Host names given with `resolve`: every address is a backend.
    pub resolve: Vec<ResolveGroup>,
    /// How often `resolve` names are looked up again; `None`: never.
    pub resolve_interval: Option<Duration>,
    pub workers: usize,
    pub policy: PolicyName,
    /// Tuning for the policies (the sticky IPv6 prefix).
    pub policy_options: PolicyOptions,
    /// Where `/metrics` is served; `None` when disabled.
    pub metrics: Option<SocketAddr>,
    /// `--status`: the status page's own address (besides the metrics
    /// one); `None` when not asked for.
    #[serde(default)]
    pub status: Option<SocketAddr>,
    /// Control socket path; `None` when disabled.
    pub control: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Other backends tried after a failed connect.
    pub retries: u8,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Close a client that sent no byte within this; `None`: never.
    pub client_first_byte_timeout: Option<Duration>,
    pub backlog: u32,
    /// Listening sockets hold a connection until its first bytes arrive
    /// (`--defer-accept`). (Absent from the handover of a build before it:
    /// off, which is what such a build ran with.)
    #[serde(default)]
    pub defer_accept: bool,
    pub limits: Limits,
    /// A `[[service]]`'s own connection limits (none for the top level,
    /// whose `limits` are the proxy's). (Absent from the handover of a
    /// build before it: none.)
    #[serde(default)]
    pub own_limits: ServiceLimits,
    pub health: Health,
    /// What a health check says and expects. (Absent from the handover
    /// of a build before it: a plain connect.)
    #[serde(default)]
    pub probe: Probe,
    /// `--source`: local addresses backend connections leave from, for
    /// backends without a `source=` of their own (see `sources`).
    #[serde(default)]
    pub source: Vec<std::net::IpAddr>,
    /// `--slow-start`: a backend that comes up ramps to its full weight
    /// over this long; `None`: off.
    #[serde(default)]
    pub slow_start: Option<Duration>,
    /// `--queue-timeout`: how long a connection waits in a full
    /// backend's queue; `None`: the connect timeout (see
    /// [`Config::queue_timeout`]).
    #[serde(default)]
    pub queue_timeout: Option<Duration>,
    /// When to forward with splice(2) (zero-copy) rather than buffered copies.
    pub splice: Splice,
    /// Pin the front and the workers to CPUs.
    pub cpu_affinity: bool,
    /// Where the workers write one line per finished connection. (Absent
    /// from the handover of a build before it: off.)
    #[serde(default)]
    pub access_log: AccessLog,
    /// Whom to run as after binding (`--user`, `--group`).
    #[serde(default)]
    pub run_as: Option<crate::privileges::RunAs>,
    /// `--pid-file`, absolute. (Absent from the handover of a build
    /// before it: none.)
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// The file this config was read from, re-read on SIGHUP.
    pub file: Option<PathBuf>,
    /// Which clients are served (`--allow`, `--deny`; `ctl acl` edits the
    /// running value). Behind an `Arc`: a config is cloned on every run-time
    /// change, and a list may hold many thousands of networks.
    #[serde(default)]
    pub acl: Arc<Acl>,
    /// Sources whose connections begin with a PROXY header
    /// (`--accept-proxy`).
    #[serde(default)]
    pub accept_proxy: Arc<Networks>,
    /// How long such a source has to send the whole header.
    #[serde(default = "default_proxy_header_timeout")]
    pub proxy_header_timeout: Duration,
    /// How long a connection on a listener that routes by server name may
    /// take to send its ClientHello (`sni-timeout`).
    #[serde(default = "default_sni_timeout")]
    pub sni_timeout: Duration,
    /// The `[[service]]` tables, built (the top level itself is the
    /// `default` service when it has backends; see `services`).
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_sni_timeout() -> Duration {
    crate::sni::DEFAULT_TIMEOUT
}

impl Config {
    /// Build from flags, reading `--config` if given. Resolves host names.
    pub fn load(args: &Flags) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(LoadedFile::read(path)?),
            None => None,
        };
        build::build(args, file.as_ref())
    }

    /// Re-read the config file for a reload, keeping the command-line
    /// overrides that were given at start. Errors read exactly as at start.
    pub fn reload(args: &Flags) -> Result<Config, ConfigError> {
        Config::load(args)
    }

    /// How long a connection may wait in a backend's queue.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout.unwrap_or(self.connect_timeout)
    }

    /// A one-line summary for logs and `rrproxy check`.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let backends: Vec<String> = self.backends.iter().map(|b| b.to_string()).collect();
        let mut out = if self.backends.is_empty() {
            format!("{} workers", self.workers)
        } else {
            format!(
                "listen {} -> backends {} with {} workers, policy {}",
                listen.join(","),
                backends.join(","),
                self.workers,
                self.policy
            )
        };
        if !self.acl.is_empty() {
            out.push_str(&format!(
                ", access list {} allow / {} deny",
                self.acl.allow().len(),
                self.acl.deny().len()
            ));
        }
        if !self.accept_proxy.is_empty() {
            let from: Vec<String> = self
                .accept_proxy
                .cidrs()
                .iter()
                .map(|c| c.to_string())
                .collect();
            out.push_str(&format!(", PROXY header from {}", from.join(",")));
        }
        if self.defer_accept {
            out.push_str(", defer-accept");
        }
        if !self.probe.send.is_empty() || !self.probe.expect.is_empty() {
            out.push_str(", health check");
            if !self.probe.send.is_empty() {
                out.push_str(&format!(" send '{}'", escape::show(&self.probe.send, 64)));
            }
            if !self.probe.expect.is_empty() {
                out.push_str(&format!(
                    " expect '{}'",
                    escape::show(&self.probe.expect, 64)
                ));
            }
        }
        if !self.source.is_empty() {
            let ips: Vec<String> = self.source.iter().map(|ip| ip.to_string()).collect();
            out.push_str(&format!(", source {}", ips.join(";")));
        }
        if let Some(d) = self.slow_start {
            out.push_str(&format!(", slow start {}", humantime::format_duration(d)));
        }
        let limited = |c: &Config| c.backends.iter().any(|b| b.maxconn.is_some());
        if limited(self) || self.services.iter().any(|s| limited(&s.config)) {
            out.push_str(&format!(
                ", queue timeout {}",
                humantime::format_duration(self.queue_timeout())
            ));
        }
        for s in &self.services {
            let c = &s.config;
            let listen: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
            let backends: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
            out.push_str(&format!(
                "; service {}: listen {} -> backends {}, policy {}",
                s.name,
                listen.join(","),
                backends.join(","),
                c.policy
            ));
            if !s.sni.is_empty() {
                out.push_str(&format!(", sni {}", s.sni.join(",")));
            }
            if c.defer_accept {
                out.push_str(", defer-accept");
            }
            if let Some(n) = c.own_limits.max_conns {
                out.push_str(&format!(", max-conns {n}"));
            }
            if let Some(n) = c.own_limits.max_conns_per_ip {
                out.push_str(&format!(", max-conns-per-ip {n}"));
            }
        }
        out
    }
}

/// Where the control socket lives when `--control` is not given: `ctl.sock`
/// in [`default_control_dir`].
pub fn default_control_path() -> PathBuf {
    default_control_dir().join("ctl.sock")
}

/// The directory of the default control socket, private to this user
/// (made mode 0700 by the proxy, see `control::private_dir`):
/// `$XDG_RUNTIME_DIR/rrproxy`, else `/run/rrproxy` as root, else
/// `/tmp/rrproxy-$UID`.
pub fn default_control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("rrproxy");
    }
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        PathBuf::from("/run/rrproxy")
    } else {
        PathBuf::from(format!("/tmp/rrproxy-{uid}"))
    }
}

#[cfg(test)]
mod tests;
