//! The validated, immutable configuration, built from flags and an optional
//! TOML file (flags win). A change at run time is a new `Config` value that
//! replaces the old one whole; nothing mutates a `Config` in place.

mod file;
mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::FileConfig;
pub use parse::{
    BackendArg, BackendSpec, ResolveGroup, expand_backend, group_member, parse_backend,
    parse_backend_arg, parse_listen, parse_workers, resolve, resolve_all,
};

use crate::channel::Splice;
use crate::cli::ProxyArgs;
use crate::policy::{PolicyName, PolicyOptions};

/// Most backends one proxy accepts (bounded so the worker table always fits
/// in one channel frame and metric cardinality stays sane).
pub const MAX_BACKENDS: usize = 1024;
/// Most worker processes.
pub const MAX_WORKERS: usize = 256;
/// Longest accepted duration setting (timeouts and intervals), so no
/// deadline computed from one can overflow `Instant` arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A configuration error, naming the bad input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(msg.into())
    }
}

/// Connection limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_conns: Option<u64>,
    pub max_conns_per_worker: Option<u64>,
    pub max_conns_per_ip: Option<u32>,
}

/// Active health checking. `interval` of `None` disables it (and passive
/// marking with it: nothing would bring a backend back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Everything the running proxy is configured with.
#[derive(Debug, Clone, PartialEq)]
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
    /// Control socket path; `None` when disabled.
    pub control: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Close a client that sent no byte within this; `None`: never.
    pub client_first_byte_timeout: Option<Duration>,
    pub backlog: u32,
    pub limits: Limits,
    pub health: Health,
    /// When to forward with splice(2) (zero-copy) rather than buffered copies.
    pub splice: Splice,
    /// Pin the front and the workers to CPUs.
    pub cpu_affinity: bool,
    /// The file this config was read from, re-read on SIGHUP.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Build from flags, reading `--config` if given. Resolves host names.
    pub fn load(args: &ProxyArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(FileConfig::read(path)?),
            None => None,
        };
        Config::build(args, file.unwrap_or_default(), args.config.clone())
    }

    /// Re-read the config file for a reload, keeping the command-line
    /// overrides that were given at start.
    pub fn reload(args: &ProxyArgs) -> Result<Config, ConfigError> {
        Config::load(args)
    }

    fn build(
        args: &ProxyArgs,
        file: FileConfig,
        path: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let t = &args.tuning;
        let listen_specs = pick_list(&args.listen, file.listen);
        let listen = if listen_specs.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
        } else {
            listen_specs
                .iter()
                .map(|s| parse_listen(s))
                .collect::<Result<_, _>>()?
        };
        let backend_specs: Vec<String> = if args.backend.is_empty() {
            file.backends.into_iter().map(|b| b.into_spec()).collect()
        } else {
            args.backend.clone()
        };
        if backend_specs.is_empty() {
            return Err(ConfigError::invalid(
                "no backend given: use --backend HOST:PORT (repeatable) or `backends` in the config file",
            ));
        }
        if backend_specs.len() > MAX_BACKENDS {
            return Err(ConfigError::invalid(format!(
                "too many backends: {} (at most {MAX_BACKENDS})",
                backend_specs.len()
            )));
        }
        let args_parsed = backend_specs
            .iter()
            .map(|s| parse_backend_arg(s))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in args_parsed.iter().enumerate() {
            if args_parsed[..i].iter().any(|o| o.name == a.name) {
                return Err(ConfigError::invalid(format!(
                    "backend '{}' is listed twice",
                    a.name
                )));
            }
        }
        let mut backends: Vec<BackendSpec> = Vec::with_capacity(args_parsed.len());
        // Named backends first, so an address a `resolve` name also
        // returns stays the named one.
        for a in args_parsed.iter().filter(|a| !a.resolve) {
            backends.extend(expand_backend(a)?);
        }
        let mut resolve = Vec::new();
        for a in args_parsed.iter().filter(|a| a.resolve) {
            for b in expand_backend(a)? {
                // (A member is named by its address: the address decides.)
                if !backends.iter().any(|o| o.addr == b.addr) {
                    backends.push(b);
                }
            }
            resolve.push(ResolveGroup {
                name: a.name.clone(),
                weight: a.weight,
            });
        }
        if backends.len() > MAX_BACKENDS {
            return Err(ConfigError::invalid(format!(
                "too many backends: {} after resolving (at most {MAX_BACKENDS})",
                backends.len()
            )));
        }
        let resolve_interval = optional_duration(
            t.resolve_interval.as_deref(),
            file.resolve_interval,
            Duration::from_secs(5),
            "resolve-interval",
        )?;
        let workers = match args.workers.clone().or(file.workers.map(|w| w.to_string())) {
            Some(w) => parse_workers(&w)?,
            None => parse_workers("auto")?,
        };
        let policy = match (args.policy, file.policy) {
            (Some(p), _) => p,
            (None, Some(text)) => text.parse().map_err(ConfigError::Invalid)?,
            (None, None) => PolicyName::RoundRobin,
        };
        let prefix = args
            .sticky_ipv6_prefix
            .or(file.sticky_ipv6_prefix)
            .unwrap_or(128);
        if !(1..=128).contains(&prefix) {
            return Err(ConfigError::invalid(format!(
                "sticky-ipv6-prefix must be 1..=128, got {prefix}"
            )));
        }
        let policy_options = PolicyOptions {
            sticky_ipv6_prefix: prefix,
        };
        let metrics = match args.metrics.clone().or(file.metrics) {
            Some(m) if m == "off" => None,
            Some(m) => Some(parse_listen(&m).map_err(|_| {
                ConfigError::invalid(format!(
                    "invalid metrics address '{m}': expected HOST:PORT or off"
                ))
            })?),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9898))),
        };
        let control = match args.control.clone().or(file.control) {
            Some(c) if c == "off" => None,
            Some(c) if c.is_empty() => {
                return Err(ConfigError::invalid("empty control socket path"));
            }
            Some(c) => Some(PathBuf::from(c)),
            None => Some(default_control_path()),
        };
        let connect_timeout = duration(
            t.connect_timeout,
            file.connect_timeout,
            "5s",
            "connect-timeout",
        )?;
        let idle_timeout = duration(t.idle_timeout, file.idle_timeout, "5m", "idle-timeout")?;
        let drain_timeout = duration(t.drain_timeout, file.drain_timeout, "30s", "drain-timeout")?;
        let client_first_byte_timeout = optional_duration(
            t.client_first_byte_timeout.as_deref(),
            file.client_first_byte_timeout,
            Duration::ZERO,
            "client-first-byte-timeout",
        )?;
        if connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "connect-timeout must be greater than 0",
            ));
        }
        if idle_timeout.is_zero() {
            return Err(ConfigError::invalid("idle-timeout must be greater than 0"));
        }
        let backlog = t.backlog.or(file.backlog).unwrap_or(1024);
        if backlog == 0 {
            return Err(ConfigError::invalid("backlog must be at least 1"));
        }
        let limits = Limits {
            max_conns: positive(t.max_conns.or(file.max_conns), "max-conns")?,
            max_conns_per_worker: positive(
                t.max_conns_per_worker.or(file.max_conns_per_worker),
                "max-conns-per-worker",
            )?,
            max_conns_per_ip: positive(
                t.max_conns_per_ip.or(file.max_conns_per_ip).map(u64::from),
                "max-conns-per-ip",
            )?
            .map(|n| n as u32),
        };
        let interval = optional_duration(
            t.health_interval.as_deref(),
            file.health_interval,
            Duration::from_secs(2),
            "health-interval",
        )?;
        let health = Health {
            interval,
            timeout: duration(
                t.health_timeout,
                file.health_timeout,
                "1s",
                "health-timeout",
            )?,
            rise: positive(t.rise.or(file.rise).map(u64::from), "rise")?.map_or(2, |n| n as u32),
            fall: positive(t.fall.or(file.fall).map(u64::from), "fall")?.map_or(3, |n| n as u32),
        };
        if health.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "health-timeout must be greater than 0",
            ));
        }
        Ok(Config {
            cpu_affinity: t.cpu_affinity || file.cpu_affinity.unwrap_or(false),
            splice: match (t.splice, file.splice) {
                (Some(s), _) => s,
                (None, Some(file::SpliceValue::Switch(true))) => Splice::On,
                (None, Some(file::SpliceValue::Switch(false))) => Splice::Off,
                (None, Some(file::SpliceValue::Text(t))) => t
                    .parse()
                    .map_err(|e| ConfigError::invalid(format!("splice: {e}")))?,
                (None, None) => Splice::Auto,
            },
            limits,
            health,
            listen,
            backends,
            resolve,
            resolve_interval,
            workers,
            policy,
            policy_options,
            metrics,
            control,
            connect_timeout,
            idle_timeout,
            drain_timeout,
            client_first_byte_timeout,
            backlog,
            file: path,
        })
    }

    /// A one-line summary for logs and `rrproxy check`.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let backends: Vec<String> = self.backends.iter().map(|b| b.to_string()).collect();
        format!(
            "listen {} -> backends {} with {} workers, policy {}",
            listen.join(","),
            backends.join(","),
            self.workers,
            self.policy
        )
    }
}

fn positive(value: Option<u64>, key: &str) -> Result<Option<u64>, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::invalid(format!("{key} must be at least 1"))),
        Some(n)
            if n > u64::from(u32::MAX)
                && (key == "rise" || key == "fall" || key == "max-conns-per-ip") =>
        {
            Err(ConfigError::invalid(format!("{key} is too large: {n}")))
        }
        other => Ok(other),
    }
}

fn pick_list(flags: &[String], file: Vec<String>) -> Vec<String> {
    if flags.is_empty() {
        file
    } else {
        flags.to_vec()
    }
}

/// A duration that may be "off" (or 0): `None`. Flag, then file, then
/// `default`.
fn optional_duration(
    flag: Option<&str>,
    file: Option<file::DurationValue>,
    default: Duration,
    key: &str,
) -> Result<Option<Duration>, ConfigError> {
    let bad = |e: String| ConfigError::invalid(format!("{key}: {e}"));
    let d = match (flag, file) {
        (Some("off"), _) => None,
        (Some(text), _) => Some(crate::cli::parse_duration(text).map_err(bad)?),
        (None, Some(file::DurationValue::Text(text))) if text == "off" => None,
        (None, Some(v)) => Some(v.to_duration().map_err(bad)?),
        (None, None) => Some(default),
    };
    d.filter(|d| !d.is_zero())
        .map(|d| at_most_a_day(d, key))
        .transpose()
}

fn duration(
    flag: Option<Duration>,
    file: Option<file::DurationValue>,
    default: &str,
    key: &str,
) -> Result<Duration, ConfigError> {
    let d = match (flag, file) {
        (Some(d), _) => d,
        (None, Some(v)) => v
            .to_duration()
            .map_err(|e| ConfigError::invalid(format!("{key}: {e}")))?,
        (None, None) => crate::cli::parse_duration(default).map_err(ConfigError::Invalid)?,
    };
    at_most_a_day(d, key)
}

/// Refuse a duration longer than [`MAX_DURATION`], naming the key and the cap.
fn at_most_a_day(d: Duration, key: &str) -> Result<Duration, ConfigError> {
    if d > MAX_DURATION {
        return Err(ConfigError::invalid(format!(
            "{key} of {} is too long: at most 24h",
            humantime::format_duration(d),
        )));
    }
    Ok(d)
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
