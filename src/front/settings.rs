//! The front's `Settings` part: the configuration in force, what `ctl`
//! changed since the config file was last applied, and the flags the
//! proxy started with (re-read with the file on a reload or an upgrade).
//!
//! The configuration is one immutable value replaced whole on every change
//! (arc-swap); the limits and retries the hot path reads are copied out of
//! it whenever it changes, here, so they never disagree with it.
//!
//! A reload (and an upgrade) is planned first ([`plan`]): what the file
//! says against the running state, with a note for each thing it changes
//! or cannot, and refused whole if it cannot apply; the front then applies
//! the plan. The rules: the file (with the flags) says which backends
//! exist, their weights, the policy, the timeouts and limits; `ctl`
//! changes the running state; applying the file makes the running state
//! what the file says again, and reports each `ctl` change it overrides (a
//! policy set by `ctl`, a backend added or removed by `ctl`, a network put
//! in or taken out of an access list). State the file cannot express (a
//! backend disabled with `ctl`) is kept. Listeners, worker count, metrics
//! and control addresses, backlog, CPU affinity and the user need a
//! restart: a change there is reported and the running value kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::backends::{Admin, Backends};
use crate::acl::{Action, Cidr};
use crate::channel::{BackendEntry, Down};
use crate::config::{Config, Flags, Limits, MAX_BACKENDS};
use crate::policy::PolicyName;

/// What `ctl` changed since the file was last applied.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The policy set with `ctl policy`.
    policy: Option<PolicyName>,
    /// Backends added with `ctl backend add`.
    added: BTreeSet<String>,
    /// Backends removed with `ctl backend remove`.
    removed: BTreeSet<String>,
    /// Networks `ctl acl` put in a list (or took out of both: `None`).
    acl: BTreeMap<Cidr, Option<Action>>,
    /// Connection limits set with `ctl backend maxconn`, by service and
    /// backend name (`None`: off).
    maxconn: BTreeMap<(String, String), Option<u32>>,
}

pub struct Settings {
    config: Arc<ArcSwap<Config>>,
    /// `config.limits`, for the hot path.
    limits: Limits,
    /// `config.retries`, for the hot path.
    retries: usize,
    overrides: Overrides,
    /// The flags the proxy started with; `None` for an embedded proxy
    /// (the demo).
    flags: Option<Flags>,
    /// A config broadcast to the workers is scheduled for the end of this
    /// loop turn.
    broadcast: bool,
}

/// The settings across an upgrade. (The flags do not pass over: the new
/// front has its own, from the same command line.)
#[derive(Debug, Serialize, Deserialize)]
pub struct SettingsState {
    /// The configuration in force, run-time changes included.
    config: Config,
    overrides_policy: Option<PolicyName>,
    overrides_added: Vec<String>,
    overrides_removed: Vec<String>,
    overrides_acl: Vec<(Cidr, Option<Action>)>,
    #[serde(default)]
    overrides_maxconn: Vec<(String, String, Option<u32>)>,
}

impl Settings {
    pub fn new(config: Config, flags: Option<Flags>) -> Settings {
        Settings {
            limits: config.limits,
            retries: usize::from(config.retries),
            config: Arc::new(ArcSwap::from_pointee(config)),
            overrides: Overrides::default(),
            flags,
            broadcast: false,
        }
    }

    /// The configuration in force.
    pub fn get(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn retries(&self) -> usize {
        self.retries
    }

    /// Put `config` in force.
    pub fn replace(&mut self, config: Config) {
        self.limits = config.limits;
        self.retries = usize::from(config.retries);
        self.config.store(Arc::new(config));
    }

    /// Put in force a config derived from the present one.
    pub fn update(&mut self, change: impl FnOnce(&mut Config)) {
        let mut next = Config::clone(&self.config.load());
        change(&mut next);
        self.replace(next);
    }

    /// `ctl policy` set `name`.
    pub fn note_policy(&mut self, name: PolicyName) {
        self.overrides.policy = Some(name);
    }

    /// `ctl backend add` added `name`.
    pub fn note_added(&mut self, name: &str) {
        self.overrides.removed.remove(name);
        self.overrides.added.insert(name.to_string());
    }

    /// `ctl backend remove` removed `name`.
    pub fn note_removed(&mut self, name: &str) {
        if !self.overrides.added.remove(name) {
            self.overrides.removed.insert(name.to_string());
        }
    }

    /// `ctl acl` put `cidr` in the `action` list (`None`: in neither).
    pub fn note_acl(&mut self, cidr: Cidr, action: Option<Action>) {
        self.overrides.acl.insert(cidr, action);
    }

    /// `ctl backend maxconn` set the limit of backend `name` of service
    /// `service`.
    pub fn note_maxconn(&mut self, service: &str, name: &str, maxconn: Option<u32>) {
        self.overrides
            .maxconn
            .insert((service.to_string(), name.to_string()), maxconn);
    }

    /// The file was applied: `ctl` changes are forgotten.
    pub fn clear_overrides(&mut self) {
        self.overrides = Overrides::default();
    }

    /// The flags to load the configuration again with, or why it cannot be
    /// re-read.
    pub fn reload_flags(&self) -> Result<Flags, String> {
        let Some(flags) = &self.flags else {
            return Err("this proxy was not started from a config it can re-read".into());
        };
        if flags.config.is_none() {
            return Err("nothing to reload: this proxy was started without --config (its flags are fixed; restart it to change them)".into());
        }
        Ok(flags.clone())
    }

    /// How long a draining worker may take before it is killed: the drain
    /// timeout and a grace.
    pub fn drain_wait(&self) -> std::time::Duration {
        self.get().drain_timeout + crate::supervisor::KILL_GRACE
    }

    /// The frame that tells a worker to finish and exit.
    pub fn drain_frame(&self) -> Vec<u8> {
        let timeout = self.get().drain_timeout;
        let mut frame = Vec::new();
        if let Err(err) = (Down::Drain { timeout }).encode(&mut frame) {
            tracing::warn!(cause = %err, "cannot encode drain");
        }
        frame
    }

    /// The worker config frame: these settings with the backend table
    /// `backends` and the source address lists it refers to, numbered `seq`; `None` (logged) if it cannot be
    /// encoded, which the backend limit is there to prevent.
    pub fn config_frame(
        &self,
        seq: u64,
        backends: Vec<BackendEntry>,
        sources: Vec<Vec<std::net::IpAddr>>,
        services: Vec<crate::channel::ServiceConns>,
    ) -> Option<Vec<u8>> {
        let cfg = self.get();
        let msg = Down::Config(crate::channel::WorkerConfig {
            seq,
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.idle_timeout,
            drain_timeout: cfg.drain_timeout,
            first_byte_timeout: cfg.client_first_byte_timeout,
            splice: cfg.splice,
            report_closes: cfg.limits.per_ip().is_some(),
            backends,
            sources,
            services,
        });
        let mut frame = Vec::new();
        match msg.encode(&mut frame) {
            Ok(()) => Some(frame),
            Err(err) => {
                tracing::error!(cause = %err, "cannot encode the worker config; workers keep the previous one");
                None
            }
        }
    }

    /// The frame that tells a worker where the access log goes (`json`:
    /// its lines in JSON).
    pub fn access_log_frame(&self, json: bool) -> Option<Vec<u8>> {
        let msg = Down::AccessLog {
            target: self.get().access_log.clone(),
            json,
        };
        let mut frame = Vec::new();
        match msg.encode(&mut frame) {
            Ok(()) => Some(frame),
            Err(err) => {
                tracing::warn!(cause = %err, "cannot encode the access log setting");
                None
            }
        }
    }

    /// Schedule a config broadcast for the end of this loop turn; false if
    /// one already is.
    pub fn schedule_broadcast(&mut self) -> bool {
        !std::mem::replace(&mut self.broadcast, true)
    }

    /// Whether a scheduled broadcast is due (it is then no longer).
    pub fn take_broadcast(&mut self) -> bool {
        std::mem::take(&mut self.broadcast)
    }

    pub fn handover(&self) -> SettingsState {
        let o = &self.overrides;
        SettingsState {
            config: Config::clone(&self.config.load()),
            overrides_policy: o.policy,
            overrides_added: o.added.iter().cloned().collect(),
            overrides_removed: o.removed.iter().cloned().collect(),
            overrides_acl: o.acl.iter().map(|(&c, &a)| (c, a)).collect(),
            overrides_maxconn: o
                .maxconn
                .iter()
                .map(|((s, n), &m)| (s.clone(), n.clone(), m))
                .collect(),
        }
    }

    pub fn from_handover(state: SettingsState, flags: Option<Flags>) -> Settings {
        let mut s = Settings::new(state.config, flags);
        s.overrides = Overrides {
            policy: state.overrides_policy,
            added: state.overrides_added.into_iter().collect(),
            removed: state.overrides_removed.into_iter().collect(),
            acl: state.overrides_acl.into_iter().collect(),
            maxconn: state
                .overrides_maxconn
                .into_iter()
                .map(|(s, n, m)| ((s, n), m))
                .collect(),
        };
        s
    }
}

/// A config file worked out against the running state, ready to apply.
#[derive(Debug)]
pub struct Plan {
    /// The configuration to put in force: the file's, with the running
    /// values of what needs a restart.
    pub config: Config,
    /// What applying it changes, keeps or undoes, one line each.
    pub notes: Vec<String>,
    /// Sockets bound for the addresses it adds, with the address asked.
    pub bound: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
}

/// Plan applying `new` (the file and flags as they are now) to a front
/// running `cur` with `settings`' `ctl` changes and `backends`;
/// `lingering` counts the backends that would stay listed only to drain
/// their connections. Refused whole (nothing changes) if the backend
/// table would exceed its limit.
pub fn plan(
    settings: &Settings,
    new: Config,
    default: Option<&Backends>,
    lingering: usize,
) -> Result<Plan, String> {
    let cur = settings.get();
    let count: usize = new.service_list().iter().map(|s| s.2.backends.len()).sum();
    if count + lingering > MAX_BACKENDS {
        return Err(format!(
            "{count} backends plus {lingering} still draining connections would exceed the limit of {MAX_BACKENDS}; the running configuration stays",
        ));
    }
    let mut notes = Vec::new();
    if cur.defer_accept != new.defer_accept {
        notes.push(format!(
            "defer-accept {}",
            if new.defer_accept { "on" } else { "off" }
        ));
    }
    for (what, changed) in [
        ("workers", cur.workers != new.workers),
        ("metrics", cur.metrics != new.metrics),
        ("status", cur.status != new.status),
        ("control", cur.control != new.control),
        ("backlog", cur.backlog != new.backlog),
        ("cpu-affinity", cur.cpu_affinity != new.cpu_affinity),
        ("user", cur.run_as != new.run_as),
        ("pid-file", cur.pid_file != new.pid_file),
    ] {
        if changed {
            notes.push(format!("{what} changed: needs a restart, kept"));
        }
    }
    let o = &settings.overrides;
    if let Some(p) = o.policy.filter(|&p| p != new.policy) {
        notes.push(format!(
            "policy {p} (set by ctl) -> {} (from the configuration)",
            new.policy
        ));
    }
    for name in &o.added {
        if !new.backends.iter().any(|s| &s.name == name) {
            notes.push(format!("backend {name} added by ctl: removed (draining)"));
        }
    }
    for name in &o.removed {
        if new.backends.iter().any(|s| &s.name == name) {
            notes.push(format!("backend {name} removed by ctl: added back"));
        }
    }
    // What the file itself changed (ctl's changes are the lines above).
    let by_ctl: Vec<&str> = o
        .added
        .iter()
        .chain(&o.removed)
        .map(String::as_str)
        .collect();
    notes.extend(crate::config::diff::changes(
        &cur,
        &new,
        o.policy.is_some(),
        &by_ctl,
    ));
    notes.extend(super::access::reload_notes(&o.acl, &new));
    let services = new.service_list();
    for ((service, name), set) in &o.maxconn {
        let listed = services
            .iter()
            .find(|(s, _, _)| *s == service.as_str())
            .and_then(|(_, _, c)| c.backends.iter().find(|s| &s.name == name));
        if let Some(spec) = listed {
            if spec.maxconn != *set {
                let show = |m: Option<u32>| m.map_or("off".to_string(), |n| n.to_string());
                let of = if services.len() > 1 {
                    format!(" of service {service}")
                } else {
                    String::new()
                };
                notes.push(format!(
                    "backend {name}{of} maxconn {} (set by ctl) -> {} (from the configuration)",
                    show(*set),
                    show(spec.maxconn)
                ));
            }
        }
    }
    for spec in &new.backends {
        let disabled = default.is_some_and(|backends| {
            backends
                .find(&spec.name)
                .is_some_and(|i| backends.get(i).admin() == Admin::Disabled)
        });
        if disabled {
            notes.push(format!(
                "backend {} disabled by ctl: stays disabled",
                spec.name
            ));
        }
    }
    if cur.access_log != new.access_log {
        let shown = match &new.access_log {
            crate::channel::AccessLog::Off => "off".to_string(),
            crate::channel::AccessLog::Stderr => "stderr".to_string(),
            crate::channel::AccessLog::File(p) => p.display().to_string(),
        };
        match crate::access_log::check(&new.access_log) {
            Err(err) => notes.push(format!(
                "access log {shown} cannot be opened ({err}): the workers keep the old one"
            )),
            Ok(()) => notes.push(format!("access log -> {shown}")),
        }
    }
    let config = Config {
        workers: cur.workers,
        metrics: cur.metrics,
        status: cur.status,
        control: cur.control.clone(),
        backlog: cur.backlog,
        cpu_affinity: cur.cpu_affinity,
        run_as: cur.run_as.clone(),
        pid_file: cur.pid_file.clone(),
        ..new
    };
    Ok(Plan {
        config,
        notes,
        bound: Vec::new(),
    })
}
