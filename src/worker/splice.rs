//! Zero-copy forwarding on Linux: bytes move socket → pipe → socket with
//! splice(2) and never enter user space.
//!
//! Each direction takes a pipe from a per-thread pool only when its source
//! is readable, and gives it back as soon as the pipe is empty again, so an
//! idle connection holds no pipe at all. The pool keeps every pipe it made
//! (up to the worker's allowance), so a pipe is created once, not per
//! chunk, however many bulk flows run at once.
//!
//! Pipes are enlarged with F_SETPIPE_SZ while this worker's share of the
//! user's `fs.pipe-user-pages-soft` has room, and their real capacity is
//! read back with F_GETPIPE_SZ: past the soft limit an unprivileged user's
//! new pipes get 2 pages and F_SETPIPE_SZ fails, which a capacity taken on
//! trust would hide. When the share is used up, or the kernel hands out a
//! starved pipe, a direction copies through a buffer instead for that chunk.
//! `SPLICE_F_MORE` is never set: it would make the kernel hold back small
//! writes (the latency trap). Readiness comes from tokio (`try_io` clears it
//! on EAGAIN), so the event loop is never blocked.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for (granted only while the page budget allows).
pub const PIPE_SIZE: usize = 256 * 1024;
/// What the kernel accounts pipe buffers in.
const PAGE: usize = 4096;
/// A new pipe's default size (`PIPE_DEF_BUFFERS`), in pages.
const DEFAULT_PAGES: u64 = 16;
/// A pipe granted less than this is not worth splicing through: a buffered
/// copy moves 64 KiB per system call.
const MIN_USEFUL: usize = 16 * 1024;
/// After the kernel hands out a starved pipe, how long to copy through
/// buffers before trying to make a pipe again.
const STARVED_BACKOFF: Duration = Duration::from_secs(1);
/// The share of `pipe-user-pages-soft` left to the user's other processes.
const OTHERS_SHARE: u64 = 4;

/// A pipe: bytes written to `w` are read from `r`.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// What F_GETPIPE_SZ said after sizing: the real capacity.
    capacity: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    /// Pipes open in this worker (pooled or in use), and the most allowed.
    static OPEN: Cell<u64> = const { Cell::new(0) };
    static LIMIT: Cell<u64> = Cell::new(crate::sys::fd_plan(crate::sys::nofile_limit().0.unwrap_or(u64::MAX)).pipes);
    /// Pipe buffer pages held by this worker's open pipes (as the kernel
    /// accounts them to the user), and the most this worker may hold.
    static PAGES: Cell<u64> = const { Cell::new(0) };
    static PAGE_BUDGET: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Set when the kernel granted a starved pipe: no new pipe until then.
    static STARVED_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Size this worker's page budget: its share of the user's
/// `fs.pipe-user-pages-soft` among `processes` workers (all of them, plus
/// one replacement during a rolling restart), leaving a quarter to the
/// user's other processes. The kernel does not apply the limit to a
/// process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, and neither does this.
pub fn configure(processes: usize) {
    let soft = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    PAGE_BUDGET.set(page_budget(soft, processes, privileged()));
}

/// Pages one worker may hold: its share of the soft limit (0: no limit).
fn page_budget(soft: u64, processes: usize, privileged: bool) -> u64 {
    if soft == 0 || privileged {
        return u64::MAX;
    }
    let ours = soft - soft / OTHERS_SHARE;
    (ours / processes.max(1) as u64).max(DEFAULT_PAGES)
}

/// Whether the kernel exempts this process from the pipe page limits
/// (CAP_SYS_ADMIN is bit 21, CAP_SYS_RESOURCE bit 24 of CapEff).
fn privileged() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & ((1 << 21) | (1 << 24)) != 0)
}

fn pages(bytes: usize) -> u64 {
    bytes.div_ceil(PAGE) as u64
}

/// A new pipe, as large as the budget allows, with the capacity the kernel
/// really granted.
fn new_pipe() -> io::Result<Pipe> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    if PAGES.get() + pages(PIPE_SIZE) <= PAGE_BUDGET.get() {
        // Refused past the soft limit (EPERM) or above pipe-max-size: the
        // read-back below says what we have.
        let _ = fcntl_setpipe_size(&w, PIPE_SIZE);
    }
    let capacity = fcntl_getpipe_size(&w)?;
    Ok(Pipe { r, w, capacity })
}

/// A pipe from the pool, or a new one while under the worker's pipe
/// allowance (see `sys::fd_plan`) and page budget; an error means "copy
/// through a buffer".
pub fn take_pipe() -> io::Result<Pipe> {
    if let Some(pipe) = POOL.with(|p| p.borrow_mut().pop()) {
        return Ok(pipe);
    }
    if OPEN.get() >= LIMIT.get() {
        return Err(io::Error::other("pipe allowance used up"));
    }
    if PAGES.get() + DEFAULT_PAGES > PAGE_BUDGET.get() {
        return Err(io::Error::other("pipe page budget used up"));
    }
    if let Some(until) = STARVED_UNTIL.get() {
        if Instant::now() < until {
            return Err(io::Error::other("the kernel grants only starved pipes"));
        }
        STARVED_UNTIL.set(None);
    }
    let pipe = new_pipe()?;
    OPEN.set(OPEN.get() + 1);
    PAGES.set(PAGES.get() + pages(pipe.capacity));
    if pipe.capacity < MIN_USEFUL {
        // Over the user's soft limit (other processes hold pipes too).
        STARVED_UNTIL.set(Some(Instant::now() + STARVED_BACKOFF));
        return Err(io::Error::other("the kernel granted a starved pipe"));
    }
    Ok(pipe)
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.set(OPEN.get().saturating_sub(1));
        PAGES.set(PAGES.get().saturating_sub(pages(self.capacity)));
    }
}

/// Return an empty pipe to the pool. Every open pipe fits in it (the pool
/// is bounded by the allowance), so none is closed only to be made again.
pub fn give_pipe(pipe: Pipe) {
    POOL.with(|p| p.borrow_mut().push(pipe));
}

/// Splice what `src` has ready into the (empty) pipe without blocking.
/// `Ok(0)` is EOF; `WouldBlock` means the readiness was spurious.
pub fn fill(pipe: &Pipe, src: &TcpStream) -> io::Result<usize> {
    src.try_io(Interest::READABLE, || {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        splice(src.as_fd(), None, &pipe.w, None, pipe.capacity, flags).map_err(io::Error::from)
    })
}

/// Splice all `n` bytes in the pipe out to `dst`, waiting for room.
/// `on_write` runs after every successful write (activity tracking).
pub async fn drain(
    pipe: &Pipe,
    dst: &TcpStream,
    n: usize,
    mut on_write: impl FnMut(),
) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        // `poll_write_ready` rather than `writable()`: this future lives
        // inline in the connection's task, and a waiter node would grow it.
        std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await?;
        match dst.try_io(Interest::WRITABLE, || {
            let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
            splice(&pipe.r, None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => {
                left -= w;
                on_write();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_allowance_is_enforced() {
        LIMIT.set(OPEN.get() + 2);
        let a = take_pipe().unwrap();
        let b = take_pipe().unwrap();
        assert!(take_pipe().is_err(), "third pipe is over the allowance");
        drop(a);
        let c = take_pipe().unwrap();
        drop((b, c));
        LIMIT.set(1024);
    }

    /// Beyond 32 flows (the old pool's size) pipes are still reused: after
    /// one burst, the same number of takes creates no pipe.
    #[test]
    fn every_pipe_is_pooled_and_reused() {
        let n = 40;
        let pipes: Vec<Pipe> = (0..n).map(|_| take_pipe().unwrap()).collect();
        let open = OPEN.get();
        for p in pipes {
            give_pipe(p);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), n);
        let again: Vec<Pipe> = (0..n).map(|_| take_pipe().unwrap()).collect();
        assert_eq!(OPEN.get(), open, "a pooled pipe was made again");
        for p in again {
            give_pipe(p);
        }
    }

    /// The capacity a pipe carries is what the kernel reports for it.
    #[test]
    fn capacity_is_what_the_kernel_granted() {
        let pipe = take_pipe().unwrap();
        assert_eq!(pipe.capacity, fcntl_getpipe_size(&pipe.w).unwrap());
        assert!(pipe.capacity >= 64 * 1024);
        give_pipe(pipe);
    }

    /// With a page budget for one large pipe and one default-size one, the
    /// second is left at the default and a third is refused, so the worker
    /// never asks the kernel for more than its share.
    #[test]
    fn the_page_budget_sizes_and_bounds_pipes() {
        POOL.with(|p| p.borrow_mut().clear());
        let held = PAGES.get();
        PAGE_BUDGET.set(held + pages(PIPE_SIZE) + DEFAULT_PAGES);
        let big = take_pipe().unwrap();
        assert_eq!(big.capacity, PIPE_SIZE);
        let small = take_pipe().unwrap();
        assert_eq!(small.capacity, DEFAULT_PAGES as usize * PAGE);
        assert!(take_pipe().is_err(), "over the page budget");
        assert_eq!(PAGES.get(), held + pages(PIPE_SIZE) + DEFAULT_PAGES);
        drop((big, small));
        assert_eq!(PAGES.get(), held);
        PAGE_BUDGET.set(u64::MAX);
    }

    #[test]
    fn the_soft_limit_is_shared_among_workers() {
        // Debian's default: 16384 pages; three quarters for 2 workers + 1.
        assert_eq!(page_budget(16384, 3, false), 4096);
        assert_eq!(page_budget(0, 3, false), u64::MAX, "0 means no limit");
        assert_eq!(page_budget(16384, 3, true), u64::MAX, "privileged");
        assert_eq!(
            page_budget(16, 64, false),
            DEFAULT_PAGES,
            "at least one pipe"
        );
    }
}
