//! The front's `Backends` part: configured backends with stable ids, their
//! admin and health state, their statistics columns, and the counts
//! policies read.
//!
//! The counts policies read live in [`BackendView`]s kept beside the list,
//! in the same order, so a pick reads a flat slice. A view's `active` is
//! the connections the front has handed and no worker has taken yet
//! (`inflight`) plus what the workers hold on it (their statistics cells),
//! refreshed by [`Backends::refresh_active`].
//!
//! Slow start: a backend that comes up while the proxy runs (health, `ctl
//! backend enable`, added) has its view's `ramp` raised from
//! [`RAMP_FLOOR`] to full over its slow-start duration
//! ([`Backends::refresh_ramps`], on every change and a few times a
//! second), so the policies see its effective weight rise.
//!
//! Columns: each backend has a column of the statistics table. A column
//! is freed when its backend leaves, and reused only once every worker
//! has applied a backend table without it (the worker zeroes its cells of
//! a column when it does), so a new backend never inherits old counts.
//!
//! Health (see `health` for the checks themselves): `fall` failed checks
//! in a row take a backend out, `rise` good ones bring it back; `fall`
//! connect failures by workers within [`PASSIVE_WINDOW`] with no success
//! between take it out too, and without active checks it is tried again
//! after [`PASSIVE_COOLDOWN`]. Every change of admin or health state goes
//! through the methods here, which keep the views' `routable` in step.

mod limits;
mod queue;

pub use queue::{Queues, Waiting, WaitingState};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::AdminError;
use crate::channel::BackendEntry;
use crate::config::{BackendSpec, Health, MAX_BACKENDS, ResolveGroup, group_member};
use crate::metrics::BackendLabel;
use crate::policy::{BackendView, RAMP_FULL, backend_key};
use crate::proxy_protocol::Version;
use crate::stats::{Col, ColCell, Table};
use crate::status::HEALTH_HISTORY;

mod checks;
mod columns;
mod membership;
pub use columns::{Columns, SharedColumns};

/// Failed connects must fall within this window to mark a backend down.
pub const PASSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Without active checks, a passively failed backend is tried again after
/// this long.
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// Where a slow start begins: 5% of the full share.
pub const RAMP_FLOOR: u32 = RAMP_FULL / 20;

/// What an operator asked of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Enabled,
    /// `backend disable`: no new connections; back with `backend enable`.
    Disabled,
    /// `backend remove`: no new connections; dropped once the last one ends.
    Draining,
}

/// Per-backend check state.
#[derive(Debug, Default, Clone)]
struct CheckState {
    consecutive_ok: u32,
    consecutive_fail: u32,
    /// Passive: failed connects in the current window, when it began, and
    /// how many connections had been established when last looked.
    passive_fails: u32,
    passive_since: Option<Instant>,
    conns_seen: u64,
    /// Marked down by traffic (not by checks), at this time.
    passive_down: Option<Instant>,
    /// The last active check: passed, or why not; `None` before the first.
    last: Option<Result<(), String>>,
    /// The last `checks` (at most [`HEALTH_HISTORY`]) active check
    /// results, newest in bit 0 (1: passed).
    history: u32,
    checks: u8,
    /// Came up (health, enable, added) while running, at this time: slow
    /// start ramps from here (see `Backends::refresh_ramps`). `None` at
    /// start, and once the ramp is over.
    up_since: Option<Instant>,
}

#[derive(Serialize, Deserialize)]
pub struct Backend {
    id: u32,
    spec: BackendSpec,
    admin: Admin,
    /// Result of health checking (always true when checks are off).
    healthy: bool,
    #[serde(skip)]
    check: CheckState,
    /// Its statistics column.
    column: usize,
    /// The backend table sequence from which `column` is this backend's.
    column_seq: u64,
    /// Handed to a worker, not yet taken out of its channel.
    inflight: u64,
    /// With a connection limit: connections open on it as last counted
    /// (in flight plus what workers hold), never below the truth: raised
    /// at each hand-off, counted again when one may have ended (see
    /// `limits`).
    #[serde(skip)]
    open: u64,
    /// Connections waiting in its queue (the queues are the `Services`
    /// part's, one set for every service's backends, by backend id).
    #[serde(skip)]
    queued: usize,
}

impl Backend {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    pub fn admin(&self) -> Admin {
        self.admin
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    pub fn column(&self) -> usize {
        self.column
    }

    pub fn routable(&self) -> bool {
        self.admin == Admin::Enabled && self.healthy
    }

    /// Admin state allows traffic (health aside): the fail-open set.
    pub fn enabled(&self) -> bool {
        self.admin == Admin::Enabled
    }

    /// A word for `ctl backends`.
    pub fn state(&self) -> &'static str {
        match (self.admin, self.healthy) {
            (Admin::Draining, _) => "draining",
            (Admin::Disabled, _) => "disabled",
            (Admin::Enabled, true) => "up",
            (Admin::Enabled, false) => "down",
        }
    }
}

/// One service's backend table; the hand-over serialises it whole (views
/// and the index are rebuilt, check counts start again). Ids and columns
/// come from the [`Columns`] all services share.
#[derive(Serialize, Deserialize)]
pub struct Backends {
    list: Vec<Backend>,
    /// Parallel to `list`: what policies see.
    #[serde(skip)]
    views: Vec<BackendView>,
    #[serde(skip)]
    by_id: HashMap<u32, usize>,
    #[serde(skip)]
    alloc: SharedColumns,
    /// Every primary backend is down and the backups take connections.
    #[serde(skip)]
    backups_active: bool,
    /// The indexes of the backends with a connection limit.
    #[serde(skip)]
    limited: Vec<usize>,
}

impl Backends {
    pub fn new(alloc: SharedColumns) -> Backends {
        Backends {
            list: Vec::new(),
            views: Vec::new(),
            by_id: HashMap::new(),
            alloc,
            backups_active: false,
            limited: Vec::new(),
        }
    }

    /// The part taken over from a previous front, sharing `alloc`.
    pub fn from_handover(mut self, alloc: SharedColumns) -> Backends {
        self.alloc = alloc;
        self.views = self.list.iter().map(view_of).collect();
        self.reindex();
        self.backups_active = self.list.iter().any(|b| b.spec.backup)
            && !self.list.iter().any(|b| !b.spec.backup && b.routable());
        self.refresh_routable();
        self
    }

    pub fn list(&self) -> &[Backend] {
        &self.list
    }

    pub fn get(&self, i: usize) -> &Backend {
        &self.list[i]
    }

    pub fn views(&self) -> &[BackendView] {
        &self.views
    }

    pub fn table_seq(&self) -> u64 {
        self.alloc.borrow().table_seq
    }

    /// The sequence number for a new backend table.
    pub fn next_table_seq(&mut self) -> u64 {
        self.alloc.borrow_mut().next_table_seq()
    }

    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn find(&self, name_or_addr: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|b| b.spec.name == name_or_addr || b.spec.addr.to_string() == name_or_addr)
    }

    /// Connections on backend `i` now: in flight plus what live workers
    /// (the processes using `cells`) hold.
    pub fn active(&self, i: usize, table: &Table, cells: &[usize]) -> u64 {
        let b = &self.list[i];
        b.inflight + held(table, cells, b.column)
    }

    /// A column's total of `w`: the base plus the live processes' cells.
    pub fn total(&self, i: usize, w: Col, table: &Table, cells: &[usize]) -> u64 {
        let col = self.list[i].column;
        ColCell::of(table.base(col)).get(w)
            + cells
                .iter()
                .filter_map(|&c| table.cell(c).col(col))
                .map(|c| c.get(w))
                .sum::<u64>()
    }

    /// Recompute every view's `active` (for least-conn): what is open
    /// on each backend, and what waits in its queue.
    pub fn refresh_active(&mut self, table: &Table, cells: &[usize]) {
        for (b, v) in self.list.iter().zip(self.views.iter_mut()) {
            v.active = b.inflight + held(table, cells, b.column) + b.queued as u64;
        }
    }

    /// Whether any backend is being removed.
    pub fn any_draining(&self) -> bool {
        self.list.iter().any(|b| b.admin == Admin::Draining)
    }

    fn reindex(&mut self) {
        self.by_id = self
            .list
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
        self.limited = (0..self.list.len())
            .filter(|&i| self.list[i].spec.maxconn.is_some())
            .collect();
    }

    /// Set backend `i`'s admin state.
    pub fn set_admin(&mut self, i: usize, admin: Admin) {
        self.list[i].admin = admin;
        self.refresh_routable();
    }

    /// Backend `i`'s spec changed (a reload): same name, maybe a new
    /// weight or address.
    pub fn set_spec(&mut self, i: usize, spec: BackendSpec) {
        self.views[i].weight = spec.weight;
        self.list[i].spec = spec;
        self.reindex();
        self.refresh_routable();
    }

    /// Views for a fail-open pick: every enabled backend counts as routable.
    pub fn fail_open_views(&self) -> Vec<BackendView> {
        self.list
            .iter()
            .zip(&self.views)
            .map(|(b, v)| BackendView {
                routable: b.enabled(),
                ..*v
            })
            .collect()
    }

    /// Backends not being removed.
    pub fn serving(&self) -> usize {
        self.list
            .iter()
            .filter(|b| b.admin != Admin::Draining)
            .count()
    }

    pub fn any_routable(&self) -> bool {
        self.views.iter().any(|v| v.routable)
    }

    /// One more connection handed for backend `idx`.
    pub fn add_inflight(&mut self, idx: usize) {
        self.list[idx].inflight += 1;
        self.list[idx].open += 1;
        self.views[idx].active += 1;
    }

    /// A handoff for backend `id` will never reach a worker (its batch was
    /// refused, or its worker died before reading it): uncounted, slot
    /// included.
    pub fn unhanded(&mut self, id: u32) {
        if let Some(idx) = self.index_of(id) {
            let b = &mut self.list[idx];
            b.open = b.open.saturating_sub(1);
            let v = &mut self.views[idx];
            v.active = v.active.saturating_sub(1);
        }
        self.sub_inflight(id);
    }

    /// A handoff for backend `id` was taken by its worker (or will never
    /// be: see [`Backends::unhanded`]). What the policy sees of the
    /// backend does not change: the connection is still open, now in the
    /// worker's `Active` word, which the next `refresh_active` reads
    /// (dropping it here undercounted least-conn until then).
    pub fn sub_inflight(&mut self, id: u32) {
        if let Some(idx) = self.index_of(id) {
            let b = &mut self.list[idx];
            b.inflight = b.inflight.saturating_sub(1);
        }
    }

    /// The table a worker needs: every listed backend, routable or not
    /// (so it can account for connections still on a drained one), and
    /// the source address lists they use (`global`: `--source`), each
    /// list once.
    pub fn worker_table(
        &self,
        global: &[std::net::IpAddr],
    ) -> (Vec<BackendEntry>, Vec<Vec<std::net::IpAddr>>) {
        let mut lists: Vec<Vec<std::net::IpAddr>> = Vec::new();
        let entries = self
            .list
            .iter()
            .zip(&self.views)
            .map(|(b, v)| {
                let from = crate::config::sources::of(&b.spec, global);
                let source = (!from.is_empty()).then(|| {
                    let i = lists.iter().position(|l| *l == from).unwrap_or_else(|| {
                        lists.push(from);
                        lists.len() - 1
                    });
                    i as u16
                });
                BackendEntry {
                    id: b.id,
                    column: b.column as u16,
                    addr: b.spec.addr,
                    routable: v.routable,
                    send_proxy: b.spec.send_proxy,
                    source,
                    service: None,
                    limited: b.spec.maxconn.is_some(),
                    counted: false,
                }
            })
            .collect();
        (entries, lists)
    }

    /// The specs of every backend not being removed (what the config in
    /// force lists).
    pub fn specs(&self) -> Vec<BackendSpec> {
        self.list
            .iter()
            .filter(|b| b.admin != Admin::Draining)
            .map(|b| b.spec.clone())
            .collect()
    }

    /// For `/metrics`: each backend's name, column, state and weight.
    pub fn labels(&self) -> Vec<BackendLabel> {
        self.list
            .iter()
            .map(|b| BackendLabel {
                service: String::new(),
                name: b.spec.name.clone(),
                column: b.column,
                up: b.routable(),
                weight: b.spec.weight,
                maxconn: b.spec.maxconn,
            })
            .collect()
    }

    /// Each backend's (column, sequence from which the column is its own),
    /// for folding a departed process's counts.
    pub fn columns(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.list.iter().map(|b| (b.column, b.column_seq))
    }
}

fn view_of(b: &Backend) -> BackendView {
    BackendView {
        key: backend_key(&b.spec.name),
        weight: b.spec.weight,
        routable: b.routable(),
        active: 0,
        ramp: RAMP_FULL,
    }
}

/// What the processes using `cells` hold on column `col`.
fn held(table: &Table, cells: &[usize], col: usize) -> u64 {
    cells
        .iter()
        .filter_map(|&c| table.cell(c).col(col))
        .map(|c| c.get(Col::Active))
        .sum()
}
