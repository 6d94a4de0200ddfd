//! The man page (`rrproxy man`). clap_mangen writes the SYNOPSIS from the
//! flags' names only (`[--listen]`); we give it one written from the same
//! definitions with each flag's value placeholder (`[--listen <ADDR>]`),
//! one line per form of the command.

use clap::{Arg, ArgAction, CommandFactory};

use super::Cli;

/// The command the man page is rendered from.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    let usage = synopsis(&cmd);
    cmd.override_usage(usage)
}

/// `rrproxy [OPTIONS...]`, then `rrproxy SUB ...` for each visible
/// subcommand. A subcommand that takes every option of the main form
/// (`check`) is written `[OPTIONS]`.
fn synopsis(cmd: &clap::Command) -> String {
    let name = cmd.get_name();
    // A subcommand's own arguments: not the global ones, nor --help.
    let own = |a: &&Arg| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help";
    let mut lines = vec![form(name, cmd.get_arguments().filter(|a| !a.is_hide_set()))];
    let main_ids: Vec<&str> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_global_set())
        .map(|a| a.get_id().as_str())
        .filter(|id| !matches!(*id, "help" | "version"))
        .collect();
    // (clap's own `help` subcommand is not a form worth listing.)
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = format!("{name} {}", sub.get_name());
        let takes_all = main_ids
            .iter()
            .all(|id| sub.get_arguments().any(|a| a.get_id().as_str() == *id));
        if takes_all {
            lines.push(format!("{full} [OPTIONS]"));
        } else {
            lines.push(form(&full, sub.get_arguments().filter(own)));
        }
    }
    lines.join("\n")
}

/// One form: the options (`[-l|--listen <ADDR>]...`), then the positionals.
fn form<'a>(name: &str, args: impl Iterator<Item = &'a Arg>) -> String {
    let (positional, options): (Vec<&Arg>, Vec<&Arg>) = args.partition(|a| a.is_positional());
    let mut out = name.to_string();
    for arg in options {
        let switch = match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) => format!("-{s}|--{l}"),
            (Some(s), None) => format!("-{s}"),
            (None, Some(l)) => format!("--{l}"),
            (None, None) => continue,
        };
        let value = placeholder(arg)
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        let repeat = if repeats(arg) { "..." } else { "" };
        out.push_str(&format!(" [{switch}{value}]{repeat}"));
    }
    for arg in positional {
        let value = placeholder(arg).unwrap_or_else(|| format!("<{}>", arg.get_id()));
        if arg.is_required_set() {
            out.push_str(&format!(" {value}"));
        } else {
            out.push_str(&format!(" [{value}]"));
        }
        if repeats(arg) {
            out.push_str("...");
        }
    }
    out
}

/// `<ADDR>` for an argument that takes a value.
fn placeholder(arg: &Arg) -> Option<String> {
    if !arg.get_action().takes_values() {
        return None;
    }
    let names = arg.get_value_names()?;
    let joined: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    Some(format!("<{}>", joined.join(" ")))
}

fn repeats(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append | ArgAction::Count)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}
