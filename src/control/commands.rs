//! Control commands: doing what a line asks (looked up in the command
//! table, `table`) against the front, and rendering the reply as a table or
//! as JSON.

use serde::Serialize;

use crate::config::parse_backend;
use crate::front::{Admin, Front, Shared};
use crate::policy::PolicyName;
use crate::supervisor::Role;

use super::table::{self, Action};

/// `status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
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
    pub state: &'static str,
    pub weight: u32,
    pub active: u64,
    pub total: u64,
    pub failures: u64,
}

impl serde::Serialize for PolicyName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

pub fn status(f: &Front) -> Status {
    let cfg = f.config.load();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        uptime_seconds: f.started.elapsed().as_secs(),
        policy: f.policy.name(),
        listen: f.listen_addrs.iter().map(|a| a.to_string()).collect(),
        metrics: f.metrics_addr.map(|a| a.to_string()),
        workers: cfg.workers,
        workers_up: f.slots.iter().filter(|s| s.serving().is_some()).count(),
        backends: f.backends.list.len(),
        backends_up: f.backends.views.iter().filter(|v| v.routable).count(),
        active_connections: f.worker_views.iter().map(|w| w.active).sum(),
        total_connections: f.slots.iter().map(|s| s.handed).sum(),
        pending_connections: f.pending.len(),
        accepting: !f.paused,
        rolling_restart: f.rolling,
    }
}

pub fn workers(f: &Front) -> Vec<WorkerRow> {
    f.slots
        .iter()
        .map(|s| WorkerRow {
            slot: s.index,
            pid: s
                .serving()
                .or_else(|| s.procs.iter().find(|p| p.role == Role::Starting))
                .map(|p| p.pid),
            state: s.state(),
            active: f.worker_views[s.index].active,
            total: s.handed,
            restarts: s.restarts,
            draining_pids: s
                .procs
                .iter()
                .filter(|p| p.role == Role::Retiring)
                .map(|p| p.pid)
                .collect(),
        })
        .collect()
}

pub fn backends(f: &Front) -> Vec<BackendRow> {
    f.backends
        .list
        .iter()
        .zip(&f.backends.views)
        .map(|(b, v)| BackendRow {
            address: b.spec.name.clone(),
            resolved: b.spec.addr.to_string(),
            from: b.spec.group.clone(),
            state: match (b.admin, b.healthy) {
                (Admin::Draining, _) => "draining",
                (Admin::Disabled, _) => "disabled",
                (Admin::Enabled, true) => "up",
                (Admin::Enabled, false) => "down",
            },
            weight: b.spec.weight,
            active: v.active,
            total: b.total,
            failures: b.failures,
        })
        .collect()
}

/// Run one command line and return the reply text (without the final
/// empty line).
pub async fn execute(front: &Shared, line: &str) -> String {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let json = words.last() == Some(&"--json");
    if json {
        words.pop();
    }
    let result = run(front, &words, json).await;
    match (result, json) {
        (Ok(text), _) => text,
        (Err(msg), true) => serde_json::json!({ "error": msg }).to_string(),
        (Err(msg), false) => format!("error: {msg}"),
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
            let s = status(&front.borrow());
            if json {
                to_json(&s)
            } else {
                Ok(super::client::render_status(&s))
            }
        }
        (Action::Workers, _) => {
            let rows = workers(&front.borrow());
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_workers(&rows))
            }
        }
        (Action::Backends, _) => {
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
            let name: PolicyName = name.parse()?;
            let old = front.borrow_mut().set_policy(name);
            ok_json(json, format!("policy {old} -> {name}"))
        }
        (Action::BackendAdd, [spec, ..]) => {
            let spec = spec.to_string();
            // Resolve off the event loop: a slow DNS server must not stall it.
            let parsed = tokio::task::spawn_blocking(move || parse_backend(&spec))
                .await
                .map_err(|e| e.to_string())??;
            let name = parsed.to_string();
            front
                .borrow_mut()
                .add_backend(parsed)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("backend {name} added"))
        }
        (Action::BackendRemove, [name, ..]) => {
            front
                .borrow_mut()
                .remove_backend(name)
                .map_err(|e| e.to_string())?;
            ok_json(
                json,
                format!("backend {name} draining; removed when its connections end"),
            )
        }
        (Action::BackendEnable, [name, ..]) => {
            front
                .borrow_mut()
                .set_backend_enabled(name, true)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("backend {name} enabled"))
        }
        (Action::BackendDisable, [name, ..]) => {
            front
                .borrow_mut()
                .set_backend_enabled(name, false)
                .map_err(|e| e.to_string())?;
            ok_json(
                json,
                format!("backend {name} disabled: no new connections, existing ones finish"),
            )
        }
        (Action::RollingRestart, _) => {
            let done = crate::supervisor::rolling::start(front.clone())?;
            let outcome = done
                .await
                .map_err(|_| "rolling restart interrupted".to_string())?;
            ok_json(json, outcome?)
        }
        (Action::ConfigReload, _) => {
            let args = front.borrow().reload_args.clone();
            let notes = crate::front::reload(front, args.as_ref()).await?;
            let mut msg = "configuration reloaded".to_string();
            for n in notes {
                msg.push_str("; ");
                msg.push_str(&n);
            }
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
