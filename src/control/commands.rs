//! Control commands: doing what a line asks (looked up in the command
//! table, `table`) by asking the front (its methods; every command that
//! changes the running state goes through its phase machine, which may
//! refuse it), and rendering the reply as a table or as JSON.

use serde::Serialize;

use crate::config::parse_backend;
use crate::front::Shared;
use crate::policy::PolicyName;

use super::table::{self, Action};

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
fn backend_error(f: &crate::front::Front, e: crate::front::AdminError) -> String {
    match &e {
        crate::front::AdminError::NoSuchBackend(name) => {
            let rows = f.backend_rows();
            let names = rows.iter().map(|r| r.address.as_str());
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

/// `N` or `off`, for `backend maxconn` (as `maxconn=` in `--backend`).
fn parse_maxconn(text: &str) -> Result<Option<u32>, String> {
    if text == "off" {
        return Ok(None);
    }
    let short: String = text.chars().take(40).collect();
    crate::config::options::maxconn(&short)
        .map(Some)
        .map_err(|_| {
            format!(
                "bad connection limit '{short}': a number 1..={}, or off for none",
                crate::config::options::MAX_LIMIT
            )
        })
}

async fn run(front: &Shared, words: &[&str], json: bool) -> Result<String, String> {
    let (spec, action, args) = table::lookup(words)?;
    match (action, args) {
        (Action::Help, _) if json => to_json(&table::help_rows()),
        (Action::Help, _) => Ok(table::help()),
        (Action::Status, _) => {
            // What workers counted up to now, not up to the last look.
            front.borrow_mut().refresh_all_views();
            let s = front.borrow().status();
            if json {
                to_json(&s)
            } else {
                Ok(super::client::render_status(&s))
            }
        }
        (Action::Workers, _) => {
            front.borrow_mut().refresh_all_views();
            let rows = front.borrow().worker_rows();
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_workers(&rows))
            }
        }
        (Action::Backends, _) => {
            front.borrow_mut().refresh_all_views();
            let rows = front.borrow().backend_rows();
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_backends(&rows))
            }
        }
        (Action::Policy, []) => {
            let name = front.borrow().policy();
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
            let old = front
                .borrow_mut()
                .set_policy(name)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("policy {old} -> {name}"))
        }
        (Action::BackendAdd, [spec, ..]) => {
            let spec = spec.to_string();
            let global = front.borrow().config().source.clone();
            // Resolve off the event loop: a slow DNS server must not stall it.
            let parsed = tokio::task::spawn_blocking(move || parse_backend(&spec, &global))
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
        (Action::BackendMaxconn, [name, limit, ..]) => {
            let maxconn = parse_maxconn(limit)?;
            let msg = front
                .borrow_mut()
                .set_backend_maxconn(name, maxconn)
                .map_err(|e| e.to_string())?;
            ok_json(json, msg)
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
            let view = front.borrow().acl_view();
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
