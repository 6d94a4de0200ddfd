//! The proxy's life as one state machine: [`Phase`] is where the front is,
//! [`on`] is the only way it moves. Every signal, control command, child
//! exit and timer that concerns the proxy as a whole becomes an [`Event`];
//! `on` says what phase follows and which [`Action`]s the front performs
//! (or refuses the request, saying why). `on` is pure: it reads nothing
//! but its arguments, so it is tested event by event in every phase
//! (`phase/tests`), and the table in DESIGN.md ("Lifecycle") is its match
//! arms.
//!
//! Signals map to events in `proxy`: SIGTERM and SIGINT are `Stop`, SIGHUP
//! `Reload`, SIGUSR2 `Upgrade`, SIGUSR1 `ReopenLog`. Control commands:
//! `upgrade` is `Upgrade`, `config reload` is `Reload`, `log reopen` is
//! `ReopenLog`, and every command that changes the running state
//! (`policy`, `backend`, `acl`) is `Change`. Worker-level events (one
//! worker crashing, a worker not ready in time) are the `Workers` part's;
//! the machine sees only what they mean for the whole: the first worker
//! ready, every worker gone, no worker able to run.

use std::time::{Duration, Instant};

/// Where the front is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Workers started; none has reported ready yet (READY=1 not sent).
    Starting,
    /// Accepting and serving.
    Serving,
    /// Serving while every worker is being replaced (after an upgrade).
    Rolling,
    /// This front is handing itself over to a new one (an upgrade).
    /// `rolling`: a restart of the workers was under way when it began;
    /// it goes on if the upgrade fails. `stop`: a stop arrived after the
    /// commit and was passed on to the new front.
    Upgrading {
        step: Step,
        rolling: bool,
        stop: bool,
    },
    /// This front is the new one, taking over; nothing runs until the old
    /// one commits. `stop`: told to stop meanwhile (by a signal), which
    /// takes effect once it owns everything.
    TakingOver { stop: bool },
    /// Stopping: accepting nothing, workers finish their connections until
    /// `deadline`; `killed`: the deadline passed (or a second stop came)
    /// and every worker was killed. `by_signal`: a stop signal started or
    /// joined the drain (a second signal kills; a stop passed on by the
    /// old front after an upgrade never does).
    Draining {
        deadline: Instant,
        killed: bool,
        by_signal: bool,
    },
    /// Handed everything to a new front; leaving once the control clients
    /// it serves have their answers, or at `deadline`.
    HandedOver { deadline: Instant },
    /// Stopped: every worker is gone. The front exits.
    Stopped,
    /// Gone to a new front: exits without touching anything it handed over.
    Left,
}

/// The steps of an upgrade, as the old front goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Checking that the new binary is an rrproxy.
    Check,
    /// The new front is started; waiting for its hello.
    Spawn,
    /// Hello received; about to freeze.
    Hello,
    /// Frozen (accepting nothing, reading no worker); sending the state.
    Frozen,
    /// State sent; waiting for the new front to be ready.
    Sent,
    /// The new front is ready; about to commit.
    Ready,
    /// Committed: the new front owns everything.
    Committed,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Check,
        Step::Spawn,
        Step::Hello,
        Step::Frozen,
        Step::Sent,
        Step::Ready,
        Step::Committed,
    ];

    /// The step after this one.
    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|&s| s == self)?;
        Step::ALL.get(i + 1).copied()
    }

    /// Its name (for logs and the test hook `RRPROXY_TEST_PAUSE_UPGRADE`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Spawn => "spawn",
            Step::Hello => "hello",
            Step::Frozen => "frozen",
            Step::Sent => "sent",
            Step::Ready => "ready",
            Step::Committed => "committed",
        }
    }
}

/// What happens to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// After a commit: the old front passes on a stop it was asked for.
    LinkStop,
    /// SIGHUP or `config reload`.
    Reload,
    /// SIGUSR2 or `upgrade`.
    Upgrade,
    /// SIGUSR1 or `log reopen`.
    ReopenLog,
    /// A control command that changes the running state.
    Change,
    /// A worker reported ready.
    WorkerReady,
    /// No worker process is left.
    WorkersGone,
    /// No worker can run (every slot parked).
    Fatal,
    /// The upgrade reached `step`.
    UpgradeAt(Step),
    /// The upgrade failed (before or at the commit).
    UpgradeFailed,
    /// The control client that asked for the upgrade has its answer (or
    /// it came by signal): the old front may leave.
    HandOver,
    /// The new front: the old one committed.
    TookOver,
    /// The restart of the workers is over.
    RollDone,
    /// Every control client of a front that handed over is answered.
    SessionsDone,
    /// The phase's deadline passed.
    Deadline,
}

/// Why a request is refused, in the operator's words.
pub mod refusal {
    pub const STOPPING: &str = "the proxy is shutting down";
    pub const STARTING: &str =
        "the proxy is starting (no worker is ready yet); try again in a moment";
    pub const UPGRADING: &str = "an upgrade is already in progress (one at a time)";
    pub const RELOAD_IN_UPGRADE: &str =
        "an upgrade is in progress: it applies the config file itself";
    pub const FROZEN: &str = "the front is handing over to a new one; try again";
    pub const HANDED_OVER: &str = "this front has handed over to a new one; reconnect";
    pub const TAKING_OVER: &str = "this front is still taking over; try again";
    pub const CANCELLED: &str = "the upgrade was cancelled";
}

/// What the front does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The request is refused: why.
    Refuse(&'static str),
    /// The request (reload, upgrade, log reopen, a change) goes ahead; its
    /// caller does it.
    Proceed,
    /// Freeze the front for the hand-over: flush, stop accepting, stop
    /// reading workers and PROXY headers.
    Freeze,
    /// READY=1 to the service manager.
    AnnounceReady,
    /// Replace every worker (a new front that took over).
    StartRoll,
    /// Cancel the upgrade: the new front is killed and reaped.
    AbortUpgrade,
    /// Wake whatever waits for the end of a freeze.
    Thaw,
    /// Stop accepting, close waiting connections, tell every worker to
    /// finish, STOPPING=1.
    Drain,
    /// Kill every worker now.
    KillWorkers,
    /// Tell the new front (over the hand-over link) to stop.
    ForwardStop,
}

/// How long after a commit a front that handed over waits for its
/// control clients to read their answers.
pub const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// How long after killing every worker a stopping front waits to see them
/// gone.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

use Action as A;
use Event as E;
use Phase as P;

/// The phase after `event` in `phase` at `now`, and what to do. `drain` is
/// how long workers may take to finish when the proxy stops (the drain
/// timeout and the grace after it).
pub fn on(phase: &Phase, event: &Event, now: Instant, drain: Duration) -> (Phase, Vec<Action>) {
    let draining = |by_signal| P::Draining {
        deadline: now + drain,
        killed: false,
        by_signal,
    };
    let stay = |actions: Vec<Action>| (phase.clone(), actions);
    let refuse = |why| (phase.clone(), vec![A::Refuse(why)]);
    match (phase, event) {
        // The final phases take nothing.
        (
            P::Stopped | P::Left,
            E::Reload | E::Upgrade | E::Change | E::ReopenLog | E::UpgradeAt(_),
        ) => refuse(refusal::STOPPING),
        (P::Stopped | P::Left, _) => stay(vec![]),

        // Stopping.
        (P::Starting | P::Serving | P::Rolling, E::Stop) => (draining(true), vec![A::Drain]),
        (P::Starting | P::Serving | P::Rolling, E::LinkStop | E::Fatal) => {
            (draining(false), vec![A::Drain])
        }
        (
            P::Upgrading {
                step,
                rolling,
                stop,
            },
            E::Stop | E::LinkStop | E::Fatal,
        ) => {
            if *step == Step::Committed && *event == E::Fatal {
                // It owns no worker any more: nothing of its own to stop.
                stay(vec![])
            } else if *step == Step::Committed {
                // The new front owns everything: it is the one to stop.
                let next = P::Upgrading {
                    step: *step,
                    rolling: *rolling,
                    stop: true,
                };
                (next, if *stop { vec![] } else { vec![A::ForwardStop] })
            } else {
                let by_signal = *event == E::Stop;
                (
                    draining(by_signal),
                    vec![A::AbortUpgrade, A::Thaw, A::Drain],
                )
            }
        }
        (P::TakingOver { .. }, E::Stop) => (P::TakingOver { stop: true }, vec![]),
        (P::TakingOver { .. }, E::LinkStop | E::Fatal) => stay(vec![]),
        (
            P::Draining {
                deadline,
                killed,
                by_signal,
            },
            E::Stop,
        ) => {
            if *by_signal && !*killed {
                // A second stop signal: stop now.
                (
                    P::Draining {
                        deadline: now + KILL_WAIT,
                        killed: true,
                        by_signal: true,
                    },
                    vec![A::KillWorkers],
                )
            } else {
                let next = P::Draining {
                    deadline: *deadline,
                    killed: *killed,
                    by_signal: true,
                };
                (next, vec![])
            }
        }
        (P::Draining { .. }, E::LinkStop | E::Fatal) => stay(vec![]),
        (P::HandedOver { .. }, E::Stop | E::LinkStop) => stay(vec![A::ForwardStop]),
        (P::HandedOver { .. }, E::Fatal) => stay(vec![]),

        // Requests.
        (P::Draining { .. }, E::Reload | E::Upgrade | E::Change) => refuse(refusal::STOPPING),
        (P::HandedOver { .. }, E::Reload | E::Upgrade | E::Change | E::ReopenLog) => {
            refuse(refusal::HANDED_OVER)
        }
        (P::TakingOver { .. }, E::Reload | E::Upgrade | E::Change | E::ReopenLog) => {
            refuse(refusal::TAKING_OVER)
        }
        (P::Starting, E::Upgrade) => refuse(refusal::STARTING),
        (P::Serving | P::Rolling, E::Upgrade) => (
            P::Upgrading {
                step: Step::Check,
                rolling: *phase == P::Rolling,
                stop: false,
            },
            vec![A::Proceed],
        ),
        (P::Upgrading { .. }, E::Upgrade) => refuse(refusal::UPGRADING),
        (P::Upgrading { .. }, E::Reload) => refuse(refusal::RELOAD_IN_UPGRADE),
        (P::Upgrading { step, .. }, E::Change | E::ReopenLog) => {
            if *step >= Step::Frozen {
                refuse(refusal::FROZEN)
            } else {
                stay(vec![A::Proceed])
            }
        }
        (P::Starting | P::Serving | P::Rolling, E::Reload | E::Change | E::ReopenLog) => {
            stay(vec![A::Proceed])
        }
        (P::Draining { .. }, E::ReopenLog) => stay(vec![A::Proceed]),

        // Workers.
        (P::Starting, E::WorkerReady) => (P::Serving, vec![A::AnnounceReady]),
        (_, E::WorkerReady) => stay(vec![]),
        (P::Draining { .. }, E::WorkersGone) => (P::Stopped, vec![]),
        (_, E::WorkersGone) => stay(vec![]),
        (
            P::Upgrading {
                step, stop: false, ..
            },
            E::RollDone,
        ) => (
            P::Upgrading {
                step: *step,
                rolling: false,
                stop: false,
            },
            vec![],
        ),
        (P::Rolling, E::RollDone) => (P::Serving, vec![]),
        (_, E::RollDone) => stay(vec![]),

        // The upgrade, old side.
        (
            P::Upgrading {
                step,
                rolling,
                stop,
            },
            E::UpgradeAt(next),
        ) => {
            if step.next() != Some(*next) || *stop {
                // Out of order: the conversation must not go on.
                refuse(refusal::UPGRADING)
            } else {
                let actions = if *next == Step::Frozen {
                    vec![A::Freeze]
                } else {
                    vec![]
                };
                let phase = P::Upgrading {
                    step: *next,
                    rolling: *rolling,
                    stop: false,
                };
                (phase, actions)
            }
        }
        (P::Upgrading { rolling, stop, .. }, E::UpgradeFailed) => {
            if *stop {
                // Stopped right at the commit, which failed: this front
                // still owns everything, so it stops itself.
                (draining(true), vec![A::Thaw, A::Drain])
            } else if *rolling {
                (P::Rolling, vec![A::Thaw, A::AnnounceReady])
            } else {
                (P::Serving, vec![A::Thaw, A::AnnounceReady])
            }
        }
        (
            P::Upgrading {
                step: Step::Committed,
                ..
            },
            E::HandOver,
        ) => (
            P::HandedOver {
                deadline: now + LEAVE_GRACE,
            },
            vec![A::Thaw],
        ),
        // No upgrade goes on outside its phase (it was cancelled).
        (P::Draining { .. }, E::UpgradeAt(_)) => refuse(refusal::STOPPING),
        (_, E::UpgradeAt(_)) => refuse(refusal::CANCELLED),
        (_, E::UpgradeFailed | E::HandOver) => stay(vec![]),

        // The upgrade, new side.
        (P::TakingOver { stop: true }, E::TookOver) => (draining(true), vec![A::Thaw, A::Drain]),
        (P::TakingOver { stop: false }, E::TookOver) => {
            (P::Rolling, vec![A::Thaw, A::AnnounceReady, A::StartRoll])
        }
        (_, E::TookOver) => stay(vec![]),

        // Timers and leaving.
        (
            P::Draining {
                killed: false,
                by_signal,
                deadline,
            },
            E::Deadline,
        ) if now >= *deadline => (
            P::Draining {
                deadline: now + KILL_WAIT,
                killed: true,
                by_signal: *by_signal,
            },
            vec![A::KillWorkers],
        ),
        (P::Draining { deadline, .. }, E::Deadline) if now >= *deadline => (P::Stopped, vec![]),
        (P::HandedOver { deadline }, E::Deadline) if now >= *deadline => (P::Left, vec![]),
        (P::HandedOver { .. }, E::SessionsDone) => (P::Left, vec![]),
        (_, E::Deadline | E::SessionsDone) => stay(vec![]),
    }
}

impl Phase {
    /// When [`Event::Deadline`] is due, if the phase has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            P::Draining { deadline, .. } | P::HandedOver { deadline } => Some(*deadline),
            _ => None,
        }
    }

    /// Accepting nothing, reading no worker, reacting to no exit: the
    /// hand-over's freeze (old side from `Frozen` on, new side until it
    /// takes over; a front that handed over stays frozen).
    pub fn frozen(&self) -> bool {
        match self {
            P::Upgrading { step, .. } => *step >= Step::Frozen,
            P::TakingOver { .. } | P::HandedOver { .. } | P::Left => true,
            _ => false,
        }
    }

    /// Stopping or stopped: no new connection, no respawn.
    pub fn stopping(&self) -> bool {
        matches!(self, P::Draining { .. } | P::Stopped)
    }

    /// The front exits.
    pub fn finished(&self) -> bool {
        matches!(self, P::Stopped | P::Left)
    }

    /// This front has given everything to a new one (from the commit on).
    pub fn handed_over(&self) -> bool {
        matches!(
            self,
            P::Upgrading {
                step: Step::Committed,
                ..
            } | P::HandedOver { .. }
                | P::Left
        )
    }

    /// An upgrade is under way (either side).
    pub fn upgrading(&self) -> bool {
        matches!(self, P::Upgrading { .. } | P::TakingOver { .. })
    }

    /// The workers are being replaced.
    pub fn rolling(&self) -> bool {
        matches!(self, P::Rolling | P::Upgrading { rolling: true, .. })
    }

    /// A short word for `ctl status` and logs.
    pub fn name(&self) -> &'static str {
        match self {
            P::Starting => "starting",
            P::Serving => "serving",
            P::Rolling => "rolling",
            P::Upgrading { .. } => "upgrading",
            P::TakingOver { .. } => "taking-over",
            P::Draining { .. } => "draining",
            P::HandedOver { .. } => "handed-over",
            P::Stopped => "stopped",
            P::Left => "left",
        }
    }
}

#[cfg(test)]
mod tests;
