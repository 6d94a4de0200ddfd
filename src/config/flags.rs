//! The proxy's flags as given on the command line (every one optional, so
//! that a config file can supply it), and how each was typed (`-w` or
//! `--workers`), so that an error found after parsing names the flag the
//! way the operator wrote it. `cli` puts these in its command line; the
//! running proxy keeps them (with the config file's path) to re-read the
//! configuration on a reload or an upgrade.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Origin;
use super::values::{self, Choice};
use crate::policy::PolicyName;

/// Everything that configures the proxy. Every field is optional here so
/// that a config file can supply it; flags override the file.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Proxy")]
pub struct Flags {
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
    /// --slow-start. ",maxconn=N" allows at most N connections to it at
    /// once across all workers (more wait in its queue, see
    /// --queue-timeout), ",maxqueue=M" lets at most M wait (0: none), and
    /// ",backup" makes it take connections only while no other backend
    /// is up.
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

    /// Serve the status page (/status, /status.json) on ADDR too, or
    /// "off". The metrics address always serves it. [default: off]
    #[arg(long, value_name = "ADDR|off")]
    pub status: Option<String>,

    /// Control socket path, or "off". Only root and the proxy's user may
    /// use it. [default: ctl.sock in $XDG_RUNTIME_DIR/rrproxy,
    /// /run/rrproxy as root, else /tmp/rrproxy-$UID (made mode 0700)]
    #[arg(long, value_name = "PATH|off")]
    pub control: Option<String>,

    /// TOML config file; flags given on the command line override it.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub tuning: TuningFlags,

    #[command(flatten)]
    pub access: AccessFlags,

    #[command(flatten)]
    pub run: RunFlags,

    /// How each flag was typed (`-w` or `--workers`), for errors found
    /// after parsing. Empty when built in code: errors use the long name.
    #[arg(skip)]
    pub spelling: Spelling,
}

/// Timeouts, limits and health checks.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Timeouts and limits")]
pub struct TuningFlags {
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

    /// How long a connection may wait in the queue of a backend at its
    /// ",maxconn=N" before it goes to another backend with room or is
    /// closed. [default: --connect-timeout]
    #[arg(long, value_name = "DURATION", value_parser = values::timeout)]
    pub queue_timeout: Option<Duration>,

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
pub struct AccessFlags {
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
pub struct RunFlags {
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

/// How each flag was written on the command line.
#[derive(Debug, Clone, Default)]
pub struct Spelling {
    seen: Vec<Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    /// The clap id of the argument (`workers`).
    id: String,
    /// Its long name, if it has one (`workers`).
    long: Option<String>,
    /// As typed: `-w` or `--workers`.
    typed: String,
    value: Option<String>,
}

impl Spelling {
    /// Read `argv` (program name first) the way clap does, against `cmd`'s
    /// arguments and subcommands, noting each flag's spelling and value.
    pub fn scan(cmd: &clap::Command, argv: &[OsString]) -> Spelling {
        let mut seen = Vec::new();
        let mut cur = cmd;
        let mut words = argv
            .iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned());
        while let Some(word) = words.next() {
            if word == "--" {
                break;
            }
            if let Some(long) = word.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (long, None),
                };
                let Some(arg) = find(cmd, cur, |a| a.get_long() == Some(name)) else {
                    continue;
                };
                let value = match (takes_value(arg), inline) {
                    (true, None) => words.next(),
                    (_, inline) => inline,
                };
                seen.push(Seen::new(arg, format!("--{name}"), value));
            } else if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
                for (at, c) in shorts.char_indices() {
                    let Some(arg) = find(cmd, cur, |a| a.get_short() == Some(c)) else {
                        break;
                    };
                    if takes_value(arg) {
                        let rest = &shorts[at + c.len_utf8()..];
                        let rest = rest.strip_prefix('=').unwrap_or(rest);
                        let value = if rest.is_empty() {
                            words.next()
                        } else {
                            Some(rest.to_string())
                        };
                        seen.push(Seen::new(arg, format!("-{c}"), value));
                        break;
                    }
                    seen.push(Seen::new(arg, format!("-{c}"), None));
                }
            } else if let Some(sub) = cur.find_subcommand(&word) {
                cur = sub;
            }
        }
        Spelling { seen }
    }

    /// How the flag with clap id `id` (and, if known, this value) was typed.
    pub fn typed(&self, id: &str, value: Option<&str>) -> Option<&str> {
        let of_id = || self.seen.iter().filter(|s| s.id == id);
        of_id()
            .find(|s| value.is_some() && s.value.as_deref() == value)
            .or_else(|| of_id().next())
            .map(|s| s.typed.as_str())
    }

    /// How the flag with long name `long` and this value was typed (a
    /// missing value is an empty one, as clap sees it).
    pub fn typed_long(&self, long: &str, value: &str) -> Option<&str> {
        self.seen
            .iter()
            .find(|s| s.long.as_deref() == Some(long) && s.value.as_deref().unwrap_or("") == value)
            .map(|s| s.typed.as_str())
    }

    /// The origin of a flag's value, for an error: the flag as typed (or
    /// its long name), with its value placeholder.
    pub fn origin(&self, id: &str, value: Option<&str>) -> Origin {
        let cmd = Flags::augment_args(clap::Command::new("rrproxy"));
        let arg = cmd.get_arguments().find(|a| a.get_id() == id);
        let name = self
            .typed(id, value)
            .map(str::to_string)
            .or_else(|| arg.and_then(|a| a.get_long()).map(|l| format!("--{l}")))
            .unwrap_or_else(|| format!("--{}", id.replace('_', "-")));
        let placeholder = arg.and_then(|a| a.get_value_names()).map(|names| {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        });
        Origin::Flag { name, placeholder }
    }
}

impl Seen {
    fn new(arg: &clap::Arg, typed: String, value: Option<String>) -> Seen {
        Seen {
            id: arg.get_id().to_string(),
            long: arg.get_long().map(str::to_string),
            typed,
            value,
        }
    }
}

/// An argument of `cur` matching `pred`, or a global one of `root`.
fn find<'c>(
    root: &'c clap::Command,
    cur: &'c clap::Command,
    pred: impl Fn(&clap::Arg) -> bool,
) -> Option<&'c clap::Arg> {
    cur.get_arguments()
        .find(|a| pred(a))
        .or_else(|| root.get_arguments().find(|a| a.is_global_set() && pred(a)))
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_action().takes_values()
}
