//! Membership of the `Backends` part: backends added (at start, by
//! `ctl`, by a reload's file, by DNS discovery) and taken out (drained,
//! then dropped once nothing is left on them, their statistics columns
//! freed for the next table).

use super::*;

impl Backends {
    /// Add a backend (enabled, healthy until checked). Returns its id, or
    /// `None` if no statistics column is free.
    pub fn add(
        &mut self,
        spec: BackendSpec,
        table: &Table,
        applied_everywhere: u64,
    ) -> Option<u32> {
        let mut alloc = self.alloc.borrow_mut();
        let column = alloc.take_column(table, applied_everywhere)?;
        let id = alloc.next_id;
        alloc.next_id += 1;
        let column_seq = alloc.table_seq + 1;
        drop(alloc);
        let b = Backend {
            id,
            spec,
            admin: Admin::Enabled,
            healthy: true,
            check: CheckState::default(),
            column,
            column_seq,
            inflight: 0,
            open: 0,
            queued: 0,
        };
        self.views.push(view_of(&b));
        self.list.push(b);
        self.reindex();
        self.refresh_routable();
        Some(id)
    }

    /// Add a backend unless the table is full (counting those draining).
    /// `applied_everywhere`: the oldest backend table every live worker
    /// has applied (a freed column is reused only after it).
    /// Added while running, it starts with its slow start (`slow_start`:
    /// `--slow-start`), if it has one.
    pub fn add_checked(
        &mut self,
        spec: BackendSpec,
        table: &Table,
        applied_everywhere: u64,
        slow_start: Option<Duration>,
    ) -> Result<u32, AdminError> {
        if self.list.len() >= MAX_BACKENDS {
            return Err(AdminError::TooMany(MAX_BACKENDS));
        }
        let id = self
            .add(spec, table, applied_everywhere)
            .ok_or(AdminError::TooMany(MAX_BACKENDS))?;
        self.start_ramp(self.list.len() - 1, slow_start);
        Ok(id)
    }

    /// Whether a backend named `name` may be added (`ctl backend add`).
    pub fn may_add(&self, name: &str) -> Result<(), AdminError> {
        match self.find(name) {
            Some(i) if self.list[i].admin == Admin::Draining => {
                Err(AdminError::Draining(name.into()))
            }
            Some(_) => Err(AdminError::Exists(name.into())),
            None => Ok(()),
        }
    }

    /// The backend an admin command names (not one being removed).
    pub fn target(&self, name: &str) -> Result<usize, AdminError> {
        let i = self
            .find(name)
            .ok_or_else(|| AdminError::NoSuchBackend(name.into()))?;
        if self.list[i].admin == Admin::Draining {
            return Err(AdminError::Draining(name.into()));
        }
        Ok(i)
    }

    /// Make the table what `specs` (a config file) says: drain the
    /// backends it no longer lists, update the ones whose spec changed,
    /// add the new ones. Returns a note for each it could not add.
    pub fn reconcile(
        &mut self,
        specs: &[BackendSpec],
        table: &Table,
        applied_everywhere: u64,
        slow_start: Option<Duration>,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        for b in &mut self.list {
            if b.admin != Admin::Draining && !specs.iter().any(|s| s.name == b.spec.name) {
                tracing::info!(backend = %b.spec.name, "backend removed by reload; draining");
                b.admin = Admin::Draining;
            }
        }
        self.refresh_routable();
        for spec in specs {
            match self.find(&spec.name) {
                Some(i) if self.list[i].admin != Admin::Draining => {
                    if self.list[i].spec != *spec {
                        self.set_spec(i, spec.clone());
                    }
                }
                _ => match self.add_checked(spec.clone(), table, applied_everywhere, slow_start) {
                    Ok(_) => tracing::info!(backend = %spec, "backend added by reload"),
                    Err(err) => {
                        tracing::warn!(backend = %spec, cause = %err, "backend not added by reload");
                        notes.push(format!("backend {spec} not added: {err}"));
                    }
                },
            }
        }
        notes
    }

    /// Bring a `resolve` name's backends in line with a fresh look-up
    /// (`addrs`, not empty): add the new addresses, drain the vanished ones
    /// (never the last backend standing). An address already listed under
    /// another name is left to that one, and one of a family the source
    /// addresses (`config`'s) cannot reach is not added. Returns whether
    /// anything changed.
    pub fn apply_resolved(
        &mut self,
        group: &ResolveGroup,
        addrs: &[SocketAddr],
        table: &Table,
        applied_everywhere: u64,
        config: &crate::config::Config,
    ) -> bool {
        let members: Vec<SocketAddr> = self
            .list
            .iter()
            .filter(|b| b.admin != Admin::Draining && b.spec.group.as_deref() == Some(&group.name))
            .map(|b| b.spec.addr)
            .collect();
        let (add, gone) = crate::front::resolver::diff(&members, addrs);
        let mut changed = false;
        for addr in add {
            if self.list.iter().any(|b| b.spec.addr == addr) {
                continue; // listed under another name, or still draining
            }
            let spec = group_member(group, addr);
            if let Err(why) = crate::config::sources::check_family(&spec, &config.source) {
                tracing::warn!(name = %group.name, backend = %spec.name, cause = %why, "not adding this address");
                continue;
            }
            let name = spec.name.clone();
            if let Err(err) = self.add_checked(spec, table, applied_everywhere, config.slow_start) {
                tracing::warn!(name = %group.name, backend = %name, cause = %err, "not adding this address");
                continue;
            }
            tracing::info!(name = %group.name, backend = %name, "backend discovered");
            changed = true;
        }
        for addr in gone {
            let Some(i) = self.list.iter().position(|b| {
                b.admin != Admin::Draining
                    && b.spec.addr == addr
                    && b.spec.group.as_deref() == Some(&group.name)
            }) else {
                continue;
            };
            if self.serving() <= 1 {
                tracing::warn!(name = %group.name, backend = %addr, "address gone from the name, but it is the last backend; keeping it");
                continue;
            }
            self.set_admin(i, Admin::Draining);
            tracing::info!(name = %group.name, backend = %addr, "backend gone from the name; draining");
            changed = true;
        }
        changed
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
                let mut alloc = self.alloc.borrow_mut();
                let seq = alloc.table_seq + 1;
                alloc.free_columns.push((b.column, seq));
                gone.push(b.spec.name);
            } else {
                i += 1;
            }
        }
        if !gone.is_empty() {
            self.reindex();
            self.refresh_routable();
        }
        gone
    }
}
