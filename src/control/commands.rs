//! Control commands: doing what a line asks (looked up in the command
//! table, `table`) against the front, and rendering the reply as a table or
//! as JSON.

use serde::Serialize;

use crate::config::parse_backend;
use crate::front::{Admin, Front, Shared};
use crate::policy::PolicyName;
use crate::stats::{Col, ColCell, SlotWord};
use crate::supervisor::Role;

use super::table::{self, Action};

/// `status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub build: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub policy: PolicyName,
    pub listen: Vec<String>,
    pub metrics: Option<String>,
    pub workers: usize,
    pub workers_up: usize,
    pub backends: usize,
    pub backends_up: usize,
    pub active_connections: u64,
    pub total_connections: u64,
    pub pending_connections: usize,
    pub accepting: bool,
    pub rolling_restart: bool,
    pub upgrading: bool,
    /// How the last restart of the workers ended.
    pub last_restart: Option<String>,
    /// Worker processes by build id (more than one while an upgrade rolls).
    pub builds: Vec<String>,
    /// `--drain-timeout` (how long a restart of the workers may take
    /// depends on it).
    pub drain_timeout_seconds: f64,
}

/// One row of `workers`.
#[derive(Debug, Serialize)]
pub struct WorkerRow {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: &'static str,
    pub active: u64,
    pub total: u64,
    pub restarts: u64,
    /// The build the serving (or starting) process runs.
    pub build: Option<String>,
    /// Older processes of this slot still finishing their connections.
    pub draining_pids: Vec<u32>,
}

/// One row of `backends`.
#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub address: String,
    pub resolved: String,
    /// For a backend found by DNS discovery: the `host:port` it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The PROXY protocol version written to it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    pub state: &'static str,
    pub weight: u32,
    /// While slow start ramps it up: how far, in percent of its weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u8>,
    pub active: u64,
    pub total: u64,
    /// Connects to it that failed (refused, timed out, other), in all.
    pub failures: u64,
    /// Active health checks of it that failed, in all.
    pub check_failures: u64,
    /// Of those, how many in a row up to the last check (0 once one
    /// passes).
    pub check_failures_in_a_row: u32,
    /// The last active health check: `ok`, or why it failed; absent
    /// before the first (or with checks off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

fn short(build: &str) -> String {
    build.chars().take(12).collect()
}

pub fn status(f: &Front) -> Status {
    let cfg = f.config.load();
    let mut builds: Vec<&str> = f
        .workers
        .procs()
        .filter_map(|p| p.build.as_deref())
        .collect();
    builds.sort();
    builds.dedup();
    let builds = builds.into_iter().map(short).collect();
    Status {
        version: crate::version::VERSION,
        build: crate::version::build_id(),
        pid: std::process::id(),
        uptime_seconds: f.state.started.elapsed().as_secs(),
        policy: f.policy.name(),
        listen: f.listeners.addrs.iter().map(|a| a.to_string()).collect(),
        metrics: f.listeners.metrics.as_ref().map(|(a, _)| a.to_string()),
        workers: cfg.workers,
        workers_up: f
            .workers
            .slots
            .iter()
            .filter(|s| s.serving().is_some())
            .count(),
        backends: f.backends.list.len(),
        backends_up: f.backends.views.iter().filter(|v| v.routable).count(),
        active_connections: f.total_active() - f.ledger.pending.len() as u64,
        total_connections: (0..f.workers.slots.len())
            .map(|i| f.counters.slot_get(i, SlotWord::Handed))
            .sum(),
        pending_connections: f.ledger.pending.len(),
        accepting: !f.listeners.paused,
        rolling_restart: f.state.rolling,
        upgrading: f.state.upgrading,
        last_restart: f.state.last_roll.as_ref().map(|r| match r {
            Ok(m) => m.clone(),
            Err(m) => format!("failed: {m}"),
        }),
        builds,
        drain_timeout_seconds: cfg.drain_timeout.as_secs_f64(),
    }
}

pub fn workers(f: &Front) -> Vec<WorkerRow> {
    f.workers
        .slots
        .iter()
        .map(|s| {
            let current = s
                .serving()
                .or_else(|| s.procs.iter().find(|p| p.role == Role::Starting));
            WorkerRow {
                slot: s.index,
                pid: current.map(|p| p.pid),
                state: s.state(),
                active: f.views[s.index].active,
                total: f.counters.slot_get(s.index, SlotWord::Handed),
                restarts: f.counters.slot_get(s.index, SlotWord::Restarts),
                build: current.and_then(|p| p.build.as_deref().map(short)),
                draining_pids: s
                    .procs
                    .iter()
                    .filter(|p| p.role == Role::Retiring)
                    .map(|p| p.pid)
                    .collect(),
            }
        })
        .collect()
}

pub fn backends(f: &Front) -> Vec<BackendRow> {
    let cells = f.live_cells();
    let table = &f.counters.table;
    let total = |col: usize, w: Col| -> u64 {
        ColCell::of(table.base(col)).get(w)
            + cells
                .iter()
                .filter_map(|&c| table.cell(c).col(col))
                .map(|c| c.get(w))
                .sum::<u64>()
    };
    f.backends
        .list
        .iter()
        .enumerate()
        .map(|(i, b)| BackendRow {
            address: b.spec.name.clone(),
            resolved: b.spec.addr.to_string(),
            from: b.spec.group.clone(),
            send_proxy: b.spec.send_proxy,
            state: match (b.admin, b.healthy) {
                (Admin::Draining, _) => "draining",
                (Admin::Disabled, _) => "disabled",
                (Admin::Enabled, true) => "up",
                (Admin::Enabled, false) => "down",
            },
            weight: b.spec.weight,
            slow_start_percent: f.backends.ramp_percent(i).filter(|_| b.routable()),
            active: f.backends.active(i, table, &cells),
            total: total(b.column, Col::Conns),
            failures: total(b.column, Col::FailRefused)
                + total(b.column, Col::FailTimeout)
                + total(b.column, Col::FailOther),
            // (The front's own count: in the base only.)
            check_failures: ColCell::of(table.base(b.column)).get(Col::CheckFailures),
            check_failures_in_a_row: b.check.consecutive_fail,
            check: b.check.last.as_ref().map(|r| match r {
                Ok(()) => "ok".to_string(),
                Err(why) => why.clone(),
            }),
        })
        .collect()
}

/// A reply, and whether this front handed over to a new one with it (the
/// session then lets the process go once the reply is written).
pub struct Reply {
    pub text: String,
    pub handed_over: bool,
}

/// Run one command line and return the reply text (without the final
/// empty line).
pub async fn execute(front: &Shared, line: &str) -> Reply {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let json = words.last() == Some(&"--json");
    if json {
        words.pop();
    }
    let upgrade = matches!(words.first(), Some(&"upgrade") | Some(&"reload"));
    let result = run(front, &words, json).await;
    let handed_over = upgrade && result.is_ok();
    let text = match (result, json) {
        (Ok(text), _) => text,
        (Err(msg), true) => serde_json::json!({ "error": msg }).to_string(),
        (Err(msg), false) => format!("error: {msg}"),
    };
    Reply { text, handed_over }
}

/// An admin error; for a name no backend has, with the name probably meant.
fn backend_error(f: &Front, e: crate::front::AdminError) -> String {
    match &e {
        crate::front::AdminError::NoSuchBackend(name) => {
            let names = f.backends.list.iter().map(|b| b.spec.name.as_str());
            e.to_string() + &table::did_you_mean(name, names)
        }
        _ => e.to_string(),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("cannot encode reply: {e}"))
}

fn ok_json(json: bool, msg: String) -> Result<String, String> {
    if json {
        to_json(&serde_json::json!({ "ok": msg }))
    } else {
        Ok(msg)
    }
}

async fn run(front: &Shared, words: &[&str], json: bool) -> Result<String, String> {
    let (spec, action, args) = table::lookup(words)?;
    match (action, args) {
        (Action::Help, _) if json => to_json(&table::help_rows()),
        (Action::Help, _) => Ok(table::help()),
        (Action::Status, _) => {
            // What workers counted up to now, not up to the last look.
            front.borrow_mut().refresh_all_views();
            let s = status(&front.borrow());
            if json {
                to_json(&s)
            } else {
                Ok(super::client::render_status(&s))
            }
        }
        (Action::Workers, _) => {
            front.borrow_mut().refresh_all_views();
            let rows = workers(&front.borrow());
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_workers(&rows))
            }
        }
        (Action::Backends, _) => {
            front.borrow_mut().refresh_all_views();
            let rows = backends(&front.borrow());
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_backends(&rows))
            }
        }
        (Action::Policy, []) => {
            let name = front.borrow().policy.name();
            if json {
                to_json(&serde_json::json!({ "policy": name }))
            } else {
                Ok(name.to_string())
            }
        }
        (Action::Policy, [name, ..]) => {
            let name: PolicyName = name.parse().map_err(|e: String| {
                let names = PolicyName::ALL.map(PolicyName::as_str);
                e + &table::did_you_mean(name, names)
            })?;
            let old = front.borrow_mut().set_policy(name);
            ok_json(json, format!("policy {old} -> {name}"))
        }
        (Action::BackendAdd, [spec, ..]) => {
            let spec = spec.to_string();
            let global = front.borrow().config.load().source.clone();
            // Resolve off the event loop: a slow DNS server must not stall it.
            let parsed = tokio::task::spawn_blocking(move || parse_backend(&spec, &global))
                .await
                .map_err(|e| e.to_string())??;
            {
                // Its source list must fit the workers' table with the others.
                let f = front.borrow();
                let mut specs: Vec<_> = f.backends.list.iter().map(|b| b.spec.clone()).collect();
                specs.push(parsed.clone());
                crate::config::sources::check_lists(&specs, &f.config.load().source)
                    .map_err(|why| format!("invalid backend '{parsed}': {why}"))?;
            }
            let name = parsed.to_string();
            front
                .borrow_mut()
                .add_backend(parsed)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("backend {name} added"))
        }
        (Action::BackendRemove, [name, ..]) => {
            let done = front.borrow_mut().remove_backend(name);
            done.map_err(|e| backend_error(&front.borrow(), e))?;
            ok_json(
                json,
                format!("backend {name} draining; removed when its connections end"),
            )
        }
        (Action::BackendEnable, [name, ..]) => {
            let done = front.borrow_mut().set_backend_enabled(name, true);
            done.map_err(|e| backend_error(&front.borrow(), e))?;
            ok_json(json, format!("backend {name} enabled"))
        }
        (Action::BackendDisable, [name, ..]) => {
            let done = front.borrow_mut().set_backend_enabled(name, false);
            done.map_err(|e| backend_error(&front.borrow(), e))?;
            ok_json(
                json,
                format!("backend {name} disabled: no new connections, existing ones finish"),
            )
        }
        (Action::Upgrade, args) => {
            let path = args.first().map(std::path::PathBuf::from);
            let msg = crate::front::upgrade::upgrade(front, path).await?;
            if spec.name == "reload" {
                ok_json(
                    json,
                    format!(
                        "(`reload` is now called `upgrade`; to re-read the config file use `config reload`) {msg}"
                    ),
                )
            } else {
                ok_json(json, msg)
            }
        }
        (Action::ConfigReload, _) => {
            let report = crate::front::reload(front).await?;
            let mut msg = "configuration reloaded".to_string();
            for n in report.notes {
                msg.push_str("\n  ");
                msg.push_str(&n);
            }
            ok_json(json, msg)
        }
        (Action::Acl, _) => {
            let view = crate::front::AclView::of(&front.borrow());
            if json {
                to_json(&view)
            } else {
                Ok(view.render())
            }
        }
        (Action::AclAllow | Action::AclDeny | Action::AclRemove, [cidr, ..]) => {
            let list = match action {
                Action::AclAllow => Some(crate::acl::Action::Allow),
                Action::AclDeny => Some(crate::acl::Action::Deny),
                _ => None,
            };
            let msg = front.borrow_mut().acl_edit(list, cidr)?;
            ok_json(json, msg)
        }
        (Action::LogReopen, _) => {
            let msg = front.borrow_mut().reopen_access_log()?;
            ok_json(json, msg)
        }
        (Action::Top, _) => Err(format!(
            "'{}' runs in rrproxy ctl, not on the control socket",
            spec.name
        )),
        // The session closes on these before asking here.
        (Action::Quit, _) => Ok(String::new()),
        // `lookup` checked the number of arguments against the table.
        (_, _) => Err(format!("usage: {} {} (try help)", spec.name, spec.args)),
    }
}
