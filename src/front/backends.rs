//! The front's backend table: configured backends with stable ids, their
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

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use serde::Serialize;
use tracing::info;

use super::health::CheckState;
use crate::channel::BackendEntry;
use crate::config::BackendSpec;
use crate::policy::{BackendView, RAMP_FULL, backend_key};
use crate::stats::{Col, ColCell, Table};

/// Where a slow start begins: 5% of the full share.
pub const RAMP_FLOOR: u32 = RAMP_FULL / 20;

/// What an operator asked of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Enabled,
    /// `backend disable`: no new connections; back with `backend enable`.
    Disabled,
    /// `backend remove`: no new connections; dropped once the last one ends.
    Draining,
}

pub struct Backend {
    pub id: u32,
    pub spec: BackendSpec,
    pub admin: Admin,
    /// Result of health checking (always true when checks are off).
    pub healthy: bool,
    pub check: CheckState,
    /// Its statistics column.
    pub column: usize,
    /// The backend table sequence from which `column` is this backend's.
    pub column_seq: u64,
    /// Handed to a worker, not yet taken out of its channel.
    pub inflight: u64,
}

impl Backend {
    pub fn routable(&self) -> bool {
        self.admin == Admin::Enabled && self.healthy
    }

    /// Admin state allows traffic (health aside): the fail-open set.
    pub fn enabled(&self) -> bool {
        self.admin == Admin::Enabled
    }
}

#[derive(Default)]
pub struct Backends {
    pub list: Vec<Backend>,
    /// Parallel to `list`: what policies see.
    pub views: Vec<BackendView>,
    by_id: HashMap<u32, usize>,
    pub next_id: u32,
    /// Columns given back, with the table sequence from which they are
    /// unused.
    pub free_columns: Vec<(usize, u64)>,
    /// Columns never used yet start here.
    pub next_column: usize,
    /// How many columns the statistics table has.
    pub columns: usize,
    /// The sequence number of the last backend table sent to workers.
    pub table_seq: u64,
}

impl Backends {
    pub fn new(columns: usize) -> Backends {
        Backends {
            columns,
            ..Backends::default()
        }
    }

    /// The sequence number for a new backend table.
    pub fn next_table_seq(&mut self) -> u64 {
        self.table_seq += 1;
        self.table_seq
    }

    /// A column for a new backend: a never-used one, or one freed before
    /// `applied_everywhere` (the oldest table every live worker has
    /// applied). Its base is zeroed.
    fn take_column(&mut self, table: &Table, applied_everywhere: u64) -> Option<usize> {
        let col = if self.next_column < self.columns {
            self.next_column += 1;
            self.next_column - 1
        } else {
            let i = self
                .free_columns
                .iter()
                .position(|&(_, freed)| freed <= applied_everywhere)?;
            self.free_columns.swap_remove(i).0
        };
        ColCell::of(table.base(col)).clear();
        Some(col)
    }

    /// Add a backend (enabled, healthy until checked). Returns its id, or
    /// `None` if no statistics column is free.
    pub fn add(
        &mut self,
        spec: BackendSpec,
        table: &Table,
        applied_everywhere: u64,
    ) -> Option<u32> {
        let column = self.take_column(table, applied_everywhere)?;
        let id = self.next_id;
        self.next_id += 1;
        self.views.push(BackendView {
            key: backend_key(&spec.name),
            weight: spec.weight,
            routable: true,
            active: 0,
            ramp: RAMP_FULL,
        });
        self.list.push(Backend {
            id,
            spec,
            admin: Admin::Enabled,
            healthy: true,
            check: CheckState::default(),
            column,
            column_seq: self.table_seq + 1,
            inflight: 0,
        });
        self.reindex();
        Some(id)
    }

    /// Put back a backend carried over from a previous front (upgrade).
    pub fn restore(&mut self, b: Backend) {
        self.views.push(BackendView {
            key: backend_key(&b.spec.name),
            weight: b.spec.weight,
            routable: b.routable(),
            active: 0,
            ramp: RAMP_FULL,
        });
        self.list.push(b);
        self.reindex();
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

    /// Recompute every view's `active` (for least-conn).
    pub fn refresh_active(&mut self, table: &Table, cells: &[usize]) {
        for (b, v) in self.list.iter().zip(self.views.iter_mut()) {
            v.active = b.inflight + held(table, cells, b.column);
        }
    }

    /// Drop backends that are draining and have nothing left, freeing
    /// their columns from the next table on. Returns the names dropped.
    pub fn reap_drained(&mut self, table: &Table, cells: &[usize]) -> Vec<String> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].admin == Admin::Draining && self.active(i, table, cells) == 0 {
                let b = self.list.remove(i);
                self.views.remove(i);
                self.free_columns.push((b.column, self.table_seq + 1));
                gone.push(b.spec.name);
            } else {
                i += 1;
            }
        }
        if !gone.is_empty() {
            self.reindex();
        }
        gone
    }

    fn reindex(&mut self) {
        self.by_id = self
            .list
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
    }

    /// Backend `i` came up just now: its slow start (if it has one) begins.
    pub fn start_ramp(&mut self, i: usize, global: Option<Duration>) {
        self.list[i].check.up_since = Some(Instant::now());
        self.refresh_ramps(global);
    }

    /// Set every view's ramp for now: `RAMP_FLOOR` + the time since it
    /// came up over its slow-start duration (its `slow-start=`, else
    /// `global`), full once that has passed or with no slow start.
    pub fn refresh_ramps(&mut self, global: Option<Duration>) {
        let now = Instant::now();
        for (b, v) in self.list.iter_mut().zip(self.views.iter_mut()) {
            let span = b.spec.slow_start.or(global).filter(|d| !d.is_zero());
            v.ramp = match (b.check.up_since, span) {
                (Some(t), Some(span)) if now.duration_since(t) < span => {
                    let frac = now.duration_since(t).as_secs_f64() / span.as_secs_f64();
                    ((frac * f64::from(RAMP_FULL)) as u32).clamp(RAMP_FLOOR, RAMP_FULL)
                }
                (Some(_), Some(span)) => {
                    info!(backend = %b.spec.name, slow_start = ?span, "backend at its full weight after slow start");
                    b.check.up_since = None;
                    RAMP_FULL
                }
                _ => {
                    b.check.up_since = None;
                    RAMP_FULL
                }
            };
        }
    }

    /// How far backend `i` has ramped up, in percent, while it ramps.
    pub fn ramp_percent(&self, i: usize) -> Option<u8> {
        let r = self.views[i].ramp;
        (r < RAMP_FULL)
            .then(|| ((u64::from(r) * 100 + u64::from(RAMP_FULL / 2)) / u64::from(RAMP_FULL)) as u8)
    }

    /// Recompute the routable flags from admin and health state.
    pub fn refresh_routable(&mut self) {
        for (b, v) in self.list.iter().zip(self.views.iter_mut()) {
            v.routable = b.routable();
        }
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
        self.views[idx].active += 1;
    }

    /// A handoff for backend `id` was taken by its worker, or failed.
    pub fn sub_inflight(&mut self, id: u32) {
        if let Some(idx) = self.index_of(id) {
            let b = &mut self.list[idx];
            b.inflight = b.inflight.saturating_sub(1);
            let v = &mut self.views[idx];
            v.active = v.active.saturating_sub(1);
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
            .map(|b| {
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
                    routable: b.routable(),
                    send_proxy: b.spec.send_proxy,
                    source,
                }
            })
            .collect();
        (entries, lists)
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
