//! The link between an old and a new front during an upgrade, and what
//! travels on it.
//!
//! The old front starts the new binary with one end of a `SOCK_SEQPACKET`
//! socket pair inherited and its number in [`ENV`]. The conversation:
//!
//! 1. new → old `Hello` (its pid, version, build, and the protocol
//!    versions it speaks), once its config is loaded and validated; or
//!    `Error` with the reason it cannot start (a config it rejects);
//! 2. old → new `State`: the handover value as JSON in a memory file, then
//!    every descriptor it names (listeners, metrics and control sockets,
//!    the statistics table, each worker's channel and pidfd, connections
//!    waiting for a worker) in batches;
//! 3. new → old `Ready` once it has rebuilt the front (nothing runs yet)
//!    and planned how it applies the config file as it is now (the plan's
//!    report rides with it), or `Error` (a config it cannot apply);
//! 4. old → new `Commit`: the old front stops for good and the new one
//!    starts serving; or `Abort`;
//! 5. after the commit, old → new `Stop` if the old front is asked to stop
//!    before it has left: the new front, which owns everything now, stops.
//!
//! Frames are `[kind, payload...]`. Everything here is transport; what the
//! state holds is the front's business (`front::upgrade`).

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::channel::MAX_FDS;
use crate::channel::fdpass::{Channel, Received};

/// The environment variable that tells a new front to take over.
pub const ENV: &str = "RRPROXY_UPGRADE_FD";
/// Bumped when the handover conversation or value changes shape.
pub const VERSION: u32 = 3;

const HELLO: u8 = b'H';
const ERROR: u8 = b'X';
const STATE: u8 = b'S';
const FDS: u8 = b'F';
const READY: u8 = b'R';
const COMMIT: u8 = b'C';
const ABORT: u8 = b'A';
const STOP: u8 = b'T';

/// What a new front says first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub pid: u32,
    pub version: String,
    pub build: String,
    /// [`VERSION`].
    pub handover: u32,
    /// The channel protocol it speaks with workers.
    pub channel: u8,
    /// The statistics table layout it reads.
    pub stats: u64,
}

impl Hello {
    /// This process.
    pub fn mine() -> Hello {
        Hello {
            pid: std::process::id(),
            version: crate::version::VERSION.to_string(),
            build: crate::version::build_id().to_string(),
            handover: VERSION,
            channel: crate::channel::VERSION,
            stats: crate::stats::layout(),
        }
    }

    /// Why `self` (the new front) cannot take over from this process, if
    /// it cannot: both must speak the same handover, channel and table.
    pub fn incompatibility(&self) -> Option<String> {
        let me = Hello::mine();
        let what = if self.handover != me.handover {
            format!(
                "handover protocol {} (running: {})",
                self.handover, me.handover
            )
        } else if self.channel != me.channel {
            format!(
                "worker channel protocol {} (running: {})",
                self.channel, me.channel
            )
        } else if self.stats != me.stats {
            format!("statistics layout {} (running: {})", self.stats, me.stats)
        } else {
            return None;
        };
        Some(format!(
            "the new build ({}) speaks {what}: it cannot take over a running proxy; restart it instead",
            self.version
        ))
    }
}

/// One message on the link.
#[derive(Debug)]
pub enum Msg {
    Hello(Hello),
    Error(String),
    /// The state (JSON) and the descriptors that came with it.
    State(Vec<u8>, Vec<OwnedFd>),
    /// Rebuilt; what applying the config file will change (one note a line).
    Ready(Vec<String>),
    Commit,
    Abort(String),
    /// The proxy was asked to stop (after the commit).
    Stop,
}

/// Tell the running front why this process cannot take over, before any
/// event loop exists (a config it rejects). Best effort.
pub fn refuse_now(fd: BorrowedFd<'_>, why: &str) {
    let mut frame = vec![ERROR];
    frame.extend_from_slice(why.as_bytes());
    frame.truncate(crate::channel::MAX_FRAME);
    let _ = crate::channel::fdpass::send_raw(fd, &frame, &[]);
}

/// The link descriptor this process was given, if it was started to take
/// over from a running front. (Workers are started without the variable;
/// a later upgrade sets its own.)
pub fn inherited() -> Option<Result<OwnedFd, String>> {
    let text = std::env::var_os(ENV)?;
    let fd = text
        .to_str()
        .and_then(|t| t.parse::<i32>().ok())
        .filter(|&fd| fd > 2 && std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok());
    Some(match fd {
        Some(fd) => {
            let fd = crate::sys::adopt_inherited_fd(fd);
            // Not for our own children.
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            Ok(fd)
        }
        None => Err(format!("{ENV}={text:?} does not name an open descriptor")),
    })
}

/// The descriptors that came with the state, taken in the order the
/// front's parts pushed them when they said what they are.
pub struct FdSource {
    fds: std::vec::IntoIter<OwnedFd>,
}

impl FdSource {
    pub fn new(fds: Vec<OwnedFd>) -> FdSource {
        FdSource {
            fds: fds.into_iter(),
        }
    }

    /// The next descriptor, which is `what`'s.
    pub fn next(&mut self, what: &str) -> Result<OwnedFd, String> {
        self.fds
            .next()
            .ok_or_else(|| format!("handover is missing the descriptor of {what}"))
    }
}

/// One end of the link.
pub struct Link {
    channel: Channel,
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

impl Link {
    /// Make a link end from a socket (registers it with the event loop).
    pub fn new(fd: OwnedFd) -> std::io::Result<Link> {
        Ok(Link {
            channel: Channel::new(fd)?,
        })
    }

    async fn frame(&self, kind: u8, payload: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(1 + payload.len());
        frame.push(kind);
        frame.extend_from_slice(payload);
        self.channel.send(&frame, fds).await
    }

    pub async fn send(&self, msg: &Msg) -> std::io::Result<()> {
        match msg {
            Msg::Hello(h) => self.frame(HELLO, &serde_json::to_vec(h)?, &[]).await,
            Msg::Error(e) => self.frame(ERROR, e.as_bytes(), &[]).await,
            Msg::Ready(notes) => self.frame(READY, &serde_json::to_vec(notes)?, &[]).await,
            Msg::Commit => self.frame(COMMIT, &[], &[]).await,
            Msg::Stop => self.frame(STOP, &[], &[]).await,
            Msg::Abort(e) => self.frame(ABORT, e.as_bytes(), &[]).await,
            Msg::State(..) => Err(bad("use send_state")),
        }
    }

    /// Send the state (already encoded as JSON) and its descriptors.
    pub async fn send_state(&self, json: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let memfd = rustix::fs::memfd_create("rrproxy-handover", rustix::fs::MemfdFlags::CLOEXEC)?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(json)?;
        let count = u32::try_from(fds.len()).map_err(|_| bad("too many descriptors"))?;
        self.frame(STATE, &count.to_le_bytes(), &[file.as_fd()])
            .await?;
        for batch in fds.chunks(MAX_FDS) {
            self.frame(FDS, &[], batch).await?;
        }
        Ok(())
    }

    /// The next message, or `None` when the other end is gone.
    pub async fn recv(&self) -> std::io::Result<Option<Msg>> {
        let mut buf = Box::new([0u8; crate::channel::MAX_FRAME]);
        let mut fds = Vec::new();
        let n = match self.channel.recv(&mut buf, &mut fds).await {
            Ok(Received::Frame(n)) => n,
            Ok(Received::Closed) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        };
        let payload = &buf[1..n];
        let text = || String::from_utf8_lossy(payload).into_owned();
        Ok(Some(match buf[0] {
            HELLO => Msg::Hello(serde_json::from_slice(payload)?),
            ERROR => Msg::Error(text()),
            // (No payload: a build that sent no report.)
            READY if payload.is_empty() => Msg::Ready(Vec::new()),
            READY => Msg::Ready(serde_json::from_slice(payload)?),
            COMMIT => Msg::Commit,
            STOP => Msg::Stop,
            ABORT => Msg::Abort(text()),
            STATE => {
                let count = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or_else(|| bad("state frame without a descriptor count"))?
                    as usize;
                let memfd = fds
                    .pop()
                    .ok_or_else(|| bad("state frame without its data"))?;
                let mut file = std::fs::File::from(memfd);
                file.rewind()?;
                let mut json = Vec::new();
                file.read_to_end(&mut json)?;
                let mut all = Vec::with_capacity(count);
                while all.len() < count {
                    let mut fds = Vec::new();
                    match self.channel.recv(&mut buf, &mut fds).await? {
                        Received::Frame(n) if n >= 1 && buf[0] == FDS && !fds.is_empty() => {
                            all.extend(fds)
                        }
                        Received::Frame(_) => return Err(bad("expected descriptors")),
                        Received::Closed => return Ok(None),
                    }
                }
                if all.len() != count {
                    return Err(bad(format!(
                        "expected {count} descriptors, got {}",
                        all.len()
                    )));
                }
                Msg::State(json, all)
            }
            other => return Err(bad(format!("unknown handover frame kind {other:#04x}"))),
        }))
    }
}
