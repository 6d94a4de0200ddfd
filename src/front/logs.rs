//! The front's part in the access log: telling each worker where to write
//! it (when the worker starts, and when a reload changes the setting) and
//! when to reopen the file (SIGUSR1, `rrproxy ctl log reopen`: after
//! logrotate moved it). The workers open and write it (see
//! [`crate::access_log`]); the front writes no access log line itself.

use tracing::{info, warn};

use super::Front;
use crate::channel::{AccessLog, Down};
use crate::logging::LogFormat;

impl Front {
    /// The frame that tells a worker where the access log goes now.
    pub fn access_log_frame(&self) -> Option<Vec<u8>> {
        let msg = Down::AccessLog {
            target: self.config.load().access_log.clone(),
            json: self.workers.plan.log.format == LogFormat::Json,
        };
        let mut frame = Vec::new();
        match msg.encode(&mut frame) {
            Ok(()) => Some(frame),
            Err(err) => {
                warn!(cause = %err, "cannot encode the access log setting");
                None
            }
        }
    }

    /// Send the access log setting to every worker process (each opens
    /// the target again). Returns how many were told.
    fn send_access_log(&mut self) -> usize {
        let Some(frame) = self.access_log_frame() else {
            return 0;
        };
        let mut told = 0;
        for p in self.workers.procs_mut() {
            p.queue_control(frame.clone());
            told += 1;
        }
        told
    }

    /// Make every worker reopen the access log file (logrotate's
    /// `postrotate`). A worker that cannot open it logs why and keeps
    /// writing to the file it had.
    pub fn reopen_access_log(&mut self) -> Result<String, String> {
        match self.config.load().access_log.clone() {
            AccessLog::Off => Err("the access log is off (--access-log PATH turns it on)".into()),
            AccessLog::Stderr => Ok("the access log goes to stderr: nothing to reopen".into()),
            AccessLog::File(path) => {
                let told = self.send_access_log();
                info!(path = %path.display(), workers = told, "access log reopen");
                Ok(format!(
                    "access log {}: reopen sent to {told} worker processes (a worker that cannot open it logs why and keeps the old file)",
                    path.display()
                ))
            }
        }
    }

    /// A reload changed the access log setting (the config in force is
    /// already the new one): tell the workers, and say whether the new
    /// file can be opened.
    pub(crate) fn access_log_changed(&mut self, notes: &mut Vec<String>) {
        let target = self.config.load().access_log.clone();
        let shown = match &target {
            AccessLog::Off => "off".to_string(),
            AccessLog::Stderr => "stderr".to_string(),
            AccessLog::File(p) => p.display().to_string(),
        };
        if let Err(err) = crate::access_log::check(&target) {
            notes.push(format!(
                "access log {shown} cannot be opened ({err}): the workers keep the old one"
            ));
        } else {
            notes.push(format!("access log -> {shown}"));
        }
        self.send_access_log();
    }
}
