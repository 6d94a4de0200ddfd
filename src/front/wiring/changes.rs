//! Run-time changes (`ctl`) and reloads: policies, backends, access lists,
//! services, the config file applied.

use super::*;

impl Front {
    // ---- Run-time changes and reloads.

    /// The backend table or settings changed: send workers the new config
    /// at the end of this loop turn, once however many changes it holds.
    pub(super) fn config_changed(&mut self) {
        self.refresh_all_views();
        if self.settings.schedule_broadcast() {
            let me = self.me.clone();
            tokio::task::spawn_local(async move {
                tokio::task::yield_now().await;
                if let Some(front) = me.upgrade() {
                    let mut f = front.borrow_mut();
                    if f.settings.take_broadcast() {
                        f.broadcast_config();
                    }
                }
            });
        }
        // (After scheduling: a connection it hands out is sent after the
        // new table, by `flush_slot`.)
        self.queues_changed();
    }

    /// Send the current worker config to every live worker process now. A
    /// worker that has not taken the last one gets this one instead.
    pub(super) fn broadcast_config(&mut self) {
        let Some(frame) = self.config_frame() else {
            return;
        };
        for p in self.workers.procs_mut() {
            p.queue_config(frame.clone());
        }
        self.arm_watchers();
        self.refresh_all_views();
        self.publish();
    }

    /// The current worker config, encoded, with a new sequence number.
    pub(super) fn config_frame(&mut self) -> Option<Vec<u8>> {
        let seq = self.services.next_table_seq();
        let (table, sources, services) = self.worker_table();
        self.settings.config_frame(seq, table, sources, services)
    }

    /// The workers' backend table: every service's backends, the first
    /// service's settings being the frame's own only when it is `default`
    /// (whose settings are the top level's).
    #[allow(clippy::type_complexity)]
    pub(super) fn worker_table(
        &self,
    ) -> (
        Vec<crate::channel::BackendEntry>,
        Vec<Vec<IpAddr>>,
        Vec<crate::channel::ServiceConns>,
    ) {
        self.services.worker_table()
    }

    /// Service `service` of a `ctl` command (the only one when `None`).
    pub(super) fn service(&self, service: Option<&str>) -> Result<usize, AdminError> {
        self.services.named(service).map_err(AdminError::Service)
    }

    /// Switch the balancing policy of a service (by `ctl`). Returns the
    /// previous one.
    pub fn set_policy(
        &mut self,
        service: Option<&str>,
        name: PolicyName,
    ) -> Result<PolicyName, AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let i = self.service(service)?;
        let old = self.switch_policy(i, name);
        if crate::front::services::is_default(self.services.get(i).name()) {
            self.settings.note_policy(name);
        }
        Ok(old)
    }

    pub(super) fn switch_policy(&mut self, i: usize, name: PolicyName) -> PolicyName {
        let s = self.services.get_mut(i);
        let old = s.routing().policy();
        if old != name {
            let options = s.config().policy_options;
            let (routing, backends) = s.parts_mut();
            routing.switch(name, backends.views(), &options);
            let service = s.name().to_string();
            self.update_service(i, |c| c.policy = name);
            self.counters.bump(FrontWord::PolicyChanges, 1);
            info!(service, from = %old, to = %name, "policy changed");
            self.life.record(
                EventKind::Policy,
                format!("policy {old} -> {name}{}", in_service(&service)),
            );
            self.refresh_all_views();
            self.publish();
        }
        old
    }

    /// Change service `i`'s settings, in the part and in the config in
    /// force (which an upgrade hands over).
    pub(super) fn update_service(&mut self, i: usize, change: impl Fn(&mut Config)) {
        let s = self.services.get(i);
        let name = s.name().to_string();
        let mut mine = Config::clone(s.config());
        change(&mut mine);
        self.services.set_config(i, std::sync::Arc::new(mine));
        self.settings.update(|c| {
            c.update_service(&name, &change);
        });
    }

    /// Service `i`'s backend list or weights changed: rebuild what depends
    /// on them, record the new list in the config, and tell the workers.
    pub(super) fn backends_changed(&mut self, i: usize) {
        let s = self.services.get_mut(i);
        let (routing, backends) = s.parts_mut();
        routing.rebuild(backends.views());
        let specs = backends.specs();
        self.update_service(i, |c| c.backends = specs.clone());
        self.config_changed();
        self.publish();
    }

    /// The oldest backend table every live worker has applied.
    pub(super) fn table_applied_everywhere(&self) -> u64 {
        self.workers
            .procs()
            .map(|p| self.counters.cell(p.cell()).get(ProcWord::ConfigSeq))
            .min()
            .unwrap_or(self.services.table_seq())
    }

    /// Add a backend to service `service` (by `ctl`).
    pub fn add_backend(
        &mut self,
        service: Option<&str>,
        spec: BackendSpec,
    ) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let i = self.service(service)?;
        let s = self.services.get(i);
        s.backends().may_add(&spec.name)?;
        // Its source list must fit the workers' table with the others.
        s.backends()
            .check_sources(&spec, &s.config().source)
            .map_err(|why| AdminError::Invalid(format!("invalid backend '{spec}': {why}")))?;
        let total: usize = self
            .services
            .iter()
            .map(|s| s.backends().list().len())
            .sum();
        if total >= crate::config::MAX_BACKENDS {
            return Err(AdminError::TooMany(crate::config::MAX_BACKENDS));
        }
        info!(service = %s.name(), backend = %spec, "backend added");
        let text = format!("backend {spec} added by ctl{}", in_service(s.name()));
        self.life.record(EventKind::Backend, text);
        let name = spec.name.clone();
        let applied = self.table_applied_everywhere();
        let slow_start = s.config().slow_start;
        self.services.get_mut(i).backends_mut().add_checked(
            spec,
            self.counters.table(),
            applied,
            slow_start,
        )?;
        if crate::front::services::is_default(self.services.get(i).name()) {
            self.settings.note_added(&name);
        }
        self.backends_changed(i);
        Ok(())
    }

    /// Drain a backend of a service (by `ctl`): no new connections; it
    /// leaves the list when its last connection ends.
    pub fn remove_backend(&mut self, service: Option<&str>, name: &str) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let si = self.service(service)?;
        let backends = self.services.get_mut(si).backends_mut();
        let i = backends.target(name)?;
        if backends.serving() <= 1 {
            return Err(AdminError::LastBackend(name.into()));
        }
        backends.set_admin(i, Admin::Draining);
        let spec_name = backends.get(i).spec().name.clone();
        info!(backend = %name, "backend draining for removal");
        let text = format!(
            "backend {name} removed by ctl (draining){}",
            in_service(self.services.get(si).name())
        );
        self.life.record(EventKind::Backend, text);
        if crate::front::services::is_default(self.services.get(si).name()) {
            self.settings.note_removed(&spec_name);
        }
        self.backends_changed(si);
        self.reap_drained();
        Ok(())
    }

    /// `enable` or `disable` a backend of a service (kept in the list
    /// either way).
    pub fn set_backend_enabled(
        &mut self,
        service: Option<&str>,
        name: &str,
        enabled: bool,
    ) -> Result<(), AdminError> {
        self.handle(Event::Change).map_err(AdminError::Refused)?;
        let si = self.service(service)?;
        let slow_start = self.services.get(si).config().slow_start;
        let backends = self.services.get_mut(si).backends_mut();
        let i = backends.target(name)?;
        let admin = if enabled {
            Admin::Enabled
        } else {
            Admin::Disabled
        };
        let was = backends.get(i).admin();
        backends.set_admin(i, admin);
        if enabled && was == Admin::Disabled {
            // Back in rotation: slow start, if it has one.
            backends.start_ramp(i, slow_start);
        }
        info!(backend = %name, enabled, "backend admin state changed");
        let what = if enabled { "enabled" } else { "disabled" };
        let text = format!(
            "backend {name} {what} by ctl{}",
            in_service(self.services.get(si).name())
        );
        self.life.record(EventKind::Backend, text);
        self.config_changed();
        self.publish();
        Ok(())
    }

    /// `ctl acl allow|deny CIDR` (`action` given) or `ctl acl remove CIDR`
    /// (`None`): edit the running lists of a service. Returns the reply.
    pub fn acl_edit(
        &mut self,
        service: Option<&str>,
        action: Option<AclAction>,
        text: &str,
    ) -> Result<String, String> {
        self.handle(Event::Change)?;
        let i = self.services.named(service)?;
        let edit = access::edit(self.services.get(i).acl(), action, text)?;
        if let Some(next) = edit.next {
            let next = std::sync::Arc::new(next);
            self.update_service(i, |c| c.acl = next.clone());
            if crate::front::services::is_default(self.services.get(i).name()) {
                // What a reload would compare with the file: where ctl put it.
                self.settings.note_acl(edit.cidr, action);
            }
            info!(service = %self.services.get(i).name(), change = %edit.msg, "access list changed");
        }
        Ok(edit.msg)
    }

    /// Bring a `resolve` name's backends in line with a fresh look-up
    /// (see `Backends::apply_resolved`), in every service that has it.
    /// Skipped while frozen or stopping (the next look-up applies it).
    pub fn apply_resolved(&mut self, group: &ResolveGroup, addrs: &[SocketAddr]) {
        if addrs.is_empty() || self.frozen() || self.stopping() {
            return;
        }
        let applied = self.table_applied_everywhere();
        for i in 0..self.services.len() {
            let s = self.services.get(i);
            if s.leaving() || !s.config().resolve.iter().any(|g| g.name == group.name) {
                continue;
            }
            let cfg = s.config().clone();
            if self.services.get_mut(i).backends_mut().apply_resolved(
                group,
                addrs,
                self.counters.table(),
                applied,
                &cfg,
            ) {
                let text = format!(
                    "backends of {} changed (DNS){}",
                    group.name,
                    in_service(self.services.get(i).name())
                );
                self.life.record(EventKind::Backend, text);
                self.backends_changed(i);
                self.reap_drained();
            }
        }
    }
}
