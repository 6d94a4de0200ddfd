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
    #[error(
        "lost the proxy during the upgrade: control socket {path} unreachable for {waited}s ({cause}); last seen: {last_seen} (was it stopped or killed? see its log)"
    )]
    Lost {
        path: String,
        waited: u64,
        cause: String,
        last_seen: String,
    },
    #[error(
        "gave up after {waited}s: the workers are still being replaced, longer than the upgrade's own timeouts allow ({bound}s); last seen: {last_seen}; see `rrproxy ctl status`"
    )]
    TooLong {
        waited: u64,
        bound: u64,
        last_seen: String,
    },
}

/// While following an upgrade, how long the control socket may stay
/// unreachable before `ctl` says the proxy is gone. After the upgrade
/// reply the new front holds the socket, so it is never unreachable for
/// long; the new front's own start is bounded by `START_TIMEOUT`.
pub const UNREACHABLE_LIMIT: Duration =
    Duration::from_secs(crate::front::upgrade::START_TIMEOUT.as_secs() + 5);

/// Reply time allowed for a status poll while following an upgrade.
const POLL_REPLY_LIMIT: Duration = Duration::from_secs(10);

/// The longest a restart of the workers may take, as the front bounds it,
/// counted as if the slots went one after another (they go together, so
/// this is loose, but finite): per slot, a replacement ready within
/// `READY_TIMEOUT`, then the old process drained within the drain timeout
/// and killed after the kill grace (and two more seconds to see it gone);
/// plus a margin for the hand-over itself.
pub fn roll_bound(workers: u64, drain: Duration) -> Duration {
    let per_slot = crate::supervisor::READY_TIMEOUT
        + drain
        + crate::supervisor::KILL_GRACE
        + Duration::from_secs(2);
    per_slot * u32::try_from(workers.max(1)).unwrap_or(u32::MAX)
        + crate::front::upgrade::START_TIMEOUT
        + Duration::from_secs(30)
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
    let rolled = wait_for_workers(path, &reply)?;
    if json {
        let msg = serde_json::json!({ "ok": format!("{}; {rolled}", reply) });
        return Ok(msg.to_string());
    }
    Ok(format!("{reply}\n{rolled}"))
}

/// After an upgrade: poll the (new) front until no upgrade or restart of
/// the workers is in progress; its last outcome, or an error if it failed.
/// Ends within bounds: the proxy unreachable for [`UNREACHABLE_LIMIT`]
/// (it was stopped or killed), or the restart taking longer than the
/// front's own timeouts allow ([`roll_bound`]); either error says what
/// was last seen.
fn wait_for_workers(path: &Path, reply: &str) -> Result<String, CtlError> {
    use std::time::Instant;
    let started = Instant::now();
    let mut last_seen = format!("the upgrade reply '{}'", reply.replace('\n', "; "));
    // Until a status says otherwise: one slot with the longest drain.
    let mut bound = roll_bound(1, crate::config::MAX_DURATION);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let status = match exchange(path, &["status".to_string()], true, POLL_REPLY_LIMIT) {
            Ok(s) => {
                unreachable_since = None;
                s
            }
            // Between fronts, or a front leaving: try again, for a while.
            Err(e) => {
                let cause = match e {
                    CtlError::Connect { source, .. } | CtlError::Io { source, .. } => {
                        source.to_string()
                    }
                    CtlError::Refused(m) if m.contains("handed over to a new one") => m,
                    other => return Err(other),
                };
                let since = unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_LIMIT {
                    return Err(CtlError::Lost {
                        path: path.display().to_string(),
                        waited: since.elapsed().as_secs(),
                        cause,
                        last_seen,
                    });
                }
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&status)
            .map_err(|e| CtlError::Refused(format!("bad status reply: {e}")))?;
        let workers = v["workers"].as_u64().unwrap_or(1);
        if let Some(drain) = v["drain_timeout_seconds"].as_f64() {
            bound = roll_bound(workers, Duration::from_secs_f64(drain.max(0.0)));
        }
        let busy = v["upgrading"] == true || v["rolling_restart"] == true;
        last_seen = format!(
            "front pid {}, {}/{} workers up{}",
            v["pid"],
            v["workers_up"],
            v["workers"],
            if busy { ", workers being replaced" } else { "" }
        );
        if busy {
            if started.elapsed() > bound {
                return Err(CtlError::TooLong {
                    waited: started.elapsed().as_secs(),
                    bound: bound.as_secs(),
                    last_seen,
                });
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

/// One command, one reply (retried if the front handed over to a new one
/// while this connection was open). A connection closed with no reply
/// after the command was sent is retried only for a command that is safe
/// to repeat ([`super::table::Action::repeatable`]): the front may have
/// run it.
fn run_once(path: &Path, words: &[String], json: bool) -> Result<String, CtlError> {
    let typed: Vec<&str> = words.iter().map(String::as_str).collect();
    let repeatable = super::table::lookup(&typed).is_ok_and(|(_, action, _)| action.repeatable());
    for _ in 0..3 {
        match exchange(path, words, json, REPLY_LIMIT) {
            // A front that handed over to a new one in an upgrade, and did
            // not run the command: ask the new one.
            Err(CtlError::Refused(msg)) if msg.contains("handed over to a new one") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(reply) if reply.is_empty() && repeatable => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(reply) if reply.is_empty() => {
                return Err(CtlError::Refused(format!(
                    "the proxy closed the connection without a reply to '{}': it may or may not have run it (see `rrproxy ctl status`)",
                    typed.join(" ")
                )));
            }
            // Closed before it read the command (a front exiting after an
            // upgrade, with this connection still in its queue): the
            // command did not run.
            Err(CtlError::Io { source, .. }) if unread(&source) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
    exchange(path, words, json, REPLY_LIMIT)
}

/// The server closed the connection with the command unread: writing it
/// failed (`EPIPE`), or the close reset it (`ECONNRESET`).
fn unread(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

/// How long a reply may take: an upgrade replies when the new front
/// serves (its start is bounded by the front's own timeouts); everything
/// else at once.
const REPLY_LIMIT: Duration = Duration::from_secs(60);

fn exchange(
    path: &Path,
    words: &[String],
    json: bool,
    reply_limit: Duration,
) -> Result<String, CtlError> {
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
    stream.set_read_timeout(Some(reply_limit)).map_err(io)?;
    stream.set_write_timeout(Some(reply_limit)).map_err(io)?;
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

/// A service's own limits and what they count now: `OPEN/MAX`, a per-IP
/// limit as `N per IP`; `-` without either.
fn service_limits(r: &crate::front::ServiceRow) -> String {
    let open = r.open.unwrap_or(0);
    match (r.max_conns, r.max_conns_per_ip) {
        (Some(max), Some(ip)) => format!("{open}/{max}, {ip} per IP"),
        (Some(max), None) => format!("{open}/{max}"),
        (None, Some(ip)) => format!("{ip} per IP"),
        (None, None) => "-".into(),
    }
}

/// `services` as a table.
pub fn render_services(rows: &[crate::front::ServiceRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.leaving {
                    format!("{} (removed, draining)", r.name)
                } else {
                    r.name.clone()
                },
                r.listen.join(","),
                if r.sni.is_empty() {
                    "-".into()
                } else {
                    r.sni.join(",")
                },
                r.policy.to_string(),
                format!("{}/{}", r.backends_up, r.backends),
                r.active.to_string(),
                service_limits(r),
                r.total.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE", "LISTEN", "SNI", "POLICY", "UP", "ACTIVE", "LIMITS", "TOTAL",
        ],
        &body,
    )
}

pub fn render_backends(rows: &[BackendRow]) -> String {
    // A column for the service only when there are several.
    let several = rows.iter().any(|r| r.service != rows[0].service);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
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
                check_failures(r.check_failures, r.check_failures_in_a_row),
                r.check.clone().unwrap_or_else(|| "-".into()),
            ];
            if several {
                row.insert(0, r.service.clone());
            }
            row
        })
        .collect();
    let mut head = vec![
        "BACKEND",
        "STATE",
        "WEIGHT",
        "ACTIVE",
        "QUEUE",
        "TOTAL",
        "CONNECT-FAILS",
        "CHECK-FAILS",
        "CHECK",
    ];
    if several {
        head.insert(0, "SERVICE");
    }
    table(&head, &body)
}

/// Failed health checks in all, and how many of the last ones in a row.
pub fn check_failures(total: u64, in_a_row: u32) -> String {
    if in_a_row == 0 {
        total.to_string()
    } else {
        format!("{total} (last {in_a_row} in a row)")
    }
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
