//! `rrproxy check`: every check that starting the proxy makes (see
//! `proxy::serve`), short of binding sockets, with the same error for the
//! same fault, so a configuration `check` passes also starts, unless a
//! port or the control socket is taken (which `check` leaves to binding,
//! so it can run next to the proxy it is about to reload).
//!
//! In the order starting makes them: the configuration (loaded by the
//! caller); whether this process can become `--user`; the control
//! socket's place (as this user: starting binds it before the switch);
//! the statistics table; this program's own executable (workers start
//! from it); then, as `--user` (starting makes them after the switch),
//! the access log file and the pid file's directory. A check added to
//! starting belongs here too.

use std::path::PathBuf;

use crate::config::Config;
use crate::front::FrontError;

/// Run the checks; the first failure, as starting would report it.
pub fn check(config: &Config) -> Result<(), FrontError> {
    if let Some(who) = &config.run_as {
        crate::privileges::check(who).map_err(FrontError::Privileges)?;
    }
    if let Some(path) = &config.control {
        let owner = config.run_as.as_ref().map(|r| (r.uid, r.gid));
        crate::control::check_path(path, owner).map_err(FrontError::Control)?;
    }
    crate::stats::Table::create(config.workers, 1, 1)?;
    crate::supervisor::Exe::own().map_err(FrontError::Exe)?;
    let as_user = || -> Result<(), FrontError> {
        crate::access_log::check_without_creating(&config.access_log).map_err(|source| {
            FrontError::AccessLog {
                path: match &config.access_log {
                    crate::channel::AccessLog::File(p) => p.clone(),
                    _ => PathBuf::from("stderr"),
                },
                source,
            }
        })?;
        if let Some(path) = &config.pid_file {
            crate::pidfile::check(path).map_err(|source| FrontError::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    };
    match &config.run_as {
        Some(who) => crate::privileges::as_user(who, as_user).map_err(FrontError::Privileges)?,
        None => as_user(),
    }
}
