//! rrproxy: a userspace L4 TCP load-balancing proxy.
//!
//! One front process owns the listening sockets and hands every accepted
//! connection (its descriptor, over `SCM_RIGHTS`) to one of N worker
//! processes, which proxy it to unmodified backends.
//!
//! Module map:
//! - [`cli`]: command-line definitions.
//! - [`config`]: flags + TOML file → one validated, immutable [`config::Config`].
//! - [`front`]: the front process: listeners, accept loop, dispatch, signals.
//! - [`supervisor`]: worker slots, spawning, respawn, rolling restart.
//! - [`channel`]: the front ↔ worker messages, framing and fd passing.
//! - [`worker`]: the worker process: connect to backends, move bytes.
//! - [`policy`]: round-robin, least-conn and sticky balancing.
//! - [`proxy_protocol`]: HAProxy PROXY protocol v1/v2 headers: encode,
//!   incremental decode, and a non-blocking reader for accepted sockets.
//! - [`acl`]: CIDR parsing, allow/deny lists of client networks, per-IP
//!   limit keys.
//! - [`control`]: the control socket and the `rrproxy ctl` client.
//! - [`metrics`]: metric names and the Prometheus endpoint.
//! - [`demo`]: built-in backends for the one-command tour.
//! - [`sys`]: the only module with `unsafe` (exec-time fd inheritance).

pub mod acl;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod front;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod supervisor;
pub mod sys;
pub mod worker;
