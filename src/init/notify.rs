//! The init's end of the notify protocol: the socket the front sends
//! `MAINPID=`, `READY=1` and `STOPPING=1` to (sd_notify(3), as under
//! systemd), and what a datagram says.

use std::io;
use std::path::{Path, PathBuf};

/// The socket the front sends its notifications to, in a private
/// directory.
pub struct Relay {
    pub socket: std::os::unix::net::UnixDatagram,
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl Relay {
    /// Bind in the first place that works: `$XDG_RUNTIME_DIR`, the
    /// temporary directory (`$TMPDIR`, `/tmp`), `/dev/shm`, `/run`.
    pub fn bind() -> Result<Relay, String> {
        let mut places: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
            places.push(dir.into());
        }
        places.extend([std::env::temp_dir(), "/dev/shm".into(), "/run".into()]);
        places.dedup();
        let mut tried = Vec::new();
        for place in &places {
            match Relay::bind_in(place) {
                Ok(relay) => return Ok(relay),
                Err(err) => tried.push(format!("{}: {err}", place.display())),
            }
        }
        Err(format!(
            "cannot create the socket the front reports to (tried {}); give the container a writable /tmp",
            tried.join("; ")
        ))
    }

    fn bind_in(place: &Path) -> io::Result<Relay> {
        use std::os::unix::fs::DirBuilderExt;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut last = io::Error::other("no attempt");
        for attempt in 0..4u128 {
            let dir = place.join(format!("rrproxy-init.{:x}", stamp + attempt));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(err) => {
                    last = err;
                    continue;
                }
            }
            let path = dir.join("notify");
            let socket = std::os::unix::net::UnixDatagram::bind(&path)
                .and_then(|s| s.set_nonblocking(true).map(|()| s));
            return match socket {
                Ok(socket) => Ok(Relay { socket, dir, path }),
                Err(err) => {
                    let _ = std::fs::remove_dir(&dir);
                    Err(err)
                }
            };
        }
        Err(last)
    }
}

/// Remove the socket and its directory.
pub fn remove(dir: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir(dir);
}

/// What one notification datagram says that the init acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notification {
    pub main_pid: Option<i32>,
    pub ready: bool,
    pub stopping: bool,
}

impl Notification {
    /// Parse `KEY=VALUE` lines (sd_notify(3)); unknown keys are ignored.
    pub fn parse(text: &str) -> Notification {
        let mut note = Notification::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("MAINPID", pid)) => note.main_pid = pid.trim().parse().ok(),
                Some(("READY", "1")) => note.ready = true,
                Some(("STOPPING", "1")) => note.stopping = true,
                _ => {}
            }
        }
        note
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_line_by_line() {
        assert_eq!(
            Notification::parse("MAINPID=42\n"),
            Notification {
                main_pid: Some(42),
                ..Default::default()
            }
        );
        assert_eq!(
            Notification::parse("READY=1\nSTATUS=accepting connections\n"),
            Notification {
                ready: true,
                ..Default::default()
            }
        );
        assert_eq!(
            Notification::parse("STOPPING=1\nREADY=0\nMAINPID=x"),
            Notification {
                stopping: true,
                ..Default::default()
            }
        );
        assert_eq!(Notification::parse(""), Notification::default());
    }

    #[test]
    fn the_socket_is_made_in_a_private_directory_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let place = std::env::temp_dir();
        let relay = Relay::bind_in(&place).unwrap();
        let mode = std::fs::metadata(&relay.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\n", &relay.path).unwrap();
        let mut buf = [0u8; 64];
        let n = relay.socket.recv(&mut buf).unwrap();
        assert!(Notification::parse(std::str::from_utf8(&buf[..n]).unwrap()).ready);
        remove(&relay.dir, &relay.path);
        assert!(!relay.dir.exists());
    }
}
