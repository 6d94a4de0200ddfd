//! The front's `Lifecycle` part: where the proxy is in its life (its
//! [`Phase`], moved only by [`Lifecycle::on`], which runs the pure
//! [`phase::on`]), and what waits on it: tasks woken when the phase or the
//! workers change, tasks woken when a freeze ends, the upgrade in
//! progress (to cancel it), the new front after a commit (to pass a stop
//! on to it), and the control sessions a front that handed over lets
//! finish. Also what the proxy says about its life in `ctl status` and on
//! the status page: when it started (kept across upgrades) and the last
//! events ([`EventRing`], handed over too).

use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::phase::{self, Action, Event, Phase};
use crate::handover::Link;
use crate::status::{EventKind, EventRing};

pub struct Lifecycle {
    phase: Phase,
    /// Signalled when the phase changes, or a worker becomes ready or
    /// exits (waiters look again).
    changed: Rc<Notify>,
    /// Signalled when a freeze ends (or the front hands over for good).
    thaw: Rc<Notify>,
    /// Why the proxy cannot go on (no worker can run): it exits 1.
    fatal: Option<String>,
    started: Instant,
    /// When this front started, and when the proxy did (an upgrade keeps
    /// the first front's), in ms since the Unix epoch.
    front_started_ms: u64,
    started_ms: u64,
    /// The last events, for the status page.
    events: EventRing,
    /// The original command line (re-used by an upgrade).
    argv: Vec<std::ffi::OsString>,
    /// The path this front was started from, as it was then: an upgrade
    /// without a path starts the binary now at this path.
    exe_path: std::path::PathBuf,
    /// The outcome of the last restart of the workers, for `ctl status`.
    last_roll: Option<Result<String, String>>,
    /// When a pause was last logged.
    last_pause_log: Option<Instant>,
    /// During a take-over: when the previous front stopped accepting
    /// (µs since the Unix epoch).
    frozen_at_us: u64,
    /// The upgrade conversation in progress (cancelled by a stop).
    upgrade: Option<AbortHandle>,
    /// After a commit: the link to the new front.
    successor: Option<Rc<Link>>,
    /// Control sessions open now.
    sessions: usize,
}

impl Lifecycle {
    pub fn new(phase: Phase) -> Lifecycle {
        Lifecycle {
            phase,
            changed: Rc::new(Notify::new()),
            thaw: Rc::new(Notify::new()),
            fatal: None,
            started: Instant::now(),
            front_started_ms: crate::status::unix_ms(),
            started_ms: crate::status::unix_ms(),
            events: EventRing::default(),
            argv: std::env::args_os().collect(),
            exe_path: std::env::current_exe()
                .ok()
                .or_else(|| std::env::args_os().next().map(Into::into))
                .unwrap_or_default(),
            last_roll: None,
            last_pause_log: None,
            frozen_at_us: 0,
            upgrade: None,
            successor: None,
            sessions: 0,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Run `event` through the machine: the phase moves, and the actions
    /// come back for the front to perform.
    pub fn on(&mut self, event: &Event, drain: Duration) -> Vec<Action> {
        let (next, actions) = phase::on(&self.phase, event, Instant::now(), drain);
        if next != self.phase {
            tracing::debug!(from = self.phase.name(), to = next.name(), ?event, "phase");
            self.phase = next;
        }
        self.changed.notify_waiters();
        actions
    }

    pub fn changed(&self) -> Rc<Notify> {
        self.changed.clone()
    }

    /// Wake whatever waits for a change.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub fn thaw_notify(&self) -> Rc<Notify> {
        self.thaw.clone()
    }

    /// Wake whatever waits for a freeze to end.
    pub fn thaw(&self) {
        self.thaw.notify_waiters();
    }

    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    pub fn set_fatal(&mut self, why: String) {
        self.fatal.get_or_insert(why);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn front_started_ms(&self) -> u64 {
        self.front_started_ms
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Taken over: the proxy started then (0: the previous front did not
    /// say), and these things had happened.
    pub fn take_over_history(&mut self, started_ms: u64, events: Vec<crate::status::Event>) {
        if started_ms > 0 {
            self.started_ms = started_ms;
        }
        self.events = EventRing::from_events(events);
    }

    /// Note something that happened, for the status page.
    pub fn record(&mut self, kind: EventKind, text: String) {
        self.events.record(kind, text);
    }

    pub fn events(&self) -> &EventRing {
        &self.events
    }

    pub fn argv(&self) -> &[std::ffi::OsString] {
        &self.argv
    }

    pub fn exe_path(&self) -> &std::path::Path {
        &self.exe_path
    }

    pub fn last_roll(&self) -> Option<&Result<String, String>> {
        self.last_roll.as_ref()
    }

    pub fn set_last_roll(&mut self, outcome: Result<String, String>) {
        self.last_roll = Some(outcome);
    }

    /// Whether a pause may be logged now (at most once every ten seconds).
    pub fn pause_log_due(&mut self) -> bool {
        let due = self
            .last_pause_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            self.last_pause_log = Some(Instant::now());
        }
        due
    }

    pub fn frozen_at_us(&self) -> u64 {
        self.frozen_at_us
    }

    pub fn set_frozen_at_us(&mut self, us: u64) {
        self.frozen_at_us = us;
    }

    /// The upgrade conversation now running.
    pub fn set_upgrade(&mut self, task: Option<AbortHandle>) {
        self.upgrade = task;
    }

    /// Cancel the upgrade conversation (its guard kills and reaps the new
    /// front).
    pub fn abort_upgrade(&mut self) {
        if let Some(task) = self.upgrade.take() {
            task.abort();
        }
    }

    /// The new front's link, after the commit.
    pub fn set_successor(&mut self, link: Rc<Link>) {
        self.successor = Some(link);
    }

    pub fn successor(&self) -> Option<Rc<Link>> {
        self.successor.clone()
    }

    pub fn session_opened(&mut self) {
        self.sessions += 1;
    }

    /// A control session ended; returns how many are left.
    pub fn session_closed(&mut self) -> usize {
        self.sessions = self.sessions.saturating_sub(1);
        self.sessions
    }

    pub fn sessions(&self) -> usize {
        self.sessions
    }
}
