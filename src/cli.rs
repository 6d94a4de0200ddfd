//! Command-line definitions (clap): the roles (subcommands) and their
//! flags. The proxy's own flags are [`crate::config::Flags`] (config's
//! type, since the running proxy keeps them to re-read the configuration;
//! this module only places them in the command line), and logging's are
//! turned into [`crate::logging::LogOptions`]; nothing below `cli` holds a
//! `cli` type. Typed flags are parsed with the validators of
//! `config::values`, so a bad flag and a bad config key are refused in the
//! same words. `argv` parses the command line and prints clap's errors in
//! our style; `man` writes the man page.

mod argv;
pub mod man;

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

pub use crate::config::Spelling;
pub use argv::{parse, render_error};

use crate::config::Invalid;
use crate::config::values::{self, Choice};
use crate::logging::{LogFormat, LogOptions};
use crate::policy::PolicyName;

pub use crate::config::Flags;

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
    SIGUSR2           upgrade: restart the front, then the workers (old
                      ones drain together), onto the binary now at the
                      start path, applying the config file, with no
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
    pub proxy: Flags,

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
    /// What these flags ask of logging (in every role, and of the
    /// workers the front starts).
    pub fn options(&self) -> LogOptions {
        LogOptions {
            format: self.log_format,
            verbose: self.verbose,
            quiet: self.quiet,
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

    /// The service a per-service command acts on (`policy`, `backends`,
    /// `backend ...`, `acl ...`, `explain`); needed when the proxy runs
    /// several. The same as `--service S` among the command's words.
    #[arg(long, value_name = "S")]
    pub service: Option<String>,

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
    pub proxy: Flags,
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
