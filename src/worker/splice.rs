//! Zero-copy forwarding on Linux: bytes move socket → pipe → socket with
//! splice(2) and never enter user space.
//!
//! Each direction takes a pipe from a small per-thread pool only when its
//! source is readable, and gives it back as soon as the pipe is empty
//! again, so an idle connection holds no pipe at all. Pipes are enlarged
//! with F_SETPIPE_SZ (where the limits allow) so a bulk transfer needs few
//! system calls. `SPLICE_F_MORE` is never set: it would make the kernel
//! hold back small writes (the latency trap). Readiness comes from tokio
//! (`try_io` clears it on EAGAIN), so the event loop is never blocked.
//!
//! If a pipe cannot be had (descriptor limit), a direction falls back to
//! the buffered copy for that chunk.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for (the kernel may keep its default if limited).
pub const PIPE_SIZE: usize = 256 * 1024;
/// Pipes kept for reuse per worker thread.
const POOL_MAX: usize = 32;

/// A pipe: bytes written to `w` are read from `r`.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    capacity: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    /// Pipes open in this worker (pooled or in use), and the most allowed.
    static OPEN: Cell<u64> = const { Cell::new(0) };
    static LIMIT: Cell<u64> = Cell::new(crate::sys::fd_plan(crate::sys::nofile_limit().0.unwrap_or(u64::MAX)).pipes);
}

fn new_pipe() -> io::Result<Pipe> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let capacity = fcntl_setpipe_size(&w, PIPE_SIZE).unwrap_or(64 * 1024);
    Ok(Pipe { r, w, capacity })
}

/// A pipe from the pool, or a new one while under the worker's pipe
/// allowance (see `sys::fd_plan`); an error means "copy through a buffer".
pub fn take_pipe() -> io::Result<Pipe> {
    if let Some(pipe) = POOL.with(|p| p.borrow_mut().pop()) {
        return Ok(pipe);
    }
    if OPEN.get() >= LIMIT.get() {
        return Err(io::Error::other("pipe allowance used up"));
    }
    let pipe = new_pipe()?;
    OPEN.set(OPEN.get() + 1);
    Ok(pipe)
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.set(OPEN.get().saturating_sub(1));
    }
}

/// Return an empty pipe to the pool (or close it if the pool is full).
pub fn give_pipe(pipe: Pipe) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    });
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
        dst.writable().await?;
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

    #[test]
    fn pipes_are_pooled_and_bounded() {
        let pipes: Vec<Pipe> = (0..POOL_MAX + 4).map(|_| take_pipe().unwrap()).collect();
        assert!(pipes[0].capacity >= 64 * 1024);
        for p in pipes {
            give_pipe(p);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_MAX);
        let again = take_pipe().unwrap();
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_MAX - 1);
        give_pipe(again);
    }
}
