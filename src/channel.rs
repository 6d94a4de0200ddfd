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
//! The channel carries only what needs the other side to act: handoffs,
//! configs, access-log settings and drains one way; readiness, connect
//! failures, drains and wake-ups the other. Counting is done in the statistics table
//! ([`crate::stats`]), not with messages.
//! Decoding never panics: every read is bounds-checked and a frame that does
//! not parse is an error naming what was wrong (property tests in
//! `channel/tests/props.rs` feed it arbitrary and damaged bytes; the
//! `channel_down` and `channel_up` fuzz targets under `fuzz/` do so longer).

mod codec;
pub mod fdpass;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use codec::FrameError;

/// Protocol version: the first byte of every frame. An upgrade needs the
/// old and the new build to speak the same version (the new front talks to
/// the old workers until they are replaced).
pub const VERSION: u8 = 3;
/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most descriptors carried by one frame (the kernel allows 253).
pub const MAX_FDS: usize = 64;
/// Backend id meaning "none" (a connection that never reached a backend).
pub const NO_BACKEND: u32 = u32::MAX;
/// Longest build id either side sends.
pub const MAX_BUILD_LEN: usize = 64;

/// A message from the front to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Down {
    /// Always the first frame: the worker's cell in the statistics table,
    /// whose descriptor rides with this frame, and the front's build id
    /// (a worker of another build refuses to run).
    Hello { cell: u32, build: String },
    /// The settings and backend table to use from now on. The second frame
    /// a worker receives; resent whenever either changes.
    Config(WorkerConfig),
    /// Accepted client connections, one [`Handoff`] per descriptor carried
    /// by the same frame, in order.
    Conns(Vec<Handoff>),
    /// Stop: finish the connections in flight within `timeout`, then exit.
    Drain { timeout: Duration },
    /// Write the access log to `target` from now on, as JSON lines or
    /// text: sent after the first config, again when the setting changes,
    /// and again to reopen the file (logrotate). A file that cannot be
    /// opened leaves the worker writing where it wrote before.
    AccessLog { target: AccessLog, json: bool },
}

/// Where the access log goes (`--access-log`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// No access log.
    #[default]
    Off,
    /// Each worker's standard error (shared with the front's).
    Stderr,
    /// A file every worker opens for appending (an absolute path).
    File(PathBuf),
}

/// Longest access-log path the channel carries (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// What a worker needs to proxy: timeouts and where the backends are.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Increases with every config the front sends; the worker writes the
    /// last one it applied to its statistics cell (so the front knows when
    /// a freed backend column is no longer used anywhere).
    pub seq: u64,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long to keep serving after the front is gone.
    pub drain_timeout: Duration,
    /// Close a client that sent no byte within this; `None`: never.
    pub first_byte_timeout: Option<Duration>,
    /// When to move bytes with splice(2).
    pub splice: Splice,
    /// Report each finished connection's client address (the front keeps
    /// per-client counts only with `--max-conns-per-ip`).
    pub report_closes: bool,
    pub backends: Vec<BackendEntry>,
    /// The source address lists backends connect from (`--source`,
    /// `source=`), each once; a backend names its list by index.
    pub sources: Vec<Vec<std::net::IpAddr>>,
    /// The per-connection settings of the services other than the one
    /// the fields above describe; a backend names its service's by index.
    pub services: Vec<ServiceConns>,
}

/// A service's own per-connection settings, for the connections to its
/// backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConns {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Close a client that sent no byte within this; `None`: never.
    pub first_byte_timeout: Option<Duration>,
}

/// Most services a worker config describes.
pub const MAX_SERVICES: usize = 256;

/// When workers forward with splice(2) instead of buffered copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Its column in the statistics table.
    pub column: u16,
    pub addr: SocketAddr,
    /// May be used as a fallback when the chosen backend fails to connect.
    pub routable: bool,
    /// Write a PROXY protocol header of this version right after
    /// connecting, before any client byte.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// Connect from the addresses of this list of
    /// [`WorkerConfig::sources`], in turn; `None`: the system's choice.
    pub source: Option<u16>,
    /// Its service's settings: this entry of [`WorkerConfig::services`];
    /// `None`: the config's own.
    pub service: Option<u16>,
    /// Has a connection limit (`maxconn=`), counted by the front: a
    /// connection on it that ends or moves away is reported
    /// ([`Event::Released`]) at once, and the worker never falls back to
    /// it on its own (it gives the connection back, [`Up::Returned`]).
    pub limited: bool,
    /// Its service has connection limits of its own, which the front
    /// counts per connection: the end of a connection planned on it is
    /// reported ([`Event::Ended`]).
    pub counted: bool,
}

/// Most backends a handoff names to fall back on (`--retries`).
pub const MAX_FALLBACKS: usize = 4;

/// Most source addresses one list of the worker table holds (one
/// backend's `source=`, or `--source`).
pub const MAX_SOURCES: usize = 16;

/// Backends to try, in order, when the chosen one cannot be reached: the
/// policy's next choices, at most `--retries` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fallbacks {
    len: u8,
    ids: [u32; MAX_FALLBACKS],
}

impl Fallbacks {
    /// The first [`MAX_FALLBACKS`] of `ids`.
    pub fn new(ids: &[u32]) -> Fallbacks {
        let mut f = Fallbacks::default();
        for &id in ids.iter().take(MAX_FALLBACKS) {
            f.ids[f.len as usize] = id;
            f.len += 1;
        }
        f
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len as usize]
    }
}

/// One connection handed to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// Front-assigned id, for log correlation.
    pub conn: u64,
    /// The backend the front chose.
    pub backend: u32,
    /// Where to try next if it cannot be reached.
    pub fallbacks: Fallbacks,
    /// The client's address: as `accept` returned it (spares the worker a
    /// `getpeername`), or for a connection from an `--accept-proxy` source,
    /// the source its PROXY header named.
    pub client: SocketAddr,
    /// The address the client connected to, when the socket cannot tell:
    /// the destination of an accepted PROXY header. `None`: the socket's
    /// local address (what a `send-proxy` header then carries).
    pub destination: Option<SocketAddr>,
}

/// A message from a worker to the front.
#[derive(Debug, Clone, PartialEq)]
pub enum Up {
    /// The worker has its config and is taking connections; `build` is its
    /// build id.
    Ready { pid: u32, build: String },
    /// Events that need the front to act, batched. Everything else a worker
    /// does is counted in the statistics table.
    Events(Vec<Event>),
    /// A client connection given back to the front, its descriptor riding
    /// with the frame: its planned backend failed and the next one to try
    /// (`backend`, then `fallbacks`) has a connection limit, which only
    /// the front may grant.
    Returned(Handoff),
}

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Refused,
    Timeout,
    Other,
}

/// Something a worker tells the front because the front must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// One connect attempt to `backend` failed (passive health).
    ConnectFailed { backend: u32, reason: FailReason },
    /// A connection from `client` ended (only with `report_closes`: the
    /// front's per-client counts).
    Closed { client: IpAddr },
    /// The worker was told to stop by a signal and is draining: take it
    /// out of rotation, and do not count its exit as a crash.
    Draining,
    /// The front had asked (through the statistics table) to hear when
    /// this worker makes room: it has.
    Wake,
    /// A connection on `backend`, a backend with a connection limit,
    /// ended or moved to another backend: a slot is free (its backend
    /// connection is already closed).
    Released { backend: u32 },
    /// Connection `conn` (the handoff's id), planned on a `counted`
    /// backend, ended here (or was closed unserved): its service's count
    /// goes down.
    Ended { conn: u64 },
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

/// Whether an encoded frame is a [`Down::Config`] (the front coalesces
/// them: only the latest one matters).
pub fn is_config(frame: &[u8]) -> bool {
    codec::is_config(frame)
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
pub const EVENT_MAX_LEN: usize = 1 + 17;
/// Bytes one encoded [`Handoff`] takes at most (IPv6 client, every
/// fallback, a destination).
pub const HANDOFF_LEN: usize = 8 + 4 + 1 + 4 * MAX_FALLBACKS + 2 * ADDR_MAX_LEN;
/// Bytes an encoded socket address takes at most.
pub const ADDR_MAX_LEN: usize = 1 + 16 + 2 + 4;

#[cfg(test)]
mod tests;
