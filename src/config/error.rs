//! Errors in flags and config values: one shape, one style, one exit code.
//!
//! Every bad value, from a flag or from the config file, becomes a
//! [`BadValue`]: where it came from ([`Origin`]: the flag as the user typed
//! it, or the file's `path:line:column` and key), the value, what is
//! accepted, and a hint where one obviously helps. It reads like clap's own
//! errors, which `cli::render_clap_error` prints in the same style:
//!
//! ```text
//! rrproxy: error: invalid value 'atuo' for '-w <N|auto>': expected a number 1..=256 or auto
//!   tip: a similar value exists: 'auto'
//! rrproxy: error: rrproxy.toml:3:10: invalid value 'rr' for 'policy': expected round-robin, least-conn or sticky
//! ```
//!
//! The same text comes out at start, from `rrproxy check` and in a rejected
//! reload. [`ConfigError::exit_code`] is 2 for every usage or config error,
//! 1 for the one run-time failure found here (a host name that does not
//! resolve now; DNS may recover).
//!
//! Adding a flag and its config key:
//! 1. Write its validator in `config::values`: `fn(&str) -> Result<T,
//!    Invalid>`, saying in [`Invalid::expected`] what is accepted.
//! 2. In `cli.rs`, either keep the field a `String` (checked when the
//!    config is built) or, for a typed field, give it
//!    `value_parser = values::that_validator` so clap refuses a bad flag
//!    with the same words.
//! 3. In `FileConfig` (config/file.rs) add `pub the_key:
//!    Option<Spanned<toml::Value>>`.
//! 4. In `Config::build`, read it with `src.text(..)` (string fields) or
//!    `src.typed(..)` (typed fields), passing the validator: flag first,
//!    then file, each error naming its origin.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag: its name as typed (`-w` or `--workers`) and
    /// its value placeholder (`N|auto`), shown like clap shows it.
    Flag {
        name: String,
        placeholder: Option<String>,
    },
    /// A key of the config file, at the position of its value.
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
    },
}

impl Origin {
    /// `path:line:column: ` for a file value, nothing for a flag.
    fn location(&self) -> String {
        match self {
            Origin::Flag { .. } => String::new(),
            Origin::File {
                path, line, column, ..
            } => format!("{}:{line}:{column}: ", path.display()),
        }
    }

    /// The flag with its placeholder, or the key: what goes in quotes.
    fn name(&self) -> String {
        match self {
            Origin::Flag {
                name,
                placeholder: Some(p),
            } => format!("{name} <{p}>"),
            Origin::Flag {
                name,
                placeholder: None,
            } => name.clone(),
            Origin::File { key, .. } => key.clone(),
        }
    }
}

/// What a validator says about a value it refuses: what is accepted and,
/// where one obviously helps, a hint. Also the error type of the clap
/// value parsers, so clap's message has the same words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What is accepted, or what is wrong ("expected a number 1..=256 or auto").
    pub expected: String,
    /// One line that helps fix it (rendered as `tip: ...`).
    pub hint: Option<String>,
}

impl Invalid {
    pub fn new(expected: impl Into<String>) -> Invalid {
        Invalid {
            expected: expected.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Invalid {
        self.hint = Some(hint.into());
        self
    }

    /// Add `tip: a similar value exists: 'X'` when `value` is close to one
    /// of `choices` (the measure clap uses for its own suggestions).
    pub fn similar<'a>(self, value: &str, choices: impl IntoIterator<Item = &'a str>) -> Invalid {
        self.similar_a("value", value, choices)
    }

    /// As [`Invalid::similar`], for a `what` other than a value (a key).
    pub fn similar_a<'a>(
        self,
        what: &str,
        value: &str,
        choices: impl IntoIterator<Item = &'a str>,
    ) -> Invalid {
        match closest(value, choices) {
            Some(c) => self.hint(format!("a similar {what} exists: '{c}'")),
            None => self,
        }
    }
}

/// The choice closest to `value`, if one is close enough to be what was
/// meant (the measure clap uses for its own suggestions). For every "did
/// you mean": flag values, config keys, control commands and arguments.
pub fn closest<'a>(value: &str, choices: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // One character is "similar" to any word holding it ('-' scores 0.71
    // against 'pid-file'): no guess is better than a silly one.
    if value.chars().count() < 2 {
        return None;
    }
    choices
        .into_iter()
        .map(|c| (strsim::jaro(value, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expected)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  tip: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// One bad value: where it came from, the value as written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub origin: Origin,
    pub value: String,
    pub why: Invalid,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}invalid value '{}' for '{}': {}",
            self.origin.location(),
            self.value,
            self.origin.name(),
            self.why
        )
    }
}

/// A configuration error, naming the bad input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or key with a value that is not accepted.
    #[error("{0}")]
    Value(Box<BadValue>),
    /// A host name that does not resolve now (a run-time failure).
    #[error("{0}")]
    Resolve(Box<BadValue>),
    /// A rule about several values (too many backends).
    #[error("{}invalid '{}': {message}", .origin.location(), .origin.name())]
    Rule { origin: Origin, message: String },
    #[error("no backend given: use --backend HOST:PORT (repeatable) or `backends` in {}", file_or_any(.file))]
    NoBackend { file: Option<PathBuf> },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad TOML, an unknown key, or a value of a shape no key takes.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

fn file_or_any(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => path.display().to_string(),
        None => "a config file (--config FILE)".into(),
    }
}

impl ConfigError {
    /// `value` from `origin` refused for `why`.
    pub fn value(origin: Origin, value: impl Into<String>, why: Invalid) -> ConfigError {
        ConfigError::Value(Box::new(BadValue {
            origin,
            value: value.into(),
            why,
        }))
    }

    /// The process exit status for this error: 2 for a usage or config
    /// error, 1 for a failure at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Resolve(_) => 1,
            _ => 2,
        }
    }
}
