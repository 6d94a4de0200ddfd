//! Integration tests: the real `rrproxy` binary, real sockets on loopback.
//! One test binary (faster to build and link than one per file).

mod access;
mod accesslog;
mod browser;
mod client_address;
mod control;
mod ctl;
mod defer_accept;
mod discovery;
mod explain;
mod faults;
mod foundation;
mod histograms;
mod init;
mod layout;
mod lifecycle;
mod observability;
mod peers;
mod pidfile;
mod policies;
mod protect;
mod queue;
mod queue_paths;
mod queue_services;
mod service_limits;
mod services;
mod shims;
mod status;
mod supervision;
mod support;
mod tls;
mod unprivileged;
mod upgrade;
mod usage;
