//! The phase machine, as a pure function: every event in every phase
//! (the table below, which DESIGN.md's "Lifecycle" table must match), and
//! the runs that matter most step by step: a stop at each step of an
//! upgrade, a second stop, a stop passed on after the commit.

use std::time::{Duration, Instant};

use super::*;

const DRAIN: Duration = Duration::from_secs(33);

/// Every phase worth telling apart, named as the table names it.
fn phases(now: Instant) -> Vec<(&'static str, Phase)> {
    let later = now + Duration::from_secs(5);
    let up = |step| P::Upgrading {
        step,
        rolling: false,
        stop: false,
    };
    vec![
        ("Starting", P::Starting),
        ("Serving", P::Serving),
        ("Rolling", P::Rolling),
        ("Upgrading(check)", up(Step::Check)),
        ("Upgrading(frozen)", up(Step::Frozen)),
        (
            "Upgrading(ready, rolling)",
            P::Upgrading {
                step: Step::Ready,
                rolling: true,
                stop: false,
            },
        ),
        ("Upgrading(committed)", up(Step::Committed)),
        (
            "Upgrading(committed, stop)",
            P::Upgrading {
                step: Step::Committed,
                rolling: false,
                stop: true,
            },
        ),
        ("TakingOver", P::TakingOver { stop: false }),
        ("TakingOver(stop)", P::TakingOver { stop: true }),
        (
            "Draining",
            P::Draining {
                deadline: later,
                killed: false,
                by_signal: true,
            },
        ),
        (
            "Draining(passed on)",
            P::Draining {
                deadline: later,
                killed: false,
                by_signal: false,
            },
        ),
        (
            "Draining(killed)",
            P::Draining {
                deadline: later,
                killed: true,
                by_signal: true,
            },
        ),
        ("HandedOver", P::HandedOver { deadline: later }),
        ("Stopped", P::Stopped),
        ("Left", P::Left),
    ]
}

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("Stop", E::Stop),
        ("LinkStop", E::LinkStop),
        ("Reload", E::Reload),
        ("Upgrade", E::Upgrade),
        ("ReopenLog", E::ReopenLog),
        ("Change", E::Change),
        ("WorkerReady", E::WorkerReady),
        ("WorkersGone", E::WorkersGone),
        ("Fatal", E::Fatal),
        ("UpgradeAt(sent)", E::UpgradeAt(Step::Sent)),
        ("UpgradeFailed", E::UpgradeFailed),
        ("HandOver", E::HandOver),
        ("TookOver", E::TookOver),
        ("RollDone", E::RollDone),
        ("SessionsDone", E::SessionsDone),
        ("Deadline", E::Deadline),
    ]
}

/// A phase in the table's words.
fn name(p: &Phase) -> String {
    match p {
        P::Starting => "Starting".into(),
        P::Serving => "Serving".into(),
        P::Rolling => "Rolling".into(),
        P::Upgrading {
            step,
            rolling,
            stop,
        } => {
            let mut s = format!("Upgrading({}", step.name());
            if *rolling {
                s.push_str(", rolling");
            }
            if *stop {
                s.push_str(", stop");
            }
            s + ")"
        }
        P::TakingOver { stop: true } => "TakingOver(stop)".into(),
        P::TakingOver { stop: false } => "TakingOver".into(),
        P::Draining { killed: true, .. } => "Draining(killed)".into(),
        P::Draining {
            by_signal: false, ..
        } => "Draining(passed on)".into(),
        P::Draining { .. } => "Draining".into(),
        P::HandedOver { .. } => "HandedOver".into(),
        P::Stopped => "Stopped".into(),
        P::Left => "Left".into(),
    }
}

/// What `on` does, in one cell: `-` for nothing at all, `refused` for a
/// refusal, else the next phase (when it changes) and the actions.
fn cell(before: &Phase, after: &Phase, actions: &[Action]) -> String {
    if let [Action::Refuse(_)] = actions {
        return "refused".into();
    }
    let mut parts = Vec::new();
    if after != before {
        parts.push(format!("→ {}", name(after)));
    }
    for a in actions {
        parts.push(format!("{a:?}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// The whole table: a row per phase, a column per event, each deadline
/// event taken when it is due.
fn table() -> String {
    let now = Instant::now();
    let mut out = String::from("| phase \\ event |");
    for (e, _) in events() {
        out.push_str(&format!(" {e} |"));
    }
    out.push_str("\n|---|");
    for _ in events() {
        out.push_str("---|");
    }
    out.push('\n');
    for (pname, phase) in phases(now) {
        out.push_str(&format!("| {pname} |"));
        for (_, event) in events() {
            let at = match (&event, phase.deadline()) {
                (E::Deadline, Some(d)) => d,
                _ => now,
            };
            let (after, actions) = on(&phase, &event, at, DRAIN);
            out.push_str(&format!(" {} |", cell(&phase, &after, &actions)));
        }
        out.push('\n');
    }
    out
}

/// Every event in every phase: the outcome is the one written down. This
/// is the transition table of DESIGN.md ("Lifecycle"), which must hold
/// it verbatim: a change here is a change there.
#[test]
fn every_event_in_every_phase_is_the_table() {
    let table = table();
    let design = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/DESIGN.md"))
        .expect("DESIGN.md at the repository root");
    assert!(
        design.contains(&table),
        "DESIGN.md's lifecycle table is not the machine's; it is:\n\n{table}"
    );
}

fn step(phase: &Phase, event: Event) -> (Phase, Vec<Action>) {
    on(phase, &event, Instant::now(), DRAIN)
}

/// Walk an upgrade to `at`, then stop: before the commit the upgrade is
/// cancelled (its new front killed) and the proxy drains; from the commit
/// on the stop is passed on to the new front, once, and the old one still
/// leaves when it has handed over.
#[test]
fn a_stop_at_any_step_of_an_upgrade_stops_everything() {
    for at in Step::ALL {
        let (mut phase, actions) = step(&P::Serving, E::Upgrade);
        assert_eq!(actions, [A::Proceed]);
        for s in Step::ALL.into_iter().skip(1).take_while(|&s| s <= at) {
            let (next, actions) = step(&phase, E::UpgradeAt(s));
            assert!(!actions.contains(&A::Refuse(refusal::UPGRADING)), "{s:?}");
            assert_eq!(actions.contains(&A::Freeze), s == Step::Frozen);
            phase = next;
        }
        assert_eq!(phase.frozen(), at >= Step::Frozen, "{at:?}");
        let (after, actions) = step(&phase, E::Stop);
        if at < Step::Committed {
            assert!(matches!(after, P::Draining { .. }), "{at:?}: {after:?}");
            assert_eq!(actions, [A::AbortUpgrade, A::Thaw, A::Drain], "{at:?}");
            assert!(!after.frozen());
            // The cancelled conversation cannot go on.
            let (_, actions) = step(&after, E::UpgradeAt(Step::Committed));
            assert_eq!(actions, [A::Refuse(refusal::STOPPING)]);
        } else {
            assert_eq!(actions, [A::ForwardStop]);
            let (again, actions) = step(&after, E::Stop);
            assert!(actions.is_empty(), "passed on once");
            let (gone, _) = step(&again, E::HandOver);
            let (left, _) = step(&gone, E::SessionsDone);
            assert_eq!(left, P::Left);
            assert!(left.finished());
        }
    }
}

/// A stop before the commit that the old front sees only after it could
/// not commit (the new front died): this front still owns everything, so
/// it stops itself.
#[test]
fn a_failed_commit_after_a_stop_stops_this_front() {
    let phase = P::Upgrading {
        step: Step::Committed,
        rolling: false,
        stop: false,
    };
    let (phase, _) = step(&phase, E::Stop);
    let (phase, actions) = step(&phase, E::UpgradeFailed);
    assert!(matches!(phase, P::Draining { .. }));
    assert_eq!(actions, [A::Thaw, A::Drain]);
}

/// The new front: a stop signal while taking over waits for the commit
/// and then stops; a stop passed on over the link and the same stop
/// forwarded by an init (a signal) never add up to "stop now".
#[test]
fn the_new_front_stops_once_it_owns_everything_and_a_passed_on_stop_never_kills() {
    let (phase, actions) = step(&P::TakingOver { stop: false }, E::Stop);
    assert!(actions.is_empty());
    let (phase, actions) = step(&phase, E::TookOver);
    assert!(matches!(
        phase,
        P::Draining {
            by_signal: true,
            ..
        }
    ));
    assert_eq!(actions, [A::Thaw, A::Drain]);

    let (phase, _) = step(&P::Rolling, E::LinkStop);
    let (phase, actions) = step(&phase, E::Stop);
    assert!(actions.is_empty(), "the first signal joins the drain");
    let (_, actions) = step(&phase, E::Stop);
    assert_eq!(actions, [A::KillWorkers], "a second signal stops now");
}

/// Draining ends when the workers are gone, or: the deadline kills them,
/// and a second deadline gives up waiting.
#[test]
fn a_drain_ends_when_the_workers_are_gone_or_its_deadlines_pass() {
    let now = Instant::now();
    let (phase, _) = on(&P::Serving, &E::Stop, now, DRAIN);
    assert_eq!(phase.deadline(), Some(now + DRAIN));
    let (early, actions) = on(&phase, &E::Deadline, now, DRAIN);
    assert!(actions.is_empty() && early == phase, "not due yet");
    let (killed, actions) = on(&phase, &E::Deadline, now + DRAIN, DRAIN);
    assert_eq!(actions, [A::KillWorkers]);
    let due = killed.deadline().unwrap();
    let (end, _) = on(&killed, &E::Deadline, due, DRAIN);
    assert_eq!(end, P::Stopped);
    let (end, _) = step(&phase, E::WorkersGone);
    assert_eq!(end, P::Stopped);
}

/// An upgrade during a restart of the workers goes ahead; if it fails,
/// the restart is still under way.
#[test]
fn an_upgrade_during_a_restart_supersedes_it_or_leaves_it_running() {
    let (phase, actions) = step(&P::Rolling, E::Upgrade);
    assert_eq!(actions, [A::Proceed]);
    assert!(phase.rolling());
    let (phase, actions) = step(&phase, E::UpgradeFailed);
    assert_eq!(phase, P::Rolling);
    assert_eq!(actions, [A::Thaw, A::AnnounceReady]);
}
