//! The front's `Services` part: every service the proxy runs, each with
//! its own backend table ([`Backends`]), policy ([`Routing`]), access list
//! and settings, and which service each listening address leads to
//! (directly, or by the server name of a TLS ClientHello: see `sni`).
//!
//! What differs per service is data, not processes: the workers, the
//! ledger and the counters stay global, and the backends of every service
//! take their ids and statistics columns from one [`Columns`], so the
//! workers have one backend table (each entry naming its service's
//! per-connection settings) and the statistics table one list of
//! columns.
//!
//! A service has a stable id (never reused while the proxy and its
//! upgrades run) that connections waiting for a worker carry; its index
//! in the list changes when a reload adds or removes services. A service
//! a reload removes leaves the routes at once and the list once its last
//! connection has ended (its backends drain like removed backends).

mod routes;
mod sni;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::acl::Acl;
use crate::config::{Config, DEFAULT_SERVICE};
use crate::metrics::ServiceLabel;
use crate::policy::WorkerView;
use crate::stats::Table;

use super::backends::{Columns, Queues, SharedColumns, Waiting};
use super::{Backends, Routing};
pub use routes::Route;
pub use sni::SniWaits;
pub use state::{ServicesOut, ServicesState};

/// One service.
pub struct Service {
    id: u32,
    name: String,
    /// Its server names, as configured (empty: it routes by listener).
    sni: Vec<String>,
    /// Its settings (the top level's for `default`).
    config: Arc<Config>,
    backends: Backends,
    routing: Routing,
    /// Removed by a reload: routes nothing new, leaves once drained.
    leaving: bool,
    /// Counts `/metrics` reads: connections routed to it, SNI outcomes.
    label: ServiceLabel,
}

impl Service {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sni(&self) -> &[String] {
        &self.sni
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn backends_mut(&mut self) -> &mut Backends {
        &mut self.backends
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn routing_mut(&mut self) -> &mut Routing {
        &mut self.routing
    }

    /// Both at once (a pick reads the table and moves the policy).
    pub fn parts_mut(&mut self) -> (&mut Routing, &mut Backends) {
        (&mut self.routing, &mut self.backends)
    }

    pub fn leaving(&self) -> bool {
        self.leaving
    }

    pub fn acl(&self) -> &Arc<Acl> {
        &self.config.acl
    }

    pub fn retries(&self) -> usize {
        usize::from(self.config.retries)
    }

    /// Connections routed to it so far.
    pub fn connections(&self) -> u64 {
        self.label.connections.load(Ordering::Relaxed)
    }

    pub fn count_connection(&self) {
        self.label.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// An SNI outcome (`reason`, one of `sni::REASONS`) that led here.
    pub fn count_sni(&self, reason: &str) {
        self.label.count_sni(reason);
    }

    pub fn label(&self) -> &ServiceLabel {
        &self.label
    }
}

pub struct Services {
    list: Vec<Service>,
    /// Each listening address's route (by service id).
    routes: routes::Routes,
    alloc: SharedColumns,
    /// Connections waiting for a slot of a backend at its `maxconn`, for
    /// the backends of every service (by backend id; each backend counts
    /// its own). The hand-over carries them beside the services.
    queues: Queues,
    next_id: u32,
    /// SNI outcomes that led to no service (closed): per reason.
    unrouted: ServiceLabel,
    slots: usize,
}

impl Services {
    /// Every service of `config`, each with its backends added.
    pub fn new(config: &Config, table: &Table, slots: usize) -> Services {
        let mut s = Services {
            list: Vec::new(),
            routes: routes::Routes::default(),
            alloc: Columns::shared(table.columns()),
            queues: Queues::default(),
            next_id: 0,
            unrouted: ServiceLabel::new(""),
            slots,
        };
        for (name, sni, cfg) in config.service_list() {
            s.add(name, sni, service_config(cfg), table, 0, None);
        }
        s.reroute();
        s
    }

    /// Add a service (at start, or by a reload); `slow_start`: its
    /// backends ramp up (added while running).
    fn add(
        &mut self,
        name: &str,
        sni: &[String],
        config: Arc<Config>,
        table: &Table,
        applied: u64,
        slow_start: Option<Option<std::time::Duration>>,
    ) -> usize {
        let mut backends = Backends::new(self.alloc.clone());
        for spec in &config.backends {
            match slow_start {
                None => {
                    backends.add(spec.clone(), table, applied);
                }
                Some(ramp) => {
                    if let Err(err) = backends.add_checked(spec.clone(), table, applied, ramp) {
                        tracing::warn!(service = name, backend = %spec, cause = %err, "backend not added");
                    }
                }
            }
        }
        let routing = Routing::new(
            config.policy,
            backends.views(),
            &config.policy_options,
            self.slots,
        );
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Service {
            id,
            name: name.to_string(),
            sni: sni.to_vec(),
            config,
            backends,
            routing,
            leaving: false,
            label: ServiceLabel::new(name),
        });
        self.list.len() - 1
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, i: usize) -> &Service {
        &self.list[i]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Service {
        &mut self.list[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Service> {
        self.list.iter_mut()
    }

    /// The index of the service with stable id `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.list.iter().position(|s| s.id == id)
    }

    /// The service a backend id belongs to, and the backend's index in it.
    pub fn of_backend(&self, id: u32) -> Option<(usize, usize)> {
        self.list
            .iter()
            .enumerate()
            .find_map(|(s, svc)| svc.backends.index_of(id).map(|b| (s, b)))
    }

    /// The service a command names: `name`, or the only one that is not
    /// leaving; an error names them all.
    pub fn named(&self, name: Option<&str>) -> Result<usize, String> {
        let live: Vec<usize> = (0..self.list.len())
            .filter(|&i| !self.list[i].leaving)
            .collect();
        let names = || {
            live.iter()
                .map(|&i| self.list[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => live
                .iter()
                .copied()
                .find(|&i| self.list[i].name == n)
                .ok_or_else(|| format!("no service named '{n}' (services: {})", names())),
            None if live.len() == 1 => Ok(live[0]),
            None => Err(format!(
                "this proxy runs several services: say which with --service NAME ({})",
                names()
            )),
        }
    }

    /// Whether one service takes everything (no routing decision to make).
    pub fn single(&self) -> bool {
        self.list.len() == 1 && self.routes.single()
    }

    /// Where connections accepted on `local` go.
    pub fn route(&self, local: SocketAddr) -> Option<&Route> {
        self.routes.get(local)
    }

    /// Whether a connection from `ip` on `local` begins with a PROXY
    /// header (`accept-proxy` of the services on that listener).
    pub fn trusts(&self, local: Option<SocketAddr>, ip: IpAddr) -> bool {
        match local.and_then(|l| self.routes.get(l)) {
            Some(route) => route.trusted().contains(ip),
            None => false,
        }
    }

    /// The listening addresses whose every service is `full` (at its own
    /// `max-conns`), when some service has one.
    pub fn held_listeners(&self, full: impl Fn(&Service) -> bool) -> Vec<SocketAddr> {
        let limited = |s: &Service| s.config.own_limits.max_conns.is_some();
        if !self.list.iter().any(limited) {
            return Vec::new();
        }
        self.routes.held(&self.list, full)
    }

    /// Rebuild the routes from the services not leaving.
    fn reroute(&mut self) {
        self.routes = routes::Routes::build(&self.list);
    }

    /// Set what every service's policy sees of `slot`.
    pub fn set_view(&mut self, slot: usize, view: WorkerView) {
        for s in &mut self.list {
            s.routing.set(slot, view);
        }
    }

    pub fn view(&self, slot: usize) -> WorkerView {
        self.list
            .first()
            .map_or(WorkerView::default(), |s| s.routing.view(slot))
    }

    pub fn routable_slots(&self) -> usize {
        self.list.first().map_or(0, |s| s.routing.routable_slots())
    }

    pub fn total_active(&self) -> u64 {
        self.list.first().map_or(0, |s| s.routing.total_active())
    }

    pub fn alloc(&self) -> &SharedColumns {
        &self.alloc
    }

    /// The backend queues of every service (one set, by backend id).
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    pub fn queues_mut(&mut self) -> &mut Queues {
        &mut self.queues
    }

    /// How long a connection may wait for backend `id`: its service's
    /// queue timeout (`queue-timeout`, else that service's connect
    /// timeout); `global` for a backend no service has.
    fn queue_timeout(
        list: &[Service],
        id: u32,
        global: std::time::Duration,
    ) -> std::time::Duration {
        list.iter()
            .find(|s| s.backends.index_of(id).is_some())
            .map_or(global, |s| s.config.queue_timeout())
    }

    /// When the next wait in any queue ends, if anything waits.
    pub fn queue_deadline(&self, global: std::time::Duration) -> Option<std::time::Instant> {
        self.queues
            .next_deadline(|id| Self::queue_timeout(&self.list, id, global))
    }

    /// Every wait that reached its service's queue timeout by `now`, out
    /// of the queues.
    pub fn expired_waits(
        &mut self,
        now: std::time::Instant,
        global: std::time::Duration,
    ) -> Vec<(u32, Waiting)> {
        let list = &self.list;
        self.queues
            .expired(now, |id| Self::queue_timeout(list, id, global))
    }

    /// Service `si`'s backends and the queues, to move connections
    /// between them.
    pub fn backends_and_queues(&mut self, si: usize) -> (&mut Backends, &mut Queues) {
        (&mut self.list[si].backends, &mut self.queues)
    }

    /// Put the queues taken over from a previous front in place, and
    /// their lengths in the table.
    pub fn set_queues(&mut self, queues: Queues, table: &Table) {
        self.queues = queues;
        for s in &mut self.list {
            s.backends.queues_refreshed(&self.queues, table);
        }
    }

    /// Connections waiting for backends no service has any more (only
    /// after a hand-over from a front that listed them): out of their
    /// queues.
    pub fn orphans(&mut self) -> Vec<Waiting> {
        let mut out = Vec::new();
        for id in self.queues.backends() {
            if self.of_backend(id).is_none() {
                out.extend(self.queues.take_all(id));
            }
        }
        out
    }

    pub fn table_seq(&self) -> u64 {
        self.alloc.borrow().table_seq()
    }

    pub fn next_table_seq(&mut self) -> u64 {
        self.alloc.borrow_mut().next_table_seq()
    }

    /// A backend handoff was taken by its worker, or failed.
    pub fn sub_inflight(&mut self, id: u32) {
        if let Some((s, _)) = self.of_backend(id) {
            self.list[s].backends.sub_inflight(id);
        }
    }

    /// A handoff for backend `id` will never reach a worker: uncounted,
    /// its slot (`maxconn=`) included.
    pub fn unhanded(&mut self, id: u32) {
        if let Some((s, _)) = self.of_backend(id) {
            self.list[s].backends.unhanded(id);
        }
    }

    /// Whether any backend anywhere is draining.
    pub fn any_draining(&self) -> bool {
        self.list
            .iter()
            .any(|s| s.leaving || s.backends.any_draining())
    }

    /// Every service's (column, sequence) for folding a departed process.
    pub fn columns(&self) -> Vec<(usize, u64)> {
        self.list
            .iter()
            .flat_map(|s| s.backends.columns())
            .collect()
    }

    /// The workers' one table: every service's backends, each naming its
    /// service's settings (the first service's are the config's own),
    /// with the source lists merged.
    pub fn worker_table(
        &self,
    ) -> (
        Vec<crate::channel::BackendEntry>,
        Vec<Vec<IpAddr>>,
        Vec<crate::channel::ServiceConns>,
    ) {
        let mut entries = Vec::new();
        let mut lists: Vec<Vec<IpAddr>> = Vec::new();
        let mut conns = Vec::new();
        for (i, s) in self.list.iter().enumerate() {
            let (mine, my_lists) = s.backends.worker_table(&s.config.source);
            let service = (i > 0).then(|| {
                conns.push(crate::channel::ServiceConns {
                    connect_timeout: s.config.connect_timeout,
                    idle_timeout: s.config.idle_timeout,
                    first_byte_timeout: s.config.client_first_byte_timeout,
                });
                (conns.len() - 1) as u16
            });
            for mut e in mine {
                e.source = e.source.map(|k| {
                    let list = &my_lists[usize::from(k)];
                    lists.iter().position(|l| l == list).unwrap_or_else(|| {
                        lists.push(list.clone());
                        lists.len() - 1
                    }) as u16
                });
                e.service = service;
                e.counted = s.config.own_limits.any();
                entries.push(e);
            }
        }
        (entries, lists, conns)
    }

    /// The labels `/metrics` renders per service (SNI outcomes that led
    /// nowhere under the empty name, when some listener routes by name).
    pub fn labels(&self) -> Vec<ServiceLabel> {
        let mut out: Vec<ServiceLabel> = self.list.iter().map(|s| s.label.clone()).collect();
        if self.routes.any_sni() {
            out.push(self.unrouted.clone());
        }
        out
    }

    /// Every backend's label for `/metrics`, with its service's name.
    pub fn backend_labels(&self) -> Vec<crate::metrics::BackendLabel> {
        let mut out = Vec::new();
        for s in &self.list {
            for mut l in s.backends.labels() {
                l.service = s.name.clone();
                out.push(l);
            }
        }
        out
    }

    /// An SNI outcome that led to no service: the connection is closed.
    pub fn count_unrouted(&self, reason: &str) {
        self.unrouted.count_sni(reason);
    }
}

/// A service's settings as the part holds them.
fn service_config(cfg: &Config) -> Arc<Config> {
    Arc::new(Config {
        services: Vec::new(),
        ..cfg.clone()
    })
}

impl ServiceLabel {
    /// Count a refusal by the service's own limits (`reason`, one of
    /// `metrics::SERVICE_REFUSALS`).
    pub fn count_refused(&self, reason: &str) {
        if let Some(i) = crate::metrics::SERVICE_REFUSALS
            .iter()
            .position(|&r| r == reason)
        {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count an SNI outcome.
    pub fn count_sni(&self, reason: &str) {
        if let Some(i) = crate::metrics::SNI_REASONS
            .iter()
            .position(|&r| r == reason)
        {
            self.sni[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `name` is the implicit service.
pub fn is_default(name: &str) -> bool {
    name == DEFAULT_SERVICE
}
