//! Build script: probes for what a few integration tests need beyond the
//! Rust toolchain, so that `cargo test` reports a test whose tool is
//! missing as ignored, with the reason, instead of letting it pass while
//! doing nothing. Each probe sets a `cfg` the tests check with
//! `#[cfg_attr(not(CFG), ignore = "needs ...")]`:
//!
//! - `has_promtool`, `has_prometheus`, `has_python3`: on `PATH`;
//! - `has_nginx`, `has_haproxy`: on `PATH` or in `/usr/sbin` (the PROXY
//!   protocol tests run them as real backends and upstreams);
//! - `has_redis`: `redis-server` on `PATH` or in `/usr/bin` (the protocol
//!   health check tests run it as a real backend);
//! - `has_openssl`, `has_curl`: on `PATH` (the TLS rig makes certificates
//!   and speaks TLS with them);
//! - `has_chromium`: `chromium` on `PATH` or in `/usr/bin` (the status
//!   page is tested in a real, headless browser);
//! - `has_private_mounts`: root, and `unshare(1)` can bind-mount a file in
//!   a private mount namespace (the DNS discovery tests);
//! - `has_pid_namespaces`: root, and `unshare(1)` can run a process as
//!   PID 1 of a new PID namespace with its own `/proc` (the PID-1 tests);
//! - `is_root`: the tests run as root (`--user`: dropping privileges).
//!
//! With `RRPROXY_REQUIRE_TOOLS` set (CI, `.ci/run`), every cfg is set:
//! nothing is ignored, and a test whose tool is missing fails. The probes
//! run again when `PATH` or that variable changes, or the set of Debian
//! packages does (`/var/lib/dpkg/status`); elsewhere, after installing a
//! tool, `touch build.rs`.

use std::path::Path;
use std::process::{Command, Stdio};

const CFGS: [&str; 12] = [
    "has_promtool",
    "has_prometheus",
    "has_python3",
    "has_private_mounts",
    "has_pid_namespaces",
    "has_nginx",
    "has_haproxy",
    "has_redis",
    "has_openssl",
    "has_curl",
    "is_root",
    "has_chromium",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=RRPROXY_REQUIRE_TOOLS");
    if Path::new("/var/lib/dpkg/status").exists() {
        println!("cargo::rerun-if-changed=/var/lib/dpkg/status");
    }
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let require = std::env::var_os("RRPROXY_REQUIRE_TOOLS").is_some();
    let found = [
        on_path("promtool"),
        on_path("prometheus"),
        on_path("python3"),
        private_mounts(),
        pid_namespaces(),
        on_path("nginx") || Path::new("/usr/sbin/nginx").is_file(),
        on_path("haproxy") || Path::new("/usr/sbin/haproxy").is_file(),
        on_path("redis-server") || Path::new("/usr/bin/redis-server").is_file(),
        on_path("openssl"),
        on_path("curl"),
        is_root(),
        on_path("chromium") || Path::new("/usr/bin/chromium").is_file(),
    ];
    for (cfg, ok) in CFGS.into_iter().zip(found) {
        if require || ok {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"0\n")
}

/// Root, and a process started as PID 1 of a new PID namespace (with a
/// `/proc` of its own) sees itself as PID 1.
fn pid_namespaces() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--", "sh", "-c"])
            .arg("test $$ = 1 && test -d /proc/1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Root, and a bind mount inside a private mount namespace works (the
/// mount dies with the namespace: nothing outside changes).
fn private_mounts() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind /etc/hosts /etc/hosts")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
