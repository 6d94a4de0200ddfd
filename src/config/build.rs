//! `Config::build`: each setting from its flag, else its config key, else
//! its default; each value checked by its validator (`values`), and every
//! error naming where the value came from (the flag as typed, or the
//! file's `path:line:column` and key). Every value's syntax is checked
//! first; host names are looked up last.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

mod given;
mod protect;

use given::{At, Given, Sources, look_up, resolve_error};

use super::error::{BadValue, ConfigError, Invalid};
use super::file::{self, FileConfig, List, LoadedFile, Raw};
use super::parse::{BackendArg, BackendSpec, ResolveGroup, expand_backend, parse_backend_arg};
use super::{Config, Health, Limits, MAX_BACKENDS, Origin, default_control_path, values};
use crate::acl::{Acl, Cidr, Networks};
use crate::channel::{AccessLog, Splice};
use crate::policy::{PolicyName, PolicyOptions};

pub(super) fn build(args: &super::Flags, file: Option<&LoadedFile>) -> Result<Config, ConfigError> {
    let tables = file
        .and_then(|f| f.keys.service.as_deref())
        .filter(|t| !t.is_empty());
    let mut top = build_one(args, file, tables.is_none())?;
    if let (Some(file), Some(tables)) = (file, tables) {
        top.services = super::services::build(args, file, tables, &mut top)?;
    }
    Ok(top)
}

/// One service's settings (the top level's, with its `default` service
/// when `backends` are given). `need_backends`: no `[[service]]` exists,
/// so the top level must have backends.
pub(super) fn build_one(
    args: &super::Flags,
    file: Option<&LoadedFile>,
    need_backends: bool,
) -> Result<Config, ConfigError> {
    let src = Sources { args, file };
    let empty = FileConfig::default();
    let keys = file.map_or(&empty, |f| &f.keys);
    let t = &args.tuning;

    let listen_given = src.list("listen", "listen", &args.listen, &keys.listen);
    let listen_specs = listen_given
        .iter()
        .map(|g| src.check(g, values::listen))
        .collect::<Result<Vec<_>, _>>()?;
    let backend_given = backend_items(&src, args, keys)?;
    if backend_given.len() > MAX_BACKENDS {
        return Err(ConfigError::Rule {
            origin: src.origin(&backend_given[MAX_BACKENDS]),
            message: format!(
                "too many backends: {} (at most {MAX_BACKENDS})",
                backend_given.len()
            ),
        });
    }
    let mut parsed: Vec<BackendArg> = Vec::with_capacity(backend_given.len());
    for g in &backend_given {
        let arg = src.check(g, parse_backend_arg)?;
        if parsed.iter().any(|o| o.name == arg.name) {
            return Err(src.bad(
                g,
                Invalid::new(format!("backend '{}' is listed twice", arg.name)),
            ));
        }
        parsed.push(arg);
    }

    let workers = src
        .text(
            "workers",
            "workers",
            args.workers.as_deref(),
            &keys.workers,
            values::workers,
        )?
        .unwrap_or_else(|| values::workers("auto").unwrap_or(1));
    let policy = src
        .typed(
            "policy",
            args.policy,
            &keys.policy,
            values::choice::<PolicyName>,
        )?
        .unwrap_or(PolicyName::RoundRobin);
    let prefix = src
        .typed(
            "sticky-ipv6-prefix",
            args.sticky_ipv6_prefix,
            &keys.sticky_ipv6_prefix,
            values::ipv6_prefix,
        )?
        .unwrap_or(128);
    let metrics_given = src.one("metrics", "metrics", args.metrics.as_deref(), &keys.metrics);
    let metrics_spec = match &metrics_given {
        Some(g) => src.check(g, values::metrics)?,
        None => Some("127.0.0.1:9898".to_string()),
    };
    let status_given = src.one("status", "status", args.status.as_deref(), &keys.status);
    let status_spec = match &status_given {
        Some(g) => src.check(g, values::metrics)?,
        None => None,
    };
    let control = match src.one("control", "control", args.control.as_deref(), &keys.control) {
        // A path must be a string: `control = 5` is a mistake.
        Some(g) if matches!(g.at, At::File(..)) && !is_string(&keys.control) => {
            let why = values::control("")
                .err()
                .unwrap_or_else(|| Invalid::new("expected a string"));
            return Err(src.bad(&g, why));
        }
        Some(g) => src.check(&g, values::control)?,
        None => Some(default_control_path()),
    };

    let timeout = |key, flag, raw, default| -> Result<Duration, ConfigError> {
        Ok(src
            .typed(key, flag, raw, values::timeout)?
            .unwrap_or(default))
    };
    let connect_timeout = timeout(
        "connect-timeout",
        t.connect_timeout,
        &keys.connect_timeout,
        Duration::from_secs(5),
    )?;
    let idle_timeout = timeout(
        "idle-timeout",
        t.idle_timeout,
        &keys.idle_timeout,
        Duration::from_secs(300),
    )?;
    let health_timeout = timeout(
        "health-timeout",
        t.health_timeout,
        &keys.health_timeout,
        Duration::from_secs(1),
    )?;
    let drain_timeout = src
        .typed(
            "drain-timeout",
            t.drain_timeout,
            &keys.drain_timeout,
            values::duration,
        )?
        .unwrap_or(Duration::from_secs(30));
    let health_interval = src
        .text(
            "health_interval",
            "health-interval",
            t.health_interval.as_deref(),
            &keys.health_interval,
            values::interval,
        )?
        .unwrap_or(Some(Duration::from_secs(2)));
    let client_first_byte_timeout = src
        .text(
            "client_first_byte_timeout",
            "client-first-byte-timeout",
            t.client_first_byte_timeout.as_deref(),
            &keys.client_first_byte_timeout,
            values::interval,
        )?
        .unwrap_or(None);
    let resolve_interval = src
        .text(
            "resolve_interval",
            "resolve-interval",
            t.resolve_interval.as_deref(),
            &keys.resolve_interval,
            values::interval,
        )?
        .unwrap_or(Some(Duration::from_secs(5)));
    let backlog = src
        .typed("backlog", t.backlog, &keys.backlog, values::backlog)?
        .unwrap_or(1024);
    // Each limit is what was given for it, or none: none is derived from
    // another.
    let limits = Limits {
        max_conns: src
            .typed("max-conns", t.max_conns, &keys.max_conns, values::limit_u64)?
            .and_then(|l| l.0),
        max_conns_per_worker: src
            .typed(
                "max-conns-per-worker",
                t.max_conns_per_worker,
                &keys.max_conns_per_worker,
                values::limit_u64,
            )?
            .and_then(|l| l.0),
        max_conns_per_ip: src
            .typed(
                "max-conns-per-ip",
                t.max_conns_per_ip,
                &keys.max_conns_per_ip,
                values::limit_u32,
            )?
            .and_then(|l| l.0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        per_ip_ipv6_prefix: src
            .typed(
                "per-ip-ipv6-prefix",
                t.per_ip_ipv6_prefix,
                &keys.per_ip_ipv6_prefix,
                values::ipv6_prefix,
            )?
            .unwrap_or(64),
    };
    let retries = src
        .typed("retries", t.retries, &keys.retries, values::retries)?
        .unwrap_or(2);
    let health = Health {
        interval: health_interval,
        timeout: health_timeout,
        rise: src
            .typed("rise", t.rise, &keys.rise, values::checks)?
            .unwrap_or(2),
        fall: src
            .typed("fall", t.fall, &keys.fall, values::checks)?
            .unwrap_or(3),
    };
    let protect = protect::read(&src, args, keys)?;
    let splice = src
        .typed("splice", t.splice, &keys.splice, values::splice)?
        .unwrap_or(Splice::Auto);
    let defer_accept = t.defer_accept
        || src
            .typed("defer-accept", None, &keys.defer_accept, values::switch)?
            .unwrap_or(false);
    let cpu_affinity = t.cpu_affinity
        || src
            .typed("cpu-affinity", None, &keys.cpu_affinity, values::switch)?
            .unwrap_or(false);
    let a = &args.access;
    let networks = |id, key, flags: &[String], raw| -> Result<Vec<Cidr>, ConfigError> {
        src.list(id, key, flags, raw)
            .iter()
            .map(|g| src.check(g, values::cidr))
            .collect()
    };
    let acl = Acl::new(
        networks("allow", "allow", &a.allow, &keys.allow)?,
        networks("deny", "deny", &a.deny, &keys.deny)?,
    );
    let accept_proxy = Networks::new(networks(
        "accept_proxy",
        "accept-proxy",
        &a.accept_proxy,
        &keys.accept_proxy,
    )?);
    let proxy_header_timeout = timeout(
        "proxy-header-timeout",
        a.proxy_header_timeout,
        &keys.proxy_header_timeout,
        super::PROXY_HEADER_TIMEOUT,
    )?;
    let r = &args.run;
    let access_log = match src.one(
        "access_log",
        "access-log",
        r.access_log.as_deref(),
        &keys.access_log,
    ) {
        // A path must be a string: `access-log = 7` is a mistake.
        Some(g) if matches!(g.at, At::File(..)) && !is_string(&keys.access_log) => {
            return Err(src.bad(&g, Invalid::new("expected off, stderr or a file path")));
        }
        Some(g) => match src.check(&g, values::access_log)? {
            // Workers and a new front after an upgrade open the same file
            // whatever their working directory.
            AccessLog::File(p) => AccessLog::File(std::path::absolute(&p).unwrap_or(p)),
            other => other,
        },
        None => AccessLog::Off,
    };
    let pid_file = match src.one(
        "pid_file",
        "pid-file",
        r.pid_file.as_deref(),
        &keys.pid_file,
    ) {
        Some(g) if matches!(g.at, At::File(..)) && !is_string(&keys.pid_file) => {
            return Err(src.bad(&g, Invalid::new("expected a file path")));
        }
        // (A new front after an upgrade rewrites the same file whatever
        // its working directory.)
        Some(g) => src
            .check(&g, values::pid_file)?
            .map(|p| std::path::absolute(&p).unwrap_or(p)),
        None => None,
    };
    let user_given = src.one("user", "user", r.user.as_deref(), &keys.user);
    let group_given = src.one("group", "group", r.group.as_deref(), &keys.group);
    let user_name = user_given
        .as_ref()
        .map(|g| src.check(g, values::account))
        .transpose()?;
    let group_name = group_given
        .as_ref()
        .map(|g| src.check(g, values::account))
        .transpose()?;
    if let (None, Some(g)) = (&user_given, &group_given) {
        return Err(src.bad(g, Invalid::new("needs --user (the user to run as)")));
    }

    let sni_timeout = src
        .typed("sni-timeout", None, &keys.sni_timeout, values::timeout)?
        .unwrap_or(crate::sni::DEFAULT_TIMEOUT);
    // Every value given is well-formed; one was needed.
    if backend_given.is_empty() && need_backends {
        return Err(ConfigError::NoBackend {
            file: file.map(|f| f.path.clone()),
        });
    }
    if let (true, Some(g)) = (backend_given.is_empty(), listen_given.first()) {
        return Err(src.bad(
            g,
            Invalid::new(
                "the top-level `listen` is the default service's, which has no backends: move it into a [[service]], or give `backends`",
            ),
        ));
    }
    // Look-ups last.
    let listen = if backend_given.is_empty() {
        Vec::new()
    } else if listen_given.is_empty() {
        vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
    } else {
        listen_given
            .iter()
            .zip(&listen_specs)
            .map(|(g, spec)| look_up(&src, g, spec))
            .collect::<Result<_, _>>()?
    };
    let metrics = match (&metrics_given, metrics_spec) {
        (_, None) => None,
        (Some(g), Some(spec)) => Some(look_up(&src, g, &spec)?),
        (None, Some(_)) => Some(SocketAddr::from(([127, 0, 0, 1], 9898))),
    };
    let status = match (&status_given, status_spec) {
        (Some(g), Some(spec)) => {
            let addr = look_up(&src, g, &spec)?;
            if addr.port() != 0 && Some(addr) == metrics {
                return Err(src.bad(
                    g,
                    Invalid::new(
                        "that is the metrics address, which serves the status page already",
                    ),
                ));
            }
            Some(addr)
        }
        _ => None,
    };
    let source = protect.local_sources(&src)?;
    let (backends, resolve) = if backend_given.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        expand(&src, &backend_given, &parsed, &source)?
    };
    let run_as = match (&user_given, user_name) {
        (Some(ug), Some(user)) => Some(
            crate::privileges::look_up(&user, group_name.as_deref()).map_err(
                |(is_user, why)| match (is_user, &group_given) {
                    (false, Some(gg)) => src.bad(gg, Invalid::new(why)),
                    _ => src.bad(ug, Invalid::new(why)),
                },
            )?,
        ),
        _ => None,
    };

    Ok(Config {
        listen,
        backends,
        resolve,
        resolve_interval,
        workers,
        policy,
        policy_options: PolicyOptions {
            sticky_ipv6_prefix: prefix,
        },
        metrics,
        status,
        control,
        connect_timeout,
        idle_timeout,
        drain_timeout,
        client_first_byte_timeout,
        retries,
        backlog,
        defer_accept,
        limits,
        own_limits: super::ServiceLimits::default(),
        health,
        probe: protect.probe,
        source,
        slow_start: protect.slow_start,
        queue_timeout: protect.queue_timeout,
        splice,
        cpu_affinity,
        access_log,
        run_as,
        pid_file,
        file: file.map(|f| f.path.clone()),
        acl: Arc::new(acl),
        accept_proxy: Arc::new(accept_proxy),
        proxy_header_timeout,
        sni_timeout,
        services: Vec::new(),
    })
}

fn is_string(raw: &Option<Raw>) -> bool {
    raw.as_ref()
        .is_some_and(|r| matches!(r.get_ref(), toml::Value::String(_)))
}

/// The backends as given: `--backend` flags, else the `backends` key, its
/// tables spelled out as `--backend` text.
fn backend_items<'a>(
    src: &Sources<'a>,
    args: &super::Flags,
    keys: &'a FileConfig,
) -> Result<Vec<Given<'a>>, ConfigError> {
    let mut items = src.list("backend", "backends", &args.backend, &keys.backends);
    if args.backend.is_empty() {
        // The items of the key, in the same order as `list` gave them.
        let values = keys.backends.iter().flat_map(file::items);
        for (g, item) in items.iter_mut().zip(values) {
            let spec = file::backend_spec(item.value).map_err(|why| src.bad(g, why))?;
            g.text = Some(spec);
        }
    }
    Ok(items)
}

/// Resolve the backends: named ones first, so an address a `resolve` name
/// also returns stays the named one.
/// Each backend's sources are checked here, where its origin is known
/// (`protect::usable`).
fn expand(
    src: &Sources,
    given: &[Given],
    parsed: &[BackendArg],
    global: &[IpAddr],
) -> Result<(Vec<BackendSpec>, Vec<ResolveGroup>), ConfigError> {
    let usable = |g: &Given, specs| protect::usable(src, g, specs, global);
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(parsed.len());
    for (g, a) in given.iter().zip(parsed).filter(|(_, a)| !a.resolve) {
        let specs = expand_backend(a).map_err(|why| resolve_error(src, g, why))?;
        backends.extend(usable(g, specs)?);
    }
    let mut resolve = Vec::new();
    for (g, a) in given.iter().zip(parsed).filter(|(_, a)| a.resolve) {
        let specs = expand_backend(a).map_err(|why| resolve_error(src, g, why))?;
        for b in usable(g, specs)? {
            // (A member is named by its address: the address decides.)
            if !backends.iter().any(|o| o.addr == b.addr) {
                backends.push(b);
            }
        }
        resolve.push(ResolveGroup::of(a));
    }
    if backends.len() > MAX_BACKENDS {
        return Err(ConfigError::Rule {
            origin: src.origin(&given[0]),
            message: format!(
                "too many backends after resolving: {} (at most {MAX_BACKENDS})",
                backends.len()
            ),
        });
    }
    protect::check_lists(src, &given[0], &backends, global)?;
    Ok((backends, resolve))
}
