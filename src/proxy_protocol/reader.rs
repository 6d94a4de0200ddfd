//! Reading one header off a connection without blocking the event loop
//! and without taking an application byte out of the socket.
//!
//! The reader looks with `MSG_PEEK` until [`decode`] finds a whole header,
//! then, in the same step and without yielding, reads exactly that many
//! bytes. So a read that is cancelled (the front freezing for an upgrade
//! aborts it, and the new front reads the header anew) has consumed
//! nothing, however the header was split and however long it is. A peek
//! that finds an incomplete header leaves the bytes queued, so the socket
//! stays readable; the reader therefore reports "would block" from inside
//! [`TcpStream::try_io`], which clears tokio's readiness unless new data
//! arrived since it was sampled, and waits for the next arrival instead of
//! spinning. A pending connection holds a [`PEEK_LEN`]-byte buffer; only a
//! v2 header longer than that (large TLVs) gets a buffer of its announced
//! length, up to [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN), and is peeked
//! whole like any other.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Decoded, HeaderError, Parsed, decode};

/// Bytes looked at per peek: every v1 header, and v2 headers with up to
/// 200 bytes of TLVs.
const PEEK_LEN: usize = 256;

/// Read the PROXY header that must begin `stream`, giving up after
/// `timeout`. On success exactly the header's bytes have been consumed:
/// the next read returns the application's first byte. On error the
/// caller should close the connection (some bytes may have been consumed).
pub async fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Parsed, HeaderError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .unwrap_or(Err(HeaderError::Timeout))
}

/// What one look at the socket found.
enum Look {
    /// A whole header, and its bytes consumed.
    Header(Parsed),
    /// A v2 header longer than the peek buffer, of this many bytes.
    Long(usize),
    Invalid(HeaderError),
    Eof,
}

async fn read(stream: &TcpStream) -> Result<Parsed, HeaderError> {
    let mut small = [0u8; PEEK_LEN];
    // Only for a v2 header longer than `small`: exactly its length.
    let mut long: Vec<u8> = Vec::new();
    loop {
        let ready = stream.ready(Interest::READABLE).await.map_err(io_error)?;
        let buf: &mut [u8] = if long.is_empty() {
            &mut small
        } else {
            &mut long
        };
        let look = stream.try_io(Interest::READABLE, || {
            let (n, _) = rustix::net::recv(stream, &mut *buf, rustix::net::RecvFlags::PEEK)?;
            if n == 0 {
                return Ok(Look::Eof);
            }
            match decode(&buf[..n]) {
                // Every byte of it is queued: take them now, before any
                // await, so a read cancelled at an await has taken none.
                Ok(Decoded::Complete(parsed)) => {
                    take(stream, &mut buf[..parsed.len])?;
                    Ok(Look::Header(parsed))
                }
                Ok(Decoded::NeedMore { total: Some(t) }) if t > buf.len() => Ok(Look::Long(t)),
                // Not all here yet: wait for more (clears readiness
                // unless more came meanwhile).
                Ok(Decoded::NeedMore { .. }) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Ok(Look::Invalid(e)),
            }
        });
        match look {
            Ok(Look::Header(parsed)) => return Ok(parsed),
            // Peek again with room for all of it (at once: the bytes that
            // told the length are still queued).
            Ok(Look::Long(total)) => long = vec![0u8; total],
            Ok(Look::Invalid(e)) => return Err(e),
            Ok(Look::Eof) => return Err(HeaderError::Truncated),
            // The peer has shut down its side: the bytes queued are all
            // there will ever be, and they are not a whole header.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(HeaderError::Truncated);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// Read exactly `buf.len()` bytes that a peek has just seen queued (so
/// the kernel hands them all over at once; a short read would mean the
/// queue changed under us, and is an error rather than a wait).
fn take(stream: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let (n, _) = rustix::net::recv(stream, &mut buf[filled..], rustix::net::RecvFlags::empty())
            // Not "would block": the caller would then wait and peek again
            // with part of the header gone.
            .map_err(|e| match e {
                rustix::io::Errno::AGAIN => io::Error::other("queued header bytes vanished"),
                e => e.into(),
            })?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(())
}

fn io_error(e: io::Error) -> HeaderError {
    HeaderError::Io(e.kind())
}
