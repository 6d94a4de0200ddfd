//! Every control command in one table: the server dispatches through it
//! (`lookup`), its `help` reply is rendered from it, and so are `rrproxy
//! ctl --help` and `rrproxy ctl help` (locally, no proxy needed), so the
//! list and the commands cannot drift apart.
//!
//! A row is a name (one or two words), an argument synopsis (`[X]` is
//! optional; the number of words is checked from it), a one-line
//! description, and what it does: an [`Action`], or `AliasOf` another
//! row. Turning a command into an alias is changing that one column.

use serde::Serialize;

/// What a command does; the server's dispatch matches on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Workers,
    Backends,
    Services,
    Policy,
    BackendAdd,
    BackendRemove,
    BackendEnable,
    BackendDisable,
    BackendMaxconn,
    Upgrade,
    ConfigReload,
    Acl,
    AclAllow,
    AclDeny,
    AclRemove,
    LogReopen,
    Explain,
    Help,
    Quit,
    /// Runs in `rrproxy ctl`, not on the socket.
    Top,
}

impl Action {
    /// Whether sending the command twice does what sending it once does,
    /// so a client that got no reply (the front closed the connection
    /// while it handed over to a new one) may send it again. Anything
    /// that starts something (an upgrade, a reload) or adds and removes
    /// is not: a second copy could start a second upgrade.
    pub fn repeatable(self) -> bool {
        match self {
            Status | Workers | Backends | Services | Acl | Explain | Help | Quit | Top => true,
            // Setting a policy, an admin state or a limit twice lands in the same
            // place.
            Policy | BackendEnable | BackendDisable | BackendMaxconn => true,
            BackendAdd | BackendRemove | Upgrade | ConfigReload | AclAllow | AclDeny
            | AclRemove | LogReopen => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Does {
    Run(Action),
    /// Another name for the named row.
    AliasOf(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub args: &'static str,
    pub about: &'static str,
    pub does: Does,
}

use Action::*;
use Does::{AliasOf, Run};

const fn row(name: &'static str, args: &'static str, about: &'static str, does: Does) -> Spec {
    Spec {
        name,
        args,
        about,
        does,
    }
}

/// The control commands.
pub const COMMANDS: &[Spec] = &[
    row("status", "", "proxy summary", Run(Status)),
    row(
        "workers",
        "",
        "worker slots: pid, state, connections",
        Run(Workers),
    ),
    row(
        "backends",
        "",
        "backends: state, active/maxconn, queue, failures, checks",
        Run(Backends),
    ),
    row(
        "services",
        "",
        "services: listeners, server names, policy, backends up, connections",
        Run(Services),
    ),
    row(
        "policy",
        "[NAME]",
        "show, or switch to round-robin|least-conn|sticky (--service NAME)",
        Run(Policy),
    ),
    row(
        "backend add",
        "ADDR[,weight=N]",
        "add a backend (options as for --backend)",
        Run(BackendAdd),
    ),
    row(
        "backend remove",
        "ADDR",
        "drain a backend, then remove it",
        Run(BackendRemove),
    ),
    row(
        "backend enable",
        "ADDR",
        "put a backend back in rotation",
        Run(BackendEnable),
    ),
    row(
        "backend disable",
        "ADDR",
        "no new connections to a backend; existing ones finish",
        Run(BackendDisable),
    ),
    row(
        "backend maxconn",
        "ADDR N|off",
        "set a backend's connection limit (open ones stay; new ones queue)",
        Run(BackendMaxconn),
    ),
    row(
        "drain",
        "ADDR",
        "undo with backend enable",
        AliasOf("backend disable"),
    ),
    row(
        "acl",
        "",
        "access lists: allow and deny entries, accept-proxy sources",
        Run(Acl),
    ),
    row(
        "acl allow",
        "CIDR",
        "serve clients in CIDR (with any allow entry, only those)",
        Run(AclAllow),
    ),
    row(
        "acl deny",
        "CIDR",
        "refuse clients in CIDR (new connections; open ones stay)",
        Run(AclDeny),
    ),
    row(
        "acl remove",
        "CIDR",
        "take CIDR out of the allow or deny list",
        Run(AclRemove),
    ),
    row(
        "upgrade",
        "[PATH]",
        "zero-downtime restart of everything (like SIGUSR2)",
        Run(Upgrade),
    ),
    row("reload", "", "its old name", AliasOf("upgrade")),
    row(
        "config reload",
        "",
        "re-read the config file (like SIGHUP)",
        Run(ConfigReload),
    ),
    row(
        "log reopen",
        "",
        "every worker reopens the --access-log file (like SIGUSR1; logrotate)",
        Run(LogReopen),
    ),
    row(
        "explain",
        "ADDR [--service S]",
        "which worker slot and backend a client address gets now, and why",
        Run(Explain),
    ),
    row(
        "top",
        "[FRAMES]",
        "live view of workers and backends; q quits (rrproxy ctl only)",
        Run(Top),
    ),
    row("help", "", "this list", Run(Help)),
    row("quit", "", "close the connection", Run(Quit)),
    row("exit", "", "", AliasOf("quit")),
];

/// What `words` asks for: the row as typed, what it does (aliases
/// followed), and its arguments; or a one-line usage error.
pub fn lookup<'w, 'a>(
    words: &'w [&'a str],
) -> Result<(&'static Spec, Action, &'w [&'a str]), String> {
    let Some(first) = words.first() else {
        return Err("empty command (try help)".into());
    };
    let found = COMMANDS
        .iter()
        .filter(|s| {
            let name: Vec<&str> = s.name.split(' ').collect();
            words.len() >= name.len() && words[..name.len()] == name[..]
        })
        .max_by_key(|s| s.name.len());
    let Some(spec) = found else {
        // The first word of two-word commands (`backend`): list them.
        let group: Vec<String> = COMMANDS
            .iter()
            .filter(|s| s.name.split(' ').next() == Some(first) && s.name.contains(' '))
            .map(usage)
            .collect();
        if group.is_empty() {
            return Err(format!(
                "unknown command '{}'{} (try help)",
                truncate(first),
                did_you_mean(
                    first,
                    COMMANDS.iter().map(|s| s.name).filter(|n| !n.contains(' '))
                )
            ));
        }
        // `backend enabel`: the two-word command probably meant.
        let meant = match words {
            [_, second, ..] => did_you_mean(
                &format!("{first} {second}"),
                COMMANDS
                    .iter()
                    .map(|s| s.name)
                    .filter(|n| n.starts_with(&format!("{first} "))),
            ),
            _ => String::new(),
        };
        return Err(format!("usage: {}{meant}", group.join(" | ")));
    };
    let args = &words[spec.name.split(' ').count()..];
    let (min, max) = arity(spec.args);
    if args.len() < min || args.len() > max {
        // `acl frob`: list `acl` and its two-word commands.
        let group: Vec<String> = COMMANDS
            .iter()
            .filter(|s| s.name == spec.name || s.name.starts_with(&format!("{} ", spec.name)))
            .map(usage)
            .collect();
        return Err(if max == 0 && group.len() > 1 {
            format!(
                "'{}' takes no arguments (usage: {})",
                spec.name,
                group.join(" | ")
            )
        } else if max == 0 {
            format!("'{}' takes no arguments (try help)", spec.name)
        } else {
            format!("usage: {}", usage(spec))
        });
    }
    Ok((spec, action(spec), args))
}

/// ` (did you mean 'X'?)` when `typed` is close to one of `choices`, else
/// nothing: for one-line replies.
pub fn did_you_mean<'a>(typed: &str, choices: impl IntoIterator<Item = &'a str>) -> String {
    match crate::config::closest(typed, choices) {
        Some(c) => format!(" (did you mean '{c}'?)"),
        None => String::new(),
    }
}

/// What a row does, following aliases (a bounded chain).
pub fn action(spec: &Spec) -> Action {
    let mut does = spec.does;
    for _ in 0..COMMANDS.len() {
        match does {
            Run(action) => return action,
            AliasOf(target) => match COMMANDS.iter().find(|s| s.name == target) {
                Some(t) => does = t.does,
                None => break,
            },
        }
    }
    // Only a broken table gets here; the unit tests check it cannot.
    Help
}

/// Least and most argument words a synopsis allows (the words of a
/// `[...]` group, like `[X]` or `[--service S]`, are optional).
fn arity(synopsis: &str) -> (usize, usize) {
    let mut depth = 0usize;
    let (mut required, mut all) = (0, 0);
    for w in synopsis.split_whitespace() {
        depth += w.matches('[').count();
        all += 1;
        if depth == 0 {
            required += 1;
        }
        depth = depth.saturating_sub(w.matches(']').count());
    }
    (required, all)
}

/// Keep echoed input short in error replies.
fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// `name args`.
fn usage(s: &Spec) -> String {
    format!("{} {}", s.name, s.args).trim_end().to_string()
}

/// The description shown for a row (an alias says of what).
fn about(spec: &Spec) -> String {
    match (spec.does, spec.about) {
        (AliasOf(target), "") => format!("same as {target}"),
        (AliasOf(target), about) => format!("same as {target}; {about}"),
        (Run(_), about) => about.to_string(),
    }
}

/// The table as text: one line per command, for `help`, `ctl help` and
/// `ctl --help`.
pub fn help() -> String {
    let width = COMMANDS.iter().map(|s| usage(s).len()).max().unwrap_or(0) + 2;
    let mut out = String::from("commands (add --json to any of them for a JSON reply):\n");
    for s in COMMANDS {
        out.push_str(&format!("  {:<width$}{}\n", usage(s), about(s)));
    }
    out.trim_end().to_string()
}

/// One row of `help --json`.
#[derive(Debug, Serialize)]
pub struct HelpRow {
    pub command: &'static str,
    pub args: &'static str,
    pub about: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<&'static str>,
}

/// The table as JSON rows.
pub fn help_rows() -> Vec<HelpRow> {
    COMMANDS
        .iter()
        .map(|s| HelpRow {
            command: s.name,
            args: s.args,
            about: about(s),
            alias_of: match s.does {
                AliasOf(t) => Some(t),
                Run(_) => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_names_a_command_and_names_are_unique() {
        for (i, s) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[..i].iter().all(|o| o.name != s.name),
                "{} twice",
                s.name
            );
            if let AliasOf(target) = s.does {
                let t = COMMANDS.iter().find(|o| o.name == target);
                assert!(t.is_some_and(|t| matches!(t.does, Run(_))), "{}", s.name);
            }
        }
    }

    /// A client that got no reply sends a command again only if doing so
    /// cannot start a second upgrade or reload, or add twice; aliases
    /// (`reload`, the old name of `upgrade`) are classified as their row.
    #[test]
    fn only_commands_safe_to_repeat_are_resent() {
        let repeat = |line: &str| {
            let words: Vec<&str> = line.split(' ').collect();
            lookup(&words).unwrap().1.repeatable()
        };
        for line in ["status", "workers", "backends", "policy sticky", "help"] {
            assert!(repeat(line), "{line}");
        }
        for line in ["upgrade", "reload", "config reload", "log reopen"] {
            assert!(!repeat(line), "{line}");
        }
    }

    #[test]
    fn lookup_follows_aliases_and_checks_arguments() {
        let (spec, action, args) = lookup(&["drain", "10.0.0.1:80"]).unwrap();
        assert_eq!(
            (spec.name, action, args),
            ("drain", BackendDisable, &["10.0.0.1:80"][..])
        );
        assert_eq!(lookup(&["config", "reload"]).unwrap().1, ConfigReload);
        assert_eq!(lookup(&["log", "reopen"]).unwrap().1, LogReopen);
        assert_eq!(lookup(&["log"]).unwrap_err(), "usage: log reopen");
        assert_eq!(lookup(&["reload"]).unwrap().1, Upgrade);
        assert_eq!(lookup(&["upgrade", "/x"]).unwrap().2, &["/x"][..]);
        assert_eq!(lookup(&["policy"]).unwrap().1, Policy);
        assert_eq!(lookup(&["policy", "sticky"]).unwrap().2, &["sticky"][..]);
        assert_eq!(
            lookup(&["policy", "a", "b"]).unwrap_err(),
            "usage: policy [NAME]"
        );
        assert!(
            lookup(&["workers", "now"])
                .unwrap_err()
                .contains("takes no arguments")
        );
        assert!(
            lookup(&["backend", "explode"])
                .unwrap_err()
                .starts_with("usage: backend add ADDR[,weight=N] | backend remove ADDR")
        );
        assert_eq!(
            lookup(&["frob"]).unwrap_err(),
            "unknown command 'frob' (try help)"
        );
        assert_eq!(
            lookup(&["statsu"]).unwrap_err(),
            "unknown command 'statsu' (did you mean 'status'?) (try help)"
        );
        assert!(
            lookup(&["backend", "enabel", "10.0.0.1:80"])
                .unwrap_err()
                .ends_with("(did you mean 'backend enable'?)")
        );
        assert!(lookup(&[]).is_err());
        assert_eq!(lookup(&["acl"]).unwrap().1, Acl);
        let (_, action, args) = lookup(&["acl", "deny", "10.0.0.0/8"]).unwrap();
        assert_eq!((action, args), (AclDeny, &["10.0.0.0/8"][..]));
        assert_eq!(
            lookup(&["acl", "frob"]).unwrap_err(),
            "'acl' takes no arguments (usage: acl | acl allow CIDR | acl deny CIDR | acl remove CIDR)"
        );
        assert_eq!(
            lookup(&["acl", "allow"]).unwrap_err(),
            "usage: acl allow CIDR"
        );
        assert_eq!(arity("ADDR [--service S]"), (1, 3));
        assert_eq!(arity("[PATH]"), (0, 1));
        assert_eq!(lookup(&["explain", "10.0.0.1"]).unwrap().1, Explain);
        assert_eq!(
            lookup(&["explain", "10.0.0.1", "--service", "web"])
                .unwrap()
                .2
                .len(),
            3
        );
        assert_eq!(
            lookup(&["explain"]).unwrap_err(),
            "usage: explain ADDR [--service S]"
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Any line, made of command words, look-alikes and noise: the
        /// table never panics, refuses in one line of bounded length, and
        /// accepts only what its row's synopsis allows.
        #[test]
        fn any_line_gets_one_line_or_a_command_within_its_arity(
            words in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(
                        COMMANDS.iter().flat_map(|s| s.name.split(' ')).collect::<Vec<_>>()
                    ).prop_map(str::to_string),
                    "[a-z0-9:./\\[\\]-]{1,12}",
                    "\\PC{1,80}",
                ],
                0..6,
            )
        ) {
            let line = words.join(" ");
            let words: Vec<&str> = line.split_whitespace().collect();
            match lookup(&words) {
                Err(msg) => {
                    prop_assert!(!msg.contains('\n'), "{msg:?}");
                    prop_assert!(msg.chars().count() <= 400, "{msg:?}");
                }
                Ok((spec, act, args)) => {
                    prop_assert_eq!(act, action(spec));
                    prop_assert_eq!(&words[spec.name.split(' ').count()..], args);
                    let (min, max) = arity(spec.args);
                    prop_assert!((min..=max).contains(&args.len()));
                }
            }
        }
    }

    #[test]
    fn help_has_one_line_per_command() {
        let text = help();
        assert_eq!(text.lines().count(), COMMANDS.len() + 1);
        assert!(text.contains("  drain ADDR") && text.contains("same as backend disable"));
    }
}
