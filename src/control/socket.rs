//! The control socket's place on disk and who may talk to it.
//!
//! - Only a socket is ever replaced or removed: a regular file, a
//!   directory or a symbolic link at the path is refused with an error
//!   naming the path and what is there.
//! - The default socket lives in a directory of its own
//!   ([`crate::config::default_control_dir`]), created mode 0700; one that
//!   already exists is used only if it is a real directory owned by this
//!   user and closed to everyone else, so another local user cannot
//!   pre-create it to block the proxy or to impersonate it.
//! - Every connection's peer is checked with `SO_PEERCRED`: root and the
//!   proxy's own user are served, anyone else is refused (and logged, at
//!   most once a second). The `ctl` client checks the server the same way.
//! - With `--user`, the proxy binds as root and then runs as that user:
//!   the socket (and the default directory) are handed to that user, so
//!   the proxy can still remove its socket on exit; root's `rrproxy ctl`
//!   is served as before. A directory of the user's, or root's, is
//!   accepted next time.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// A bound control socket.
pub struct Control {
    pub path: PathBuf,
    pub(super) listener: std::os::unix::net::UnixListener,
}

/// The sockets this process bound, as (path, device, inode): `unlink`
/// removes a path only while it is still one of them.
static BOUND: Mutex<Vec<(PathBuf, u64, u64)>> = Mutex::new(Vec::new());

/// Bind the control socket at `path`, mode 0600. The default path's
/// directory is made private first. A stale socket from a previous run is
/// replaced; a live one, or anything that is not a socket, is an error.
/// `owner` (uid, gid): the user the proxy is about to become, who gets
/// the socket (and the default directory).
pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> Result<Control, String> {
    let default_dir = path
        .parent()
        .filter(|_| path == crate::config::default_control_path());
    if let Some(dir) = default_dir {
        private_dir(dir, owner.map(|(uid, _)| uid))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "control socket {} is in use by another process (use --control PATH or --control off)",
                    path.display()
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                format!("cannot remove stale control socket {}: {e}", path.display())
            })?;
        }
        Ok(meta) => return Err(not_a_socket(path, &meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot use control path {}: {e}", path.display())),
    }
    // Bind under a temporary name, restrict it, then link it into place
    // (link(2) never replaces anything), so the socket is never reachable
    // with looser permissions and nothing that appeared meanwhile is lost.
    let tmp = temp_name(path);
    match std::fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(&tmp); // ours, from a previous run
        }
        Ok(meta) => return Err(not_a_socket(&tmp, &meta)),
        Err(_) => {}
    }
    let fail = |e: std::io::Error| format!("cannot create control socket {}: {e}", path.display());
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(fail)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            format!(
                "control path {} appeared while binding: refusing to replace it",
                path.display()
            )
        } else {
            fail(e)
        }
    })?;
    listener.set_nonblocking(true).map_err(fail)?;
    if let Some((uid, gid)) = owner {
        let give = |p: &Path| {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", p.display()))
        };
        give(path)?;
        if let Some(dir) = default_dir {
            give(dir)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if let Ok(mut bound) = BOUND.lock() {
            bound.push((path.to_path_buf(), meta.dev(), meta.ino()));
        }
    }
    Ok(Control {
        path: path.to_path_buf(),
        listener,
    })
}

/// Take on a socket bound by a previous front (an upgrade): this process
/// now removes it on exit.
pub(super) fn adopted(path: &Path) {
    if let (Ok(meta), Ok(mut bound)) = (std::fs::symlink_metadata(path), BOUND.lock()) {
        bound.push((path.to_path_buf(), meta.dev(), meta.ino()));
    }
}

/// Remove the socket on exit, if it is still the one this process bound.
pub fn unlink(path: &Path) {
    let ours = std::fs::symlink_metadata(path).is_ok_and(|meta| {
        BOUND.lock().is_ok_and(|bound| {
            bound
                .iter()
                .any(|(p, dev, ino)| p == path && *dev == meta.dev() && *ino == meta.ino())
        })
    });
    if !ours {
        debug!(path = %path.display(), "control socket is gone or not ours; left alone");
        return;
    }
    if let Err(err) = std::fs::remove_file(path) {
        debug!(cause = %err, path = %path.display(), "could not remove control socket");
    }
}

/// What [`bind`] would refuse, found without creating, removing or
/// binding anything (`rrproxy check`): the default directory, if it
/// exists, must be private to this user (or `owner`'s), and one that does
/// not must be creatable; whatever is at `path` must be a socket; the
/// socket's directory must let this user create it. (Whether a socket
/// there is live is for binding to find: `check` runs next to a running
/// proxy.)
pub fn check_path(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let default = path == crate::config::default_control_path();
    if default {
        match std::fs::symlink_metadata(dir) {
            Ok(_) => inspect_private_dir(dir, owner.map(|(uid, _)| uid))?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let parent = dir.parent().unwrap_or(Path::new("/"));
                return may_create_in(parent).map_err(|e| {
                    format!(
                        "cannot create control socket directory {}: {e} (or use --control PATH)",
                        dir.display()
                    )
                });
            }
            Err(e) => return Err(format!("control socket directory {}: {e}", dir.display())),
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(meta) => return Err(not_a_socket(path, &meta)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot use control path {}: {e}", path.display())),
    }
    may_create_in(dir).map_err(|e| format!("cannot create control socket {}: {e}", path.display()))
}

/// This process (its effective ids) may create entries in `dir`.
fn may_create_in(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )?;
    Ok(())
}

/// `dir` exists (made now, mode 0700, if it did not), is a directory (not
/// a link to one), belongs to this user (or to `also`, the user the proxy
/// is about to become) and is closed to group and others.
pub fn private_dir(dir: &Path, also: Option<u32>) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create control socket directory {}: {e} (or use --control PATH)",
                dir.display()
            ));
        }
    }
    inspect_private_dir(dir, also)
}

/// The checks of [`private_dir`] on a directory that exists.
fn inspect_private_dir(dir: &Path, also: Option<u32>) -> Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("control socket directory {}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!(
            "control socket directory {} is {}, not a directory: refusing to use it (remove it, or use --control PATH)",
            dir.display(),
            describe(&meta)
        ));
    }
    if meta.uid() != euid && Some(meta.uid()) != also {
        return Err(format!(
            "control socket directory {} belongs to uid {}, not to this user (uid {euid}): refusing to use it (remove it, or use --control PATH)",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "control socket directory {} has mode {mode:04o}, open to other users: refusing to use it (it must be 0700: chmod 700 it, or use --control PATH)",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether a peer with this uid may use a control socket served by
/// `server`: root, and the same user.
pub fn peer_allowed(peer: u32, server: u32) -> bool {
    peer == 0 || peer == server
}

/// The uid at the other end of a Unix stream socket.
pub fn peer_uid(stream: impl AsFd) -> std::io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// Log a refused control client, at most once a second (with how many
/// refusals the quiet time hid).
pub fn log_refused(uid: u32, pid: i32) {
    static LAST: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let Ok(mut last) = LAST.lock() else { return };
    let (when, hidden) = &mut *last;
    if when.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        warn!(
            peer.uid = uid,
            peer.pid = pid,
            suppressed = *hidden,
            "control client refused: only root and the proxy's own user may use the control socket"
        );
        *when = Some(Instant::now());
        *hidden = 0;
    } else {
        *hidden += 1;
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn not_a_socket(path: &Path, meta: &std::fs::Metadata) -> String {
    format!(
        "control path {} is {}, not a socket: refusing to replace it (choose another --control PATH, or remove it yourself)",
        path.display(),
        describe(meta)
    )
}

/// What kind of thing is at a path, for error messages.
fn describe(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rrproxy-ctlsock-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_a_socket_is_ever_replaced() {
        let dir = scratch("kinds");
        let file = dir.join("some.toml");
        std::fs::write(&file, "precious").unwrap();
        let e = bind(&file, None).err().expect("a regular file is refused");
        assert!(e.contains("is a regular file, not a socket"), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(bind(&sub, None).err().unwrap().contains("a directory"));
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind(&link, None).err().unwrap().contains("a symbolic link"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        // A stale socket (nobody listening) is replaced; a live one is not.
        let sock = dir.join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let c = bind(&sock, None).expect("stale socket replaced");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(bind(&sock, None).err().unwrap().contains("in use"));
        unlink(&c.path);
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unlink_leaves_a_socket_it_did_not_bind() {
        let dir = scratch("unlink");
        let sock = dir.join("other.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        unlink(&sock);
        assert!(sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_private_dir_is_made_0700_and_a_loose_or_foreign_one_is_refused() {
        let dir = scratch("private");
        let mine = dir.join("rrproxy");
        private_dir(&mine, None).unwrap();
        let meta = std::fs::metadata(&mine).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        private_dir(&mine, None).expect("an existing private dir is fine");
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&mine, None).unwrap_err();
        assert!(e.contains("mode 0755") && e.contains("must be 0700"), "{e}");
        let file = dir.join("plain");
        std::fs::write(&file, "").unwrap();
        assert!(
            private_dir(&file, None)
                .unwrap_err()
                .contains("a regular file")
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert!(
            private_dir(&link, None)
                .unwrap_err()
                .contains("a symbolic link")
        );
        if rustix::process::geteuid().is_root() {
            let theirs = dir.join("theirs");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&theirs)
                .unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = private_dir(&theirs, None).unwrap_err();
            assert!(e.contains("belongs to uid 65534"), "{e}");
            // Unless that is the user the proxy is about to become.
            private_dir(&theirs, Some(65534)).expect("the --user's directory");
            assert!(private_dir(&theirs, Some(1000)).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_and_the_same_user_are_allowed() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }
}
