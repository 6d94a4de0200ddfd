//! The `rrproxy` binary: parse the command line, set up logging, and run
//! the requested role (proxy front, worker, ctl, demo, check).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rrproxy::cli::{Cli, Command};
use rrproxy::logging::init as init_logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ctl(args)) => {
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
                Ok(reply) => {
                    if !reply.is_empty() {
                        println!("{reply}");
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => fail("rrproxy ctl", &err),
            }
        }
        Some(Command::Check(args)) => match rrproxy::config::Config::load(&args.proxy) {
            Ok(config) => {
                println!("configuration OK: {}", config.summary());
                ExitCode::SUCCESS
            }
            Err(err) => fail("rrproxy check", &err),
        },
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "rrproxy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Man) => {
            let man = clap_mangen::Man::new(Cli::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                // `rrproxy man | head`: the reader left; not an error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(err) => fail("rrproxy man", &err),
            }
        }
        Some(Command::Worker(args)) => {
            let _log = init_logging(&cli.log, Some(args.slot));
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
            let _log = init_logging(&cli.log, None);
            match rrproxy::demo::run(args, cli.log.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail("rrproxy demo", &err),
            }
        }
        None => {
            let _log = init_logging(&cli.log, None);
            match rrproxy::front::run(cli.proxy, cli.log.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail("rrproxy", &err),
            }
        }
    }
}

/// Print one clear line (with causes) and return failure.
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
