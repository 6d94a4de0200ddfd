//! Waiting for a connection's ClientHello without blocking the event loop
//! and without taking a byte out of the socket.
//!
//! Every look is a `recv(MSG_PEEK)` of everything queued so far (up to
//! [`MAX_HELLO_LEN`]) into a per-thread scratch buffer, so a waiting
//! connection holds no buffer of its own, only its place in the loop. A
//! look that is not enough leaves the bytes queued and the socket
//! readable; the reader then reports "would block" from inside
//! [`TcpStream::try_io`], which clears tokio's readiness unless new data
//! arrived since it was sampled, and waits for the next arrival instead
//! of spinning. [`parse`] says how many bytes the next step needs: until
//! that many are queued, a look does not parse at all.
//!
//! The first look is made straight away, before waiting: a hello sent in
//! one segment before the reader starts (the usual case, and always with
//! `TCP_DEFER_ACCEPT`) costs one `recv` and no trip through the event
//! loop. [`try_peek_client_hello`] is that look alone, on any socket, for
//! a caller that registers the socket with its loop only when it must
//! wait. Each segment that arrives while the reader waits costs one
//! wake-up and one `recv`, plus one `recv` that finds nothing at the
//! first wake-up (tokio may report a newly registered socket readable
//! once before any data). Nothing is consumed: the backend receives
//! every byte.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Hello, MAX_HELLO_LEN, Parse, parse};

/// How long a connection may take to send its ClientHello (`sni-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// Where each look copies the queued bytes; only used inside one
    /// synchronous look, so one per thread serves every connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_HELLO_LEN].into_boxed_slice());
}

/// A decided ClientHello and what deciding it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked {
    pub hello: Hello,
    /// Bytes queued at the look that decided (at most [`MAX_HELLO_LEN`]).
    pub bytes: usize,
    /// `recv(MSG_PEEK)` calls made.
    pub peeks: u32,
}

/// Why a connection's first bytes could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    #[error("no complete ClientHello within the SNI timeout ({bytes} bytes received)")]
    Timeout { bytes: usize },
    /// The client shut its side before the hello was complete.
    #[error(
        "the client closed the connection before its ClientHello was complete ({bytes} bytes received)"
    )]
    Closed { bytes: usize },
    /// Reading from the socket failed (a reset, for example).
    #[error("reading the ClientHello failed: {0}")]
    Io(io::ErrorKind),
}

impl PeekError {
    /// Every value [`PeekError::reason`] returns.
    pub const REASONS: [&'static str; 3] = ["timeout", "closed", "io"];

    /// A stable snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            PeekError::Timeout { .. } => "timeout",
            PeekError::Closed { .. } => "closed",
            PeekError::Io(_) => "io",
        }
    }
}

/// Wait until the bytes queued on `stream` decide what its ClientHello
/// says, for at most `timeout`. Consumes nothing, whatever the outcome.
pub async fn peek_client_hello(stream: &TcpStream, timeout: Duration) -> Result<Peeked, PeekError> {
    let mut seen = Seen::default();
    match tokio::time::timeout(timeout, wait(stream, &mut seen)).await {
        Ok(Ok(hello)) => Ok(Peeked {
            hello,
            bytes: seen.bytes,
            peeks: seen.peeks,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PeekError::Timeout { bytes: seen.bytes }),
    }
}

/// What the looks so far found.
#[derive(Default)]
struct Seen {
    bytes: usize,
    peeks: u32,
}

/// What one look found.
#[allow(clippy::large_enum_variant)] // built once per connection
enum Look {
    Decided(Hello),
    Eof,
}

/// One look, without waiting: the hello if the queued bytes decide it,
/// `None` if the connection must wait for more. For a caller that wants
/// to skip registering the socket with its event loop when the hello is
/// already there (the usual case): one `recv`, nothing else.
pub fn try_peek_client_hello(socket: BorrowedFd<'_>) -> Result<Option<Peeked>, PeekError> {
    let mut seen = Seen::default();
    match look(socket, &mut seen, &mut 1) {
        Ok(Look::Decided(hello)) => Ok(Some(Peeked {
            hello,
            bytes: seen.bytes,
            peeks: seen.peeks,
        })),
        Ok(Look::Eof) => Err(PeekError::Closed { bytes: 0 }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Peek at what is queued; parse it if it holds the `need` bytes the
/// parse asked for last. "Would block" when it does not decide.
fn look(socket: BorrowedFd<'_>, seen: &mut Seen, need: &mut usize) -> io::Result<Look> {
    SCRATCH.with_borrow_mut(|buf| {
        seen.peeks += 1;
        let (n, _) = rustix::net::recv(socket, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
        seen.bytes = n;
        if n == 0 {
            return Ok(Look::Eof);
        }
        if n >= *need {
            match parse(&buf[..n]) {
                Parse::Done(hello) => return Ok(Look::Decided(hello)),
                Parse::NeedMore(more) => *need = more,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    })
}

async fn wait(stream: &TcpStream, seen: &mut Seen) -> Result<Hello, PeekError> {
    // The bytes the next step of the parse needs.
    let mut need = 1;
    // A first look straight at the socket: a socket just registered with
    // the event loop is not known to be readable until the loop's next
    // turn, which would cost a trip through it even when the hello is
    // already queued.
    match look(stream.as_fd(), seen, &mut need) {
        Ok(Look::Decided(hello)) => return Ok(hello),
        Ok(Look::Eof) => return Err(PeekError::Closed { bytes: 0 }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(io_error(e)),
    }
    loop {
        let ready = stream.ready(Interest::READABLE).await.map_err(io_error)?;
        // Not deciding reports "would block", which clears the readiness
        // unless more came meanwhile: the next turn waits for new bytes.
        let look = stream.try_io(Interest::READABLE, || look(stream.as_fd(), seen, &mut need));
        match look {
            Ok(Look::Decided(hello)) => return Ok(hello),
            Ok(Look::Eof) => return Err(PeekError::Closed { bytes: 0 }),
            // The client has shut its side: what is queued is all there
            // will ever be, and it does not decide.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(PeekError::Closed { bytes: seen.bytes });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
}

fn io_error(e: io::Error) -> PeekError {
    PeekError::Io(e.kind())
}
