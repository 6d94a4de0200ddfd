//! The settings that protect backends, read for `Config::build`: the
//! health check's probe strings, slow start, and source addresses, whose
//! checks need to know where each address was given (the `--source` flag
//! or key, or the backend naming it).

use std::net::IpAddr;
use std::time::Duration;

use super::{Given, Sources};
use crate::config::Flags;
use crate::config::error::{ConfigError, Invalid};
use crate::config::file::FileConfig;
use crate::config::parse::BackendSpec;
use crate::config::{Probe, escape, options, sources, values};

/// What was read, with `--source`'s addresses still to be checked.
pub(super) struct Protect<'a> {
    pub probe: Probe,
    pub slow_start: Option<Duration>,
    /// `--queue-timeout`; `None`: the connect timeout.
    pub queue_timeout: Option<Duration>,
    /// Each `--source` address and the index of the item it came in.
    source: Vec<(IpAddr, usize)>,
    source_given: Vec<Given<'a>>,
}

/// Read `--health-send`, `--health-expect`, `--slow-start`,
/// `--queue-timeout` and `--source` (syntax: no repeats, at most
/// `MAX_SOURCES`).
pub(super) fn read<'a>(
    src: &Sources<'a>,
    args: &Flags,
    keys: &'a FileConfig,
) -> Result<Protect<'a>, ConfigError> {
    let t = &args.tuning;
    let probe = Probe {
        send: src
            .text(
                "health_send",
                "health-send",
                t.health_send.as_deref(),
                &keys.health_send,
                escape::parse,
            )?
            .unwrap_or_default(),
        expect: src
            .text(
                "health_expect",
                "health-expect",
                t.health_expect.as_deref(),
                &keys.health_expect,
                escape::parse,
            )?
            .unwrap_or_default(),
    };
    let slow_start = src
        .text(
            "slow_start",
            "slow-start",
            t.slow_start.as_deref(),
            &keys.slow_start,
            values::interval,
        )?
        .flatten();
    let queue_timeout = src.typed(
        "queue-timeout",
        t.queue_timeout,
        &keys.queue_timeout,
        values::timeout,
    )?;
    let source_given = src.list("source", "source", args.source.as_slice(), &keys.source);
    let mut source: Vec<(IpAddr, usize)> = Vec::new();
    for (i, g) in source_given.iter().enumerate() {
        for ip in src.check(g, options::sources)? {
            if source.iter().any(|&(o, _)| o == ip) {
                return Err(src.bad(g, Invalid::new(format!("'{ip}' is listed twice"))));
            }
            source.push((ip, i));
        }
        if source.len() > options::MAX_SOURCES {
            return Err(src.bad(
                g,
                Invalid::new(format!(
                    "{} source addresses: at most {}",
                    source.len(),
                    options::MAX_SOURCES
                )),
            ));
        }
    }
    Ok(Protect {
        probe,
        slow_start,
        queue_timeout,
        source,
        source_given,
    })
}

impl Protect<'_> {
    /// `--source`'s addresses, each checked to be this host's (an error
    /// names the one that is not, where it was given).
    pub fn local_sources(&self, src: &Sources) -> Result<Vec<IpAddr>, ConfigError> {
        for &(ip, i) in &self.source {
            sources::check_local(ip)
                .map_err(|why| src.bad(&self.source_given[i], Invalid::new(why)))?;
        }
        Ok(self.source.iter().map(|&(ip, _)| ip).collect())
    }
}

/// The backends `g` stands for, if they can use their sources: of their
/// family (theirs, or `--source`'s), and their own `source=` addresses
/// this host's. The error names `g`.
pub(super) fn usable(
    src: &Sources,
    g: &Given,
    specs: Vec<BackendSpec>,
    global: &[IpAddr],
) -> Result<Vec<BackendSpec>, ConfigError> {
    for spec in &specs {
        sources::check_family(spec, global).map_err(|why| src.bad(g, Invalid::new(why)))?;
    }
    // (Every address of a `resolve` name has the same list.)
    if let Some(first) = specs.first() {
        for &ip in &first.source {
            sources::check_local(ip).map_err(|why| src.bad(g, Invalid::new(why)))?;
        }
    }
    Ok(specs)
}

/// No more different source lists than the workers' table carries.
pub(super) fn check_lists(
    src: &Sources,
    first: &Given,
    backends: &[BackendSpec],
    global: &[IpAddr],
) -> Result<(), ConfigError> {
    sources::check_lists(backends, global).map_err(|message| ConfigError::Rule {
        origin: src.origin(first),
        message,
    })
}
