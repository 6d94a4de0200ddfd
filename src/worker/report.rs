//! Telling the front what it must act on, batched.
//!
//! Events (connect failures, closes with per-client limits on, ends of
//! connections whose service counts them, freed slots of limited
//! backends, draining, wake-ups) are queued in memory
//! and written by one flusher task:
//! whatever piled up while it was waiting goes out in as few frames as
//! fit, so under load there is one channel write per many events, and at
//! rest an event leaves at once. Counting is not done here: it goes to the
//! statistics table.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use tokio::sync::Notify;
use tracing::warn;

use super::Worker;
use crate::channel::fdpass::Channel;
use crate::channel::{EVENT_MAX_LEN, Event, Handoff, MAX_FRAME, Up};

pub struct Reporter {
    channel: Rc<Channel>,
    queue: RefCell<Vec<Event>>,
    wake: Notify,
}

impl Reporter {
    pub fn new(channel: Rc<Channel>) -> Reporter {
        Reporter {
            channel,
            queue: RefCell::new(Vec::new()),
            wake: Notify::new(),
        }
    }

    /// Queue an event; the flusher sends it soon.
    pub fn push(&self, event: Event) {
        self.queue.borrow_mut().push(event);
        self.wake.notify_one();
    }

    /// Give a client connection back to the front (`Up::Returned`, its
    /// descriptor with the frame), waiting for channel room if needed.
    pub async fn give_back(&self, h: Handoff, fd: OwnedFd) -> std::io::Result<()> {
        let mut frame = Vec::new();
        Up::Returned(h)
            .encode(&mut frame)
            .map_err(std::io::Error::other)?;
        self.channel.send(&frame, &[fd.as_fd()]).await
    }

    /// Send everything queued now, waiting for channel room if needed.
    pub async fn flush_now(&self) {
        let events = std::mem::take(&mut *self.queue.borrow_mut());
        if events.is_empty() {
            return;
        }
        let per_frame = (MAX_FRAME - 8) / EVENT_MAX_LEN;
        let mut frame = Vec::with_capacity(MAX_FRAME);
        for chunk in events.chunks(per_frame) {
            let msg = Up::Events(chunk.to_vec());
            if let Err(err) = msg.encode(&mut frame) {
                warn!(cause = %err, "cannot encode events");
                continue;
            }
            if let Err(err) = self.channel.send(&frame, &[]).await {
                // The front is gone; the main loop notices and drains.
                tracing::debug!(cause = %err, "cannot report events");
                return;
            }
        }
    }
}

/// Send queued events whenever there are some.
pub async fn flush_loop(worker: Rc<Worker>) {
    loop {
        worker.reporter.wake.notified().await;
        // Let the other tasks of this tick add theirs: one frame for many.
        tokio::task::yield_now().await;
        worker.reporter.flush_now().await;
    }
}
