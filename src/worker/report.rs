//! Reporting a worker's connection events to the front, batched.
//!
//! Events are queued in memory and written by one flusher task: whatever
//! piled up while it was waiting goes out in as few frames as fit, so under
//! load there is one channel write per many connections, and at rest an
//! event leaves at once. Bytes moved are counted per backend and reported
//! once a second, so byte counters advance while long connections run.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::Notify;
use tracing::warn;

use super::Worker;
use crate::channel::fdpass::Channel;
use crate::channel::{EVENT_MAX_LEN, Event, MAX_FRAME, Up};

/// How often byte counts are reported.
pub const BYTES_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes moved on one backend's connections since the last report.
#[derive(Debug, Default)]
pub struct ByteCounter {
    pub up: Cell<u64>,
    pub down: Cell<u64>,
}

impl ByteCounter {
    pub fn add_up(&self, n: usize) {
        self.up.set(self.up.get() + n as u64);
    }

    pub fn add_down(&self, n: usize) {
        self.down.set(self.down.get() + n as u64);
    }
}

pub struct Reporter {
    channel: Rc<Channel>,
    queue: RefCell<Vec<Event>>,
    wake: Notify,
    bytes: RefCell<HashMap<u32, Rc<ByteCounter>>>,
}

impl Reporter {
    pub fn new(channel: Rc<Channel>) -> Reporter {
        Reporter {
            channel,
            queue: RefCell::new(Vec::new()),
            wake: Notify::new(),
            bytes: RefCell::new(HashMap::new()),
        }
    }

    /// Queue an event; the flusher sends it soon.
    pub fn push(&self, event: Event) {
        self.queue.borrow_mut().push(event);
        self.wake.notify_one();
    }

    /// The byte counter for `backend`, shared by its connections.
    pub fn counter(&self, backend: u32) -> Rc<ByteCounter> {
        self.bytes.borrow_mut().entry(backend).or_default().clone()
    }

    /// Queue one `Bytes` event per backend that moved bytes, and forget
    /// counters no connection holds any more.
    pub fn report_bytes(&self) {
        let mut events = Vec::new();
        self.bytes.borrow_mut().retain(|&backend, c| {
            let (up, down) = (c.up.replace(0), c.down.replace(0));
            if up > 0 || down > 0 {
                events.push(Event::Bytes { backend, up, down });
            }
            Rc::strong_count(c) > 1
        });
        if !events.is_empty() {
            self.queue.borrow_mut().extend(events);
            self.wake.notify_one();
        }
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

/// Report bytes once a second.
pub async fn bytes_loop(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(BYTES_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        worker.reporter.report_bytes();
    }
}
