//! `rrproxy ctl`: send one command to a running proxy and print the reply.
//! Also the table renderers, shared with the server's plain-text replies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{BackendRow, Status, WorkerRow};

/// Why `ctl` failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach rrproxy at {path}: {source} (is it running? is --control right?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "control socket {path} is served by uid {server}, not by you (uid {me}): refusing to talk to it (is another user impersonating rrproxy?)"
    )]
    Impostor { path: String, server: u32, me: u32 },
}

/// Send `words` (plus `--json` if asked) and return the reply text. An
/// `error:` reply becomes `CtlError::Refused`. An upgrade answers once the
/// new front serves; this then waits (asking the new front) until the
/// workers are replaced too, and says how that ended.
pub fn run(path: &Path, words: &[String], json: bool) -> Result<String, CtlError> {
    let upgrade = words
        .first()
        .is_some_and(|w| w == "upgrade" || w == "reload");
    let reply = run_once(path, words, json)?;
    if !upgrade {
        return Ok(reply);
    }
    let rolled = wait_for_workers(path)?;
    if json {
        let msg = serde_json::json!({ "ok": format!("{}; {rolled}", reply) });
        return Ok(msg.to_string());
    }
    Ok(format!("{reply}\n{rolled}"))
}

/// After an upgrade: poll the (new) front until no upgrade or restart of
/// the workers is in progress; its last outcome, or an error if it failed.
fn wait_for_workers(path: &Path) -> Result<String, CtlError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let status = match run_once(path, &["status".to_string()], true) {
            Ok(s) => s,
            // Between fronts: try again.
            Err(CtlError::Connect { .. }) | Err(CtlError::Io { .. })
                if std::time::Instant::now() < deadline =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = serde_json::from_str(&status)
            .map_err(|e| CtlError::Refused(format!("bad status reply: {e}")))?;
        if v["upgrading"] == true || v["rolling_restart"] == true {
            if std::time::Instant::now() > deadline {
                return Err(CtlError::Refused(
                    "the workers are still being replaced after an hour; see `rrproxy ctl status`"
                        .into(),
                ));
            }
            continue;
        }
        let last = v["last_restart"].as_str().unwrap_or("workers replaced");
        return match last.strip_prefix("failed: ") {
            Some(why) => Err(CtlError::Refused(format!(
                "the front was upgraded, but replacing the workers failed: {why}"
            ))),
            None => Ok(last.to_string()),
        };
    }
}

/// One command, one reply (retried once if the front handed over to a
/// new one while this connection was open).
fn run_once(path: &Path, words: &[String], json: bool) -> Result<String, CtlError> {
    for _ in 0..3 {
        match exchange(path, words, json) {
            // A front that handed over to a new one in an upgrade, and did
            // not run the command: ask the new one.
            Err(CtlError::Refused(msg)) if msg.contains("handed over to a new one") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(reply) if reply.is_empty() => std::thread::sleep(Duration::from_millis(50)),
            // Closed before it read the command (a front exiting after an
            // upgrade, with this connection still in its queue): the
            // command did not run.
            Err(CtlError::Io { source, .. }) if unread(&source) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
    exchange(path, words, json)
}

/// The server closed the connection with the command unread: writing it
/// failed (`EPIPE`), or the close reset it (`ECONNRESET`).
fn unread(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

fn exchange(path: &Path, words: &[String], json: bool) -> Result<String, CtlError> {
    let p = path.display().to_string();
    let io = |source| CtlError::Io {
        path: p.clone(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: p.clone(),
        source,
    })?;
    // The server serves only root and its own user; a non-root client
    // likewise talks only to its own user's proxy, not to whoever got to
    // the path first.
    let me = rustix::process::geteuid().as_raw();
    let server = super::socket::peer_uid(&stream).map_err(io)?;
    if me != 0 && server != me {
        return Err(CtlError::Impostor {
            path: p,
            server,
            me,
        });
    }
    // An upgrade replies when the new front serves (its start is bounded
    // by the front's own timeouts); everything else at once.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line = words.join(" ");
    if json {
        line.push_str(" --json");
    }
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    loop {
        let mut l = String::new();
        let n = reader.read_line(&mut l).map_err(io)?;
        if n == 0 || l == "\n" {
            break;
        }
        reply.push_str(&l);
    }
    let reply = reply.trim_end().to_string();
    let is_error = reply.starts_with("error:") || (json && reply.starts_with("{\"error\""));
    if is_error {
        let msg = reply.strip_prefix("error: ").unwrap_or(&reply).to_string();
        return Err(CtlError::Refused(msg));
    }
    Ok(reply)
}

/// Render rows as an aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn render_status(s: &Status) -> String {
    format!(
        "rrproxy {version} (build {build}) pid {pid}, up {uptime}s\n\
         policy       {policy}\n\
         listen       {listen}\n\
         metrics      {metrics}\n\
         workers      {wu}/{w} up{rolling}{builds}\n\
         backends     {bu}/{b} up\n\
         connections  {active} active, {total} total, {pending} pending\n\
         accepting    {accepting}",
        version = s.version,
        build = &s.build[..s.build.len().min(12)],
        pid = s.pid,
        uptime = s.uptime_seconds,
        policy = s.policy,
        listen = s.listen.join(", "),
        metrics = s
            .metrics
            .as_deref()
            .map_or("off".to_string(), |m| format!("http://{m}/metrics")),
        wu = s.workers_up,
        w = s.workers,
        rolling = if s.rolling_restart {
            " (being replaced)"
        } else {
            ""
        },
        builds = if s.builds.len() > 1 || s.rolling_restart {
            format!(" (builds now: {})", s.builds.join(", "))
        } else {
            String::new()
        },
        bu = s.backends_up,
        b = s.backends,
        active = s.active_connections,
        total = s.total_connections,
        pending = s.pending_connections,
        accepting = if s.accepting { "yes" } else { "no (paused)" },
    )
}

pub fn render_workers(rows: &[WorkerRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut state = r.state.to_string();
            if !r.draining_pids.is_empty() {
                let pids: Vec<String> = r.draining_pids.iter().map(u32::to_string).collect();
                state.push_str(&format!(" (draining {})", pids.join(",")));
            }
            vec![
                r.slot.to_string(),
                r.pid.map_or("-".into(), |p| p.to_string()),
                state,
                r.active.to_string(),
                r.total.to_string(),
                r.restarts.to_string(),
                r.build.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "SLOT", "PID", "STATE", "ACTIVE", "TOTAL", "RESTARTS", "BUILD",
        ],
        &body,
    )
}

pub fn render_backends(rows: &[BackendRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                match (&r.from, r.send_proxy) {
                    (Some(name), None) => format!("{} ({name})", r.address),
                    (Some(name), Some(v)) => format!("{} ({name}, send-proxy={v})", r.address),
                    (None, Some(v)) => format!("{} (send-proxy={v})", r.address),
                    (None, None) => r.address.clone(),
                },
                match (r.slow_start_percent, r.backup && r.state == "up") {
                    (Some(p), false) => format!("{} (slow start {p}%)", r.state),
                    (Some(p), true) => format!("up (backup, slow start {p}%)"),
                    (None, true) => "up (backup)".to_string(),
                    (None, false) => r.state.to_string(),
                },
                r.weight.to_string(),
                match r.maxconn {
                    Some(max) => format!("{}/{max}", r.active),
                    None => r.active.to_string(),
                },
                match (r.maxconn, r.maxqueue) {
                    (None, _) => "-".to_string(),
                    (Some(_), None) => r.queued.to_string(),
                    (Some(_), Some(m)) => format!("{}/{m}", r.queued),
                },
                r.total.to_string(),
                r.failures.to_string(),
                r.check.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "BACKEND", "STATE", "WEIGHT", "ACTIVE", "QUEUE", "TOTAL", "FAILURES", "CHECK",
        ],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
