//! The statistics table's layout and upgrades: a build whose table has
//! another layout cannot take over a running proxy.

use std::thread;
use std::time::Duration;

use crate::support::*;
use crate::upgrade::front_pid;

/// A copy of this binary that declares statistics table layout `layout`
/// (its digits after the marker `stats::layout` reads).
fn layout_copy(dir: &std::path::Path, name: &str, layout: u64) -> std::path::PathBuf {
    let marker = b"rrproxy-stats-layout=";
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_rrproxy")).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the layout marker is in the binary")
        + marker.len();
    bytes[at..at + 8].copy_from_slice(format!("{layout:08}").as_bytes());
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// A build whose statistics table has another layout cannot read the
/// running workers' cells: the upgrade is refused, naming both layouts,
/// and the running proxy serves on, its counters intact.
#[test]
fn an_upgrade_to_a_build_of_another_table_layout_is_refused() {
    let dir = temp_dir("layout");
    let b = name_backend("lay");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let front = front_pid(&proxy);
    let workers = proxy.worker_pids();
    let load = Load::start(&proxy, 20);
    wait_until(Duration::from_secs(30), "load to flow", || {
        load.counts().0 > 200
    });
    let mine = rrproxy::stats::LAYOUT;
    for other in [mine + 1, mine - 1] {
        let next = layout_copy(&dir, &format!("rrproxy-layout-{other}"), other);
        let reply = proxy.ctl(&format!("upgrade {}", next.display()));
        assert!(
            reply.starts_with("error:")
                && reply.contains(&format!("statistics layout {other} (running: {mine})")),
            "layout {other}: {reply}"
        );
    }
    let before = proxy.scrape();
    thread::sleep(Duration::from_millis(300)); // load keeps going meanwhile
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert_eq!(front_pid(&proxy), front, "the same front serves");
    assert_eq!(proxy.worker_pids(), workers, "the same workers serve");
    let after = proxy.scrape();
    let count = |m: &Metrics| {
        m.get(
            "rrproxy_backend_connect_seconds_count",
            &[("service", "default"), ("backend", &b.addr.to_string())],
        )
        .unwrap()
    };
    assert!(count(&after) >= count(&before) && count(&before) >= 200.0);
    // The same copy runs on its own (its front and workers agree).
    let alone = ProxyCmd::new(&[b.addr])
        .binary(&layout_copy(&dir, "rrproxy-alone", mine + 1))
        .workers(1)
        .start();
    assert_eq!(fetch_name(&alone), "lay");
}
