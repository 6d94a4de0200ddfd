//! The services across an upgrade, and a config file applied to them (a
//! reload, or the new front after an upgrade): services added, removed
//! (they drain) and changed, the untouched ones left as they are.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::sni::SniWaitsState;
use super::{Service, Services, service_config};
use crate::config::Config;
use crate::front::backends::{Admin, Columns};
use crate::front::{Backends, Routing};
use crate::metrics::ServiceLabel;
use crate::stats::Table;

/// One service as the old front writes it (its table by reference).
#[derive(Serialize)]
struct OneOut<'a> {
    id: u32,
    name: &'a str,
    sni: &'a [String],
    config: &'a Config,
    leaving: bool,
    backends: &'a Backends,
    connections: u64,
    sni_counts: Vec<u64>,
    refused_counts: Vec<u64>,
}

/// The part as the old front writes it.
#[derive(Serialize)]
pub struct ServicesOut<'a> {
    columns: Columns,
    next_id: u32,
    services: Vec<OneOut<'a>>,
    unrouted: Vec<u64>,
    sni_waits: SniWaitsState,
}

/// One service across an upgrade.
#[derive(Deserialize)]
struct One {
    id: u32,
    name: String,
    sni: Vec<String>,
    config: Config,
    leaving: bool,
    backends: Backends,
    connections: u64,
    sni_counts: Vec<u64>,
    /// (Absent from a build before service limits: none.)
    #[serde(default)]
    refused_counts: Vec<u64>,
}

/// The part across an upgrade (the waiting connections' descriptors
/// travel beside, pushed by `SniWaits::handover`).
#[derive(Deserialize)]
pub struct ServicesState {
    columns: Columns,
    next_id: u32,
    services: Vec<One>,
    unrouted: Vec<u64>,
    pub sni_waits: SniWaitsState,
}

impl Services {
    /// What the part hands to a new front (its backend tables by value:
    /// the front is frozen).
    pub fn handover(&self, sni_waits: SniWaitsState) -> ServicesOut<'_> {
        ServicesOut {
            columns: self.alloc.borrow().clone(),
            next_id: self.next_id,
            services: self
                .list
                .iter()
                .map(|s| OneOut {
                    id: s.id,
                    name: &s.name,
                    sni: &s.sni,
                    config: &s.config,
                    leaving: s.leaving,
                    backends: &s.backends,
                    connections: s.connections(),
                    sni_counts: s.label.sni_counts(),
                    refused_counts: s.label.refused_counts(),
                })
                .collect(),
            unrouted: self.unrouted.sni_counts(),
            sni_waits,
        }
    }

    /// The part a new front takes over, for a table of `table`'s columns
    /// and `slots` worker slots.
    pub fn from_handover(state: ServicesState, table: &Table, slots: usize) -> Services {
        let alloc = state.columns.into_shared(table.columns());
        let unrouted = ServiceLabel::new("");
        unrouted.set_sni_counts(&state.unrouted);
        let mut s = Services {
            list: Vec::new(),
            routes: Default::default(),
            alloc: alloc.clone(),
            queues: Default::default(),
            next_id: state.next_id,
            unrouted,
            slots,
        };
        for one in state.services {
            let config = Arc::new(one.config);
            let backends = one.backends.from_handover(alloc.clone());
            let routing = Routing::new(
                config.policy,
                backends.views(),
                &config.policy_options,
                slots,
            );
            let label = ServiceLabel::new(&one.name);
            label.set_connections(one.connections);
            label.set_sni_counts(&one.sni_counts);
            label.set_refused_counts(&one.refused_counts);
            s.list.push(Service {
                id: one.id,
                name: one.name,
                sni: one.sni,
                config,
                backends,
                routing,
                leaving: one.leaving,
                label,
            });
        }
        s.reroute();
        s
    }

    /// Make the services what `config` says: add the new ones, drain the
    /// ones it no longer has, and bring the others in line (settings,
    /// names, policy, backends). Returns what it did, a note a line.
    pub fn apply(&mut self, config: &Config, table: &Table, applied: u64) -> Vec<String> {
        let mut notes = Vec::new();
        let wanted = config.service_list();
        for s in self.list.iter_mut().filter(|s| !s.leaving) {
            if !wanted.iter().any(|(name, _, _)| *name == s.name) {
                s.leaving = true;
                for i in 0..s.backends.list().len() {
                    s.backends.set_admin(i, Admin::Draining);
                }
                tracing::info!(service = %s.name, "service removed by reload; draining");
                notes.push(format!(
                    "service {} removed (its connections drain)",
                    s.name
                ));
            }
        }
        for (name, sni, cfg) in wanted {
            let cfg = service_config(cfg);
            let Some(i) = self.list.iter().position(|s| s.name == name && !s.leaving) else {
                self.add(name, sni, cfg.clone(), table, applied, Some(cfg.slow_start));
                tracing::info!(service = name, "service added by reload");
                notes.push(format!("service {name} added"));
                continue;
            };
            let s = &mut self.list[i];
            if *s.config == *cfg && s.sni == sni {
                continue;
            }
            if name != crate::config::DEFAULT_SERVICE {
                // The top level (the default service) is described by the
                // settings' plan, which knows what `ctl` changed.
                for n in crate::config::diff::changes(&s.config, &cfg, true, &[]) {
                    notes.push(format!("service {name}: {n}"));
                }
            }
            let before = s.backends.specs();
            for n in s
                .backends
                .reconcile(&cfg.backends, table, applied, cfg.slow_start)
            {
                notes.push(format!("service {name}: {n}"));
            }
            if s.config.policy != cfg.policy || s.config.policy_options != cfg.policy_options {
                s.routing
                    .switch(cfg.policy, s.backends.views(), &cfg.policy_options);
                if name != crate::config::DEFAULT_SERVICE {
                    notes.push(format!(
                        "service {name}: policy {} -> {}",
                        s.config.policy, cfg.policy
                    ));
                }
            } else if before != s.backends.specs() {
                s.routing.rebuild(s.backends.views());
            }
            if s.sni != sni {
                notes.push(format!("service {name}: sni {}", sni.join(",")));
            }
            s.sni = sni.to_vec();
            s.config = cfg;
        }
        // The order of the file, the leaving ones last.
        let order = |s: &Service| {
            let at = config
                .service_list()
                .iter()
                .position(|(n, _, _)| *n == s.name);
            (s.leaving, at)
        };
        self.list.sort_by_key(order);
        self.reroute();
        notes
    }

    /// Drop services that left and have no backend left. Returns their
    /// names.
    pub fn reap_left(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        self.list.retain(|s| {
            let done = s.leaving && s.backends.list().is_empty();
            if done {
                gone.push(s.name.clone());
            }
            !done
        });
        if !gone.is_empty() {
            self.reroute();
        }
        gone
    }

    /// Put `config` in force for service `i` (a `ctl` change).
    pub fn set_config(&mut self, i: usize, config: Arc<Config>) {
        self.list[i].config = config;
    }

    /// The configs of every service as the running `top` config should
    /// list them: `ctl` changes are already in each service's own.
    pub fn sync_into(&self, top: &mut Config) {
        for s in self.list.iter().filter(|s| !s.leaving) {
            let specs = s.backends.specs();
            let policy = s.routing.policy();
            let acl = s.config.acl.clone();
            top.update_service(&s.name, |c| {
                c.backends = specs;
                c.policy = policy;
                c.acl = acl;
            });
        }
    }
}
