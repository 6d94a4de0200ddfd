//! Integration tests: the real `rrproxy` binary, real sockets on loopback.
//! One test binary (faster to build and link than one per file).

mod accesslog;
mod control;
mod discovery;
mod faults;
mod foundation;
mod observability;
mod policies;
mod shims;
mod supervision;
mod support;
mod unprivileged;
mod upgrade;
mod usage;
