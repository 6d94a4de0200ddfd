//! What a new configuration changes against the running one, one line
//! each, for the reply and the log of a reload or an upgrade: the policy,
//! the backends the file adds and removes, a backend's weight and options,
//! and every timeout, limit and check setting a reload applies. Settings
//! that need a restart and changes `ctl` made are reported by the front's
//! `Settings` part, which knows about them; this module only compares two
//! values.

use std::fmt::Debug;
use std::time::Duration;

use super::{BackendSpec, Config};

/// Backend lines listed one by one; past this, one line counts the rest
/// (a reload may add a thousand backends).
pub const MAX_BACKEND_LINES: usize = 16;

/// The lines saying how `new` differs from `cur` in what a reload applies:
/// the policy (unless `policy_overridden`: `ctl` set it and that is
/// reported on its own), the backends, then the settings. Backends named
/// in `skip` (added or removed by `ctl`, reported on their own) are left
/// out.
pub fn changes(cur: &Config, new: &Config, policy_overridden: bool, skip: &[&str]) -> Vec<String> {
    let mut notes = Vec::new();
    if !policy_overridden && cur.policy != new.policy {
        notes.push(format!("policy {} -> {}", cur.policy, new.policy));
    }
    let backends: Vec<String> = backend_changes(&cur.backends, &new.backends)
        .into_iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .map(|(_, line)| line)
        .collect();
    let shown = backends.len().min(MAX_BACKEND_LINES);
    notes.extend(backends[..shown].iter().cloned());
    if backends.len() > shown {
        notes.push(format!(
            "and {} more backend changes (see ctl backends)",
            backends.len() - shown
        ));
    }
    notes.extend(setting_changes(cur, new));
    notes
}

/// Backends added, removed and changed from `cur` to `new`, each line with
/// the backend's name: `(name, line)`, in the file's order (removed ones
/// last).
pub fn backend_changes(cur: &[BackendSpec], new: &[BackendSpec]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in new {
        let Some(a) = cur.iter().find(|a| a.name == b.name) else {
            let weight = if b.weight == 1 {
                String::new()
            } else {
                format!(" (weight {})", b.weight)
            };
            out.push((b.name.clone(), format!("backend {} added{weight}", b.name)));
            continue;
        };
        if a.weight != b.weight {
            out.push((
                b.name.clone(),
                format!("backend {} weight {} -> {}", b.name, a.weight, b.weight),
            ));
        }
        let mut options = Vec::new();
        if a.addr != b.addr {
            options.push(format!("address {} -> {}", a.addr, b.addr));
        }
        if a.send_proxy != b.send_proxy {
            options.push(format!(
                "send-proxy {} -> {}",
                show_opt(a.send_proxy.as_ref()),
                show_opt(b.send_proxy.as_ref())
            ));
        }
        if a.source != b.source {
            options.push(format!(
                "source {} -> {}",
                show_ips(&a.source),
                show_ips(&b.source)
            ));
        }
        if a.slow_start != b.slow_start {
            options.push(format!(
                "slow-start {} -> {}",
                show_backend_slow_start(a.slow_start),
                show_backend_slow_start(b.slow_start)
            ));
        }
        let named = a.weight == b.weight && options.is_empty();
        if named && a != b {
            // A field this list does not name yet still gets a line.
            options.push("options changed".to_string());
        }
        if !options.is_empty() {
            out.push((
                b.name.clone(),
                format!("backend {} {}", b.name, options.join(", ")),
            ));
        }
    }
    for a in cur {
        if !new.iter().any(|b| b.name == a.name) {
            out.push((
                a.name.clone(),
                format!("backend {} removed (its connections drain)", a.name),
            ));
        }
    }
    out
}

/// How one setting is shown: its name and its value in a config.
type Field = (&'static str, fn(&Config) -> String);

/// Every setting a reload applies that is listed by value, in the order
/// the lines come.
const FIELDS: &[Field] = &[
    ("connect-timeout", |c| dur(c.connect_timeout)),
    ("idle-timeout", |c| dur(c.idle_timeout)),
    ("drain-timeout", |c| dur(c.drain_timeout)),
    ("client-first-byte-timeout", |c| {
        opt_dur(c.client_first_byte_timeout)
    }),
    ("proxy-header-timeout", |c| dur(c.proxy_header_timeout)),
    ("retries", |c| c.retries.to_string()),
    ("max-conns", |c| opt_num(c.limits.max_conns)),
    ("max-conns-per-worker", |c| {
        opt_num(c.limits.max_conns_per_worker)
    }),
    ("max-conns-per-ip", |c| opt_num(c.limits.max_conns_per_ip)),
    // A service's own (named so apart from the proxy's, which a
    // service's lines repeat).
    ("own max-conns", |c| opt_num(c.own_limits.max_conns)),
    ("own max-conns-per-ip", |c| {
        opt_num(c.own_limits.max_conns_per_ip)
    }),
    ("per-ip-ipv6-prefix", |c| {
        c.limits.per_ip_ipv6_prefix.to_string()
    }),
    ("sticky-ipv6-prefix", |c| {
        c.policy_options.sticky_ipv6_prefix.to_string()
    }),
    ("health-interval", |c| opt_dur(c.health.interval)),
    ("health-timeout", |c| dur(c.health.timeout)),
    ("rise", |c| c.health.rise.to_string()),
    ("fall", |c| c.health.fall.to_string()),
    ("health-send", |c| bytes(&c.probe.send)),
    ("health-expect", |c| bytes(&c.probe.expect)),
    ("resolve-interval", |c| opt_dur(c.resolve_interval)),
    ("slow-start", |c| opt_dur(c.slow_start)),
    ("source", |c| show_ips(&c.source)),
    ("splice", |c| debug(&c.splice)),
];

/// The timeouts, limits, checks and per-connection settings that differ.
fn setting_changes(cur: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (what, show) in FIELDS {
        let (a, b) = (show(cur), show(new));
        if a != b {
            out.push(format!("{what} {a} -> {b}"));
        }
    }
    // Without one set on either side the queue timeout follows the
    // connect timeout, listed already.
    if cur.queue_timeout.is_some() || new.queue_timeout.is_some() {
        let (a, b) = (dur(cur.queue_timeout()), dur(new.queue_timeout()));
        if a != b {
            out.push(format!("queue-timeout {a} -> {b}"));
        }
    }
    if *cur.acl != *new.acl {
        out.push("allow/deny lists changed (see ctl acl)".to_string());
    }
    if *cur.accept_proxy != *new.accept_proxy {
        out.push("accept-proxy sources changed (see ctl acl)".to_string());
    }
    out
}

/// A duration as the config file writes it: `5s`, `250ms`, `2m`.
pub fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn opt_dur(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_string(), dur)
}

fn opt_num(n: Option<impl ToString>) -> String {
    n.map_or_else(|| "off".to_string(), |n| n.to_string())
}

fn show_opt(v: Option<&impl std::fmt::Display>) -> String {
    v.map_or_else(|| "off".to_string(), |v| v.to_string())
}

fn show_backend_slow_start(d: Option<Duration>) -> String {
    match d {
        None => "(--slow-start)".to_string(),
        Some(d) if d.is_zero() => "off".to_string(),
        Some(d) => dur(d),
    }
}

fn show_ips(ips: &[std::net::IpAddr]) -> String {
    if ips.is_empty() {
        return "(system's choice)".to_string();
    }
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(";")
}

fn bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "(none)".to_string();
    }
    format!("'{}'", b.escape_ascii())
}

fn debug(v: &impl Debug) -> String {
    format!("{v:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyName;

    fn config(backends: &[&str]) -> Config {
        let flags = crate::config::Flags {
            backend: backends.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Config::load(&flags).unwrap()
    }

    #[test]
    fn same_config_says_nothing() {
        let a = config(&["127.0.0.1:81", "127.0.0.1:82,weight=2"]);
        assert!(changes(&a, &a.clone(), false, &[]).is_empty());
    }

    #[test]
    fn policy_backends_weights_options_and_settings_each_get_a_line() {
        let a = config(&["127.0.0.1:81", "127.0.0.1:82", "127.0.0.1:83"]);
        let mut b = config(&[
            "127.0.0.1:81,weight=3",
            "127.0.0.1:82,send-proxy=v2",
            "127.0.0.1:84,weight=2",
        ]);
        b.policy = PolicyName::Sticky;
        b.connect_timeout = Duration::from_millis(250);
        b.limits.max_conns = Some(100);
        b.own_limits.max_conns_per_ip = Some(4);
        b.health.interval = None;
        let notes = changes(&a, &b, false, &[]);
        assert_eq!(
            notes,
            [
                "policy round-robin -> sticky",
                "backend 127.0.0.1:81 weight 1 -> 3",
                "backend 127.0.0.1:82 send-proxy off -> v2",
                "backend 127.0.0.1:84 added (weight 2)",
                "backend 127.0.0.1:83 removed (its connections drain)",
                "connect-timeout 5s -> 250ms",
                "max-conns off -> 100",
                "own max-conns-per-ip off -> 4",
                &format!("health-interval {} -> off", opt_dur(a.health.interval)),
            ]
        );
        // A policy `ctl` set, and backends `ctl` added or removed, are
        // reported by the caller: not twice.
        let notes = changes(&a, &b, true, &["127.0.0.1:84", "127.0.0.1:83"]);
        assert!(!notes.iter().any(|n| n.starts_with("policy")), "{notes:?}");
        assert!(!notes.iter().any(|n| n.contains(":84") || n.contains(":83")));
    }

    /// The queue timeout is listed when either side sets one; otherwise
    /// it follows the connect timeout, which has its own line.
    #[test]
    fn a_queue_timeout_is_listed_only_when_one_is_set() {
        let a = config(&["127.0.0.1:81"]);
        let mut b = a.clone();
        b.connect_timeout = Duration::from_secs(2);
        assert_eq!(changes(&a, &b, false, &[]), ["connect-timeout 5s -> 2s"]);
        b.queue_timeout = Some(Duration::from_millis(500));
        assert_eq!(
            changes(&a, &b, false, &[]),
            ["connect-timeout 5s -> 2s", "queue-timeout 5s -> 500ms"]
        );
    }

    #[test]
    fn many_backend_changes_are_counted_past_a_screenful() {
        let a = config(&["127.0.0.1:81"]);
        let names: Vec<String> = (0..40).map(|i| format!("127.0.1.{}:80", i + 1)).collect();
        let b = config(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let notes = changes(&a, &b, false, &[]);
        assert_eq!(notes.len(), MAX_BACKEND_LINES + 1, "{notes:?}");
        assert_eq!(
            notes.last().unwrap(),
            &format!(
                "and {} more backend changes (see ctl backends)",
                41 - MAX_BACKEND_LINES
            )
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(dur(Duration::from_secs(300)), "5m");
        assert_eq!(dur(Duration::from_secs(5)), "5s");
        assert_eq!(dur(Duration::from_millis(1500)), "1500ms");
        assert_eq!(dur(Duration::ZERO), "0s");
    }
}
