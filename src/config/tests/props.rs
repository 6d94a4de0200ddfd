//! Property tests of the config file: arbitrary text, and arbitrary values
//! for every known key, never panic; a file that does not parse is an
//! error at a `line:column` inside the file; one that parses goes through
//! validation (`Config::load`) without panicking either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;

use super::super::*;
use crate::config::Flags;

/// Every key `FileConfig` knows, but those that hold addresses.
const KEYS: &[&str] = &[
    "workers",
    "policy",
    "sticky-ipv6-prefix",
    "connect-timeout",
    "idle-timeout",
    "drain-timeout",
    "backlog",
    "max-conns",
    "max-conns-per-worker",
    "max-conns-per-ip",
    "per-ip-ipv6-prefix",
    "retries",
    "client-first-byte-timeout",
    "health-interval",
    "resolve-interval",
    "health-timeout",
    "rise",
    "fall",
    "splice",
    "cpu-affinity",
    "access-log",
    "user",
    "group",
];

/// Keys whose values are addresses or paths: validation would resolve a
/// host name, so these get values that never reach a DNS look-up.
const ADDRESS_KEYS: &[&str] = &["listen", "backends", "metrics", "control"];

/// A string that the config may mean something by, or nearly.
fn plausible_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "5s",
            "500ms",
            "2m",
            "1h",
            "0",
            "0s",
            "-1s",
            "1000000000y",
            "18446744073709551615s",
            "99999999999999999999",
            "auto",
            "off",
            "on",
            "yes",
            "round-robin",
            "least-conn",
            "sticky",
            "",
            " ",
            "1.5s",
            "5 s",
            "s",
            "\u{e9}",
            "\u{0}",
        ])
        .prop_map(str::to_string),
        "[a-z0-9 .:-]{0,12}",
        "\\PC{0,12}",
    ]
}

/// TOML text for one value of any type: mostly scalars (what the keys
/// take), sometimes arrays and inline tables.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        2 => (0u32..2000).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0", "-1", "1", "256", "65536", "4294967296", "18446744073709551616", "1.5", "-0.0",
            "inf", "nan", "true", "false", "1979-05-27T07:32:00Z", "07:32:00",
        ])
        .prop_map(str::to_string),
        3 => plausible_text().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let array =
        prop::collection::vec(leaf.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", ")));
    let table = prop::collection::vec(
        (
            prop::sample::select(vec!["address", "weight", "resolve", "x"]),
            leaf.clone(),
        ),
        0..3,
    )
    .prop_map(|kv| {
        let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{ {} }}", body.join(", "))
    });
    let nested =
        prop::collection::vec(table.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", ")));
    prop_oneof![8 => leaf, 1 => array, 1 => table, 1 => nested]
}

/// Values for address keys that never need a look-up: IP literals, bad
/// shapes rejected before resolving, and wrong types.
fn address_value() -> impl Strategy<Value = String> {
    let text = prop::sample::select(vec![
        "127.0.0.1:0",
        "[::1]:9898",
        ":8080",
        "0.0.0.0:65536",
        "127.0.0.1",
        "[::1]",
        "::1:80",
        "off",
        "",
        "127.0.0.1:80,weight=0",
        "127.0.0.1:80,weight=1001",
        "127.0.0.1:80,bogus",
        "/tmp/rrproxy-prop.sock",
    ])
    .prop_map(|s| serde_json::to_string(s).unwrap());
    prop_oneof![
        text.clone(),
        prop::collection::vec(text, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("{ address = \"127.0.0.1:1\", weight = 0 }".to_string()),
        Just("[{ address = \"127.0.0.1:1\", resolve = 1 }]".to_string()),
    ]
}

/// A file of `key = value` lines, one per line.
fn config_text() -> impl Strategy<Value = String> {
    let known = (prop::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"));
    let address = (prop::sample::select(ADDRESS_KEYS), address_value())
        .prop_map(|(k, v)| format!("{k} = {v}"));
    let unknown = toml_value().prop_map(|v| format!("no-such-key = {v}"));
    let line = prop_oneof![6 => known, 2 => address, 1 => unknown];
    prop::collection::vec(line, 1..4).prop_map(|lines| lines.join("\n"))
}

/// A parse error must point inside the text, on one line, with a message.
fn check_parse_error(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    let ConfigError::Parse {
        line,
        column,
        message,
        ..
    } = err
    else {
        return Err(TestCaseError::fail(format!("not a parse error: {err}")));
    };
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        *line >= 1 && *line <= lines.len(),
        "line {} of {}: {}",
        line,
        lines.len(),
        err
    );
    let width = lines[*line - 1].chars().count();
    prop_assert!(
        *column >= 1 && *column <= width + 1,
        "column {} of {}: {}",
        column,
        width,
        err
    );
    // One line naming the problem, optionally followed by one tip line.
    let (head, tip) = match message.split_once('\n') {
        Some((head, tip)) => (head, Some(tip)),
        None => (message.as_str(), None),
    };
    prop_assert!(!head.is_empty(), "{}", err);
    if let Some(tip) = tip {
        prop_assert!(tip.starts_with("  tip: ") && !tip.contains('\n'), "{}", err);
    }
    let prefix = format!("test.toml:{line}:{column}: ");
    prop_assert!(err.to_string().starts_with(&prefix), "{}", err);
    Ok(())
}

/// A scratch file for `Config::load`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "rrproxy-config-prop-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "[a-z=\\-\\[\\]{}\"'., 0-9#\n]{0,80}|\\PC{0,80}") {
        if let Err(err) = LoadedFile::parse(text.clone(), Path::new("test.toml")) {
            check_parse_error(&text, &err)?;
        }
    }

    #[test]
    fn arbitrary_values_for_known_keys_never_panic(text in config_text()) {
        match LoadedFile::parse(text.clone(), Path::new("test.toml")) {
            Err(err) => check_parse_error(&text, &err)?,
            Ok(_) => {
                // Validation too: the file with one safe backend given as a
                // flag (which replaces the file's backends).
                let file = TempFile::new(&text);
                let args = Flags {
                    backend: vec!["127.0.0.1:9".into()],
                    config: Some(file.0.clone()),
                    ..Flags::default()
                };
                if let Err(err) = Config::load(&args) {
                    // One line, then at most a `tip:` line or two.
                    let msg = err.to_string();
                    let mut lines = msg.lines();
                    prop_assert!(lines.next().is_some_and(|l| !l.is_empty()), "{}", msg);
                    prop_assert!(lines.all(|l| l.starts_with("  tip: ")), "{}", msg);
                }
            }
        }
    }
}
