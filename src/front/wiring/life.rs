//! The lifecycle: events through the phase machine, and the actions it
//! asks for (freeze, thaw, drain, the hand-over's steps).

use super::*;

impl Front {
    // ---- The lifecycle: events through the phase machine.

    /// Run `event` through the phase machine and perform what it asks.
    /// `Err`: the request is refused, and why.
    pub fn handle(&mut self, event: Event) -> Result<(), &'static str> {
        let actions = self.life.on(&event, self.drain_wait());
        let mut refused = None;
        for action in actions {
            match action {
                Action::Refuse(why) => refused = Some(why),
                Action::Proceed => {}
                Action::Freeze => self.freeze(),
                Action::AnnounceReady => notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status("accepting connections"),
                ]),
                Action::StartRoll => {
                    for slot in self.workers.begin_roll(Instant::now()) {
                        info!(slot, "worker slot unparked");
                    }
                    self.advance_roll();
                }
                Action::AbortUpgrade => self.life.abort_upgrade(),
                Action::Thaw => self.thaw(),
                Action::Drain => self.drain(),
                Action::KillWorkers => {
                    warn!("stopping now: killing every worker (connections still open are cut)");
                    self.workers.kill_all();
                }
                Action::ForwardStop => self.forward_stop(),
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Freeze for a hand-over: send what is batched, stop reading PROXY
    /// headers, stop accepting (the phase says frozen already).
    pub(super) fn freeze(&mut self) {
        self.flush();
        self.access.suspend_header_reads();
        self.sni_waits.suspend();
        self.refresh_all_views();
        self.life
            .set_frozen_at_us(crate::front::upgrade::state::unix_micros());
    }

    /// A freeze ended (or the front handed over for good: then only what
    /// waits is woken).
    pub(super) fn thaw(&mut self) {
        self.life.thaw();
        if self.frozen() {
            return;
        }
        self.access.resume_header_reads(&self.me);
        let timeout = self.settings.get().sni_timeout;
        self.sni_waits.resume(&self.me, timeout);
        self.arm_watchers();
        self.refresh_all_views();
        self.retry_pending();
        self.update_paused();
        self.staff();
        self.advance_roll();
    }

    /// Stop: accept nothing, close what waits, tell every worker to
    /// finish (the phase's deadline kills what is left).
    pub(super) fn drain(&mut self) {
        notify(&[sd_notify::NotifyState::Stopping]);
        self.listeners.close();
        let waiting = self.sni_waits.close();
        if waiting > 0 {
            warn!(
                waiting,
                "closed connections that were waiting for their ClientHello"
            );
        }
        let pending = self.ledger.close_pending();
        if pending > 0 {
            warn!(pending, "closed connections that were waiting for a worker");
        }
        let queued = self.close_queues();
        if queued > 0 {
            warn!(
                queued,
                "closed connections that were waiting for a backend slot"
            );
        }
        self.publish_pending();
        let now = Instant::now();
        let drain = self.drain_frame();
        self.workers
            .retire_all(&drain, now, now + self.drain_wait());
        self.workers.cancel_roll();
        self.arm_watchers();
        self.refresh_all_views();
        self.publish();
        let open = self.total_active();
        if open > 0 {
            warn!(
                open_connections = open,
                deadline = ?self.settings.get().drain_timeout,
                "draining: waiting for open connections to finish (at most --drain-timeout); send SIGINT (Ctrl-C) or SIGTERM again to stop now"
            );
        } else {
            info!("shutting down: no connection open");
        }
        if self.workers.all_gone() {
            let _ = self.handle(Event::WorkersGone);
        }
    }

    /// After the commit: the new front owns everything, so a stop asked of
    /// this one is passed on to it.
    pub(super) fn forward_stop(&mut self) {
        let Some(link) = self.life.successor() else {
            warn!("stop requested during the hand-over, but the new front cannot be reached");
            return;
        };
        info!("stop requested after the hand-over: passing it on to the new front");
        tokio::task::spawn_local(async move {
            if let Err(err) = link.send(&crate::handover::Msg::Stop).await {
                warn!(cause = %err, "cannot pass the stop on to the new front");
            }
        });
    }

    /// The upgrade reached `step`: may it go on?
    pub fn upgrade_at(&mut self, step: crate::front::phase::Step) -> Result<(), &'static str> {
        self.handle(Event::UpgradeAt(step))
    }

    /// The upgrade committed and its requester has the answer: this front
    /// lets go (its metrics endpoint stops, control clients are told to
    /// reconnect) and leaves once its control sessions are done.
    pub fn hand_over(&mut self) {
        self.counters.hand_over();
        let _ = self.handle(Event::HandOver);
        if self.life.sessions() == 0 {
            let _ = self.handle(Event::SessionsDone);
        }
    }

    pub fn session_opened(&mut self) {
        self.life.session_opened();
    }

    pub fn session_closed(&mut self) {
        if self.life.session_closed() == 0 {
            let _ = self.handle(Event::SessionsDone);
        }
    }

    /// Keep the upgrade conversation, to cancel it on a stop.
    pub fn set_upgrade(&mut self, task: Option<tokio::task::AbortHandle>) {
        self.life.set_upgrade(task);
    }

    /// The new front's link, once committed.
    pub fn set_successor(&mut self, link: Rc<crate::handover::Link>) {
        self.life.set_successor(link);
    }
}
