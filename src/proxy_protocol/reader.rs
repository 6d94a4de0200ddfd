//! Reading one header off a connection without blocking the event loop
//! and without taking an application byte out of the socket.
//!
//! The reader looks with `MSG_PEEK` until [`decode`] finds a whole header,
//! then reads exactly that many bytes. A peek that finds an incomplete
//! header leaves the bytes queued, so the socket stays readable; the
//! reader therefore reports "would block" from inside
//! [`TcpStream::try_io`], which clears tokio's readiness unless new data
//! arrived since it was sampled, and waits for the next arrival instead of
//! spinning. A pending connection holds a [`PEEK_LEN`]-byte buffer; only a
//! v2 header longer than that (large TLVs) allocates, up to
//! [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN).

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
    /// A whole header: consume its bytes.
    Header(Parsed),
    /// A v2 header longer than the peek buffer, of this many bytes.
    Long(usize),
    Invalid(HeaderError),
    Eof,
}

async fn read(stream: &TcpStream) -> Result<Parsed, HeaderError> {
    let mut buf = [0u8; PEEK_LEN];
    loop {
        let ready = stream.ready(Interest::READABLE).await.map_err(io_error)?;
        let look = stream.try_io(Interest::READABLE, || {
            let (n, _) = rustix::net::recv(stream, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
            if n == 0 {
                return Ok(Look::Eof);
            }
            match decode(&buf[..n]) {
                Ok(Decoded::Complete(parsed)) => Ok(Look::Header(parsed)),
                Ok(Decoded::NeedMore { total: Some(t) }) if t > PEEK_LEN => Ok(Look::Long(t)),
                // A header of up to PEEK_LEN bytes, not all here yet: wait
                // for more (clears readiness unless more came meanwhile).
                Ok(Decoded::NeedMore { .. }) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Ok(Look::Invalid(e)),
            }
        });
        match look {
            Ok(Look::Header(parsed)) => {
                consume(stream, &mut buf[..parsed.len]).await?;
                return Ok(parsed);
            }
            Ok(Look::Long(total)) => return read_long(stream, total).await,
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

/// A v2 header whose fixed part announced `total` bytes: read exactly
/// those (the length is known, so nothing past the header is taken).
async fn read_long(stream: &TcpStream, total: usize) -> Result<Parsed, HeaderError> {
    let mut header = vec![0u8; total];
    consume(stream, &mut header).await?;
    match decode(&header)? {
        Decoded::Complete(parsed) if parsed.len == total => Ok(parsed),
        _ => Err(HeaderError::Malformed(
            "header length changed while reading",
        )),
    }
}

/// Read exactly `buf.len()` bytes.
async fn consume(stream: &TcpStream, buf: &mut [u8]) -> Result<(), HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await.map_err(io_error)?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(HeaderError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

fn io_error(e: io::Error) -> HeaderError {
    HeaderError::Io(e.kind())
}
