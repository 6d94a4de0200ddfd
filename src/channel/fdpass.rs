//! The channel's transport: a nonblocking `SOCK_SEQPACKET` socket carrying
//! one frame per datagram, with descriptors attached as `SCM_RIGHTS`.
//!
//! Sends never block: a full socket buffer is `WouldBlock`, which the front
//! takes as "this worker is busy, pick another". Received descriptors are
//! `OwnedFd`s, marked close-on-exec by the kernel as they arrive.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg,
    sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{MAX_FDS, MAX_FRAME};

/// Make a channel: two connected, nonblocking, close-on-exec sockets.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    Ok((a, b))
}

/// Ensure a descriptor (for example one inherited by a worker) is in
/// nonblocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}

/// Send one frame and its descriptors without blocking.
pub fn send_raw(sock: BorrowedFd<'_>, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let iov = [io::IoSlice::new(frame)];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let fds = &fds[..fds.len().min(MAX_FDS)];
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("descriptor batch does not fit"));
        }
    }
    let sent = sendmsg(
        sock,
        &iov,
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    if sent != frame.len() {
        // SEQPACKET sends are atomic; a short send would be a kernel bug.
        return Err(io::Error::other("short send on a seqpacket socket"));
    }
    Ok(())
}

/// A send error that says "not now" rather than "gone": the kernel is
/// short of memory (ENOBUFS, ENOMEM) or of in-flight descriptors
/// (ETOOMANYREFS). Retry after a pause.
pub fn is_transient(err: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(err.raw_os_error(), Some(c) if [Errno::NOBUFS, Errno::NOMEM, Errno::TOOMANYREFS]
        .iter()
        .any(|e| e.raw_os_error() == c))
}

/// What one receive produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame of this many bytes (at the front of the buffer).
    Frame(usize),
    /// The peer closed its end.
    Closed,
}

/// A frame that arrived, but not whole. Carried inside the `io::Error`
/// (kind `InvalidData`) that [`recv_raw`] returns for it; [`damage`] gets
/// it back. The channel itself is fine: the next frame can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damaged {
    /// The frame (`bytes` long, intact at the front of the buffer) came
    /// with more descriptors than could be received: some were dropped.
    #[error("descriptors were dropped in transit (out of file descriptors?)")]
    Descriptors { bytes: usize },
    /// The frame was longer than the buffer; its tail is lost.
    #[error("frame larger than the channel limit")]
    Truncated,
}

/// The damage a receive error reports, if it is one of [`Damaged`].
pub fn damage(err: &io::Error) -> Option<Damaged> {
    err.get_ref()?.downcast_ref::<Damaged>().copied()
}

/// Receive one frame without blocking. Descriptors it carried are appended
/// to `fds`. A frame or descriptor list cut short by the kernel is an error
/// carrying [`Damaged`] (the descriptors that did arrive are still
/// returned, to be closed).
pub fn recv_raw(
    sock: BorrowedFd<'_>,
    buf: &mut [u8; MAX_FRAME],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg(
        sock,
        &mut iov,
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Damaged::Truncated,
        ));
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Damaged::Descriptors { bytes: msg.bytes },
        ));
    }
    if msg.bytes == 0 {
        // We never send empty frames, so a zero-length read is end of stream.
        return Ok(Received::Closed);
    }
    Ok(Received::Frame(msg.bytes))
}

/// A channel end registered with the tokio reactor, for readability only.
///
/// Writability is asked for only while a send waits for room (see
/// [`Channel::writable`]): registered for it all the time, edge-triggered,
/// the sender would get an event, and a wake-up if it sleeps, every time
/// the peer reads a frame.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Register a nonblocking channel end. Must run inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        set_nonblocking(fd.as_fd())?;
        Ok(Channel {
            fd: crate::sys::register(fd, Interest::READABLE)?,
        })
    }

    /// Send now or fail with `WouldBlock` (the socket buffer is full).
    pub fn try_send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        send_raw(self.fd.get_ref().as_fd(), frame, fds)
    }

    /// [`Channel::try_send`] for descriptors the caller owns, without
    /// building a list of borrows on the heap.
    pub fn try_send_owned(&self, frame: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let Some(first) = fds.first() else {
            return self.try_send(frame, &[]);
        };
        let fds = &fds[..fds.len().min(MAX_FDS)];
        let mut borrowed = [first.as_fd(); MAX_FDS];
        for (b, fd) in borrowed.iter_mut().zip(fds) {
            *b = fd.as_fd();
        }
        self.try_send(frame, &borrowed[..fds.len()])
    }

    /// Send, waiting for room in the socket buffer.
    pub async fn send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            match self.try_send(frame, fds) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                result => return result,
            }
        }
    }

    /// Wait until the socket buffer has room again (after a `WouldBlock`).
    ///
    /// A second descriptor of the same socket is registered for
    /// writability for as long as the wait lasts (a registration's interest
    /// cannot change in tokio). Registering reports the socket's state at
    /// that moment, so room made between the failed send and this call is
    /// not missed, and a socket that is still full waits for the peer to
    /// read.
    pub async fn writable(&self) -> io::Result<()> {
        let dup = self.fd.get_ref().try_clone()?;
        let waiter = crate::sys::register(dup, Interest::WRITABLE)?;
        let _ready = waiter.writable().await?;
        Ok(())
    }

    /// Receive one frame, waiting for it.
    pub async fn recv(
        &self,
        buf: &mut [u8; MAX_FRAME],
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_raw(fd.get_ref().as_fd(), buf, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receive one frame, waiting for it; but once one may be there, first
    /// await whatever `gate` returns until it returns `None` (the front
    /// frozen for an upgrade must not take frames its successor is to
    /// read).
    pub async fn recv_gated<F>(
        &self,
        buf: &mut [u8; MAX_FRAME],
        fds: &mut Vec<OwnedFd>,
        mut gate: impl FnMut() -> Option<F>,
    ) -> io::Result<Received>
    where
        F: std::future::Future<Output = ()>,
    {
        loop {
            let mut guard = self.fd.readable().await?;
            while let Some(wait) = gate() {
                wait.await;
            }
            match guard.try_io(|fd| recv_raw(fd.get_ref().as_fd(), buf, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receive one frame if one is queued (`WouldBlock` otherwise).
    pub fn try_recv(
        &self,
        buf: &mut [u8; MAX_FRAME],
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<Received> {
        recv_raw(self.fd.get_ref().as_fd(), buf, fds)
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}
