//! The status page: `/status` (HTML) and `/status.json`, served by the
//! metrics endpoint's thread (and by `--status ADDR` if given), with data
//! the front gathers only when asked.
//!
//! - [`Report`]: everything the page shows, with the field names
//!   `/status.json` documents (README, "Status page"); the front fills it
//!   from its parts' read-only methods (`front::status`), on request only.
//! - [`Asker`] / [`Requests`]: how the endpoint's thread asks the front's
//!   event loop for a report (a bounded channel of one-shot replies): no
//!   work at all while nobody looks, and none per connection.
//! - [`rates`]: rates from the counters' deltas between two requests (the
//!   newest earlier one at least a second old), kept only while someone
//!   looks.
//! - [`view`]: what one request asks to see (filter, state, page) and the
//!   1,000-backend rule: a summary per state, then one page of rows,
//!   backends that are not up first.
//! - [`serve`]: one request, on the endpoint's thread: ask, rate, page,
//!   render.
//! - [`html`]: the page, rendered on the server (it reads without
//!   JavaScript), with inline CSS and a script that fetches `/status.json`
//!   about once a second and redraws the same tables.
//! - [`EventRing`]: the last [`EVENTS`] things that happened (respawns,
//!   health changes, reloads, upgrades, policy switches), kept by the
//!   front's `Lifecycle` part and handed over in an upgrade.

pub mod html;
pub mod rates;
pub mod serve;
pub mod view;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The version of `/status.json`'s layout: raised only when a field is
/// renamed, removed or changes meaning (adding one does not).
pub const SCHEMA: u32 = 1;

/// How many events the ring keeps.
pub const EVENTS: usize = 64;

/// Active health check results kept per backend.
pub const HEALTH_HISTORY: usize = 20;

/// Everything the status page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub version: String,
    pub build: String,
    /// The front's pid (it changes on an upgrade).
    pub pid: u32,
    /// Where the front is in its life (`ctl status`'s `phase`).
    pub phase: String,
    /// When this report was made (ms since the Unix epoch).
    pub now_ms: u64,
    /// When the proxy started (kept across upgrades).
    pub started_ms: u64,
    /// When this front process started (an upgrade starts a new one).
    pub front_started_ms: u64,
    pub uptime_seconds: u64,
    pub accepting: bool,
    pub totals: Totals,
    pub listeners: Vec<Listener>,
    pub workers: Vec<WorkerSlot>,
    pub services: Vec<Service>,
    /// Newest first.
    pub events: Vec<Event>,
}

/// Whole-proxy numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub active_connections: u64,
    pub pending_connections: u64,
    pub accepted_total: u64,
    /// Accepted per second over the rate window; `null` until there is one.
    pub accepted_rate: Option<f64>,
    /// Refused by the access lists.
    pub denied_total: u64,
    /// Refused by the per-IP limit.
    pub refused_per_ip_total: u64,
    /// Closed because no backend could be reached.
    pub failed_total: u64,
    /// The seconds the rates are computed over; `null` until there is a
    /// window (the first request after nobody looked for a minute).
    pub rate_window_seconds: Option<f64>,
}

/// A socket the proxy serves.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    /// `proxy`, `metrics`, `status` or `control`.
    pub role: &'static str,
    /// `host:port`, or the control socket's path.
    pub address: String,
    /// For a proxy listener: the service it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One worker slot.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSlot {
    pub slot: usize,
    /// The serving (else starting) process.
    pub pid: Option<u32>,
    /// `ready`, `starting`, `hung` (its oldest handoff unread for more
    /// than 500 ms), `respawning`, `draining`, `parked` or `stopped`.
    pub state: &'static str,
    pub active: u64,
    pub connections_total: u64,
    pub connection_rate: Option<f64>,
    /// Bytes from clients / to clients.
    pub bytes_in_total: u64,
    pub bytes_out_total: u64,
    /// Bytes per second, both directions.
    pub byte_rate: Option<f64>,
    pub restarts: u64,
    /// Older processes of this slot still finishing their connections.
    pub draining_pids: Vec<u32>,
}

/// A service: listeners, a policy and its backends.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    /// The TLS server names it takes on a listener that routes by name
    /// (absent: it routes by listener).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<String>,
    /// Removed by a reload: takes nothing new, leaves once drained.
    pub leaving: bool,
    pub policy: String,
    pub listen: Vec<String>,
    pub active_connections: u64,
    /// Its own `max-conns`, and what that counts now (waiting, queued or
    /// proxied); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited_connections: Option<u64>,
    pub connection_rate: Option<f64>,
    /// `rate` (the shares are of the connections made over the rate
    /// window) or `total` (of every connection made; no window yet).
    pub share_basis: &'static str,
    /// Backends in each state, all of them.
    pub summary: StateCounts,
    pub backends_total: usize,
    /// Backends matching the request's filter and state.
    pub backends_matched: usize,
    /// Where the rows below start among the matched ones.
    pub offset: usize,
    /// The rows asked for (all of them unless the request pages), not up
    /// first, then in configured order.
    pub backends: Vec<BackendStatus>,
}

/// How many backends are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub up: usize,
    pub down: usize,
    pub disabled: usize,
    pub draining: usize,
}

impl StateCounts {
    pub fn count(&mut self, state: &str) {
        match state {
            "up" | "standby" => self.up += 1,
            "down" => self.down += 1,
            "disabled" => self.disabled += 1,
            _ => self.draining += 1,
        }
    }
}

/// One backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// As configured (`host:port`).
    pub name: String,
    /// The address connected to.
    pub address: String,
    /// `up`, `down`, `disabled`, `draining`, or `standby` (a backup while
    /// a primary is up; counted as up).
    pub state: &'static str,
    pub weight: u32,
    /// While slow start ramps it up: how far, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u8>,
    pub active: u64,
    pub connections_total: u64,
    pub connection_rate: Option<f64>,
    /// Its fraction (0..1) of the service's connections (see
    /// [`Service::share_basis`]).
    pub share: f64,
    /// Bytes from / to the backend.
    pub bytes_in_total: u64,
    pub bytes_out_total: u64,
    /// Failed connects by workers.
    pub connect_failures_total: u64,
    pub check_failures_total: u64,
    pub health: Health,
    /// For a backend found by DNS discovery: the name it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Its connection limit, where backends have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<u64>,
    /// Connections waiting for it, where backends have a queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<u64>,
}

/// Active health checks of one backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// Whether active checks run.
    pub checked: bool,
    /// The last [`HEALTH_HISTORY`] results, oldest first (true: passed).
    pub history: Vec<bool>,
    /// The last result: `ok`, or why it failed.
    pub last: Option<String>,
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A worker started, died, was respawned, killed or parked.
    Worker,
    /// A backend went up or down.
    Health,
    /// A backend added, removed, enabled or disabled.
    Backend,
    /// The configuration was reloaded.
    Reload,
    /// An upgrade took over, or failed.
    Upgrade,
    /// The policy was switched.
    Policy,
    /// The workers were restarted (after an upgrade).
    Restart,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    pub kind: EventKind,
    pub text: String,
}

/// The last [`EVENTS`] events, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EventRing {
    ring: VecDeque<Event>,
}

impl EventRing {
    /// A ring holding `events` (taken over in an upgrade), the newest kept.
    pub fn from_events(events: Vec<Event>) -> EventRing {
        let mut ring = EventRing::default();
        for e in events {
            ring.push(e);
        }
        ring
    }

    pub fn record(&mut self, kind: EventKind, text: String) {
        self.push(Event {
            at_ms: unix_ms(),
            kind,
            text,
        });
    }

    fn push(&mut self, e: Event) {
        if self.ring.len() == EVENTS {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    /// Oldest first.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.ring.iter()
    }

    pub fn to_vec(&self) -> Vec<Event> {
        self.ring.iter().cloned().collect()
    }
}

/// Now, in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request for a report: where to send it.
pub type Request = tokio::sync::oneshot::Sender<Report>;

/// The endpoint's side: asks the front for a report.
pub type Asker = tokio::sync::mpsc::Sender<Request>;

/// The front's side: the requests to answer.
pub type Requests = tokio::sync::mpsc::Receiver<Request>;

/// A new pair. At most a few requests wait at once (more get "busy").
pub fn channel() -> (Asker, Requests) {
    tokio::sync::mpsc::channel(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest() {
        let mut ring = EventRing::default();
        for i in 0..EVENTS + 5 {
            ring.record(EventKind::Worker, format!("e{i}"));
        }
        let v = ring.to_vec();
        assert_eq!(v.len(), EVENTS);
        assert_eq!(v[0].text, "e5");
        assert_eq!(v[EVENTS - 1].text, format!("e{}", EVENTS + 4));
        let again = EventRing::from_events(v.clone());
        assert_eq!(again.to_vec(), v);
    }
}
