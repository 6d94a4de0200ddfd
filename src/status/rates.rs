//! Rates for the status page, from the counters' deltas between requests.
//!
//! Each report carries totals (connections, bytes). [`Rates::apply`]
//! compares them with the newest sample taken at least [`MIN_WINDOW`]
//! earlier (else the oldest one at least [`SHORT_WINDOW`] earlier), fills
//! in the per-second rates and the traffic shares, and keeps the report's
//! totals as a new sample when the newest kept one is [`MIN_WINDOW`]/2 old.
//! Samples older than the one used, or than [`MAX_AGE`], are dropped, so a
//! few are kept while someone looks (one per half second at most) and
//! nothing is computed while nobody does: no timer, no per-connection work.
//! After a minute without a request the first report has no rates
//! (`null`), the next one does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::Report;

/// The shortest window rates are normally computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Used when no sample is [`MIN_WINDOW`] old (two viewers close together).
pub const SHORT_WINDOW: Duration = Duration::from_millis(250);
/// Samples older than this are forgotten.
pub const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Sample {
    at: Instant,
    accepted: u64,
    /// Per slot: (connections, bytes both ways).
    slots: Vec<(u64, u64)>,
    /// Per (service, backend): connections.
    backends: HashMap<(String, String), u64>,
}

impl Sample {
    fn of(report: &Report, at: Instant) -> Sample {
        let mut backends = HashMap::new();
        for s in &report.services {
            for b in &s.backends {
                backends.insert((s.name.clone(), b.name.clone()), b.connections_total);
            }
        }
        Sample {
            at,
            accepted: report.totals.accepted_total,
            slots: report
                .workers
                .iter()
                .map(|w| (w.connections_total, w.bytes_in_total + w.bytes_out_total))
                .collect(),
            backends,
        }
    }
}

/// The samples kept while someone looks.
#[derive(Debug, Default)]
pub struct Rates {
    samples: VecDeque<Sample>,
}

impl Rates {
    /// Fill in `report`'s rates and shares (made at `now`, with every
    /// backend still in it: page after this) and keep its totals.
    pub fn apply(&mut self, report: &mut Report, now: Instant) {
        self.samples
            .retain(|s| now.saturating_duration_since(s.at) <= MAX_AGE && s.at <= now);
        let base = self
            .samples
            .iter()
            .rposition(|s| now.duration_since(s.at) >= MIN_WINDOW)
            .or_else(|| {
                self.samples
                    .iter()
                    .position(|s| now.duration_since(s.at) >= SHORT_WINDOW)
            });
        let base = base.map(|i| {
            // Older ones are of no more use.
            self.samples.drain(..i);
            &self.samples[0]
        });
        fill(report, base, now);
        let due = self
            .samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= MIN_WINDOW / 2);
        if due {
            self.samples.push_back(Sample::of(report, now));
        }
    }

    /// Samples kept now.
    pub fn kept(&self) -> usize {
        self.samples.len()
    }
}

fn fill(report: &mut Report, base: Option<&Sample>, now: Instant) {
    let Some(base) = base else {
        for s in &mut report.services {
            let total: u64 = s.backends.iter().map(|b| b.connections_total).sum();
            s.share_basis = "total";
            for b in &mut s.backends {
                b.share = ratio(b.connections_total, total);
            }
        }
        return;
    };
    let secs = now.duration_since(base.at).as_secs_f64();
    let rate = |now: u64, then: u64| Some(now.saturating_sub(then) as f64 / secs);
    report.totals.rate_window_seconds = Some(secs);
    report.totals.accepted_rate = rate(report.totals.accepted_total, base.accepted);
    for w in &mut report.workers {
        let (conns, bytes) = base
            .slots
            .get(w.slot)
            .copied()
            .unwrap_or((w.connections_total, w.bytes_in_total + w.bytes_out_total));
        w.connection_rate = rate(w.connections_total, conns);
        w.byte_rate = rate(w.bytes_in_total + w.bytes_out_total, bytes);
    }
    for s in &mut report.services {
        let mut recent = Vec::with_capacity(s.backends.len());
        for b in &mut s.backends {
            // A backend new since the sample: all of its connections are.
            let then = base
                .backends
                .get(&(s.name.clone(), b.name.clone()))
                .copied()
                .filter(|&t| t <= b.connections_total)
                .unwrap_or(0);
            b.connection_rate = rate(b.connections_total, then);
            recent.push(b.connections_total - then);
        }
        let sum: u64 = recent.iter().sum();
        s.connection_rate = Some(sum as f64 / secs);
        s.share_basis = "rate";
        for (b, n) in s.backends.iter_mut().zip(recent) {
            b.share = ratio(n, sum);
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::*;

    fn report(accepted: u64, conns: &[u64]) -> Report {
        Report {
            schema: SCHEMA,
            version: String::new(),
            build: String::new(),
            pid: 1,
            phase: "serving".into(),
            now_ms: 0,
            started_ms: 0,
            front_started_ms: 0,
            uptime_seconds: 0,
            accepting: true,
            totals: Totals {
                accepted_total: accepted,
                ..Totals::default()
            },
            listeners: vec![],
            workers: vec![WorkerSlot {
                slot: 0,
                pid: Some(2),
                state: "ready",
                active: 0,
                connections_total: accepted,
                connection_rate: None,
                bytes_in_total: accepted * 10,
                bytes_out_total: 0,
                byte_rate: None,
                restarts: 0,
                draining_pids: vec![],
            }],
            services: vec![Service {
                name: "default".into(),
                sni: Vec::new(),
                leaving: false,
                policy: "round-robin".into(),
                listen: vec![],
                active_connections: 0,
                max_connections: None,
                limited_connections: None,
                connection_rate: None,
                share_basis: "total",
                summary: StateCounts::default(),
                backends_total: conns.len(),
                backends_matched: conns.len(),
                offset: 0,
                backends: conns
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| BackendStatus {
                        name: format!("b{i}"),
                        address: String::new(),
                        state: "up",
                        weight: 1,
                        slow_start_percent: None,
                        active: 0,
                        connections_total: c,
                        connection_rate: None,
                        share: 0.0,
                        bytes_in_total: 0,
                        bytes_out_total: 0,
                        connect_failures_total: 0,
                        check_failures_total: 0,
                        health: Health::default(),
                        from: None,
                        maxconn: None,
                        queued: None,
                    })
                    .collect(),
            }],
            events: vec![],
        }
    }

    #[test]
    fn rates_come_from_the_sample_a_second_old() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let mut first = report(100, &[60, 40]);
        rates.apply(&mut first, t0);
        // No window yet: shares of everything, no rates.
        assert_eq!(first.totals.accepted_rate, None);
        assert_eq!(first.services[0].share_basis, "total");
        assert_eq!(first.services[0].backends[0].share, 0.6);
        // 2 s later: 40 more, 30 on b1.
        let mut second = report(140, &[70, 70]);
        rates.apply(&mut second, t0 + Duration::from_secs(2));
        assert_eq!(second.totals.accepted_rate, Some(20.0));
        assert_eq!(second.totals.rate_window_seconds, Some(2.0));
        assert_eq!(second.workers[0].connection_rate, Some(20.0));
        assert_eq!(second.workers[0].byte_rate, Some(200.0));
        let s = &second.services[0];
        assert_eq!(s.share_basis, "rate");
        assert_eq!(s.connection_rate, Some(20.0));
        assert_eq!(s.backends[1].connection_rate, Some(15.0));
        assert_eq!(s.backends[1].share, 0.75);
        // 0.3 s later: the sample at t0 is still the newest a second old.
        let mut third = report(146, &[70, 76]);
        rates.apply(&mut third, t0 + Duration::from_millis(2300));
        assert_eq!(third.totals.rate_window_seconds, Some(2.3));
        assert_eq!(rates.kept(), 2);
        // 1.5 s after the second: its sample is used, the first dropped.
        let mut fourth = report(170, &[70, 100]);
        rates.apply(&mut fourth, t0 + Duration::from_millis(3500));
        assert_eq!(fourth.totals.rate_window_seconds, Some(1.5));
        assert_eq!(fourth.totals.accepted_rate, Some(20.0));
        assert_eq!(rates.kept(), 2);
    }

    #[test]
    fn nothing_is_kept_past_a_minute_and_counts_that_go_back_are_new() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        rates.apply(&mut report(100, &[100]), t0);
        let mut later = report(100, &[5]);
        rates.apply(&mut later, t0 + MAX_AGE + Duration::from_secs(1));
        assert_eq!(later.totals.accepted_rate, None);
        let mut next = report(110, &[3]);
        rates.apply(
            &mut next,
            t0 + MAX_AGE + Duration::from_secs(2) + Duration::from_millis(1),
        );
        // The backend was replaced (its count went down): all new.
        assert!(next.services[0].backends[0].connection_rate.unwrap() > 2.9);
    }
}
