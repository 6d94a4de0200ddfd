//! Run-time changes: switching the policy, adding, removing, enabling and
//! disabling backends, and applying a reloaded config file.
//!
//! Every change produces a new [`Config`] value swapped in whole (arc-swap),
//! then the front reconciles: a fresh policy object, the backend table
//! diffed, and the new worker table broadcast. The next accepted connection
//! sees the new state; connections in flight are untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics::gauge;
use tracing::{info, warn};

use super::Front;
use super::backends::Admin;
use crate::config::{BackendSpec, Config, ResolveGroup, group_member};
use crate::metrics as m;
use crate::policy::{self, PolicyName};

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
    #[error("too many backends (at most {0})")]
    TooMany(usize),
}

/// Mark `policy`'s info series 1 and the others 0.
pub fn set_policy_metric(old: Option<PolicyName>, new: PolicyName) {
    for p in PolicyName::ALL {
        gauge!(m::POLICY_INFO, "policy" => p.as_str()).set(if p == new { 1.0 } else { 0.0 });
    }
    if old.is_some() {
        metrics::counter!(m::POLICY_CHANGES).increment(1);
    } else {
        metrics::counter!(m::POLICY_CHANGES).absolute(0);
    }
}

impl Front {
    /// Swap in a config derived from the current one.
    fn update_config(&self, change: impl FnOnce(&mut Config)) {
        let mut next = Config::clone(&self.config.load());
        change(&mut next);
        self.config.store(Arc::new(next));
    }

    /// Switch the balancing policy. Returns the previous one.
    pub fn set_policy(&mut self, name: PolicyName) -> PolicyName {
        let old = self.policy.name();
        if old != name {
            self.policy = policy::build(
                name,
                &self.backends.views,
                &self.config.load().policy_options,
            );
            self.update_config(|c| c.policy = name);
            set_policy_metric(Some(old), name);
            info!(from = %old, to = %name, "policy changed");
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
        self.broadcast_config();
    }

    pub fn add_backend(&mut self, spec: BackendSpec) -> Result<(), AdminError> {
        if let Some(i) = self.backends.find(&spec.name) {
            let b = &self.backends.list[i];
            return Err(if b.admin == Admin::Draining {
                AdminError::Draining(spec.name)
            } else {
                AdminError::Exists(spec.name)
            });
        }
        if self.backends.list.len() >= crate::config::MAX_BACKENDS {
            return Err(AdminError::TooMany(crate::config::MAX_BACKENDS));
        }
        info!(backend = %spec, "backend added");
        self.backends.add(spec);
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
        info!(backend = %name, active = self.backends.views[i].active, "backend draining for removal");
        self.backends.reap_drained();
        self.backends_changed();
        Ok(())
    }

    /// `enable` or `disable` a backend (kept in the list either way).
    pub fn set_backend_enabled(&mut self, name: &str, enabled: bool) -> Result<(), AdminError> {
        let i = self.find_backend(name)?;
        let b = &mut self.backends.list[i];
        b.admin = if enabled {
            Admin::Enabled
        } else {
            Admin::Disabled
        };
        b.metrics
            .up
            .set(if enabled && b.healthy { 1.0 } else { 0.0 });
        info!(backend = %name, enabled, "backend admin state changed");
        self.backends.refresh_routable();
        self.broadcast_config();
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
            let spec = group_member(&group.name, addr, group.weight);
            if self.backends.list.iter().any(|b| b.spec.addr == addr) {
                continue; // listed under another name, or still draining
            }
            if self.backends.list.len() >= crate::config::MAX_BACKENDS {
                warn!(name = %group.name, backend = %spec.name, "too many backends; not adding this address");
                continue;
            }
            info!(name = %group.name, backend = %spec.name, "backend discovered");
            self.backends.add(spec);
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
            info!(name = %group.name, backend = %addr, active = self.backends.views[i].active, "backend gone from the name; draining");
            changed = true;
        }
        if changed {
            self.backends.refresh_routable();
            self.backends.reap_drained();
            self.backends_changed();
        }
    }

    /// Apply a reloaded config: policy, backends (added, removed, weights),
    /// timeouts and limits. Listeners, worker count, metrics and control
    /// addresses need a restart; a change there is reported and ignored.
    pub fn apply_config(&mut self, new: Config) -> Vec<String> {
        let mut notes = Vec::new();
        let cur = self.config.load_full();
        for (what, changed) in [
            ("listen", cur.listen != new.listen),
            ("workers", cur.workers != new.workers),
            ("metrics", cur.metrics != new.metrics),
            ("control", cur.control != new.control),
            ("backlog", cur.backlog != new.backlog),
            ("cpu-affinity", cur.cpu_affinity != new.cpu_affinity),
        ] {
            if changed {
                warn!(
                    setting = what,
                    "changing this needs a restart; keeping the running value"
                );
                notes.push(format!("{what} changed: needs a restart, kept"));
            }
        }
        // Backends: drain the removed, add the new, update weights.
        let mut list_changed = false;
        for b in &mut self.backends.list {
            if b.admin != Admin::Draining && !new.backends.iter().any(|s| s.name == b.spec.name) {
                b.admin = Admin::Draining;
                list_changed = true;
                info!(backend = %b.spec.name, "backend removed by reload; draining");
            }
        }
        for spec in &new.backends {
            match self.backends.find(&spec.name) {
                Some(i) if self.backends.list[i].admin != Admin::Draining => {
                    let b = &mut self.backends.list[i];
                    if b.spec != *spec {
                        b.spec = spec.clone();
                        self.backends.views[i].weight = spec.weight;
                        gauge!(m::BACKEND_WEIGHT, "backend" => spec.name.clone())
                            .set(f64::from(spec.weight));
                        list_changed = true;
                    }
                }
                _ => {
                    self.backends.add(spec.clone());
                    list_changed = true;
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
            ..new
        };
        self.config.store(Arc::new(keep));
        self.backends.refresh_routable();
        self.backends.reap_drained();
        if list_changed {
            self.backends_changed();
        } else {
            self.broadcast_config();
        }
        if self.set_policy(policy) == policy
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
        self.per_proc_cap = super::proc_cap(&self.config.load(), self.nofile);
        self.refresh_all_views();
        info!("configuration reloaded");
        notes
    }
}
