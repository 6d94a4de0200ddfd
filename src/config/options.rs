//! The options a backend takes after its address
//! (`HOST:PORT,weight=3,send-proxy=v2`): one row of [`OPTIONS`] each,
//! saying how it is written and how it is applied to a [`BackendArg`].
//! The `--backend` flag, the config file's backend strings and tables
//! (`file::backend_spec`) and `ctl backend add` all read options through
//! this table, so a new option is one row, one field, and nothing else to
//! keep in step: the syntax line, the list in an "unknown option" error,
//! its did-you-mean tip and the keys a backend table accepts come from it.

use std::net::IpAddr;
use std::time::Duration;

use super::error::Invalid;
use super::parse::{BackendArg, MAX_WEIGHT};
use super::values;
use crate::proxy_protocol::Version;

/// Most source addresses one backend (or `--source`) lists (a bound of
/// the worker channel's table, which config sits above).
pub use crate::channel::MAX_SOURCES;

/// One option of a backend.
pub struct BackendOption {
    pub name: &'static str,
    /// What follows `=` (`N`, `v1|v2`), as messages show it; `None` for a
    /// bare word (`resolve`).
    pub value: Option<&'static str>,
    /// Whether a backend table in the config file may give it as a list
    /// of strings (joined with `;`).
    pub list: bool,
    apply: fn(&mut BackendArg, &str) -> Result<(), Invalid>,
}

impl BackendOption {
    /// How it is written: `weight=N`, `resolve`.
    pub fn form(&self) -> String {
        match self.value {
            Some(v) => format!("{}={v}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// Every option, in the order help and errors list them.
pub const OPTIONS: &[BackendOption] = &[
    BackendOption {
        name: "weight",
        value: Some("N"),
        list: false,
        apply: weight,
    },
    BackendOption {
        name: "resolve",
        value: None,
        list: false,
        apply: |arg, _| {
            arg.resolve = true;
            Ok(())
        },
    },
    BackendOption {
        name: "send-proxy",
        value: Some("v1|v2"),
        list: false,
        apply: send_proxy,
    },
    BackendOption {
        name: "source",
        value: Some("IP[;IP...]"),
        list: true,
        apply: |arg, v| {
            arg.source = sources(v).map_err(|e| Invalid {
                expected: format!("source: {}", e.expected),
                ..e
            })?;
            Ok(())
        },
    },
    BackendOption {
        name: "slow-start",
        value: Some("D|off"),
        list: false,
        apply: slow_start,
    },
    BackendOption {
        name: "maxconn",
        value: Some("N"),
        list: false,
        apply: |arg, v| {
            arg.maxconn = Some(maxconn(v)?);
            Ok(())
        },
    },
    BackendOption {
        name: "maxqueue",
        value: Some("M"),
        list: false,
        apply: |arg, v| {
            arg.maxqueue = Some(maxqueue(v)?);
            Ok(())
        },
    },
    BackendOption {
        name: "backup",
        value: None,
        list: false,
        apply: |arg, _| {
            arg.backup = true;
            Ok(())
        },
    },
];

/// Largest `maxconn=` and `maxqueue=`.
pub const MAX_LIMIT: u32 = 1_000_000;

/// `maxconn=N` (also `ctl backend maxconn`): 1..=[`MAX_LIMIT`].
pub fn maxconn(value: &str) -> Result<u32, Invalid> {
    let n = value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n));
    n.ok_or_else(|| {
        let bad = Invalid::new(format!("maxconn must be 1..={MAX_LIMIT}, got '{value}'"));
        if value.trim() == "0" {
            bad.hint("leave maxconn out for no limit (HAProxy's maxconn 0)")
        } else {
            bad
        }
    })
}

/// `maxqueue=M`: 0..=[`MAX_LIMIT`] (0: nothing waits).
pub fn maxqueue(value: &str) -> Result<u32, Invalid> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&n| n <= MAX_LIMIT)
        .ok_or_else(|| {
            Invalid::new(format!(
                "maxqueue must be 0..={MAX_LIMIT} (0: none wait), got '{value}'"
            ))
        })
}

/// `HOST:PORT[,weight=N][,resolve]...`, every option in brackets.
pub fn syntax() -> String {
    let mut s = String::from("HOST:PORT");
    for o in OPTIONS {
        s.push_str(&format!("[,{}]", o.form()));
    }
    s
}

/// `weight=N, resolve, ... or slow-start=D|off`.
pub fn forms() -> String {
    let forms: Vec<String> = OPTIONS.iter().map(BackendOption::form).collect();
    match forms.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => forms.join(""),
    }
}

/// The option named `name`.
pub fn find(name: &str) -> Option<&'static BackendOption> {
    OPTIONS.iter().find(|o| o.name == name)
}

/// Apply one `name[=value]` to `arg`. `seen` collects the names given so
/// far: an option given twice is refused.
pub fn apply(
    arg: &mut BackendArg,
    text: &str,
    seen: &mut Vec<&'static str>,
) -> Result<(), Invalid> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v)),
        None => (text.trim(), None),
    };
    let Some(opt) = find(key) else {
        return Err(
            Invalid::new(format!("unknown option '{key}' (expected {})", forms())).similar_a(
                "option",
                key,
                OPTIONS.iter().map(|o| o.name),
            ),
        );
    };
    if seen.contains(&opt.name) {
        return Err(Invalid::new(format!("option '{key}' is given twice")));
    }
    seen.push(opt.name);
    match (opt.value, value) {
        (None, Some(v)) => Err(Invalid::new(format!(
            "option '{key}' takes no value, got '{key}={v}'"
        ))),
        // A valued option written bare is checked as an empty value, so
        // the error says what the value should be.
        (Some(_), v) => (opt.apply)(arg, v.unwrap_or("").trim()),
        (None, None) => (opt.apply)(arg, ""),
    }
}

fn weight(arg: &mut BackendArg, value: &str) -> Result<(), Invalid> {
    arg.weight = value
        .parse::<u32>()
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| Invalid::new(format!("weight must be 1..={MAX_WEIGHT}, got '{value}'")))?;
    Ok(())
}

fn send_proxy(arg: &mut BackendArg, value: &str) -> Result<(), Invalid> {
    arg.send_proxy = Some(value.parse::<Version>().map_err(|_| {
        Invalid::new(format!(
            "send-proxy must be v1 or v2 (the PROXY protocol version), got '{value}'"
        ))
    })?);
    Ok(())
}

fn slow_start(arg: &mut BackendArg, value: &str) -> Result<(), Invalid> {
    let d = values::interval(value).map_err(|e| Invalid {
        expected: format!("slow-start: {}, got '{value}'", e.expected),
        ..e
    })?;
    // `off` here is an explicit zero: it overrides `--slow-start`.
    arg.slow_start = Some(d.unwrap_or(Duration::ZERO));
    Ok(())
}

/// `IP[;IP...]`: local addresses to connect from (`--source` and the
/// `source=` option). No port (the kernel picks one per connection), no
/// wildcard, no repeats, at most [`MAX_SOURCES`]. Whether each is local
/// is checked when the config is built (`sources::check`).
pub fn sources(text: &str) -> Result<Vec<IpAddr>, Invalid> {
    let expected = "expected IP addresses separated by ';' (like 10.0.0.1;10.0.0.2)";
    let mut out: Vec<IpAddr> = Vec::new();
    for part in text.split(';') {
        let part = part.trim();
        let ip = match part.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if part.parse::<std::net::SocketAddr>().is_ok() => {
                return Err(Invalid::new(format!("'{part}' has a port"))
                    .hint("a source is an address alone: the port is chosen for each connection"));
            }
            Err(_) if part.is_empty() => return Err(Invalid::new(expected)),
            Err(_) => {
                return Err(Invalid::new(format!(
                    "'{part}' is not an IP address ({expected})"
                )));
            }
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(Invalid::new(format!(
                "'{part}' cannot be a source address (expected a unicast address of this host)"
            )));
        }
        if out.contains(&ip) {
            return Err(Invalid::new(format!("'{part}' is listed twice")));
        }
        out.push(ip);
    }
    if out.len() > MAX_SOURCES {
        return Err(Invalid::new(format!(
            "{} source addresses: at most {MAX_SOURCES}",
            out.len()
        )));
    }
    Ok(out)
}
