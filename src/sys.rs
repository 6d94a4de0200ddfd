//! Operating-system edges: the only module allowed to use `unsafe`.
//!
//! Everything else in the crate goes through safe wrappers (rustix, socket2,
//! std). What lives here needs `unsafe` because the standard library exposes
//! it only that way: running code in the child between `fork` and `exec`,
//! and one socket option no safe crate wraps (TCP_DEFER_ACCEPT).
//! The file descriptor limit helpers are here too because they describe the
//! process's relationship with the kernel, not any one role.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;

use rustix::io::FdFlags;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Make `fd` survive `exec` in the child that `cmd` starts, and only there.
///
/// Every descriptor the crate opens is close-on-exec, so a spawned worker
/// inherits nothing by accident. For the one descriptor a worker must
/// inherit (its end of the channel) the flag is cleared in the child after
/// `fork` and before `exec`, so no other child can ever see it, even if two
/// spawns raced.
pub fn inherit_fd(cmd: &mut std::process::Command, fd: RawFd) {
    let clear = move || -> std::io::Result<()> {
        // SAFETY: `fd` is a descriptor the parent keeps open until after
        // `spawn` returns, so it is valid in the child (fork copies the
        // table). We only borrow it for the duration of one fcntl call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_setfd(borrowed, FdFlags::empty())?;
        Ok(())
    };
    // SAFETY: the closure runs in the forked child of a possibly
    // multi-threaded parent, where only async-signal-safe operations are
    // allowed. It performs a single fcntl(2) system call through rustix
    // (no allocation, no locks, no panics on the success or error path:
    // the error is returned by value), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(clear);
    }
}

/// The soft and hard limit on open file descriptors.
pub fn nofile_limit() -> (Option<u64>, Option<u64>) {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    (current, maximum)
}

/// Raise the soft limit on open file descriptors to the hard limit and
/// return the limit now in force (`u64::MAX` when unlimited).
///
/// A proxy holds two descriptors per connection; the default soft limit of
/// 1024 would cap it at a few hundred connections. Workers inherit the
/// raised limit.
pub fn raise_nofile_limit() -> u64 {
    let (current, maximum) = nofile_limit();
    if current != maximum {
        let raised = Rlimit {
            current: maximum,
            maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(cause = %err, "could not raise the open file limit");
        }
    }
    nofile_limit().0.unwrap_or(u64::MAX)
}

/// Number of descriptors currently open in this process (Linux: /proc).
pub fn open_fd_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Read a static as the loaded file holds it, never what the compiler
/// knows of it: for data a copy of the binary may carry other bytes for
/// (see `stats::layout`).
pub fn read_static<T: Copy>(value: &'static T) -> T {
    // SAFETY: a reference is valid, aligned and initialised for reads,
    // and a static lives for the whole process.
    unsafe { std::ptr::read_volatile(value) }
}

/// The raw number of a descriptor, for passing on a command line.
pub fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

/// Take ownership of a descriptor this process inherited at `exec` (a
/// worker's channel end, whose number came on the command line).
///
/// The caller must have checked that `fd` is open and is not a standard
/// descriptor (0..=2, which `std` owns; see `worker::run`), and nothing
/// else in the process may own it: it was passed for this purpose only and
/// is adopted exactly once, at start.
pub fn adopt_inherited_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is open and above 2 (checked by the caller, through
    // /proc/self/fd) and was inherited for this single owner; no other
    // object in the process refers to it (stdin, stdout and stderr, which
    // `std` uses, are excluded), so creating the unique `OwnedFd` for it is
    // sound.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Types that own their descriptor for their whole life and always report
/// the same one: the only types [`register`] accepts.
pub trait OwnsFd: AsRawFd + sealed::Sealed {}
impl OwnsFd for std::os::fd::OwnedFd {}
impl OwnsFd for std::net::TcpListener {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::os::fd::OwnedFd {}
    impl Sealed for std::net::TcpListener {}
}

/// Register an owned descriptor with the tokio reactor (must run inside a
/// runtime). The descriptor should be in nonblocking mode.
pub fn register<T: OwnsFd>(
    inner: T,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T` is `OwnedFd` or `std::net::TcpListener` (sealed), both of
    // which own their descriptor exclusively, keep it open until dropped and
    // return the same number from every `as_raw_fd` call. The `AsyncFd`
    // takes ownership of `inner`, so the descriptor outlives the
    // registration, as tokio requires.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }
        .map_err(|e| e.into_parts().1)
}

/// Adopt a listening socket passed by the service manager (socket
/// activation: `LISTEN_FDS`, descriptors from 3 up), checking it really is
/// a listening TCP socket.
pub fn adopt_listener(fd: RawFd) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // Validate before taking ownership: fstat through /proc tells whether
    // the number is open at all.
    std::fs::metadata(format!("/proc/self/fd/{fd}"))?;
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process by the service manager for exactly this use; sd_notify's
    // `listen_fds` yields each one once, so nothing else owns it.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
    if socket.r#type()? != socket2::Type::STREAM || !socket.is_listener()? {
        return Err(std::io::Error::other(format!(
            "inherited descriptor {fd} is not a listening stream socket"
        )));
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    let _ = socket.set_tcp_nodelay(true);
    Ok(socket.into())
}

/// A shared, writable mapping of a whole memory file (the statistics
/// table), seen as 64-bit atomic words.
///
/// Every process that maps the same file sees the same words; atomics on
/// shared memory are coherent across processes. The mapping lives until
/// the value is dropped.
pub struct SharedWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    words: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through
// `AtomicU64`, which is `Sync`; nothing in it is tied to a thread.
unsafe impl Send for SharedWords {}
// SAFETY: as above: all access goes through atomics.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Map the first `words` 64-bit words of `fd` (which must be at least
    /// that long) read-write and shared.
    ///
    /// The file must be sealed against shrinking (`F_SEAL_SHRINK`; the seal
    /// is added here if the file allows sealing and has not got it yet):
    /// a file that could be cut shorter after the size check would turn
    /// reads of the mapping into `SIGBUS`. A file that cannot be sealed is
    /// refused.
    pub fn map(fd: BorrowedFd<'_>, words: usize) -> std::io::Result<SharedWords> {
        use rustix::fs::{SealFlags, fcntl_add_seals, fcntl_get_seals};
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        let len = words
            .checked_mul(8)
            .filter(|&l| l > 0)
            .ok_or_else(|| std::io::Error::other("invalid mapping size"))?;
        let sealed = fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        if !sealed {
            fcntl_add_seals(fd, SealFlags::SHRINK).map_err(|e| {
                std::io::Error::other(format!(
                    "memory file cannot be sealed against shrinking: {e}"
                ))
            })?;
        }
        let size = rustix::fs::fstat(fd)?.st_size;
        if u64::try_from(size).map_or(true, |s| s < len as u64) {
            return Err(std::io::Error::other(format!(
                "memory file holds {size} bytes, {len} needed"
            )));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of a
        // file we checked is at least `len` bytes long and sealed against
        // shrinking (above), so every byte of the range is backed for the
        // mapping's whole life; it aliases no Rust object. Only the returned
        // pointer refers to it, owned by the `SharedWords` built below.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = std::ptr::NonNull::new(ptr.cast::<std::sync::atomic::AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(SharedWords { ptr, words })
    }

    /// The mapped words.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `ptr` is page-aligned (so aligned for `AtomicU64`) and
        // points to `words * 8` mapped, readable and writable bytes that
        // stay mapped, and backed (the file is sealed against shrinking,
        // see `map`), until `self` is dropped, which the returned borrow
        // cannot outlive. `AtomicU64` has the layout of `u64` and any bit
        // pattern is valid; other processes change the words only through
        // atomic operations too.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the range is exactly the mapping made in `map`, and no
        // borrow of it can outlive `self` (see `words`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.words * 8) };
    }
}

/// How a worker spends its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// Connections (two sockets each) a worker may hold.
    pub conns: u64,
    /// Pipes (two descriptors each) a worker may have open for splice(2);
    /// beyond this it copies through buffers instead.
    pub pipes: u64,
}

/// Descriptors a worker keeps for itself (channel, epoll, stdio, ...).
const FD_RESERVE: u64 = 64;

/// Split an open-file limit between connections and splice pipes. Pipes
/// are only held while bytes are in flight, so a bounded allowance is
/// enough; every other descriptor serves connections.
pub fn fd_plan(nofile: u64) -> FdPlan {
    let pipes = (nofile / 8).clamp(4, 1024);
    let conns = nofile.saturating_sub(FD_RESERVE + 2 * pipes) / 2;
    FdPlan {
        conns: conns.max(8),
        pipes,
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Run the calling thread (and threads it creates later) on `cpu` only.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(())
}

/// With `--cpu-affinity`: the front's CPU and each worker slot's. The
/// front gets the first allowed CPU to itself; slots take the next ones in
/// turn, wrapping (with more slots than CPUs left, they share).
pub fn cpu_plan(allowed: &[usize], slots: usize) -> Option<(usize, Vec<usize>)> {
    let (&front, _) = allowed.split_first()?;
    let workers = (0..slots)
        .map(|i| allowed[(1 + i) % allowed.len()])
        .collect();
    Some((front, workers))
}

/// Set or clear TCP_DEFER_ACCEPT on a listening socket: with it, the kernel
/// queues a connection for `accept` only once its first data has arrived
/// (or, failing that, after about a second: one SYN-ACK retransmit).
/// Neither rustix nor socket2 exposes this option.
pub fn set_defer_accept(listener: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    let seconds: libc::c_int = i32::from(on);
    // SAFETY: `listener` is a descriptor borrowed for the duration of the
    // call; the option value points at a live `c_int` on this stack frame
    // and the length passed is exactly its size. setsockopt only reads it.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bind `socket` (TCP, not yet connected) to `ip` for an outgoing
/// connection, with `IP_BIND_ADDRESS_NO_PORT` set first: the port is
/// chosen at `connect`, per destination, so one source address is not
/// limited to one ephemeral port range across every backend. Neither
/// rustix nor socket2 exposes this option.
pub fn bind_source(socket: &impl AsFd, ip: std::net::IpAddr) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let fd = socket.as_fd();
    // SAFETY: `fd` is borrowed for the duration of the call; the option
    // value points at a live `c_int` on this stack frame and the length
    // passed is exactly its size. setsockopt only reads it. (The option is
    // at the IP level and applies to IPv6 sockets too.)
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket2::SockRef::from(&fd).bind(&std::net::SocketAddr::new(ip, 0).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_gets_a_cpu_of_its_own_and_workers_take_the_rest_in_turn() {
        assert_eq!(cpu_plan(&[0, 1], 2), Some((0, vec![1, 0])));
        assert_eq!(cpu_plan(&[2, 3, 5, 7], 3), Some((2, vec![3, 5, 7])));
        assert_eq!(cpu_plan(&[4], 2), Some((4, vec![4, 4])));
        assert_eq!(cpu_plan(&[], 2), None);
    }

    #[test]
    fn a_bound_source_takes_no_port_until_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bind_source(&socket, "127.0.0.3".parse().unwrap()).unwrap();
        let before = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(before, "127.0.0.3:0".parse().unwrap());
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), "127.0.0.3".parse::<std::net::IpAddr>().unwrap());
        assert_ne!(peer.port(), 0);
        // The option is an IP-level one; IPv6 sockets take it too.
        let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        bind_source(&v6, "::1".parse().unwrap()).unwrap();
        assert_eq!(
            v6.local_addr().unwrap().as_socket().unwrap(),
            "[::1]:0".parse().unwrap()
        );
    }

    #[test]
    fn the_fd_plan_leaves_most_descriptors_to_connections() {
        let p = fd_plan(1 << 20);
        assert_eq!(p.pipes, 1024);
        assert!(p.conns * 2 + p.pipes * 2 + 64 <= 1 << 20);
        assert_eq!(fd_plan(64), FdPlan { conns: 8, pipes: 8 });
    }
}
