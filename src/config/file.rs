//! The TOML config file: one key per command-line flag (same names), with
//! unknown keys rejected and errors reported as `file:line:column`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The file as written. Every field is optional: flags fill or override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub backends: Vec<BackendValue>,
    pub workers: Option<WorkersValue>,
    pub policy: Option<String>,
    pub sticky_ipv6_prefix: Option<u8>,
    pub metrics: Option<String>,
    pub control: Option<String>,
    pub connect_timeout: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub drain_timeout: Option<DurationValue>,
    pub client_first_byte_timeout: Option<DurationValue>,
    pub backlog: Option<u32>,
    pub max_conns: Option<u64>,
    pub max_conns_per_worker: Option<u64>,
    pub max_conns_per_ip: Option<u32>,
    pub health_interval: Option<DurationValue>,
    pub resolve_interval: Option<DurationValue>,
    pub health_timeout: Option<DurationValue>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub splice: Option<SpliceValue>,
    pub cpu_affinity: Option<bool>,
}

/// A backend: `"10.0.0.5:80"`, `"10.0.0.5:80,weight=3"`,
/// `"app.example:80,resolve"`, or
/// `{ address = "10.0.0.5:80", weight = 3, resolve = false }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendValue {
    Spec(String),
    Table(BackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    pub address: String,
    pub weight: Option<u32>,
    pub resolve: Option<bool>,
}

impl BackendValue {
    /// The same text a `--backend` flag would carry.
    pub fn into_spec(self) -> String {
        match self {
            BackendValue::Spec(s) => s,
            BackendValue::Table(t) => {
                let mut spec = t.address;
                if let Some(w) = t.weight {
                    spec.push_str(&format!(",weight={w}"));
                }
                if t.resolve == Some(true) {
                    spec.push_str(",resolve");
                }
                spec
            }
        }
    }
}

/// `splice = "auto"`, `"on"`, `"off"`, or a boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SpliceValue {
    Switch(bool),
    Text(String),
}

/// `workers = 4` or `workers = "auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WorkersValue {
    Count(i64),
    Text(String),
}

impl std::fmt::Display for WorkersValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkersValue::Count(n) => write!(f, "{n}"),
            WorkersValue::Text(s) => f.write_str(s),
        }
    }
}

/// `"5s"`, `"500ms"`, or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            DurationValue::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationValue::Text(t) => crate::cli::parse_duration(t),
        }
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: explain(err.message().trim()).replace('\n', " "),
            }
        })
    }
}

/// serde's message for a value that fits none of an untagged enum's forms
/// names the Rust type; say instead what the key accepts.
fn explain(message: &str) -> String {
    let expected = [
        (
            "BackendValue",
            "a backend is \"HOST:PORT[,weight=N][,resolve]\" or { address = \"HOST:PORT\", weight = N, resolve = true }",
        ),
        (
            "DurationValue",
            "expected a duration like \"5s\" or \"500ms\", or a number of seconds",
        ),
        ("WorkersValue", "expected a number of workers or \"auto\""),
        (
            "SpliceValue",
            "expected \"auto\", \"on\", \"off\", true or false",
        ),
    ];
    for (ty, text) in expected {
        if message.contains("did not match any variant") && message.contains(ty) {
            return text.to_string();
        }
    }
    message.to_string()
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
