//! One active health check, on the wire: connect (from a source address
//! when one is set), write a PROXY header saying "no client" to a
//! `send-proxy` backend, write `--health-send`, then read until the
//! backend's first bytes decide `--health-expect`: all of them equal
//! (pass), one differs (fail), or the connection ends or the check
//! timeout passes first (fail). What is read is bounded: at most
//! [`READ_LIMIT`] bytes past the expected prefix, so a mismatch can show
//! what came instead.
//!
//! Every failure says why, in words for the log and `ctl backends`: the
//! connect refused, reset or timed out, or what the backend sent (escaped
//! and cut, `config::escape::show`) against what was expected.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{Instant, timeout_at};

use crate::config::escape::show;
use crate::proxy_protocol::{Header, Version};

/// Most bytes read in one check beyond the expected prefix.
const READ_LIMIT: usize = 128;
/// Most bytes of what a backend sent shown in a reason.
const SHOWN: usize = 64;

/// What one check does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub send_proxy: Option<Version>,
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
    pub timeout: Duration,
}

/// Where a check stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    Sending,
    Reading,
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Refused,
    /// Reset (or another error) while connecting, sending or reading, with
    /// what had been read.
    Error {
        stage: Stage,
        reset: bool,
        cause: String,
        got: Vec<u8>,
    },
    Timeout {
        stage: Stage,
        after: Duration,
        got: Vec<u8>,
    },
    /// The backend closed before the expected bytes were all there.
    Closed {
        got: Vec<u8>,
        expect: Vec<u8>,
    },
    Mismatch {
        got: Vec<u8>,
        expect: Vec<u8>,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = |s: &Stage| match s {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending",
            Stage::Reading => "waiting for the reply",
        };
        let got = |g: &[u8]| {
            if g.is_empty() {
                String::new()
            } else {
                format!(" (got '{}')", show(g, SHOWN))
            }
        };
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Error {
                stage: s,
                reset: true,
                got: g,
                ..
            } => write!(f, "connection reset while {}{}", stage(s), got(g)),
            Failure::Error {
                stage: s,
                cause,
                got: g,
                ..
            } => write!(f, "error while {}: {cause}{}", stage(s), got(g)),
            Failure::Timeout {
                stage: s,
                after,
                got: g,
            } => write!(
                f,
                "timeout while {} ({}){}",
                stage(s),
                humantime::format_duration(*after),
                got(g)
            ),
            Failure::Closed { got: g, expect } if g.is_empty() => {
                write!(
                    f,
                    "closed without a reply (expected '{}')",
                    show(expect, SHOWN)
                )
            }
            Failure::Closed { got: g, expect } => write!(
                f,
                "closed after '{}' (expected '{}')",
                show(g, SHOWN),
                show(expect, SHOWN)
            ),
            Failure::Mismatch { got: g, expect } => write!(
                f,
                "expected '{}', got '{}'",
                show(expect, SHOWN),
                show(g, SHOWN)
            ),
        }
    }
}

fn error(stage: Stage, err: &std::io::Error, got: &[u8]) -> Failure {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused if stage == Stage::Connecting => Failure::Refused,
        kind => Failure::Error {
            stage,
            reset: matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            cause: err.to_string(),
            got: got.to_vec(),
        },
    }
}

/// Run one check to its verdict.
pub async fn check(plan: &Plan) -> Result<(), Failure> {
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let timed_out = |stage, got: &[u8]| Failure::Timeout {
        stage,
        after: plan.timeout,
        got: got.to_vec(),
    };
    let connect = async {
        let socket = if plan.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        if let Some(ip) = plan.source {
            crate::sys::bind_source(&socket, ip)?;
        }
        socket.connect(plan.addr).await
    };
    let mut stream = match timeout_at(deadline, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(error(Stage::Connecting, &e, &[])),
        Err(_) => return Err(timed_out(Stage::Connecting, &[])),
    };
    let mut out = Vec::new();
    if let Some(v) = plan.send_proxy {
        out.extend_from_slice(&Header::Local.encode(v));
    }
    out.extend_from_slice(&plan.send);
    if !out.is_empty() {
        match timeout_at(deadline, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(error(Stage::Sending, &e, &[])),
            Err(_) => return Err(timed_out(Stage::Sending, &[])),
        }
    }
    if plan.expect.is_empty() {
        return Ok(());
    }
    let expect = &plan.expect[..];
    let mut got = Vec::with_capacity(expect.len() + READ_LIMIT);
    let mut buf = vec![0u8; expect.len() + READ_LIMIT];
    loop {
        let room = expect.len() + READ_LIMIT - got.len();
        let n = match timeout_at(deadline, stream.read(&mut buf[..room])).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(error(Stage::Reading, &e, &got)),
            Err(_) => return Err(timed_out(Stage::Reading, &got)),
        };
        if n == 0 {
            return Err(Failure::Closed {
                got,
                expect: expect.to_vec(),
            });
        }
        got.extend_from_slice(&buf[..n]);
        let k = got.len().min(expect.len());
        if got[..k] != expect[..k] {
            return Err(Failure::Mismatch {
                got,
                expect: expect.to_vec(),
            });
        }
        if k == expect.len() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
