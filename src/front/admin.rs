//! Run-time changes: switching the policy, adding, removing, enabling and
//! disabling backends, following DNS, and applying a reloaded config file.
//!
//! Every change produces a new [`Config`] value swapped in whole (arc-swap),
//! then the front reconciles: a fresh policy object, the backend table
//! diffed, and the new worker table sent at the end of the loop turn. The
//! next accepted connection sees the new state; connections in flight are
//! untouched.
//!
//! Where state lives, and what a reload does with it: the config file (with
//! the flags) says which backends exist, their weights, the policy, the
//! timeouts and limits. `ctl` changes the running state; a reload makes the
//! running state what the file says again, and reports each `ctl` change it
//! overrides (a policy set by `ctl`, a backend added by `ctl`, a network
//! put in or taken out of an access list by `ctl acl`). State the file
//! cannot express (a backend disabled with `ctl`) is kept. The access
//! lists themselves are edited in `access`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use super::Front;
use super::backends::Admin;
use crate::acl::{Action, Cidr};
use crate::config::{BackendSpec, Config, MAX_BACKENDS, ResolveGroup, group_member};
use crate::policy::{self, PolicyName};
use crate::stats::{FrontWord, ProcWord};

/// Why an admin request was refused. The message is shown to the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("no backend named '{0}' (see `backends`)")]
    NoSuchBackend(String),
    #[error("backend '{0}' already exists")]
    Exists(String),
    #[error("cannot remove '{0}': it is the last backend")]
    LastBackend(String),
    #[error("backend '{0}' is being removed")]
    Draining(String),
    #[error("too many backends (at most {0}, counting those still draining)")]
    TooMany(usize),
}

/// What `ctl` changed since the file was last applied.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The policy set with `ctl policy`.
    pub policy: Option<PolicyName>,
    /// Backends added with `ctl backend add`.
    pub added: BTreeSet<String>,
    /// Backends removed with `ctl backend remove`.
    pub removed: BTreeSet<String>,
    /// Networks `ctl acl` put in a list (or took out of both: `None`).
    pub acl: BTreeMap<Cidr, Option<Action>>,
}

/// What a reload did, line by line, for the log and the `ctl` reply.
#[derive(Debug, Default, Clone)]
pub struct ReloadReport {
    pub notes: Vec<String>,
}

impl Front {
    /// Swap in a config derived from the current one.
    pub(super) fn update_config(&self, change: impl FnOnce(&mut Config)) {
        let mut next = Config::clone(&self.config.load());
        change(&mut next);
        self.config.store(Arc::new(next));
    }

    /// The oldest backend table every live worker has applied.
    pub fn table_applied_everywhere(&self) -> u64 {
        self.workers
            .procs()
            .map(|p| self.counters.cell(p.cell).get(ProcWord::ConfigSeq))
            .min()
            .unwrap_or(self.backends.table_seq)
    }

    /// Switch the balancing policy (by `ctl`). Returns the previous one.
    pub fn set_policy(&mut self, name: PolicyName) -> PolicyName {
        let old = self.switch_policy(name);
        self.state.overrides.policy = Some(name);
        old
    }

    fn switch_policy(&mut self, name: PolicyName) -> PolicyName {
        let old = self.policy.name();
        if old != name {
            self.policy = policy::build(
                name,
                &self.backends.views,
                &self.config.load().policy_options,
            );
            self.update_config(|c| c.policy = name);
            self.counters.bump(FrontWord::PolicyChanges, 1);
            info!(from = %old, to = %name, "policy changed");
            self.refresh_all_views();
            self.publish();
        }
        old
    }

    /// The backend list or weights changed: rebuild what depends on them,
    /// record the new list in the config, and tell the workers.
    pub fn backends_changed(&mut self) {
        self.policy.rebuild(&self.backends.views);
        let specs: Vec<BackendSpec> = self
            .backends
            .list
            .iter()
            .filter(|b| b.admin != Admin::Draining)
            .map(|b| b.spec.clone())
            .collect();
        self.update_config(|c| c.backends = specs);
        self.config_changed();
        self.publish();
    }

    fn add_spec(&mut self, spec: BackendSpec) -> Result<(), AdminError> {
        if self.backends.list.len() >= MAX_BACKENDS {
            return Err(AdminError::TooMany(MAX_BACKENDS));
        }
        let applied = self.table_applied_everywhere();
        self.backends
            .add(spec, &self.counters.table, applied)
            .ok_or(AdminError::TooMany(MAX_BACKENDS))?;
        // Added while running: slow start, if it has one.
        let last = self.backends.list.len() - 1;
        self.backends
            .start_ramp(last, self.config.load().slow_start);
        Ok(())
    }

    /// Add a backend (by `ctl`).
    pub fn add_backend(&mut self, spec: BackendSpec) -> Result<(), AdminError> {
        if let Some(i) = self.backends.find(&spec.name) {
            let b = &self.backends.list[i];
            return Err(if b.admin == Admin::Draining {
                AdminError::Draining(spec.name)
            } else {
                AdminError::Exists(spec.name)
            });
        }
        info!(backend = %spec, "backend added");
        let name = spec.name.clone();
        self.add_spec(spec)?;
        self.state.overrides.removed.remove(&name);
        self.state.overrides.added.insert(name);
        self.backends_changed();
        Ok(())
    }

    /// Drain a backend: no new connections; it leaves the list when its
    /// last connection ends.
    pub fn remove_backend(&mut self, name: &str) -> Result<(), AdminError> {
        let i = self.find_backend(name)?;
        if self.backends.serving() <= 1 {
            return Err(AdminError::LastBackend(name.into()));
        }
        self.backends.list[i].admin = Admin::Draining;
        self.backends.refresh_routable();
        let spec_name = self.backends.list[i].spec.name.clone();
        info!(backend = %name, "backend draining for removal");
        if !self.state.overrides.added.remove(&spec_name) {
            self.state.overrides.removed.insert(spec_name);
        }
        self.backends_changed();
        self.reap_drained();
        Ok(())
    }

    /// `enable` or `disable` a backend (kept in the list either way).
    pub fn set_backend_enabled(&mut self, name: &str, enabled: bool) -> Result<(), AdminError> {
        let i = self.find_backend(name)?;
        let b = &mut self.backends.list[i];
        let was = b.admin;
        b.admin = if enabled {
            Admin::Enabled
        } else {
            Admin::Disabled
        };
        info!(backend = %name, enabled, "backend admin state changed");
        if enabled && was == Admin::Disabled {
            self.backends.start_ramp(i, self.config.load().slow_start);
        }
        self.backends.refresh_routable();
        self.config_changed();
        self.publish();
        Ok(())
    }

    fn find_backend(&self, name: &str) -> Result<usize, AdminError> {
        let i = self
            .backends
            .find(name)
            .ok_or_else(|| AdminError::NoSuchBackend(name.into()))?;
        if self.backends.list[i].admin == Admin::Draining {
            return Err(AdminError::Draining(name.into()));
        }
        Ok(i)
    }

    /// Bring a `resolve` name's backends in line with a fresh look-up:
    /// add the new addresses, drain the vanished ones (never the last
    /// backend standing). An address already listed under another name is
    /// left to that one.
    pub fn apply_resolved(&mut self, group: &ResolveGroup, addrs: &[SocketAddr]) {
        if addrs.is_empty() {
            return;
        }
        let members: Vec<SocketAddr> = self
            .backends
            .list
            .iter()
            .filter(|b| b.admin != Admin::Draining && b.spec.group.as_deref() == Some(&group.name))
            .map(|b| b.spec.addr)
            .collect();
        let (add, gone) = super::resolver::diff(&members, addrs);
        let mut changed = false;
        for addr in add {
            let spec = group_member(group, addr);
            if self.backends.list.iter().any(|b| b.spec.addr == addr) {
                continue; // listed under another name, or still draining
            }
            if let Err(why) =
                crate::config::sources::check_family(&spec, &self.config.load().source)
            {
                warn!(name = %group.name, backend = %spec.name, cause = %why, "not adding this address");
                continue;
            }
            let name = spec.name.clone();
            if let Err(err) = self.add_spec(spec) {
                warn!(name = %group.name, backend = %name, cause = %err, "not adding this address");
                continue;
            }
            info!(name = %group.name, backend = %name, "backend discovered");
            changed = true;
        }
        for addr in gone {
            let Some(i) = self.backends.list.iter().position(|b| {
                b.admin != Admin::Draining
                    && b.spec.addr == addr
                    && b.spec.group.as_deref() == Some(&group.name)
            }) else {
                continue;
            };
            if self.backends.serving() <= 1 {
                warn!(name = %group.name, backend = %addr, "address gone from the name, but it is the last backend; keeping it");
                continue;
            }
            self.backends.list[i].admin = Admin::Draining;
            info!(name = %group.name, backend = %addr, "backend gone from the name; draining");
            changed = true;
        }
        if changed {
            self.backends.refresh_routable();
            self.backends_changed();
            self.reap_drained();
        }
    }

    /// Apply a reloaded config: policy, backends (added, removed, weights),
    /// timeouts and limits. Listeners, worker count, metrics and control
    /// addresses need a restart; a change there is reported and ignored.
    /// A config that would take the backend table over its limit (counting
    /// backends still draining) is refused whole.
    pub fn apply_config(&mut self, new: Config) -> Result<ReloadReport, String> {
        let mut notes = Vec::new();
        let cur = self.config.load_full();
        // Backends that will still be listed once this applies: the new
        // ones, and those leaving (or already draining) that still have
        // connections (they drain first). Their total must fit the limit,
        // or the worker table would not fit a channel frame.
        self.sync_received();
        let cells = self.live_cells();
        let lingering = self
            .backends
            .list
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.admin == Admin::Draining || !new.backends.iter().any(|s| s.name == b.spec.name)
            })
            .filter(|&(i, _)| self.backends.active(i, &self.counters.table, &cells) > 0)
            .count();
        if new.backends.len() + lingering > MAX_BACKENDS {
            return Err(format!(
                "reload rejected: {} backends plus {lingering} still draining connections would exceed the limit of {MAX_BACKENDS}; the running configuration stays",
                new.backends.len()
            ));
        }
        let mut defer_accept = new.defer_accept;
        if cur.defer_accept != new.defer_accept {
            let to = if new.defer_accept { "on" } else { "off" };
            match self.listeners.set_defer_accept(new.defer_accept) {
                Ok(()) => {
                    info!(defer_accept = to, "listeners changed by reload");
                    notes.push(format!("defer-accept {to}"));
                }
                Err(err) => {
                    // Put back the listeners changed before the one that
                    // refused, so all of them keep the running value.
                    let _ = self.listeners.set_defer_accept(cur.defer_accept);
                    warn!(cause = %err, "defer-accept not changed");
                    notes.push(format!("{err}; kept"));
                    defer_accept = cur.defer_accept;
                }
            }
        }
        for (what, changed) in [
            ("listen", cur.listen != new.listen),
            ("workers", cur.workers != new.workers),
            ("metrics", cur.metrics != new.metrics),
            ("control", cur.control != new.control),
            ("backlog", cur.backlog != new.backlog),
            ("cpu-affinity", cur.cpu_affinity != new.cpu_affinity),
            ("user", cur.run_as != new.run_as),
            ("pid-file", cur.pid_file != new.pid_file),
        ] {
            if changed {
                warn!(
                    setting = what,
                    "changing this needs a restart; keeping the running value"
                );
                notes.push(format!("{what} changed: needs a restart, kept"));
            }
        }
        // Run-time changes the file overrides.
        let overrides = std::mem::take(&mut self.state.overrides);
        if let Some(p) = overrides.policy.filter(|&p| p != new.policy) {
            notes.push(format!(
                "policy {p} (set by ctl) -> {} (from the configuration)",
                new.policy
            ));
        }
        for name in &overrides.added {
            if !new.backends.iter().any(|s| &s.name == name) {
                notes.push(format!("backend {name} added by ctl: removed (draining)"));
            }
        }
        for name in &overrides.removed {
            if new.backends.iter().any(|s| &s.name == name) {
                notes.push(format!("backend {name} removed by ctl: added back"));
            }
        }
        notes.extend(Front::acl_reload_notes(&overrides.acl, &new));
        // Backends: drain the removed, add the new, update weights.
        for b in &mut self.backends.list {
            if b.admin != Admin::Draining && !new.backends.iter().any(|s| s.name == b.spec.name) {
                b.admin = Admin::Draining;
                info!(backend = %b.spec.name, "backend removed by reload; draining");
            }
        }
        for spec in &new.backends {
            match self.backends.find(&spec.name) {
                Some(i) if self.backends.list[i].admin != Admin::Draining => {
                    let b = &mut self.backends.list[i];
                    if b.admin == Admin::Disabled {
                        notes.push(format!(
                            "backend {} disabled by ctl: stays disabled",
                            spec.name
                        ));
                    }
                    if b.spec != *spec {
                        b.spec = spec.clone();
                        self.backends.views[i].weight = spec.weight;
                    }
                }
                _ => {
                    let s = spec.clone();
                    if let Err(err) = self.add_spec(s) {
                        warn!(backend = %spec, cause = %err, "backend not added by reload");
                        notes.push(format!("backend {spec} not added: {err}"));
                        continue;
                    }
                    info!(backend = %spec, "backend added by reload");
                }
            }
        }
        let policy = new.policy;
        let keep = Config {
            listen: cur.listen.clone(),
            workers: cur.workers,
            metrics: cur.metrics,
            control: cur.control.clone(),
            backlog: cur.backlog,
            defer_accept,
            cpu_affinity: cur.cpu_affinity,
            run_as: cur.run_as.clone(),
            pid_file: cur.pid_file.clone(),
            ..new
        };
        let access_log_changed = cur.access_log != keep.access_log;
        self.config.store(Arc::new(keep));
        self.access.configure(&self.config.load());
        if access_log_changed {
            self.access_log_changed(&mut notes);
        }
        self.limits = self.config.load().limits;
        self.retries = usize::from(self.config.load().retries);
        self.backends.refresh_routable();
        self.backends_changed();
        if self.switch_policy(policy) == policy
            && cur.policy_options != self.config.load().policy_options
        {
            // Same policy, new tuning (sticky IPv6 prefix): rebuild it.
            self.policy = policy::build(
                policy,
                &self.backends.views,
                &self.config.load().policy_options,
            );
            info!("policy options changed");
        }
        self.workers.per_proc_cap = super::proc_cap(&self.config.load(), self.workers.nofile);
        self.counters
            .set(FrontWord::WorkerLimit, self.workers.per_proc_cap);
        self.reap_drained();
        self.refresh_all_views();
        for n in &notes {
            info!(note = %n, "reload");
        }
        info!("configuration reloaded");
        Ok(ReloadReport { notes })
    }
}
