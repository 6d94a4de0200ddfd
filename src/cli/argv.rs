//! The command line as typed: parsing it with clap, remembering how each
//! flag was spelled (`-w` or `--workers`) so that errors found after
//! parsing can name it that way, and printing clap's own errors in the
//! same style as ours (`rrproxy: error: ...`, then `tip:` lines).

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use super::{Cli, Command};
use crate::config::Origin;

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

    /// The origin of a flag's value, for an error: the flag as typed (or
    /// its long name), with its value placeholder.
    pub fn origin(&self, id: &str, value: Option<&str>) -> Origin {
        let cmd = Cli::command();
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

/// Parse `argv` (program name first). On success, every `ProxyArgs` in
/// the result knows how its flags were spelled.
pub fn parse(argv: &[OsString]) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    let mut matches = cmd.try_get_matches_from_mut(argv)?;
    let mut cli = Cli::from_arg_matches_mut(&mut matches)?;
    let spelling = Spelling::scan(&cmd, argv);
    cli.proxy.spelling = spelling.clone();
    if let Some(Command::Check(check)) = &mut cli.command {
        check.proxy.spelling = spelling;
    }
    Ok(cli)
}

/// clap's error for `argv` in our style: `rrproxy: error: ...` and the
/// tips, with a bad value's flag named as typed; without the usage lines.
pub fn render_error(err: &clap::Error, argv: &[OsString]) -> String {
    let mut text = err.render().to_string();
    if matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
            err.get(ContextKind::InvalidArg),
            err.get(ContextKind::InvalidValue),
        ) {
            text = text.replacen(
                &format!("'{arg}'"),
                &format!("'{}'", as_typed(arg, value, argv)),
                1,
            );
        }
    }
    let mut out = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if out.is_empty() {
            out.push_str("rrproxy: error: ");
            out.push_str(line.strip_prefix("error: ").unwrap_or(line));
        } else {
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

/// clap names a flag `--workers <N|auto>`; say `-w <N|auto>` if that is
/// what was typed with `value`.
fn as_typed(arg: &str, value: &str, argv: &[OsString]) -> String {
    let (flag, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    let Some(long) = flag.strip_prefix("--") else {
        return arg.to_string();
    };
    let mut cmd = Cli::command();
    cmd.build();
    let spelling = Spelling::scan(&cmd, argv);
    let typed = spelling
        .seen
        .iter()
        // (A missing value is an empty one to clap.)
        .find(|s| s.long.as_deref() == Some(long) && s.value.as_deref().unwrap_or("") == value)
        .map(|s| s.typed.as_str());
    match typed {
        Some(t) if rest.is_empty() => t.to_string(),
        Some(t) => format!("{t} {rest}"),
        None => arg.to_string(),
    }
}
