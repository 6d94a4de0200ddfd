//! The command line as typed: parsing it with clap, remembering how each
//! flag was spelled (`-w` or `--workers`) so that errors found after
//! parsing can name it that way, and printing clap's own errors in the
//! same style as ours (`rrproxy: error: ...`, then `tip:` lines).

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use super::{Cli, Command};
use crate::config::Spelling;

/// Parse `argv` (program name first). On success, every `Flags` in
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
    let typed = spelling.typed_long(long, value);
    match typed {
        Some(t) if rest.is_empty() => t.to_string(),
        Some(t) => format!("{t} {rest}"),
        None => arg.to_string(),
    }
}
