//! Command-line definitions (clap). Only the shape of the flags lives here;
//! turning them into a validated [`crate::config::Config`] is `config`'s
//! job. Typed flags are parsed with the validators of `config::values`, so
//! a bad flag and a bad config key are refused in the same words. `argv`
//! parses the command line and prints clap's errors in our style; `man`
//! writes the man page.

mod argv;
pub mod man;

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

pub use argv::{Spelling, parse, render_error};

use crate::config::Invalid;
use crate::config::values::{self, Choice};
use crate::policy::PolicyName;

const ABOUT: &str = "A userspace L4 TCP load-balancing proxy with per-core worker processes";

const LONG_ABOUT: &str = "\
rrproxy is a userspace L4 (TCP) load-balancing proxy. One front process owns \
the listening sockets, accepts every connection and hands its file descriptor \
(over SCM_RIGHTS) to one of N worker processes, one per core. Workers proxy \
each connection to unmodified backends. The balancing policy (round-robin, \
least-conn, sticky) can be changed while running, and a Prometheus endpoint \
shows how connections spread across workers and backends.";

const AFTER_LONG_HELP: &str = "\
EXAMPLES:
    rrproxy --listen 0.0.0.0:80 --backend 10.0.0.5:80 --backend 10.0.0.6:80
    rrproxy --workers auto --policy sticky --backend app1:8080 --backend app2:8080,weight=3
    rrproxy --config /etc/rrproxy/rrproxy.toml
    rrproxy ctl workers
    rrproxy ctl policy least-conn
    rrproxy demo

SIGNALS:
    SIGTERM, SIGINT   stop accepting, finish connections in flight (up to
                      --drain-timeout), then exit 0; a second one stops now
    SIGHUP            re-read --config (like `ctl config reload`)
    SIGUSR2           upgrade: restart the front, then the workers one at a
                      time, onto the binary now at the start path, with no
                      connection refused (like `ctl upgrade`)
    SIGUSR1           reopen the --access-log file in every worker (like
                      `ctl log reopen`)
    others            ignored (logged), by the front and every worker

EXIT STATUS:
    0   a clean shutdown, or the command did what it was asked
    1   a failure at run time: an address in use, a backend or listen name
        that does not resolve, no worker can run, a control command refused
        or the proxy unreachable (ctl)
    2   a usage or configuration error: an unknown flag, a bad flag value,
        a config file that cannot be read or has a bad key or value, no
        backend given";

#[derive(Debug, Parser)]
#[command(
    name = "rrproxy",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

// `Check` carries every proxy flag; the value is built once per run, so its
// size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Talk to a running rrproxy through its control socket.
    #[command(after_help = crate::control::table::help())]
    Ctl(CtlArgs),
    /// Start three built-in HTTP backends and a proxy in front of them.
    Demo(DemoArgs),
    /// Validate the flags and config file, print the result, and exit.
    Check(CheckArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `rrproxy man > rrproxy.1`.
    Man,
    /// Internal: run as a worker process (started by the front).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Everything that configures the proxy. Every field is optional here so
/// that a config file can supply it; flags override the file.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Proxy")]
pub struct ProxyArgs {
    /// Address to accept client connections on (repeatable). [default: 0.0.0.0:8080]
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Backend server as HOST:PORT, [IPV6]:PORT or NAME:PORT, optionally
    /// followed by ",weight=N" (repeatable; at least one is required). A
    /// name is resolved at start and on reload, to its first address; with
    /// ",resolve" every address of the name is a backend, kept up to date
    /// (see --resolve-interval): DNS service discovery. ",send-proxy=v1"
    /// or ",send-proxy=v2" writes a PROXY protocol header (the client's
    /// address) to the backend before anything else. ",source=IP[;IP...]"
    /// and ",slow-start=D|off" are this backend's own --source and
    /// --slow-start.
    #[arg(short, long = "backend", value_name = "ADDR")]
    pub backend: Vec<String>,

    /// Connect to backends from this local address, or from several in
    /// turn ("IP;IP;..."; at most 16), each connection's port chosen when
    /// it connects (IP_BIND_ADDRESS_NO_PORT): more addresses, more
    /// connections to one backend. Health checks use them too. A backend
    /// uses the addresses of its own family; ",source=IP[;IP...]" on a
    /// backend overrides it. [default: the system's choice]
    #[arg(long, value_name = "IP[;IP...]")]
    pub source: Option<String>,

    /// Number of worker processes, or "auto" for one per available core. [default: auto]
    #[arg(short, long, value_name = "N|auto")]
    pub workers: Option<String>,

    /// How to choose a worker and a backend for each connection. [default: round-robin]
    #[arg(short, long, value_name = "NAME", value_parser = Choice::<PolicyName>::new())]
    pub policy: Option<PolicyName>,

    /// With --policy sticky: how many leading bits of an IPv6 client
    /// address choose its backend (64 keeps a /64 together). [default: 128]
    #[arg(long, value_name = "BITS", value_parser = values::ipv6_prefix)]
    pub sticky_ipv6_prefix: Option<u8>,

    /// Serve Prometheus metrics on ADDR (/metrics), or "off". [default: 127.0.0.1:9898]
    #[arg(long, value_name = "ADDR|off")]
    pub metrics: Option<String>,

    /// Control socket path, or "off". Only root and the proxy's user may
    /// use it. [default: ctl.sock in $XDG_RUNTIME_DIR/rrproxy,
    /// /run/rrproxy as root, else /tmp/rrproxy-$UID (made mode 0700)]
    #[arg(long, value_name = "PATH|off")]
    pub control: Option<String>,

    /// TOML config file; flags given on the command line override it.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub tuning: TuningArgs,

    #[command(flatten)]
    pub access: AccessArgs,

    #[command(flatten)]
    pub run: RunArgs,

    /// How each flag was typed (`-w` or `--workers`), for errors found
    /// after parsing. Empty when built in code: errors use the long name.
    #[arg(skip)]
    pub spelling: Spelling,
}

/// Timeouts, limits and health checks.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Timeouts and limits")]
pub struct TuningArgs {
    /// Give up connecting to a backend after this long (e.g. 5s, 500ms). [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = values::timeout)]
    pub connect_timeout: Option<Duration>,

    /// Close a connection on which no byte moved in either direction for
    /// this long. [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = values::timeout)]
    pub idle_timeout: Option<Duration>,

    /// On shutdown or worker restart, how long connections in flight may
    /// take to finish before they are cut. [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = values::duration)]
    pub drain_timeout: Option<Duration>,

    /// Close a client that has sent no byte this long after it was
    /// accepted, and its backend connection with it, or "off". Leave off
    /// for protocols whose clients may only listen. [default: off]
    #[arg(long, value_name = "DURATION|off")]
    pub client_first_byte_timeout: Option<String>,

    /// Listen backlog: connections the kernel queues while workers are busy. [default: 1024]
    #[arg(long, value_name = "N", value_parser = values::backlog)]
    pub backlog: Option<u32>,

    /// Accept a connection only once the client has sent its first bytes
    /// (TCP_DEFER_ACCEPT, HAProxy's `defer-accept`, nginx's `deferred`):
    /// the front and the worker then wake once per connection, not twice.
    /// For protocols where the client speaks first (HTTP, TLS, a PROXY
    /// header); a client that waits for the server to speak first is
    /// accepted about a second late.
    #[arg(long)]
    pub defer_accept: bool,

    /// Most connections proxied at once; beyond it new clients wait in the
    /// kernel backlog instead of being accepted. [default: off (no limit)]
    #[arg(long, value_name = "N|off", value_parser = values::limit_u64)]
    pub max_conns: Option<values::Limit>,

    /// Most connections one worker proxies at once (never more than its
    /// file descriptors allow, shown at start). [default: off (only the
    /// descriptor budget)]
    #[arg(long, value_name = "N|off", value_parser = values::limit_u64)]
    pub max_conns_per_worker: Option<values::Limit>,

    /// Most connections at once from one client IP; more are refused
    /// (reset) and logged, so one noisy client cannot crowd out the
    /// others. Independent of --max-conns. [default: off (no limit)]
    #[arg(long, value_name = "N|off", value_parser = values::limit_u32)]
    pub max_conns_per_ip: Option<values::Limit>,

    /// With --max-conns-per-ip: how many leading bits of an IPv6 client
    /// address make "one client" (64: a /64, which one host usually owns
    /// whole). [default: 64]
    #[arg(long, value_name = "BITS", value_parser = values::ipv6_prefix)]
    pub per_ip_ipv6_prefix: Option<u8>,

    /// After a failed connect, how many other backends a client is tried
    /// on (chosen by the policy: a sticky client's next choices, the next
    /// least loaded, or the rotation), each within --connect-timeout: a
    /// client waits at most (1 + N) connect timeouts. 0..=4. [default: 2]
    #[arg(long, value_name = "N", value_parser = values::retries)]
    pub retries: Option<u8>,

    /// Actively check every backend with a TCP connect this often, or "off".
    /// Workers' connect failures also count as failed checks. [default: 2s]
    #[arg(long, value_name = "DURATION|off")]
    pub health_interval: Option<String>,

    /// Look the host names of `--backend NAME:PORT,resolve` up again this
    /// often (every address is a backend: new ones are added, vanished
    /// ones drained), or "off". [default: 5s]
    #[arg(long, value_name = "DURATION|off")]
    pub resolve_interval: Option<String>,

    /// A health check connect that takes longer than this fails. [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = values::timeout)]
    pub health_timeout: Option<Duration>,

    /// What a health check writes after connecting (after the PROXY
    /// header of a send-proxy backend), e.g. 'PING\r\n' for Redis.
    /// Escapes: \r \n \t \0 \\ \xNN. [default: nothing]
    #[arg(long, value_name = "STRING")]
    pub health_send: Option<String>,

    /// What the backend's first bytes must be, within --health-timeout,
    /// for a check to pass, e.g. '+PONG' (a prefix match; escapes as for
    /// --health-send). Alone, it checks a server that speaks first (a
    /// greeting). [default: connecting is enough]
    #[arg(long, value_name = "STRING")]
    pub health_expect: Option<String>,

    /// A backend that comes up again (health, `ctl backend enable`, or
    /// added while running; not at start) gets a share that ramps from 5%
    /// to its full weight over this long, or "off". Per backend:
    /// ",slow-start=D|off". [default: off]
    #[arg(long, value_name = "DURATION|off")]
    pub slow_start: Option<String>,

    /// Consecutive good checks that bring a down backend back up. [default: 2]
    #[arg(long, value_name = "N", value_parser = values::checks)]
    pub rise: Option<u32>,

    /// Consecutive failed checks that mark a backend down. [default: 3]
    #[arg(long, value_name = "N", value_parser = values::checks)]
    pub fall: Option<u32>,

    /// Move bytes with splice(2) through pipes, without copying them
    /// through user space: "on", "off" (buffered copies), or "auto" (copy
    /// small chunks, splice bulk transfers). [default: auto]
    #[arg(long, value_name = "auto|on|off", value_parser = values::splice)]
    pub splice: Option<crate::channel::Splice>,

    /// Pin the front to the first allowed CPU and each worker to one of the
    /// others (in turn), so they stop migrating between cores.
    #[arg(long)]
    pub cpu_affinity: bool,
}

/// Who the client is (PROXY protocol) and who may connect (ACLs).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Client address and access control")]
pub struct AccessArgs {
    /// Serve only clients in this network (CIDR like 10.0.0.0/8 or
    /// 2001:db8::/32, or one address; repeatable). Without any --allow,
    /// every client not denied is served. Changeable at run time with
    /// `rrproxy ctl acl` and SIGHUP.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,

    /// Refuse clients in this network with a reset, before any backend is
    /// touched (repeatable; a deny match wins over an allow).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,

    /// Connections from this network (a load balancer, another proxy) must
    /// begin with a PROXY protocol header (v1 or v2), whose source address
    /// is then the client for everything: ACLs, per-IP limits, sticky,
    /// send-proxy (repeatable). From other sources no header is read.
    #[arg(long, value_name = "CIDR")]
    pub accept_proxy: Vec<String>,

    /// With --accept-proxy: close a connection whose PROXY header is not
    /// complete within this long. [default: 3s]
    #[arg(long, value_name = "DURATION", value_parser = values::timeout)]
    pub proxy_header_timeout: Option<Duration>,
}

/// The access log, and the user the proxy runs as.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Access log and privileges")]
pub struct RunArgs {
    /// One line per finished connection (client, worker, backend, bytes
    /// each way, duration, how it ended): "off", "stderr", or a file PATH
    /// every worker appends to, reopened on SIGUSR1 or `rrproxy ctl log
    /// reopen` (logrotate). Text, or JSON with --log-format json. Lines
    /// are dropped (and counted) rather than slow proxying. [default: off]
    #[arg(long, value_name = "off|stderr|PATH")]
    pub access_log: Option<String>,

    /// Started as root: bind the listeners, metrics and control socket,
    /// then run as this user (a name, or a uid), the front and every
    /// worker, with no supplementary groups and no capabilities left.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// With --user: the group to run as. [default: the user's primary group]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Write the front's pid to PATH once it serves; rewritten by the new
    /// front after an upgrade (the pid changes), removed at stop if it
    /// still holds the front's pid. Written as --user: its directory must
    /// let that user create files. [default: none]
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = Choice::<LogFormat>::new())]
    pub log_format: LogFormat,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl LogArgs {
    /// The tracing level these flags ask for.
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

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Control socket of the running rrproxy. [default: as for rrproxy --control]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// The command and its arguments, e.g. `status`, `workers`,
    /// `policy sticky`, `backend add 10.0.0.7:80`. `help` lists them all.
    #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,

    /// Where the demo serves metrics.
    #[arg(long, default_value = "127.0.0.1:9898", value_name = "ADDR")]
    pub metrics: String,

    /// Worker processes for the demo proxy.
    #[arg(long, default_value = "auto", value_name = "N|auto")]
    pub workers: String,

    /// Balancing policy for the demo proxy.
    #[arg(long, value_name = "NAME", default_value = "round-robin", value_parser = Choice::<PolicyName>::new())]
    pub policy: PolicyName,

    /// Control socket for the demo proxy. [default: as for rrproxy --control]
    #[arg(long, value_name = "PATH|off")]
    pub control: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker slot number (0..N-1).
    #[arg(long)]
    pub slot: usize,
    /// Inherited descriptor of this worker's end of the channel.
    #[arg(long)]
    pub channel_fd: i32,
    /// Pin this worker to one CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// Parse a human duration such as `5s`, `500ms`, `2m`, or a bare number of
/// seconds (zero included); a value parser for duration flags.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    values::duration(text)
}

#[cfg(test)]
mod tests;
