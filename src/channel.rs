//! The channel between the front and one worker: its messages and framing.
//!
//! Each worker has one `SOCK_SEQPACKET` Unix socket pair, made by the front
//! before the worker is spawned. Every frame is one datagram, so message
//! boundaries are kept by the kernel and file descriptors (the accepted
//! client connections) travel in the same `sendmsg` as the frame that
//! describes them.
//!
//! A frame is `[VERSION, kind, payload...]`, little-endian, at most
//! [`MAX_FRAME`] bytes. [`Down`] flows front → worker, [`Up`] worker → front.
//! Decoding never panics: every read is bounds-checked and a frame that does
//! not parse is an error naming what was wrong (property tests in
//! `channel/tests/props.rs` feed it arbitrary and damaged bytes; the
//! `channel_down` and `channel_up` fuzz targets under `fuzz/` do so longer).

mod codec;
pub mod fdpass;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use codec::FrameError;

/// Protocol version: the first byte of every frame.
pub const VERSION: u8 = 1;
/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most descriptors carried by one frame (the kernel allows 253).
pub const MAX_FDS: usize = 64;
/// Backend id meaning "none" (a connection that never reached a backend).
pub const NO_BACKEND: u32 = u32::MAX;

/// A message from the front to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Down {
    /// The settings and backend table to use from now on. Always the first
    /// frame a worker receives; resent whenever either changes.
    Config(WorkerConfig),
    /// Accepted client connections, one [`Handoff`] per descriptor carried
    /// by the same frame, in order.
    Conns(Vec<Handoff>),
    /// Stop: finish the connections in flight within `timeout`, then exit.
    Drain { timeout: Duration },
}

/// What a worker needs to proxy: timeouts and where the backends are.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long to keep serving after the front is gone.
    pub drain_timeout: Duration,
    /// When to move bytes with splice(2).
    pub splice: Splice,
    pub backends: Vec<BackendEntry>,
}

/// When workers forward with splice(2) instead of buffered copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splice {
    /// Always copy through a buffer.
    Off,
    /// Always splice.
    On,
    /// Copy small chunks, splice bulk: a direction switches to splice once
    /// a read fills a whole buffer, and back when chunks get small.
    #[default]
    Auto,
}

impl std::str::FromStr for Splice {
    type Err = String;

    fn from_str(s: &str) -> Result<Splice, String> {
        match s.trim() {
            "off" | "false" | "no" => Ok(Splice::Off),
            "on" | "true" | "yes" => Ok(Splice::On),
            "auto" => Ok(Splice::Auto),
            other => Err(format!("'{other}' is not auto, on or off")),
        }
    }
}

/// One backend as the worker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEntry {
    /// Stable id assigned by the front; never reused while it runs.
    pub id: u32,
    pub addr: SocketAddr,
    /// May be used as a fallback when the chosen backend fails to connect.
    pub routable: bool,
}

/// One connection handed to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// Front-assigned id, for log correlation.
    pub conn: u64,
    /// The backend the front chose.
    pub backend: u32,
    /// The client's address, as `accept` returned it (spares the worker a
    /// `getpeername`).
    pub client: SocketAddr,
}

/// A message from a worker to the front.
#[derive(Debug, Clone, PartialEq)]
pub enum Up {
    /// The worker has its config and is taking connections.
    Ready { pid: u32 },
    /// Lifecycle events, batched.
    Events(Vec<Event>),
}

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Refused,
    Timeout,
    Other,
}

/// A connection lifecycle event reported by a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Connected to `backend` (the front had chosen `planned`).
    Opened {
        planned: u32,
        backend: u32,
        connect_time: Duration,
    },
    /// One connect attempt to `backend` failed.
    ConnectFailed { backend: u32, reason: FailReason },
    /// A connection ended. `backend` is the one it was counted on: the
    /// backend it reached, or the planned one when `opened` is false.
    Closed {
        backend: u32,
        opened: bool,
        client: IpAddr,
        duration: Duration,
    },
    /// Bytes moved since the last report for `backend`: `up` from clients
    /// to the backend, `down` from the backend to clients.
    Bytes { backend: u32, up: u64, down: u64 },
    /// The worker took `count` handed-off connections out of its channel
    /// (lets the front bound how many wait unread for one worker).
    Received { count: u32 },
}

impl Down {
    /// Encode into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        codec::encode_down(self, out)
    }

    pub fn decode(frame: &[u8]) -> Result<Down, FrameError> {
        codec::decode_down(frame)
    }

    /// Encode `Down::Conns(conns)` without building the enum.
    pub fn encode_conns(conns: &[Handoff], out: &mut Vec<u8>) -> Result<(), FrameError> {
        codec::encode_conns(conns, out)
    }
}

impl Up {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        codec::encode_up(self, out)
    }

    pub fn decode(frame: &[u8]) -> Result<Up, FrameError> {
        codec::decode_up(frame)
    }
}

/// Bytes one encoded [`Event`] takes at most, so a batch can be cut into
/// frames that fit [`MAX_FRAME`].
pub const EVENT_MAX_LEN: usize = 1 + 4 + 1 + 17 + 8;
/// Bytes one encoded [`Handoff`] takes at most (IPv6 client).
pub const HANDOFF_LEN: usize = 8 + 4 + ADDR_MAX_LEN;
/// Bytes an encoded socket address takes at most.
pub const ADDR_MAX_LEN: usize = 1 + 16 + 2 + 4;

#[cfg(test)]
mod tests;
