//! Looking without touching: the status page's report and `ctl explain`
//! (both read the parts and change nothing), and the events the page
//! lists.

use super::*;

impl Front {
    /// Everything the status page shows (see `front::status`), gathered
    /// now.
    pub fn status_report(&self) -> crate::status::Report {
        crate::front::status::gather(crate::front::status::Parts {
            listeners: &self.listeners,
            workers: &self.workers,
            services: &self.services,
            ledger: &self.ledger,
            counters: &self.counters,
            life: &self.life,
        })
    }

    /// `ctl explain`: what a connection from `ip` to `service` (the only
    /// one if `None`) would get now, and why (see `front::explain`: the
    /// steps of `admit` and `dispatch`, dry).
    pub fn explain(
        &self,
        ip: IpAddr,
        service: Option<&str>,
    ) -> Result<crate::front::explain::Explanation, AdminError> {
        let s = self.services.get(self.service(service)?);
        let (verdict, matching) = Access::explain(s.acl(), ip);
        let per_ip = self.settings.limits().per_ip().map(|max| {
            let key = self.client_key(ip);
            let open = self.ledger.ip_count(key);
            (key, max, open, self.ledger.ip_has_room(key, max))
        });
        let limits = s.config().own_limits;
        let service_limits = limits.any().then(|| {
            let key = self.client_key(ip);
            crate::front::explain::ServiceLimitCheck {
                max_conns: limits.max_conns,
                open: self.ledger.service_count(s.id()),
                max_conns_per_ip: limits.max_conns_per_ip,
                client_open: limits
                    .max_conns_per_ip
                    .map(|_| self.ledger.service_ip_count(s.id(), key)),
                reached: self
                    .ledger
                    .service_has_room(s.id(), key, limits)
                    .err()
                    .map(|over| over.reason()),
            }
        });
        let admission = crate::front::explain::Admission {
            verdict,
            matching,
            proxy_header: s.config().accept_proxy.contains(ip),
            per_ip,
            service_limits,
            stopping: self.stopping(),
        };
        // What each backend holds and has waiting for it now (the views
        // count this only for least-conn, which balances by it).
        let cells = self.workers.live_cells();
        let bs = s.backends();
        let active: Vec<u64> = (0..bs.list().len())
            .map(|i| bs.active(i, self.counters.table(), &cells) + bs.queue_len(i) as u64)
            .collect();
        Ok(crate::front::explain::explain(
            ip,
            s.name(),
            admission,
            s.routing(),
            bs,
            &active,
            s.retries(),
        ))
    }

    /// Note something that happened, for the status page.
    pub fn record_event(&mut self, kind: EventKind, text: String) {
        self.life.record(kind, text);
    }
}

/// `" in service NAME"` for an event of a service other than the
/// implicit one (whose events read as they did before services).
pub(super) fn in_service(name: &str) -> String {
    if crate::front::services::is_default(name) {
        String::new()
    } else {
        format!(" in service {name}")
    }
}
