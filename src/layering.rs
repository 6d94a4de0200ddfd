//! A test of the layering rule in the crate doc (lib.rs): a module never
//! names one above it. It reads the sources, so a `use crate::worker` that
//! creeps into `access_log` fails here, not in a review.

use std::path::{Path, PathBuf};

/// Each module and the modules above it, which it must not name.
const RULES: &[(&str, &[&str])] = &[
    ("control", &["proxy", "init", "demo"]),
    ("front", &["control", "proxy", "init", "demo", "worker"]),
    ("supervisor", &["front", "control", "proxy", "init", "demo"]),
    (
        "worker",
        &["front", "control", "proxy", "supervisor", "init", "demo"],
    ),
    (
        "access_log",
        &["worker", "front", "control", "proxy", "supervisor"],
    ),
    (
        "channel",
        &["worker", "front", "control", "proxy", "supervisor"],
    ),
    (
        "stats",
        &["worker", "front", "control", "proxy", "supervisor"],
    ),
    ("policy", &["worker", "front", "control", "proxy"]),
    ("acl", &["worker", "front", "control", "proxy"]),
    ("proxy_protocol", &["worker", "front", "control", "proxy"]),
];

/// `src/NAME.rs` and everything under `src/NAME/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_module_names_one_above_it() {
    let mut broken = Vec::new();
    for (module, above) in RULES {
        let files = files_of(module);
        assert!(files[0].exists(), "{}", files[0].display());
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for up in *above {
                    let named = format!("crate::{up}");
                    let mut rest = code;
                    while let Some(i) = rest.find(&named) {
                        let after = rest[i + named.len()..].chars().next();
                        // `crate::proxy` is not `crate::proxy_protocol`.
                        if !after.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                            broken.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                        }
                        rest = &rest[i + named.len()..];
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports from above:\n{}",
        broken.join("\n")
    );
}
