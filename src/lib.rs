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
//! - [`front`]: the front's state in named parts (each owning its fields),
//!   the wiring between them, and the proxy's phases as one state machine:
//!   accept and dispatch, supervise workers, backends, upgrades.
//! - [`supervisor`]: worker slots and processes: spawning, deadlines,
//!   statistics cells, respawn backoff, the rolling restart.
//! - [`channel`]: the front ↔ worker messages, framing and fd passing.
//! - [`handover`]: the old ↔ new front link during an upgrade.
//! - [`stats`]: the shared-memory statistics table every process counts in.
//! - [`worker`]: the worker process: connect to backends, move bytes.
//! - [`access_log`]: one line per finished connection, written by each
//!   worker's own thread through a bounded, lossy queue.
//! - [`policy`]: round-robin, least-conn and sticky balancing.
//! - [`proxy_protocol`]: HAProxy PROXY protocol v1/v2 headers: encode,
//!   incremental decode, and a non-blocking reader for accepted sockets.
//! - [`sni`]: TLS passthrough routing by server name: the ClientHello
//!   parser (incremental, non-consuming), the config's name patterns and
//!   their matching, and a non-blocking peek reader for accepted sockets.
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
//! Dependencies point one way. The layers, top to bottom, as [`LAYERS`]
//! lists them: a module imports only modules below it, so there is no
//! cycle (the `layers` test reads every `crate::` path in `src/`).

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
pub mod logging;
pub mod metrics;
pub mod pidfile;
pub mod policy;
pub mod preflight;
pub mod privileges;
pub mod proxy;
pub mod proxy_protocol;
pub mod signals;
pub mod sni;
pub mod stats;
pub mod supervisor;
pub mod sys;
pub mod version;
pub mod worker;

/// The modules, top to bottom: each may import only those after it.
pub const LAYERS: &[&str] = &[
    "demo",
    "cli",
    "init",
    "proxy",
    "preflight",
    "control",
    "front",
    "supervisor",
    "handover",
    "worker",
    "access_log",
    "metrics",
    "config",
    "acl",
    "policy",
    "stats",
    "channel",
    "proxy_protocol",
    "sni",
    "logging",
    "signals",
    "privileges",
    "pidfile",
    "sys",
    "version",
];

#[cfg(test)]
mod layers {
    use std::path::Path;

    use super::LAYERS;

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `crate::m` path (outside comments) in every file of `src/`:
    /// `m` is the file's own top module or one below it in [`LAYERS`].
    #[test]
    fn no_module_imports_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let rank = |m: &str| LAYERS.iter().position(|&l| l == m);
        let mut wrong = Vec::new();
        for path in all {
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let top = rel.split(['/', '.']).next().unwrap().to_string();
            let Some(mine) = rank(&top) else {
                assert!(
                    ["lib", "main"].contains(&top.as_str()),
                    "{rel}: module {top} is not in LAYERS"
                );
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let name: String = code[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let Some(theirs) = rank(&name) else { continue };
                    if theirs < mine {
                        wrong.push(format!("{rel}: {top} imports {name}, above it"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_module_has_a_layer() {
        let lib =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
        for line in lib.lines() {
            if let Some(m) = line
                .strip_prefix("pub mod ")
                .and_then(|l| l.strip_suffix(';'))
            {
                assert!(LAYERS.contains(&m), "{m} has no layer");
            }
        }
        assert_eq!(
            LAYERS.len(),
            lib.lines().filter(|l| l.starts_with("pub mod ")).count()
        );
    }
}
