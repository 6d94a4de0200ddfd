//! The `rrproxy` binary: parse the command line, set up logging, and run
//! the requested role (proxy front, worker, ctl, demo, check).

use std::process::ExitCode;

use clap::CommandFactory;
use clap::error::ErrorKind;
use rrproxy::cli::{Cli, Command};
use rrproxy::logging::init as init_logging;

/// Exit status of a usage or config error (`--help` says so).
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match rrproxy::cli::parse(&argv) {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            err.exit()
        }
        Err(err) => {
            eprintln!("{}", rrproxy::cli::render_error(&err, &argv));
            return ExitCode::from(USAGE);
        }
    };
    match cli.command {
        Some(Command::Ctl(args)) => {
            // The command list needs no proxy.
            if args.command == ["help"] {
                return if args.json {
                    let rows = rrproxy::control::table::help_rows();
                    out(&serde_json::to_string(&rows).unwrap_or_default())
                } else {
                    out(&rrproxy::control::table::help())
                };
            }
            let path = args
                .control
                .clone()
                .unwrap_or_else(rrproxy::config::default_control_path);
            if args.command.first().is_some_and(|c| c == "top") {
                return match rrproxy::control::top(&path, &args.command[1..]) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => fail("rrproxy ctl top", &err),
                };
            }
            match rrproxy::control::ctl(&path, &args.command, args.json) {
                Ok(reply) if reply.is_empty() => ExitCode::SUCCESS,
                Ok(reply) => out(&reply),
                Err(err) => fail("rrproxy ctl", &err),
            }
        }
        // Errors read exactly as when the proxy starts with the same flags.
        // (And every check starting makes, short of binding.)
        Some(Command::Check(args)) => match rrproxy::config::Config::load(&args.proxy) {
            Ok(config) => match rrproxy::preflight::check(&config) {
                Ok(()) => {
                    println!("configuration OK: {}", config.summary());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    fail("rrproxy", &err);
                    ExitCode::from(front_exit_code(&err))
                }
            },
            Err(err) => {
                fail("rrproxy", &err);
                ExitCode::from(err.exit_code())
            }
        },
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "rrproxy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Man) => {
            let man = clap_mangen::Man::new(rrproxy::cli::man::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                // `rrproxy man | head`: the reader left; not an error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(err) => fail("rrproxy man", &err),
            }
        }
        Some(Command::Worker(args)) => {
            let _log = init_logging(&cli.log.options(), Some(args.slot));
            if let Some(cpu) = args.cpu {
                if let Err(err) = rrproxy::sys::pin_to_cpu(cpu) {
                    tracing::warn!(slot = args.slot, cpu, cause = %err, "cannot pin worker to its CPU");
                }
            }
            match rrproxy::worker::run(args.slot, args.channel_fd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail("rrproxy worker", &err),
            }
        }
        Some(Command::Demo(args)) => {
            let _log = init_logging(&cli.log.options(), None);
            match rrproxy::demo::run(args, cli.log.options()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    fail("rrproxy demo", &err);
                    ExitCode::from(front_exit_code(&err))
                }
            }
        }
        None => {
            // PID 1 (a container's entrypoint): be a small init and run the
            // front as a child, before any thread exists (see `init`).
            if rrproxy::init::wanted() {
                return rrproxy::init::run(&argv, &cli.log.options());
            }
            let _log = init_logging(&cli.log.options(), None);
            match rrproxy::proxy::run(cli.proxy, cli.log.options()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    fail("rrproxy", &err);
                    ExitCode::from(front_exit_code(&err))
                }
            }
        }
    }
}

/// Print a line to stdout. A reader that left (`rrproxy ctl status |
/// head -1`) is not an error, and must not panic as `println!` would.
fn out(text: &str) -> ExitCode {
    use std::io::Write;
    match writeln!(std::io::stdout(), "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail("rrproxy", &err),
    }
}

/// 2 for a bad flag or config, 1 for everything that failed at run time.
fn front_exit_code(err: &rrproxy::front::FrontError) -> u8 {
    match err {
        rrproxy::front::FrontError::Config(err) => err.exit_code(),
        _ => 1,
    }
}

/// Print one clear line (with causes, and any `tip:` lines) and return
/// failure at run time (1).
fn fail(who: &str, err: &dyn std::error::Error) -> ExitCode {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    eprintln!("{who}: error: {msg}");
    ExitCode::FAILURE
}
