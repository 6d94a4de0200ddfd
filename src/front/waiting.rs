//! The task behind the backend queues (`maxconn=`): it waits on the
//! queues' epoll instance, where every waiting connection is registered
//! for `EPOLLRDHUP` (its client went away), and on the earliest
//! `--queue-timeout`, and tells the front. It holds the front weakly and
//! does nothing while the front is frozen (an upgrade hands the waiting
//! connections over, with how long each has waited).

use std::cell::RefCell;
use std::rc::Weak;
use std::time::Instant;

use rustix::event::epoll;
use tokio::io::Interest;
use tracing::warn;

use super::Front;
use super::watch::frozen_gate;

/// Most events read from the epoll instance at once.
const BATCH: usize = 256;

pub(super) async fn run(front: Weak<RefCell<Front>>) {
    let watched = match front.upgrade() {
        Some(f) => f.borrow_mut().queue_watch(),
        None => return,
    };
    let (fd, wake) = match watched {
        Ok(w) => w,
        Err(err) => {
            warn!(cause = %err, "cannot watch waiting connections: clients that leave a backend queue are seen only when their turn comes");
            return;
        }
    };
    let afd = match crate::sys::register(fd, Interest::READABLE) {
        Ok(a) => a,
        Err(err) => {
            warn!(cause = %err, "cannot watch waiting connections");
            return;
        }
    };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(BATCH);
    let mut tokens: Vec<u64> = Vec::with_capacity(BATCH);
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        while let Some(wait) = frozen_gate(&front) {
            wait.await;
        }
        let notified = wake.notified();
        let deadline = {
            let Some(f) = front.upgrade() else { return };
            let f = f.borrow();
            if f.finished() {
                return;
            }
            f.queue_deadline()
        };
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = afd.readable() => {
                let Ok(mut guard) = ready else { return };
                tokens.clear();
                // The instance is level-triggered inside; read it empty so
                // the next arrival is a new edge outside.
                loop {
                    events.clear();
                    match epoll::wait(afd.get_ref(), rustix::buffer::spare_capacity(&mut events), Some(&zero)) {
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => break,
                    }
                    tokens.extend(events.iter().map(|e| e.data.u64()));
                    if events.len() < BATCH {
                        break;
                    }
                }
                guard.clear_ready();
                if !tokens.is_empty() {
                    let Some(f) = front.upgrade() else { return };
                    f.borrow_mut().queue_abandoned(&tokens);
                }
            }
            () = timer => {
                let Some(f) = front.upgrade() else { return };
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    f.borrow_mut().expire_waits();
                }
            }
            () = notified => {}
        }
    }
}
