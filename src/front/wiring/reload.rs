//! Reloads: a config file planned against the running state, then
//! applied (services, listeners, backends, policies, settings), and the
//! access log setting sent to the workers.

use super::*;

impl Front {
    /// Work out what applying `new` (the config file as it is now) would
    /// do; nothing changes but listening sockets bound for the addresses
    /// it adds (a bind that fails refuses it whole).
    pub fn plan_file(&mut self, new: Config) -> Result<Plan, String> {
        self.sync_received();
        let cells = self.workers.live_cells();
        let table = self.counters.table();
        // Backends still listed after it applies only to drain: those
        // leaving (or already draining) that still have connections.
        let mut lingering = 0;
        for s in self.services.iter() {
            let wanted = new
                .service_list()
                .into_iter()
                .find(|(n, _, _)| *n == s.name() && !s.leaving())
                .map(|(_, _, c)| c.backends.clone())
                .unwrap_or_default();
            let b = s.backends();
            lingering += (0..b.list().len())
                .filter(|&i| {
                    b.get(i).admin() == Admin::Draining
                        || !wanted.iter().any(|w| w.name == b.get(i).spec().name)
                })
                .filter(|&i| b.active(i, table, &cells) > 0)
                .count();
        }
        let default = self
            .services
            .iter()
            .find(|s| crate::front::services::is_default(s.name()) && !s.leaving())
            .map(|s| s.backends());
        let mut plan = crate::front::settings::plan(&self.settings, new, default, lingering)?;
        // New listeners are bound now, so that a failure changes nothing.
        let running = self.listeners.asked().to_vec();
        for (addr, backlog) in listen_plan(&plan.config) {
            // Listeners remember the address they were asked for (port 0
            // included), so the config is compared with that, exactly.
            if running.contains(&addr) {
                continue;
            }
            let l = crate::front::bind_listener(addr, backlog)
                .map_err(|err| format!("cannot listen on {addr}: {err}; nothing changed"))?;
            plan.notes.push(format!("listening on {addr}"));
            plan.bound.push((addr, l));
        }
        for addr in running {
            if !plan.config.all_listen().contains(&addr) {
                plan.notes.push(format!("no longer listening on {addr}"));
            }
        }
        Ok(plan)
    }

    /// Apply a config file: reload, or the new front after an upgrade.
    pub fn apply_file(&mut self, new: Config) -> Result<ReloadReport, String> {
        self.handle(Event::Change)?;
        let plan = self.plan_file(new)?;
        Ok(self.apply_plan(plan))
    }

    /// Apply a plan: listeners (added, closed, defer-accept), services
    /// (added, drained, changed: backends, weights, policies), timeouts
    /// and limits; the notes say what it did.
    pub fn apply_plan(&mut self, plan: Plan) -> ReloadReport {
        let Plan {
            config,
            mut notes,
            bound,
        } = plan;
        let cur = self.settings.get();
        let wanted = config.all_listen();
        for addr in self.listeners.asked().to_vec() {
            if !wanted.contains(&addr) {
                self.listeners.remove(addr);
                info!(listener = %addr, "listener closed by reload");
            }
        }
        for (asked, l) in bound {
            let addr = l.local_addr().ok();
            if let Err(err) = self.listeners.add(asked, l, &self.me) {
                warn!(listener = ?addr, cause = %err, "cannot register a new listener");
                notes.push(format!("cannot accept on {addr:?}: {err}"));
            } else {
                info!(listener = ?addr, "listener added by reload");
            }
        }
        for (addr, on) in defer_plan(&config) {
            if let Err(err) = self.listeners.set_defer_accept_at(addr, on) {
                warn!(cause = %err, "defer-accept not changed");
                notes.push(format!("{err}; kept"));
            }
        }
        self.settings.clear_overrides();
        let applied = self.table_applied_everywhere();
        let policies = |f: &Self| -> Vec<(String, PolicyName)> {
            let live = f.services.iter().filter(|s| !s.leaving());
            live.map(|s| (s.name().to_string(), s.routing().policy()))
                .collect()
        };
        let before = policies(self);
        notes.extend(self.services.apply(&config, self.counters.table(), applied));
        // A service the file switched to another policy, as `ctl policy`
        // counts it.
        let switched = policies(self)
            .iter()
            .filter(|(n, p)| before.iter().any(|(bn, bp)| bn == n && bp != p))
            .count();
        self.counters
            .bump(FrontWord::PolicyChanges, switched as u64);
        let access_log_changed = cur.access_log != config.access_log;
        self.settings.replace(config);
        let cfg = self.settings.get();
        self.access.configure(&cfg);
        if access_log_changed {
            self.send_access_log();
        }
        let cap = crate::front::proc_cap(&cfg, self.workers.nofile());
        self.workers.set_per_proc_cap(cap);
        self.counters.set(FrontWord::WorkerLimit, cap);
        self.config_changed();
        self.publish_service_limits();
        self.reap_drained();
        self.refresh_all_views();
        self.publish();
        for n in &notes {
            info!(note = %n, "reload");
        }
        info!("configuration reloaded");
        ReloadReport { notes }
    }

    /// The frame that tells a worker where the access log goes now.
    pub(super) fn access_log_frame(&self) -> Option<Vec<u8>> {
        let json = self.workers.plan().log.format == crate::logging::LogFormat::Json;
        self.settings.access_log_frame(json)
    }

    /// Send the access log setting to every worker process (each opens
    /// the target again). Returns how many were told.
    pub(super) fn send_access_log(&mut self) -> usize {
        let Some(frame) = self.access_log_frame() else {
            return 0;
        };
        let mut told = 0;
        for p in self.workers.procs_mut() {
            p.queue_control(frame.clone());
            told += 1;
        }
        self.arm_watchers();
        told
    }

    /// Make every worker reopen the access log file (SIGUSR1, `ctl log
    /// reopen`: logrotate's `postrotate`). A worker that cannot open it
    /// logs why and keeps writing to the file it had.
    pub fn reopen_access_log(&mut self) -> Result<String, String> {
        self.handle(Event::ReopenLog)?;
        match self.settings.get().access_log.clone() {
            AccessLog::Off => Err("the access log is off (--access-log PATH turns it on)".into()),
            AccessLog::Stderr => Ok("the access log goes to stderr: nothing to reopen".into()),
            AccessLog::File(path) => {
                let told = self.send_access_log();
                info!(path = %path.display(), workers = told, "access log reopen");
                Ok(format!(
                    "access log {}: reopen sent to {told} worker processes (a worker that cannot open it logs why and keeps the old file)",
                    path.display()
                ))
            }
        }
    }

    /// The flags to re-read the configuration with, if the proxy may
    /// reload now.
    pub fn reload_flags(&mut self) -> Result<crate::config::Flags, String> {
        self.handle(Event::Reload)?;
        self.settings.reload_flags()
    }
}

/// Every address `config` listens on, with its backlog (its first
/// service's: services sharing it agree).
pub(crate) fn listen_plan(config: &Config) -> Vec<(SocketAddr, u32)> {
    let mut out: Vec<(SocketAddr, u32)> = Vec::new();
    for (_, _, c) in config.service_list() {
        for &a in &c.listen {
            if !out.iter().any(|(o, _)| *o == a) {
                out.push((a, c.backlog));
            }
        }
    }
    out
}

/// Every address `config` listens on, with whether it defers accepts.
pub(crate) fn defer_plan(config: &Config) -> Vec<(SocketAddr, bool)> {
    let mut out: Vec<(SocketAddr, bool)> = Vec::new();
    for (_, _, c) in config.service_list() {
        for &a in &c.listen {
            if !out.iter().any(|(o, _)| *o == a) {
                out.push((a, c.defer_accept));
            }
        }
    }
    out
}
