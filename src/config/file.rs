//! The TOML config file: one key per command-line flag (same names), with
//! unknown keys rejected. Every value keeps its position, so an error in
//! it is reported as `file:line:column`, like a syntax error; what a value
//! means is checked by the same validators as the flag's (`values`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::{Spanned, Value};

use super::error::{ConfigError, Invalid, Origin};
use super::options;

/// A value as written, with its position in the file.
pub type Raw = Spanned<Value>;

/// The keys as written. Every one is optional: flags fill or override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `"ADDR"` or `["ADDR", ...]`.
    pub listen: Option<Spanned<List>>,
    /// `["HOST:PORT[,OPTION...]" | { address, OPTION = VALUE, ... }, ...]`
    /// (a single entry need not be in a list).
    pub backends: Option<Spanned<List>>,
    pub workers: Option<Raw>,
    pub policy: Option<Raw>,
    pub sticky_ipv6_prefix: Option<Raw>,
    pub metrics: Option<Raw>,
    pub status: Option<Raw>,
    pub control: Option<Raw>,
    pub connect_timeout: Option<Raw>,
    pub idle_timeout: Option<Raw>,
    pub drain_timeout: Option<Raw>,
    pub client_first_byte_timeout: Option<Raw>,
    pub backlog: Option<Raw>,
    pub defer_accept: Option<Raw>,
    pub max_conns: Option<Raw>,
    pub max_conns_per_worker: Option<Raw>,
    pub max_conns_per_ip: Option<Raw>,
    pub per_ip_ipv6_prefix: Option<Raw>,
    pub retries: Option<Raw>,
    pub health_interval: Option<Raw>,
    pub resolve_interval: Option<Raw>,
    pub health_timeout: Option<Raw>,
    pub health_send: Option<Raw>,
    pub health_expect: Option<Raw>,
    pub slow_start: Option<Raw>,
    pub queue_timeout: Option<Raw>,
    /// `"IP"`, `"IP;IP"` or `["IP", ...]`.
    pub source: Option<Spanned<List>>,
    pub rise: Option<Raw>,
    pub fall: Option<Raw>,
    pub splice: Option<Raw>,
    pub cpu_affinity: Option<Raw>,
    /// Client networks: `"CIDR"` or `["CIDR", ...]`.
    pub allow: Option<Spanned<List>>,
    pub deny: Option<Spanned<List>>,
    /// Sources whose connections begin with a PROXY header.
    pub accept_proxy: Option<Spanned<List>>,
    pub proxy_header_timeout: Option<Raw>,
    pub access_log: Option<Raw>,
    pub user: Option<Raw>,
    pub group: Option<Raw>,
    pub pid_file: Option<Raw>,
    /// How long a connection on an SNI listener may take to send its
    /// ClientHello.
    pub sni_timeout: Option<Raw>,
    /// `[[service]]` tables (see `services`).
    pub service: Option<Vec<super::services::ServiceTable>>,
}

/// A key that takes one value or a list of them. The items of a list keep
/// their own positions; a single value has the key's.
#[derive(Debug, Clone)]
pub enum List {
    One(Value),
    Many(Vec<Raw>),
}

/// One item of a `List` key: the value and where it is.
pub struct Item<'a> {
    pub value: &'a Value,
    pub span: Range<usize>,
}

/// The items of a list key, each with its position.
pub fn items(list: &Spanned<List>) -> Vec<Item<'_>> {
    match list.get_ref() {
        List::One(value) => vec![Item {
            value,
            span: list.span(),
        }],
        List::Many(values) => values
            .iter()
            .map(|v| Item {
                value: v.get_ref(),
                span: v.span(),
            })
            .collect(),
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<List, D::Error> {
        d.deserialize_any(ListVisitor)
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = List;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value or a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Raw>()? {
            items.push(item);
        }
        Ok(List::Many(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<List, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(List::One)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<List, E> {
        Ok(List::One(Value::String(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<List, E> {
        Ok(List::One(Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<List, E> {
        i64::try_from(v)
            .map(|v| List::One(Value::Integer(v)))
            .map_err(|_| E::custom("number out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<List, E> {
        Ok(List::One(Value::Float(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<List, E> {
        Ok(List::One(Value::Boolean(v)))
    }
}

/// A scalar value as the text a flag would carry (`4`, `"auto"` -> `auto`),
/// and as it is shown in an error. `None` for an array or a table.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(n) => Some(n.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

/// A value as it is shown in an error: strings bare, the rest as TOML.
pub fn shown(value: &Value) -> String {
    text(value).unwrap_or_else(|| value.to_string())
}

/// A backend entry as the text `--backend` would carry: a string as is, a
/// table `{ address = "HOST:PORT", OPTION = VALUE, ... }` spelled out with
/// the options of `options::OPTIONS` as keys: a bare option as `true` or
/// `false`, a valued one as a string or a number, and one that lists
/// (`source`) also as a list of strings.
pub fn backend_spec(value: &Value) -> Result<String, Invalid> {
    let shape = || {
        Invalid::new(format!(
            "expected \"{}\" or a table {{ address = \"HOST:PORT\", ... }} with those options as keys",
            options::syntax()
        ))
    };
    let table = match value {
        Value::String(s) => return Ok(s.clone()),
        Value::Table(t) => t,
        _ => return Err(shape()),
    };
    let keys = || std::iter::once("address").chain(options::OPTIONS.iter().map(|o| o.name));
    let Some(Value::String(address)) = table.get("address") else {
        return Err(shape());
    };
    let mut spec = address.clone();
    for (key, value) in table {
        if key == "address" {
            continue;
        }
        let Some(opt) = options::find(key) else {
            let expected: Vec<&str> = keys().collect();
            return Err(Invalid::new(format!(
                "unknown key '{key}' in a backend table (expected {})",
                expected.join(", ")
            ))
            .similar_a("key", key, keys()));
        };
        // A value is checked with the rest of the text (`send-proxy = "v3"`
        // is refused in the same words as the flag's); it must not carry
        // another option in with it.
        let plain = |s: &str| !s.contains(',');
        let text = match (opt.value, value) {
            (None, Value::Boolean(true)) => Some(String::new()),
            (None, Value::Boolean(false)) => None,
            (Some(_), Value::String(v)) if plain(v) => Some(v.clone()),
            (Some(_), Value::Integer(v)) => Some(v.to_string()),
            (Some(_), Value::Array(items)) if opt.list => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(v) if plain(v) && !v.contains(';') => parts.push(v.as_str()),
                        _ => return Err(shape()),
                    }
                }
                Some(parts.join(";"))
            }
            _ => return Err(shape()),
        };
        match text {
            Some(t) if opt.value.is_some() => spec.push_str(&format!(",{key}={t}")),
            Some(_) => spec.push_str(&format!(",{key}")),
            None => {}
        }
    }
    Ok(spec)
}

/// serde's "unknown field `max-conn`, expected one of `listen`, ..." (the
/// whole list of keys) as one short line, with the key that was probably
/// meant.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let keys: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    // Only a `[[service]]` table takes `name`.
    let in_service = keys.contains(&"name");
    if in_service && is_proxy_key(key) {
        return Some(format!(
            "'{key}' is a setting of the whole proxy, not of one service: set it at the top level (a [[service]] table takes {})",
            keys.join(", ")
        ));
    }
    Some(match super::error::closest(key, keys.iter().copied()) {
        Some(near) => format!("unknown key '{key}'\n  tip: a similar key exists: '{near}'"),
        // A service's table says what it takes (not every flag is a
        // service's).
        None if in_service => format!(
            "unknown key '{key}' in a [[service]] table (it takes {})",
            keys.join(", ")
        ),
        None => {
            format!("unknown key '{key}' (the keys are the flags' long names: see rrproxy --help)")
        }
    })
}

/// Whether `key` is a top-level key (a flag's long name).
fn is_proxy_key(key: &str) -> bool {
    use clap::Args;
    super::Flags::augment_args(clap::Command::new("rrproxy"))
        .get_arguments()
        .any(|a| a.get_long() == Some(key))
}

/// A config file, read and parsed, with what it takes to point at a value.
#[derive(Debug)]
pub struct LoadedFile {
    pub path: PathBuf,
    text: String,
    pub keys: FileConfig,
}

impl LoadedFile {
    pub fn read(path: &Path) -> Result<LoadedFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        LoadedFile::parse(text, path)
    }

    pub fn parse(text: String, path: &Path) -> Result<LoadedFile, ConfigError> {
        match toml::from_str(&text) {
            Ok(keys) => Ok(LoadedFile {
                path: path.to_path_buf(),
                text,
                keys,
            }),
            Err(err) => {
                let (line, column) = err
                    .span()
                    .map(|span| line_column(&text, span.start))
                    .unwrap_or((1, 1));
                let message = err.message().trim().replace('\n', " ");
                Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: unknown_key(&message).unwrap_or(message),
                })
            }
        }
    }

    /// The same file with other keys (a service's, merged with the top
    /// level's): positions still point into this file.
    pub fn with_keys(&self, keys: FileConfig) -> LoadedFile {
        LoadedFile {
            path: self.path.clone(),
            text: self.text.clone(),
            keys,
        }
    }

    /// Where the value of `key` at `span` is.
    pub fn origin(&self, key: &str, span: Range<usize>) -> Origin {
        let (line, column) = line_column(&self.text, span.start);
        Origin::File {
            path: self.path.clone(),
            line,
            column,
            key: key.to_string(),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
