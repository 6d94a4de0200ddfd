//! Log setup for every role: tracing's fmt output (text or JSON) to
//! stderr, through a bounded, lossy, non-blocking queue.
//!
//! The event loops never write to stderr themselves: each log line goes
//! into a queue of [`QUEUE_LINES`] lines that a thread of its own empties
//! into stderr. When stderr stalls (a full journald, a `docker logs`
//! reader that stopped, a pipe nobody reads) that thread blocks, the queue
//! fills, and further lines are dropped and counted instead of stalling
//! proxying. Each process counts its own (see [`dropped_lines`]); a worker
//! copies its count into its cell of the statistics table as connections
//! finish, and the front exports its own plus the workers' as
//! `rrproxy_log_lines_dropped_total`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The log line format (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How a process logs: the format and how much (`-v`, `-q`). The front
/// passes the same to every worker it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub format: LogFormat,
    pub verbose: u8,
    pub quiet: u8,
}

impl LogOptions {
    /// The tracing level these options ask for.
    pub fn level(&self) -> tracing::Level {
        use tracing::Level;
        match (self.verbose, self.quiet) {
            (0, 0) => Level::INFO,
            (1, _) => Level::DEBUG,
            (v, _) if v >= 2 => Level::TRACE,
            (_, 1) => Level::WARN,
            _ => Level::ERROR,
        }
    }
}

/// Lines that may wait for stderr before new ones are dropped (a few MiB
/// at most).
pub const QUEUE_LINES: usize = 8192;

/// This process's count of dropped lines, once logging is set up.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// What the fronts before this one (in upgrades) had dropped.
static INHERITED: AtomicU64 = AtomicU64::new(0);

/// Log lines this process dropped because stderr did not keep up, plus
/// what the fronts it took over from had dropped.
pub fn dropped_lines() -> u64 {
    let own = DROPPED.get().map_or(0, |c| c.dropped_lines() as u64);
    INHERITED.load(Ordering::Relaxed) + own
}

/// A front that took over in an upgrade carries on from its predecessor's
/// count, so the metric does not go back.
pub fn inherit_dropped(lines: u64) {
    INHERITED.store(lines, Ordering::Relaxed);
}

/// Set up logging for the front (`worker: None`) or a worker slot. Keep
/// the guard for the life of the process: dropping it writes out what is
/// queued (waiting at most about a second for a stalled stderr).
pub fn init(log: &LogOptions, worker: Option<usize>) -> Option<WorkerGuard> {
    let role = match worker {
        Some(slot) => format!("worker{slot}"),
        None => "front".into(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name(&format!("rrproxy-log-{role}"))
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    install(log, writer, &role).then_some(guard)
}

/// Set up logging for the PID-1 init (`init`): the same format, written
/// straight to stderr by the thread that logs. The init must stay
/// single-threaded, logs a line only when something happens to the front,
/// and is not on any connection's path, so it does without the queue.
pub fn init_direct(log: &LogOptions, role: &str) {
    install(log, std::io::stderr, role);
}

/// Install the global subscriber writing to `writer`; false (after saying
/// so on stderr) if one could not be installed.
fn install<W>(log: &LogOptions, writer: W, role: &str) -> bool
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log.level().as_str().to_ascii_lowercase()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Both processes write to the same stderr; the role tells lines apart.
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.with_thread_names(false).try_init(),
    };
    if let Err(err) = result {
        eprintln!("rrproxy ({role}): logging setup failed: {err}");
        return false;
    }
    true
}
