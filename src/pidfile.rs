//! `--pid-file PATH`: a file holding the front's pid, for tools that find a
//! daemon by its pid file (init scripts, `PIDFile=`, monitoring).
//!
//! - Written by the front once it serves: at start (after its workers are
//!   started, so a start that fails leaves none), and by the new front when
//!   it takes over in an upgrade (the front's pid changes then); as `--user`
//!   when one is given (so the new front, which is that user, can rewrite
//!   it: put it in a directory that user may write).
//! - Written whole or not at all: to a temporary name in the same
//!   directory, then renamed over the path, so a reader never sees half a
//!   pid.
//! - Removed when the front stops, only if the path is still the very file
//!   this process wrote (same device and inode) and still holds its pid:
//!   a front that handed over leaves it to the new one, and a file someone
//!   else put there is never deleted.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{debug, warn};

/// The file this process wrote: (path, device, inode).
static WRITTEN: Mutex<Option<(PathBuf, u64, u64)>> = Mutex::new(None);

/// Write this process's pid to `path`, replacing what was there.
pub fn write(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        writeln!(f, "{pid}")?;
        f.sync_all()?;
        let meta = f.metadata()?;
        std::fs::rename(&tmp, path)?;
        Ok::<_, std::io::Error>((meta.dev(), meta.ino()))
    })();
    match written {
        Ok((dev, ino)) => {
            if let Ok(mut w) = WRITTEN.lock() {
                *w = Some((path.to_path_buf(), dev, ino));
            }
            debug!(path = %path.display(), pid, "pid file written");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What [`write`] needs, checked without writing (`rrproxy check`): the
/// directory lets this user create the file, and the path is not a
/// directory.
pub fn check(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        // (What renaming over it would say.)
        return Err(std::io::Error::from_raw_os_error(
            rustix::io::Errno::ISDIR.raw_os_error(),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )?;
    Ok(())
}

/// On the way out: remove the pid file if it is still the one this process
/// wrote and holds its pid.
pub fn remove() {
    let Some((path, dev, ino)) = WRITTEN.lock().ok().and_then(|mut w| w.take()) else {
        return;
    };
    let same = std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
    let ours = std::fs::read_to_string(&path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if !(same && ours) {
        debug!(path = %path.display(), "pid file replaced by someone else; left alone");
        return;
    }
    if let Err(err) = std::fs::remove_file(&path) {
        warn!(path = %path.display(), cause = %err, "cannot remove the pid file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_ours() {
        let dir = std::env::temp_dir().join(format!("rrproxy-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rrproxy.pid");
        std::fs::write(&path, "1\n").unwrap();
        check(&path).unwrap();
        write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temp left");
        remove();
        assert!(!path.exists());
        // Replaced by another process's file: left alone.
        write(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        remove();
        assert!(path.exists(), "a file it did not write");
        // Its own file, rewritten by someone with another pid: left alone.
        write(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"1\n"))
            .unwrap();
        remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        // A directory, or a missing directory, cannot be written.
        assert!(check(&dir).is_err());
        assert!(check(&dir.join("missing/x.pid")).is_err());
        assert!(write(&dir.join("missing/x.pid")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
