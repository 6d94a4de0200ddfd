//! Metric names, their help text, and the Prometheus endpoint.
//!
//! Every name is a constant here, next to its description, so dashboards,
//! alerts, tests and the README have one place to agree with. Labels are
//! bounded: `worker` is the slot number (stable across respawns) and
//! `backend` is the backend's configured `host:port`; never a client
//! address. The front creates every per-slot and per-backend series at 0
//! when the slot or backend appears, so `rate()` and `absent()` behave.

mod http;

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use http::{Endpoint, Readiness};

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
pub const BACKEND_CONNECT_SECONDS: &str = "rrproxy_backend_connect_duration_seconds";
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

/// Histogram buckets for connect times (seconds).
const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Histogram buckets for connection durations (seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Describe every metric (HELP and unit), so the exposition is complete.
pub fn describe() {
    describe_counter!(
        WORKER_CONNECTIONS,
        "Connections handed to each worker slot."
    );
    describe_gauge!(
        WORKER_ACTIVE,
        "Connections a worker slot is proxying now (including handed but not yet started)."
    );
    describe_counter!(
        WORKER_RESTARTS,
        "Times a worker slot's process was replaced (crash respawn or rolling restart)."
    );
    describe_gauge!(
        WORKER_UP,
        "1 if the worker slot has a ready process, 0 if it is down or parked."
    );
    describe_counter!(
        WORKER_BYTES_IN,
        Unit::Bytes,
        "Bytes received from clients by each worker slot."
    );
    describe_counter!(
        WORKER_BYTES_OUT,
        Unit::Bytes,
        "Bytes sent to clients by each worker slot."
    );
    describe_counter!(
        BACKEND_CONNECTIONS,
        "Connections established to each backend."
    );
    describe_gauge!(
        BACKEND_ACTIVE,
        "Connections assigned to each backend now, across all workers."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 if the backend is considered healthy, 0 if it is down."
    );
    describe_counter!(
        BACKEND_CONNECT_FAILURES,
        "Failed connect attempts to each backend, by reason (refused, timeout, other)."
    );
    describe_counter!(
        BACKEND_CHECK_FAILURES,
        "Failed active health checks of each backend."
    );
    describe_counter!(
        BACKEND_BYTES_IN,
        Unit::Bytes,
        "Bytes received from each backend."
    );
    describe_counter!(
        BACKEND_BYTES_OUT,
        Unit::Bytes,
        "Bytes sent to each backend."
    );
    describe_gauge!(BACKEND_WEIGHT, "Configured weight of each backend.");
    describe_counter!(
        RESOLVE_FAILURES,
        "Failed or empty look-ups of each `resolve` backend name (the last known addresses stay)."
    );
    describe_histogram!(
        BACKEND_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to a backend."
    );
    describe_histogram!(
        CONNECTION_SECONDS,
        Unit::Seconds,
        "Lifetime of proxied connections."
    );
    describe_counter!(ACCEPTED, "Client connections accepted by the front.");
    describe_counter!(
        ACCEPT_ERRORS,
        "accept() failures, by reason (emfile, other)."
    );
    describe_counter!(
        HANDOFF_FAILURES,
        "Hand-offs to a worker that could not be sent (channel full or closed) and were retried elsewhere."
    );
    describe_counter!(
        REDISPATCHED,
        "Connections re-dispatched: recovered from a dead worker's queue or retried on another backend."
    );
    describe_counter!(
        FAILED_CONNECTIONS,
        "Client connections closed because no backend could be reached."
    );
    describe_counter!(
        REFUSED_PER_IP,
        "Client connections refused because their IP was at --max-conns-per-ip."
    );
    describe_gauge!(
        ACTIVE,
        "Connections the proxy holds now (all workers, plus pending)."
    );
    describe_gauge!(
        IMBALANCE,
        "Spread of active connections over ready worker slots: max / mean (1 = even; 1 when idle)."
    );
    describe_counter!(
        BACKEND_REDISPATCHES,
        "Connections planned for this backend that another backend served after a connect failure."
    );
    describe_gauge!(OPEN_FDS, "File descriptors the front process has open.");
    describe_gauge!(MAX_FDS, "The open-file limit of the front and its workers.");
    describe_gauge!(
        WORKER_LIMIT,
        "Most connections one worker holds at once (--max-conns-per-worker or its descriptor budget)."
    );
    describe_gauge!(
        PENDING,
        "Accepted connections waiting for a worker with room."
    );
    describe_gauge!(
        ACCEPT_PAUSED,
        "1 while the front has stopped accepting (limits reached, no worker ready, or out of file descriptors)."
    );
    describe_gauge!(
        POLICY_INFO,
        "The balancing policy in force (label policy), always 1."
    );
    describe_counter!(
        POLICY_CHANGES,
        "Times the balancing policy was changed at run time."
    );
    describe_counter!(
        FIRST_BYTE_TIMEOUTS,
        "Clients closed (with their backend connection) for sending no byte within --client-first-byte-timeout."
    );
    describe_counter!(
        LOG_DROPPED,
        "Log lines the front dropped because stderr did not keep up (logging never blocks proxying)."
    );
    describe_gauge!(
        BUILD_INFO,
        "rrproxy build information (label version), always 1."
    );
}

/// Install the global recorder. Call once per process, before any metric
/// is touched. Returns the handle that renders the exposition.
pub fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(BACKEND_CONNECT_SECONDS.into()),
            CONNECT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(CONNECTION_SECONDS.into()), DURATION_BUCKETS)
        })
        .map_err(|e| format!("metrics setup: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics setup: {e}"))?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::counter!(LOG_DROPPED).absolute(crate::logging::dropped_lines());
    metrics::counter!(FIRST_BYTE_TIMEOUTS).absolute(0);
    Ok(handle)
}

/// Bind the metrics endpoint now (so "address in use" is a startup error)
/// and serve it from its own thread.
pub fn start_endpoint(
    addr: SocketAddr,
    handle: PrometheusHandle,
    readiness: Readiness,
) -> std::io::Result<Endpoint> {
    http::start(addr, handle, readiness)
}
