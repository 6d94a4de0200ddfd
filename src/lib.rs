//! rrproxy: a userspace L4 TCP load-balancing proxy.
//!
//! One front process owns the listening sockets and hands every accepted
//! connection (its descriptor, over `SCM_RIGHTS`) to one of N worker
//! processes, which proxy it to unmodified backends.
//!
//! Module map:
//! - [`cli`]: command-line definitions.
//! - [`config`]: flags + TOML file → one validated, immutable [`config::Config`].
//! - [`init`]: PID 1 duties (in a container): start the front, reap,
//!   forward signals, follow upgrades, restart a front that died.
//! - [`proxy`]: the proxy as a program: start-up (or take-over), signals,
//!   reload, shutdown; wires the front to the control socket and metrics.
//! - [`preflight`]: `rrproxy check`: every check starting makes, short of
//!   binding.
//! - [`front`]: the front's state in named parts and what it does with it:
//!   accept and dispatch, supervise workers, backends, upgrades.
//! - [`supervisor`]: worker slots and processes: spawning, respawn backoff.
//! - [`channel`]: the front ↔ worker messages, framing and fd passing.
//! - [`handover`]: the old ↔ new front link during an upgrade.
//! - [`stats`]: the shared-memory statistics table every process counts in.
//! - [`worker`]: the worker process: connect to backends, move bytes.
//! - [`access_log`]: one line per finished connection, written by each
//!   worker's own thread through a bounded, lossy queue.
//! - [`policy`]: round-robin, least-conn and sticky balancing.
//! - [`proxy_protocol`]: HAProxy PROXY protocol v1/v2 headers: encode,
//!   incremental decode, and a non-blocking reader for accepted sockets.
//! - [`acl`]: CIDR parsing, allow/deny lists of client networks, per-IP
//!   limit keys.
//! - [`control`]: the control socket and the `rrproxy ctl` client.
//! - [`logging`]: log setup: a non-blocking, lossy writer to stderr.
//! - [`metrics`]: metric names and the Prometheus endpoint.
//! - [`pidfile`]: `--pid-file`, written by the front that serves.
//! - [`signals`]: catching the signals a process has no use for.
//! - [`privileges`]: becoming `--user` after binding, for good.
//! - [`version`]: the version and build id of this binary.
//! - [`demo`]: built-in backends for the one-command tour.
//! - [`sys`]: the only module with `unsafe` (exec-time fd inheritance,
//!   shared memory mapping).
//!
//! Dependencies point one way: `proxy` → `control` → `front` →
//! `supervisor`, `channel`, `stats`; and `worker` → `access_log` →
//! `channel`, `stats`; nothing below depends on what is above it (the
//! `layering` test checks it).

pub mod access_log;
pub mod acl;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod front;
pub mod handover;
pub mod init;
#[cfg(test)]
mod layering;
pub mod logging;
pub mod metrics;
pub mod pidfile;
pub mod policy;
pub mod preflight;
pub mod privileges;
pub mod proxy;
pub mod proxy_protocol;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod sys;
pub mod version;
pub mod worker;
