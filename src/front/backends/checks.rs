//! Health and slow start of a service's [`Backends`]: active check
//! results, passive failures and their cooldowns, the slow-start ramps
//! and the views' `routable` kept in step with them (see the parent for
//! the rules).

use super::*;

impl Backends {
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
                    tracing::info!(backend = %b.spec.name, slow_start = ?span, "backend at its full weight after slow start");
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

    /// Recompute the routable flags from admin and health state: a
    /// backup backend is routable only while no other backend is (see
    /// [`Backends::backups_active`]).
    pub(super) fn refresh_routable(&mut self) {
        let primary_up = self.list.iter().any(|b| !b.spec.backup && b.routable());
        let has_backups = self.list.iter().any(|b| b.spec.backup);
        for (b, v) in self.list.iter().zip(self.views.iter_mut()) {
            v.routable = b.routable() && (!b.spec.backup || !primary_up);
        }
        let active = has_backups && !primary_up;
        if active != self.backups_active {
            self.backups_active = active;
            if active {
                tracing::warn!("every primary backend is down: the backup backends take over");
            } else if has_backups {
                tracing::info!(
                    "a primary backend is up: the backup backends stand by (their open connections stay)"
                );
            }
        }
    }

    /// Whether the backup backends take new connections now (every other
    /// backend is down, disabled or draining).
    pub fn backups_active(&self) -> bool {
        self.backups_active
    }

    /// Whether backend `i` takes new connections now: routable and, for a
    /// backup, no primary routable.
    pub fn in_use(&self, i: usize) -> bool {
        self.views[i].routable
    }

    /// A word for `ctl backends`: the backend's own state, or `standby`
    /// for a backup that is up while a primary is.
    pub fn state(&self, i: usize) -> &'static str {
        let b = &self.list[i];
        if b.routable() && !self.views[i].routable {
            "standby"
        } else {
            b.state()
        }
    }

    /// Backend `i`'s health just changed: a backend that came up begins
    /// its slow start (`global`: `--slow-start`), one that went down stops
    /// ramping. Returns why it is down, for the log.
    pub fn health_changed(&mut self, i: usize, source: &str, global: Option<Duration>) -> &str {
        let b = &mut self.list[i];
        b.check.up_since = b.healthy.then(Instant::now);
        self.refresh_ramps(global);
        let b = &self.list[i];
        match (&b.check.last, source) {
            (Some(Err(why)), "check") => why.as_str(),
            _ => "connects from workers failed",
        }
    }

    /// The last active check of backend `i`: `ok`, or why it failed;
    /// `None` before the first.
    pub fn last_check(&self, i: usize) -> Option<String> {
        self.list[i].check.last.as_ref().map(|r| match r {
            Ok(()) => "ok".to_string(),
            Err(why) => why.clone(),
        })
    }

    /// The last active check results of backend `i`, oldest first
    /// (true: passed).
    pub fn check_history(&self, i: usize) -> Vec<bool> {
        let c = &self.list[i].check;
        (0..c.checks)
            .rev()
            .map(|k| c.history >> k & 1 == 1)
            .collect()
    }

    /// Failed active checks of backend `i` in all (the front's count, in
    /// the statistics base) and how many of the last ones in a row.
    pub fn check_failures(&self, i: usize, table: &crate::stats::Table) -> (u64, u32) {
        let b = &self.list[i];
        (
            ColCell::of(table.base(b.column)).get(Col::CheckFailures),
            b.check.consecutive_fail,
        )
    }

    /// Whether `spec`'s source addresses fit the workers' table beside the
    /// other backends' (`global`: `--source`).
    pub fn check_sources(
        &self,
        spec: &BackendSpec,
        global: &[std::net::IpAddr],
    ) -> Result<(), String> {
        let mut specs: Vec<BackendSpec> = self.list.iter().map(|b| b.spec.clone()).collect();
        specs.push(spec.clone());
        crate::config::sources::check_lists(&specs, global)
    }

    /// What active health checks connect to: (id, address, PROXY version).
    pub fn check_targets(&self) -> Vec<(u32, SocketAddr, Option<Version>)> {
        self.list
            .iter()
            .map(|b| (b.id, b.spec.addr, b.spec.send_proxy))
            .collect()
    }

    /// Apply one active check of backend `id` (`Err`: why it failed); a
    /// failed one is counted in its column, and the first failure after a
    /// success is logged with its reason. Returns the backend's index if
    /// its health changed.
    pub fn record_check(
        &mut self,
        id: u32,
        result: Result<(), String>,
        health: &Health,
        table: &Table,
    ) -> Option<usize> {
        let i = self.index_of(id)?;
        let b = &mut self.list[i];
        let was = b.healthy;
        b.check.history = b.check.history << 1 | u32::from(result.is_ok());
        b.check.checks = (b.check.checks + 1).min(HEALTH_HISTORY as u8);
        match result {
            Ok(()) => {
                b.check.consecutive_fail = 0;
                b.check.consecutive_ok = b.check.consecutive_ok.saturating_add(1);
                b.check.last = Some(Ok(()));
                if !b.healthy && b.check.consecutive_ok >= health.rise {
                    b.healthy = true;
                    b.check.passive_down = None;
                }
            }
            Err(why) => {
                b.check.consecutive_ok = 0;
                b.check.consecutive_fail = b.check.consecutive_fail.saturating_add(1);
                crate::stats::bump(
                    ColCell::of(table.base(b.column)).word(Col::CheckFailures),
                    1,
                );
                if b.check.consecutive_fail == 1 && b.healthy {
                    tracing::info!(backend = %b.spec.name, reason = %why, fall = health.fall, "health check failed");
                }
                b.check.last = Some(Err(why));
                if b.healthy && b.check.consecutive_fail >= health.fall {
                    b.healthy = false;
                }
            }
        }
        let changed = b.healthy != was;
        self.refresh_routable();
        changed.then_some(i)
    }

    /// A worker could not connect to backend `id`; `conns` is how many
    /// connections to it have been established in all (a success since
    /// the last failure starts the count again). Returns the backend's
    /// index if this took it out.
    pub fn record_passive_failure(
        &mut self,
        id: u32,
        conns: u64,
        fall: u32,
        now: Instant,
    ) -> Option<usize> {
        let i = self.index_of(id)?;
        let b = &mut self.list[i];
        let c = &mut b.check;
        let fresh = c.conns_seen != conns
            || c.passive_since
                .is_none_or(|t| now.duration_since(t) > PASSIVE_WINDOW);
        c.conns_seen = conns;
        if fresh {
            c.passive_fails = 1;
            c.passive_since = Some(now);
        } else {
            c.passive_fails = c.passive_fails.saturating_add(1);
        }
        if b.healthy && c.passive_fails >= fall {
            b.healthy = false;
            c.passive_down = Some(now);
            c.consecutive_ok = 0;
            c.passive_fails = 0;
            c.passive_since = None;
            self.refresh_routable();
            return Some(i);
        }
        None
    }

    /// Without active checks: backends taken out by traffic at least
    /// [`PASSIVE_COOLDOWN`] ago are back. Returns their indexes.
    pub fn cooldowns(&mut self, now: Instant) -> Vec<usize> {
        let mut back = Vec::new();
        for (i, b) in self.list.iter_mut().enumerate() {
            if let Some(t) = b.check.passive_down {
                if !b.healthy && now.duration_since(t) >= PASSIVE_COOLDOWN {
                    b.healthy = true;
                    b.check.passive_down = None;
                    tracing::info!(backend = %b.spec.name, after = ?PASSIVE_COOLDOWN, "backend back in rotation (no health checks to confirm; traffic will tell)");
                    back.push(i);
                }
            }
        }
        if !back.is_empty() {
            self.refresh_routable();
        }
        back
    }
}
