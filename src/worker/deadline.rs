//! Connect deadlines: one timer for every backend connect a worker has in
//! flight, instead of a tokio timer per attempt.
//!
//! Why: a tokio timer that falls due before every timer already armed (the
//! connections' idle timers are minutes away) makes tokio wake its own
//! reactor to plan a shorter sleep, with an eventfd `write` and an extra
//! turn of the event loop. A connect timeout armed per attempt did that for
//! most new connections. Here an attempt only writes its deadline into a
//! small table, and one task ([`Deadlines::run`]) sleeps until the earliest
//! deadline. Attempts start with "now + connect timeout", so a new deadline
//! is later than the ones before it (unless a reload shortened the
//! timeout) and the sleeping task keeps its timer; when the timer fires it
//! re-arms for the next deadline from the timer's own turn, which tokio
//! does not count as earlier than planned. The reactor is woken only when
//! the task goes from idle to armed.
//!
//! An attempt that completes on its first poll (nothing to wait for) never
//! touches the table.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Poll, Waker};

use tokio::sync::Notify;
use tokio::time::Instant;

/// One attempt in flight.
struct Entry {
    at: Instant,
    waker: Waker,
    expired: bool,
}

/// The deadlines of one worker's connect attempts (single-threaded).
#[derive(Default)]
pub struct Deadlines {
    entries: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    /// When the timer task sleeps until, if it sleeps.
    armed: Cell<Option<Instant>>,
    /// Tells the timer task to sleep until an earlier time.
    rearm: Notify,
}

/// Takes an attempt's entry out of the table when the attempt ends or is
/// dropped.
struct Slot<'a> {
    table: &'a Deadlines,
    key: Cell<Option<usize>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.remove(key);
        }
    }
}

impl Deadlines {
    /// Run `fut` until it finishes (`Some`) or `at` passes (`None`).
    pub async fn within<F: Future>(&self, at: Instant, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        let slot = Slot {
            table: self,
            key: Cell::new(None),
        };
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match slot.key.get() {
                None => slot.key.set(Some(self.insert(at, cx.waker()))),
                Some(key) => {
                    if !self.update(key, cx.waker()) {
                        return Poll::Ready(None);
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Attempts in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.borrow().iter().flatten().count()
    }

    fn insert(&self, at: Instant, waker: &Waker) -> usize {
        let entry = Entry {
            at,
            waker: waker.clone(),
            expired: false,
        };
        let mut entries = self.entries.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(key) => {
                entries[key] = Some(entry);
                key
            }
            None => {
                entries.push(Some(entry));
                entries.len() - 1
            }
        };
        if self.armed.get().is_none_or(|armed| at < armed) {
            self.armed.set(Some(at));
            self.rearm.notify_one();
        }
        key
    }

    /// Store the latest waker; `false` once the deadline has passed.
    fn update(&self, key: usize, waker: &Waker) -> bool {
        let mut entries = self.entries.borrow_mut();
        let Some(Some(entry)) = entries.get_mut(key) else {
            return false;
        };
        if entry.expired {
            return false;
        }
        if !entry.waker.will_wake(waker) {
            entry.waker = waker.clone();
        }
        true
    }

    fn remove(&self, key: usize) {
        let mut entries = self.entries.borrow_mut();
        if let Some(e) = entries.get_mut(key) {
            if e.take().is_some() {
                self.free.borrow_mut().push(key);
            }
        }
        // Keep the table small after a burst of slow connects.
        let before = entries.len();
        while entries.len() > 64 && entries.last().is_some_and(Option::is_none) {
            entries.pop();
        }
        if entries.len() < before {
            let len = entries.len();
            self.free.borrow_mut().retain(|&k| k < len);
        }
    }

    /// Mark every attempt due by `now` expired and wake it; the earliest
    /// deadline still ahead, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for e in self.entries.borrow_mut().iter_mut().flatten() {
            if e.expired {
                continue;
            }
            if e.at <= now {
                e.expired = true;
                due.push(e.waker.clone());
            } else {
                next = Some(next.map_or(e.at, |n| n.min(e.at)));
            }
        }
        for w in due {
            w.wake();
        }
        next
    }

    /// The timer task: sleep until the earliest deadline, expire what is
    /// due, repeat; idle while no attempt waits. Runs for the worker's life.
    pub async fn run(&self) {
        loop {
            let Some(at) = self.armed.get() else {
                self.rearm.notified().await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    self.armed.set(self.expire(Instant::now()));
                }
                // An earlier deadline came in: sleep until that instead.
                () = self.rearm.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

    use super::Deadlines;
    use tokio::time::Instant;

    /// Run a test body, failing it (not hanging) if it takes 20 s.
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new()
            .block_on(&rt, async {
                tokio::time::timeout(Duration::from_secs(20), f).await
            })
            .expect("the test did not finish in 20 s")
    }

    #[test]
    fn a_stuck_attempt_ends_at_its_deadline_and_leaves_no_entry() {
        run(async {
            let d = Rc::new(Deadlines::default());
            let timer = tokio::task::spawn_local({
                let d = d.clone();
                async move { d.run().await }
            });
            let start = Instant::now();
            let out = d
                .within(
                    start + Duration::from_millis(50),
                    std::future::pending::<()>(),
                )
                .await;
            let took = start.elapsed();
            assert!(out.is_none());
            assert!(took >= Duration::from_millis(50), "ended after {took:?}");
            assert!(took < Duration::from_secs(5), "ended after {took:?}");
            assert_eq!(d.len(), 0);
            timer.abort();
        });
    }

    #[test]
    fn attempts_that_finish_in_time_keep_their_output_and_later_ones_still_expire() {
        run(async {
            let d = Rc::new(Deadlines::default());
            let timer = tokio::task::spawn_local({
                let d = d.clone();
                async move { d.run().await }
            });
            let now = Instant::now();
            // Ready at once: never enters the table.
            assert_eq!(d.within(now, async { 7 }).await, Some(7));
            // Waits, then finishes well before its deadline.
            let quick = d.within(now + Duration::from_secs(30), async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                8
            });
            assert_eq!(quick.await, Some(8));
            assert_eq!(d.len(), 0);
            // A long deadline first, then a shorter one (a reload lowered
            // the timeout): the shorter one still ends on time.
            let long = d.within(now + Duration::from_secs(60), std::future::pending::<()>());
            let short = d.within(
                Instant::now() + Duration::from_millis(40),
                std::future::pending::<()>(),
            );
            let started = Instant::now();
            tokio::select! {
                _ = long => panic!("the long deadline ended first"),
                out = short => assert!(out.is_none()),
            }
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(d.len(), 0, "dropped attempts leave the table");
            timer.abort();
        });
    }

    #[test]
    fn many_attempts_expire_together_and_the_table_shrinks_back() {
        run(async {
            let d = Rc::new(Deadlines::default());
            let timer = tokio::task::spawn_local({
                let d = d.clone();
                async move { d.run().await }
            });
            let at = Instant::now() + Duration::from_millis(30);
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let d = d.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    d.within(at, std::future::pending::<()>()).await
                }));
            }
            for t in tasks {
                assert!(t.await.unwrap().is_none());
            }
            assert_eq!(d.len(), 0);
            assert!(d.entries.borrow().len() <= 64);
            timer.abort();
        });
    }
}
