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
    let result = match take_service(&mut words) {
        Ok(service) => run(front, &words, json, service.as_deref()).await,
        Err(e) => Err(e),
    };
    let handed_over = upgrade && result.is_ok();
    let text = match (result, json) {
        (Ok(text), _) => text,
        (Err(msg), true) => serde_json::json!({ "error": msg }).to_string(),
        (Err(msg), false) => format!("error: {msg}"),
    };
    Reply { text, handed_over }
}

/// An admin error; for a name no backend has, with the name probably meant.
fn backend_error(
    f: &crate::front::Front,
    service: Option<&str>,
    e: crate::front::AdminError,
) -> String {
    match &e {
        crate::front::AdminError::NoSuchBackend(name) => {
            let rows = f.backend_rows(service).unwrap_or_default();
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

/// Take `--service NAME` (or `--service=NAME`) out of `words`.
fn take_service(words: &mut Vec<&str>) -> Result<Option<String>, String> {
    let Some(at) = words
        .iter()
        .position(|w| *w == "--service" || w.starts_with("--service="))
    else {
        return Ok(None);
    };
    let name = match words[at].strip_prefix("--service=") {
        Some(name) => {
            let name = name.to_string();
            words.remove(at);
            name
        }
        None => {
            let Some(name) = words.get(at + 1).map(|n| n.to_string()) else {
                return Err("--service needs a service name (see `services`)".into());
            };
            words.drain(at..at + 2);
            name
        }
    };
    if words.iter().any(|w| w.starts_with("--service")) {
        return Err("--service is given twice".into());
    }
    Ok(Some(name))
}

/// Whether `action` acts on one service (and so takes `--service`).
fn per_service(action: Action) -> bool {
    matches!(
        action,
        Action::Backends
            | Action::Policy
            | Action::BackendAdd
            | Action::BackendRemove
            | Action::BackendEnable
            | Action::BackendDisable
            | Action::BackendMaxconn
            | Action::Acl
            | Action::AclAllow
            | Action::AclDeny
            | Action::AclRemove
            | Action::Explain
    )
}

async fn run(
    front: &Shared,
    words: &[&str],
    json: bool,
    service: Option<&str>,
) -> Result<String, String> {
    let (spec, action, args) = table::lookup(words)?;
    if service.is_some() && !per_service(action) {
        return Err(format!(
            "`{}` does not take --service (it is about the whole proxy)",
            spec.name
        ));
    }
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
            let rows = front.borrow().backend_rows(service)?;
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_backends(&rows))
            }
        }
        (Action::Services, _) => {
            front.borrow_mut().refresh_all_views();
            let rows = front.borrow().service_rows();
            if json {
                to_json(&rows)
            } else {
                Ok(super::client::render_services(&rows))
            }
        }
        (Action::Policy, []) => {
            let name = front.borrow().policy(service)?;
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
                .set_policy(service, name)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("policy {old} -> {name}"))
        }
        (Action::BackendAdd, [spec, ..]) => {
            let spec = spec.to_string();
            let global = {
                let f = front.borrow();
                let i = f.services().named(service)?;
                f.services().get(i).config().source.clone()
            };
            // Resolve off the event loop: a slow DNS server must not stall it.
            let parsed = tokio::task::spawn_blocking(move || parse_backend(&spec, &global))
                .await
                .map_err(|e| e.to_string())??;
            let name = parsed.to_string();
            front
                .borrow_mut()
                .add_backend(service, parsed)
                .map_err(|e| e.to_string())?;
            ok_json(json, format!("backend {name} added"))
        }
        (Action::BackendRemove, [name, ..]) => {
            let done = front.borrow_mut().remove_backend(service, name);
            done.map_err(|e| backend_error(&front.borrow(), service, e))?;
            ok_json(
                json,
                format!("backend {name} draining; removed when its connections end"),
            )
        }
        (Action::BackendEnable, [name, ..]) => {
            let done = front.borrow_mut().set_backend_enabled(service, name, true);
            done.map_err(|e| backend_error(&front.borrow(), service, e))?;
            ok_json(json, format!("backend {name} enabled"))
        }
        (Action::BackendDisable, [name, ..]) => {
            let done = front.borrow_mut().set_backend_enabled(service, name, false);
            done.map_err(|e| backend_error(&front.borrow(), service, e))?;
            ok_json(
                json,
                format!("backend {name} disabled: no new connections, existing ones finish"),
            )
        }
        (Action::BackendMaxconn, [name, limit, ..]) => {
            let maxconn = parse_maxconn(limit)?;
            let done = front
                .borrow_mut()
                .set_backend_maxconn(service, name, maxconn);
            let msg = done.map_err(|e| backend_error(&front.borrow(), service, e))?;
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
            let view = front.borrow().acl_view(service)?;
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
            let msg = front.borrow_mut().acl_edit(service, list, cidr)?;
            ok_json(json, msg)
        }
        (Action::LogReopen, _) => {
            let msg = front.borrow_mut().reopen_access_log()?;
            ok_json(json, msg)
        }
        (Action::Explain, args) => {
            let ip = super::explain::parse(args)?;
            // The counts as the workers have them now (as `status` does):
            // what the next dispatch reads.
            front.borrow_mut().refresh_all_views();
            let e = front
                .borrow()
                .explain(ip, service)
                .map_err(|e| e.to_string())?;
            if json {
                to_json(&e)
            } else {
                Ok(super::explain::render(&e))
            }
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
