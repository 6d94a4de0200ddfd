//! Running unprivileged (`--user NAME`, `--group NAME`): the front binds
//! its listeners, metrics and control socket as root, then becomes that
//! user for good, before it starts any worker; workers are started by it,
//! so they run as that user from their first instruction.
//!
//! How: supplementary groups cleared, then real, effective and saved gid,
//! then uid (`setgroups`, `setresgid`, `setresuid` through glibc, via the
//! `nix` crate). The front already has threads when it drops (the log
//! writer, the metrics endpoint), and the kernel's calls change only the
//! calling thread; glibc's wrappers apply the change to every thread of
//! the process (its `SIGSETXID` broadcast), so no thread is left behind as
//! root. Leaving uid 0 for good clears the permitted, effective and
//! ambient capability sets of every thread; before that, the calling
//! thread (the one that starts workers and a new front) drops every
//! capability from its bounding set and sets `no_new_privs`, so no
//! program it starts can gain one back (not even a set-uid binary).
//! Afterwards every thread is checked through `/proc/self/task`.
//!
//! A front started by a previous one in an upgrade, or by a service
//! manager that already set the user, finds itself that user already:
//! nothing to do. Asking to switch when not root is refused.

use std::io;

use nix::unistd::{Gid, Group, Uid, User, setgroups, setresgid, setresuid};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Whom to run as: names as given, ids as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

/// Look up `user` (a name, or a number for a uid without a name) and
/// `group` (the same; default: the user's primary group). The error says
/// which of the two names nothing, and is meant to follow "invalid value
/// 'X' for '--user <NAME>': ".
pub fn look_up(user: &str, group: Option<&str>) -> Result<RunAs, (bool, String)> {
    let (uid, primary) = match User::from_name(user) {
        Ok(Some(u)) => (u.uid.as_raw(), Some(u.gid.as_raw())),
        Ok(None) => match user.parse::<u32>() {
            Ok(uid) => match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(u)) => (uid, Some(u.gid.as_raw())),
                _ => (uid, None),
            },
            Err(_) => return Err((true, "no such user".into())),
        },
        Err(e) => return Err((true, format!("cannot look it up: {e}"))),
    };
    let gid = match group {
        Some(g) => match Group::from_name(g) {
            Ok(Some(found)) => found.gid.as_raw(),
            Ok(None) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => return Err((false, "no such group".into())),
            },
            Err(e) => return Err((false, format!("cannot look it up: {e}"))),
        },
        None => match primary {
            Some(gid) => gid,
            None => {
                return Err((
                    true,
                    "uid without a user entry: give --group too".to_string(),
                ));
            }
        },
    };
    let group = match group {
        Some(g) => g.to_string(),
        None => Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| gid.to_string(), |g| g.name),
    };
    Ok(RunAs {
        user: user.to_string(),
        uid,
        group,
        gid,
    })
}

/// This process is `who` already (every id, no supplementary group).
fn already(who: &RunAs) -> bool {
    let ids = nix::unistd::getresuid().ok();
    let gids = nix::unistd::getresgid().ok();
    let uid_ok = ids.is_some_and(|r| {
        [r.real, r.effective, r.saved]
            .iter()
            .all(|u| u.as_raw() == who.uid)
    });
    let gid_ok = gids.is_some_and(|r| {
        [r.real, r.effective, r.saved]
            .iter()
            .all(|g| g.as_raw() == who.gid)
    });
    uid_ok && gid_ok
}

/// Whether this process can become `who` (checked before binding
/// anything, so a proxy that cannot drop never serves as root).
pub fn check(who: &RunAs) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 || already(who) {
        return Ok(());
    }
    Err(format!(
        "cannot switch to --user {}: only root can, and this process runs as uid {euid}",
        who.user
    ))
}

/// Run `f` with the effective ids of `who` (and no supplementary group),
/// then go back: for `rrproxy check`, to try what the proxy will do once
/// it has become `who` (open the access log, write the pid file). Only
/// for a single-threaded process (the kernel's calls change the calling
/// thread only; glibc's wrappers change every thread, which must not
/// happen behind another thread's back). Not root and not `who`: `f` runs
/// as this user (starting would refuse anyway, see [`check`]).
pub fn as_user<T>(who: &RunAs, f: impl FnOnce() -> T) -> Result<T, String> {
    use nix::unistd::{getegid, getgroups, setegid, seteuid};
    if already(who) || !nix::unistd::geteuid().is_root() {
        return Ok(f());
    }
    let fail =
        |what: &str, e: nix::Error| format!("cannot {what} to check as --user {}: {e}", who.user);
    let groups = getgroups().map_err(|e| fail("read the groups", e))?;
    let gid = getegid();
    setgroups(&[]).map_err(|e| fail("clear the groups", e))?;
    setegid(Gid::from_raw(who.gid)).map_err(|e| fail("switch the group", e))?;
    seteuid(Uid::from_raw(who.uid)).map_err(|e| fail("switch the user", e))?;
    let out = f();
    seteuid(Uid::from_raw(0)).map_err(|e| fail("switch back to root", e))?;
    setegid(gid).map_err(|e| fail("switch back to the group", e))?;
    setgroups(&groups).map_err(|e| fail("restore the groups", e))?;
    Ok(out)
}

/// Become `who` for good (see the module doc). Nothing to do if this
/// process is `who` already.
pub fn drop_to(who: &RunAs) -> Result<(), String> {
    if already(who) {
        // (Started by a previous front in an upgrade, or by a service
        // manager as that user: its groups and capabilities are what it
        // was given.)
        if let Err(why) = verify(who) {
            warn!("already running as --user {}, but {why}", who.user);
        }
        return Ok(());
    }
    check(who)?;
    let fail = |what: &str, e: nix::Error| format!("cannot {what} (--user {}): {e}", who.user);
    // The bounding set and no_new_privs belong to the thread that starts
    // every other program (workers, a new front).
    drop_bounding_set();
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        warn!(cause = %e, "cannot set no_new_privs");
    }
    setgroups(&[]).map_err(|e| fail("clear the supplementary groups", e))?;
    let gid = Gid::from_raw(who.gid);
    setresgid(gid, gid, gid).map_err(|e| fail(&format!("switch to gid {}", who.gid), e))?;
    let uid = Uid::from_raw(who.uid);
    setresuid(uid, uid, uid).map_err(|e| fail(&format!("switch to uid {}", who.uid), e))?;
    // Leaving uid 0 cleared the permitted, effective and ambient sets;
    // clear the inheritable one too.
    let none = rustix::thread::CapabilitySet::empty();
    let _ = rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    );
    verify(who)?;
    info!(
        user = %who.user,
        uid = who.uid,
        group = %who.group,
        gid = who.gid,
        "running unprivileged"
    );
    Ok(())
}

/// Drop every capability from this thread's bounding set (needs
/// CAP_SETPCAP; without it, say so and go on: the sets that matter are
/// cleared by the uid change anyway).
fn drop_bounding_set() {
    use rustix::thread::{CapabilitySet, remove_capability_from_bounding_set};
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    for cap in 0..=last {
        match remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap)) {
            Ok(()) => {}
            // A capability this kernel does not have.
            Err(e) if e == rustix::io::Errno::INVAL => break,
            Err(e) => {
                warn!(cause = %e, "cannot drop the capability bounding set; going on");
                return;
            }
        }
    }
}

/// Every thread of this process runs as `who`, with no supplementary
/// group and no permitted, effective or ambient capability.
fn verify(who: &RunAs) -> Result<(), String> {
    let bad = |what: String| Err(format!("after switching to --user {}: {what}", who.user));
    let threads = match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir.flatten().map(|e| e.path().join("status")).collect(),
        // No /proc: the calling thread is all that can be checked.
        Err(_) => vec![std::path::PathBuf::from("/proc/thread-self/status")],
    };
    for status in threads {
        let Ok(text) = std::fs::read_to_string(&status) else {
            continue; // a thread that just ended
        };
        match check_status(&text, who) {
            Ok(()) => {}
            Err(why) => return bad(format!("{}: {why}", status.display())),
        }
    }
    let caps = rustix::thread::capabilities(None).map_err(io::Error::from);
    match caps {
        Ok(c) if c.effective.is_empty() && c.permitted.is_empty() => Ok(()),
        Ok(_) => bad("capabilities are left".into()),
        Err(e) => bad(format!("cannot read the capabilities: {e}")),
    }
}

/// Check one `/proc/.../status` text: ids, groups and capability sets.
pub fn check_status(text: &str, who: &RunAs) -> Result<(), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
    };
    let all = |v: &str, id: u32| v.split_whitespace().all(|x| x == id.to_string());
    if !all(field("Uid:"), who.uid) || field("Uid:").is_empty() {
        return Err(format!("Uid: {}", field("Uid:")));
    }
    if !all(field("Gid:"), who.gid) || field("Gid:").is_empty() {
        return Err(format!("Gid: {}", field("Gid:")));
    }
    if !field("Groups:").is_empty() {
        return Err(format!("Groups: {}", field("Groups:")));
    }
    for cap in ["CapPrm:", "CapEff:", "CapAmb:"] {
        if u64::from_str_radix(field(cap), 16) != Ok(0) {
            return Err(format!("{cap} {}", field(cap)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> RunAs {
        RunAs {
            user: "nobody".into(),
            uid: 65534,
            group: "nogroup".into(),
            gid: 65534,
        }
    }

    #[test]
    fn a_status_passes_only_with_every_id_no_group_and_no_capability() {
        let good = "Name:\trrproxy\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n";
        assert_eq!(check_status(good, &nobody()), Ok(()));
        for (from, to) in [
            (
                "Uid:\t65534\t65534\t65534\t65534",
                "Uid:\t65534\t0\t65534\t65534",
            ),
            (
                "Gid:\t65534\t65534\t65534\t65534",
                "Gid:\t0\t65534\t65534\t65534",
            ),
            ("Groups:\t", "Groups:\t0 "),
            ("CapPrm:\t0000000000000000", "CapPrm:\t0000000000000400"),
            ("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff"),
            ("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000001"),
        ] {
            let bad = good.replace(from, to);
            assert!(check_status(&bad, &nobody()).is_err(), "{to}");
        }
        assert!(check_status("", &nobody()).is_err());
    }

    #[test]
    fn names_and_numbers_are_looked_up() {
        let root = look_up("root", None).unwrap();
        assert_eq!((root.uid, root.gid, root.group.as_str()), (0, 0, "root"));
        let n = look_up("0", Some("0")).unwrap();
        assert_eq!((n.uid, n.gid), (0, 0));
        assert_eq!(
            look_up("no-such-user-rrproxy", None),
            Err((true, "no such user".into()))
        );
        assert_eq!(
            look_up("root", Some("no-such-group-rrproxy")),
            Err((false, "no such group".into()))
        );
        // A uid no user has needs its group given.
        assert!(
            look_up("4000000000", None)
                .unwrap_err()
                .1
                .contains("--group")
        );
        assert_eq!(look_up("4000000000", Some("0")).unwrap().gid, 0);
    }

    #[test]
    fn being_that_user_already_needs_no_root() {
        let me = RunAs {
            user: "me".into(),
            uid: nix::unistd::getuid().as_raw(),
            group: "mine".into(),
            gid: nix::unistd::getgid().as_raw(),
        };
        assert_eq!(check(&me), Ok(()));
    }
}
