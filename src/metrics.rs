//! Metric names, their help text, and the HTTP endpoint (Prometheus
//! `/metrics`, and the status page's routes: see [`crate::status`]).
//!
//! Every name is a constant here, next to its description, so dashboards,
//! alerts, tests and the README have one place to agree with. Labels are
//! bounded: `worker` is the slot number (stable across respawns) and
//! `backend` is the backend's configured `host:port`; never a client
//! address. Every per-slot and per-backend series exists from the moment
//! the slot or backend does (at 0), so `rate()` and `absent()` behave; a
//! backend's series leave with it.
//!
//! The exposition is rendered here, at scrape time, from the statistics
//! table ([`crate::stats`]) and a [`Snapshot`] of names and states the
//! front publishes when they change. (Not through the `metrics` facade and
//! `metrics-exporter-prometheus`: their recorder takes observations, not
//! the bucket counts and sums several processes keep in shared memory, so
//! its histograms could not equal the table's, and a new front would
//! replay every connection ever counted; measured in DESIGN.md, "Metrics
//! exposition", and `benches/exporter-prototype`.)

mod http;
mod render;

pub use http::{Endpoint, start as start_endpoint};
pub use render::{BackendLabel, Exporter, ServiceLabel, SlotLabel, Snapshot, render};

pub const WORKER_CONNECTIONS: &str = "rrproxy_worker_connections_total";
pub const WORKER_ACTIVE: &str = "rrproxy_worker_active_connections";
pub const WORKER_RESTARTS: &str = "rrproxy_worker_restarts_total";
pub const WORKER_UP: &str = "rrproxy_worker_up";
pub const WORKER_BYTES_IN: &str = "rrproxy_worker_received_bytes_total";
pub const WORKER_BYTES_OUT: &str = "rrproxy_worker_sent_bytes_total";
pub const BACKEND_CONNECTIONS: &str = "rrproxy_backend_connections_total";
pub const BACKEND_ACTIVE: &str = "rrproxy_backend_active_connections";
pub const BACKEND_UP: &str = "rrproxy_backend_up";
pub const BACKEND_CONNECT_FAILURES: &str = "rrproxy_backend_connect_failures_total";
pub const BACKEND_CHECK_FAILURES: &str = "rrproxy_backend_check_failures_total";
pub const BACKEND_BYTES_IN: &str = "rrproxy_backend_received_bytes_total";
pub const BACKEND_BYTES_OUT: &str = "rrproxy_backend_sent_bytes_total";
pub const BACKEND_WEIGHT: &str = "rrproxy_backend_weight";
pub const RESOLVE_FAILURES: &str = "rrproxy_resolve_failures_total";
pub const BACKEND_CONNECT_SECONDS: &str = "rrproxy_backend_connect_seconds";
pub const CONNECTION_SECONDS: &str = "rrproxy_connection_duration_seconds";
pub const ACCEPTED: &str = "rrproxy_accepted_connections_total";
pub const ACCEPT_ERRORS: &str = "rrproxy_accept_errors_total";
pub const HANDOFF_FAILURES: &str = "rrproxy_handoff_failures_total";
pub const REDISPATCHED: &str = "rrproxy_redispatched_connections_total";
pub const FAILED_CONNECTIONS: &str = "rrproxy_failed_connections_total";
pub const REFUSED_PER_IP: &str = "rrproxy_refused_connections_total";
pub const ACTIVE: &str = "rrproxy_active_connections";
pub const IMBALANCE: &str = "rrproxy_worker_imbalance_ratio";
pub const BACKEND_REDISPATCHES: &str = "rrproxy_backend_redispatches_total";
pub const BACKEND_MAXCONN: &str = "rrproxy_backend_max_connections";
pub const BACKEND_QUEUE_LENGTH: &str = "rrproxy_backend_queue_length";
pub const BACKEND_QUEUED: &str = "rrproxy_backend_queued_total";
pub const BACKEND_QUEUE_TIMEOUTS: &str = "rrproxy_backend_queue_timeouts_total";
pub const BACKEND_QUEUE_OVERFLOWS: &str = "rrproxy_backend_queue_overflows_total";
pub const BACKEND_QUEUE_ABANDONED: &str = "rrproxy_backend_queue_abandoned_total";
pub const BACKEND_QUEUE_WAIT: &str = "rrproxy_backend_queue_wait_seconds";
pub const OPEN_FDS: &str = "rrproxy_open_fds";
pub const MAX_FDS: &str = "rrproxy_max_fds";
pub const WORKER_LIMIT: &str = "rrproxy_worker_connection_limit";
pub const PENDING: &str = "rrproxy_pending_connections";
pub const ACCEPT_PAUSED: &str = "rrproxy_accept_paused";
pub const POLICY_INFO: &str = "rrproxy_policy_info";
pub const POLICY_CHANGES: &str = "rrproxy_policy_changes_total";
pub const BUILD_INFO: &str = "rrproxy_build_info";
pub const LOG_DROPPED: &str = "rrproxy_log_lines_dropped_total";
pub const FIRST_BYTE_TIMEOUTS: &str = "rrproxy_client_first_byte_timeouts_total";
pub const DENIED: &str = "rrproxy_denied_connections_total";
pub const PROXY_HEADER_ERRORS: &str = "rrproxy_proxy_header_errors_total";
pub const ACCESS_LOG_DROPPED: &str = "rrproxy_access_log_lines_dropped_total";
pub const SERVICE_CONNECTIONS: &str = "rrproxy_service_connections_total";
pub const SNI_CONNECTIONS: &str = "rrproxy_sni_connections_total";
pub const SERVICE_REFUSED: &str = "rrproxy_service_refused_connections_total";
pub const SERVICE_MAXCONN: &str = "rrproxy_service_max_connections";
pub const SERVICE_ACTIVE: &str = "rrproxy_service_active_connections";

/// Why a service's own limits refused a connection: `max_conns` (the
/// service held its `max-conns`), `max_conns_per_ip` (the client held the
/// service's `max-conns-per-ip`).
pub const SERVICE_REFUSALS: [&str; 2] = ["max_conns", "max_conns_per_ip"];

/// Why a connection on a listener that routes by server name went where
/// it went: `found` (a name of the service's matched), `no_match` (a name
/// no service claims), `no_sni`, `not_tls`, `malformed`, `too_large`
/// (the hello), `timeout`, `closed`, `io` (no hello in time, the client
/// left, a read failed). The service is the one that took it, or empty
/// when none did (the connection was closed).
pub const SNI_REASONS: [&str; 9] = [
    "found",
    "no_match",
    "no_sni",
    "not_tls",
    "malformed",
    "too_large",
    "timeout",
    "closed",
    "io",
];

/// Every metric: name, Prometheus type, help text. The renderer writes
/// the `# HELP` and `# TYPE` lines from here.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        SERVICE_CONNECTIONS,
        "counter",
        "Connections routed to each service (before the access list and the per-IP limit).",
    ),
    (
        SERVICE_REFUSED,
        "counter",
        "Connections a service's own limits refused (reset), by service and reason (max_conns: it held its max-conns on a listener it shares; max_conns_per_ip).",
    ),
    (
        SERVICE_MAXCONN,
        "gauge",
        "A service's own max-conns (services that set one).",
    ),
    (
        SERVICE_ACTIVE,
        "gauge",
        "Connections a service with max-conns of its own holds now (waiting, queued or proxied).",
    ),
    (
        SNI_CONNECTIONS,
        "counter",
        "Connections on listeners that route by TLS server name, by the service that took them (empty: none, closed) and reason (found, no_match, no_sni, not_tls, malformed, too_large, timeout, closed, io).",
    ),
    (
        WORKER_CONNECTIONS,
        "counter",
        "Connections handed to each worker slot.",
    ),
    (
        WORKER_ACTIVE,
        "gauge",
        "Connections a worker slot is proxying now (including handed but not yet started).",
    ),
    (
        WORKER_RESTARTS,
        "counter",
        "Times a worker slot's process was replaced (crash respawn or rolling restart).",
    ),
    (
        WORKER_UP,
        "gauge",
        "1 if the worker slot has a ready process, 0 if it is down or parked.",
    ),
    (
        WORKER_BYTES_IN,
        "counter",
        "Bytes received from clients by each worker slot.",
    ),
    (
        WORKER_BYTES_OUT,
        "counter",
        "Bytes sent to clients by each worker slot.",
    ),
    (
        BACKEND_CONNECTIONS,
        "counter",
        "Connections established to each backend.",
    ),
    (
        BACKEND_ACTIVE,
        "gauge",
        "Connections open (or being opened) on each backend now, counted by the workers that hold them; exact at every moment, so never above the backend's maxconn.",
    ),
    (
        BACKEND_UP,
        "gauge",
        "1 if the backend takes new connections (healthy and enabled), 0 if not.",
    ),
    (
        BACKEND_CONNECT_FAILURES,
        "counter",
        "Failed connect attempts to each backend, by reason (refused, timeout, other).",
    ),
    (
        BACKEND_CHECK_FAILURES,
        "counter",
        "Failed active health checks of each backend.",
    ),
    (
        BACKEND_BYTES_IN,
        "counter",
        "Bytes received from each backend.",
    ),
    (BACKEND_BYTES_OUT, "counter", "Bytes sent to each backend."),
    (
        BACKEND_WEIGHT,
        "gauge",
        "Configured weight of each backend.",
    ),
    (
        RESOLVE_FAILURES,
        "counter",
        "Failed or empty look-ups of each `resolve` backend name (the last known addresses stay).",
    ),
    (
        BACKEND_CONNECT_SECONDS,
        "histogram",
        "Time from a worker starting a connect to each backend until it was established (and a send-proxy header written); successful connects only, failures are in rrproxy_backend_connect_failures_total.",
    ),
    (
        CONNECTION_SECONDS,
        "histogram",
        "Lifetime of proxied client connections, from a worker taking the connection until both sides closed (connections that reached a backend).",
    ),
    (
        ACCEPTED,
        "counter",
        "Client connections accepted by the front.",
    ),
    (
        ACCEPT_ERRORS,
        "counter",
        "accept() failures, by reason (emfile, other).",
    ),
    (
        HANDOFF_FAILURES,
        "counter",
        "Hand-offs to a worker that could not be sent (channel full or closed) and were retried elsewhere.",
    ),
    (
        REDISPATCHED,
        "counter",
        "Connections re-dispatched: recovered from a dead worker's queue or retried on another backend.",
    ),
    (
        FAILED_CONNECTIONS,
        "counter",
        "Client connections closed because no backend could be reached.",
    ),
    (
        REFUSED_PER_IP,
        "counter",
        "Client connections refused because their IP was at --max-conns-per-ip.",
    ),
    (
        ACTIVE,
        "gauge",
        "Connections the proxy holds now (all workers, plus pending).",
    ),
    (
        IMBALANCE,
        "gauge",
        "Spread of active connections over ready worker slots: max / mean (1 = even; 1 when idle).",
    ),
    (
        BACKEND_REDISPATCHES,
        "counter",
        "Connections planned for this backend that another backend served after a connect failure.",
    ),
    (
        BACKEND_MAXCONN,
        "gauge",
        "Connection limit of each backend (maxconn=, or ctl backend maxconn); 0 when it has none.",
    ),
    (
        BACKEND_QUEUE_LENGTH,
        "gauge",
        "Connections waiting now for a slot of each backend at its maxconn.",
    ),
    (
        BACKEND_QUEUED,
        "counter",
        "Connections that had to wait in each backend's queue (counted as they joined it).",
    ),
    (
        BACKEND_QUEUE_TIMEOUTS,
        "counter",
        "Waits in each backend's queue ended by --queue-timeout (the connection went to another backend with room, or was closed).",
    ),
    (
        BACKEND_QUEUE_OVERFLOWS,
        "counter",
        "Connections closed because each backend's queue was full (maxqueue=).",
    ),
    (
        BACKEND_QUEUE_ABANDONED,
        "counter",
        "Clients that closed their connection while it waited in each backend's queue.",
    ),
    (
        BACKEND_QUEUE_WAIT,
        "histogram",
        "Time connections waited in each backend's queue, until handed to a worker or until --queue-timeout.",
    ),
    (
        OPEN_FDS,
        "gauge",
        "File descriptors the front process has open.",
    ),
    (
        MAX_FDS,
        "gauge",
        "The open-file limit of the front and its workers.",
    ),
    (
        WORKER_LIMIT,
        "gauge",
        "Most connections one worker holds at once (--max-conns-per-worker or its descriptor budget).",
    ),
    (
        PENDING,
        "gauge",
        "Accepted connections waiting for a worker with room.",
    ),
    (
        ACCEPT_PAUSED,
        "gauge",
        "1 while the front has stopped accepting (limits reached, no worker ready, or out of file descriptors).",
    ),
    (
        POLICY_INFO,
        "gauge",
        "The balancing policy in force (label policy), always 1.",
    ),
    (
        POLICY_CHANGES,
        "counter",
        "Times the balancing policy was changed at run time.",
    ),
    (
        BUILD_INFO,
        "gauge",
        "rrproxy build information (labels version and build), always 1.",
    ),
    (
        FIRST_BYTE_TIMEOUTS,
        "counter",
        "Clients closed (with their backend connection) for sending no byte within --client-first-byte-timeout.",
    ),
    (
        DENIED,
        "counter",
        "Client connections refused by the access list (--allow, --deny, ctl acl), before reaching a worker.",
    ),
    (
        PROXY_HEADER_ERRORS,
        "counter",
        "Connections from --accept-proxy sources closed for want of a valid PROXY header, by reason (not_proxy, malformed, oversized, truncated, timeout, unsupported, io).",
    ),
    (
        LOG_DROPPED,
        "counter",
        "Log lines the front and the workers dropped because stderr did not keep up (logging never blocks proxying).",
    ),
    (
        ACCESS_LOG_DROPPED,
        "counter",
        "Access log lines the workers dropped because the writer did not keep up or the write failed (the access log never blocks proxying).",
    ),
];
