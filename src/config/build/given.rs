//! Where a setting's value comes from: the flag as typed, else the file's
//! key with its position ([`Given`], [`At`]), read through [`Sources`],
//! so every error names the flag or the file's `path:line:column`.

use super::*;

/// One value as given: its text, how an error shows it, where it is.
pub(super) struct Given<'a> {
    /// What a validator reads; `None` for a TOML array or table.
    pub(super) text: Option<String>,
    pub(super) shown: String,
    pub(super) at: At<'a>,
}

pub(super) enum At<'a> {
    /// A flag, by its clap id.
    Flag(&'static str),
    /// A file key, and where its value is.
    File(&'a LoadedFile, &'static str, Range<usize>),
}

/// Where values come from: the flags, then the file.
pub(super) struct Sources<'a> {
    pub(super) args: &'a crate::config::Flags,
    pub(super) file: Option<&'a LoadedFile>,
}

impl<'a> Sources<'a> {
    pub(super) fn origin(&self, given: &Given) -> Origin {
        match &given.at {
            At::Flag(id) => self.args.spelling.origin(id, given.text.as_deref()),
            At::File(file, key, span) => file.origin(key, span.clone()),
        }
    }

    pub(super) fn bad(&self, given: &Given, why: Invalid) -> ConfigError {
        ConfigError::value(self.origin(given), given.shown.clone(), why)
    }

    pub(super) fn in_file(&self, key: &'static str, raw: &'a Raw) -> Option<Given<'a>> {
        let file = self.file?;
        Some(Given {
            text: file::text(raw.get_ref()),
            shown: file::shown(raw.get_ref()),
            at: At::File(file, key, raw.span()),
        })
    }

    /// The flag (by clap id) if given, else the file key.
    pub(super) fn one(
        &self,
        id: &'static str,
        key: &'static str,
        flag: Option<&str>,
        raw: &'a Option<Raw>,
    ) -> Option<Given<'a>> {
        match flag {
            Some(text) => Some(Given {
                text: Some(text.to_string()),
                shown: text.to_string(),
                at: At::Flag(id),
            }),
            None => self.in_file(key, raw.as_ref()?),
        }
    }

    pub(super) fn check<T>(
        &self,
        given: &Given,
        check: impl Fn(&str) -> Result<T, Invalid>,
    ) -> Result<T, ConfigError> {
        match &given.text {
            Some(text) => check(text).map_err(|why| self.bad(given, why)),
            // An array or a table where one value belongs: say what the
            // key takes (its validator's words for the TOML text).
            None => Err(self.bad(
                given,
                check(&given.shown)
                    .err()
                    .unwrap_or_else(|| Invalid::new("expected a single value")),
            )),
        }
    }

    /// A setting whose flag is text: flag, else file key, validated.
    pub(super) fn text<T>(
        &self,
        id: &'static str,
        key: &'static str,
        flag: Option<&str>,
        raw: &'a Option<Raw>,
        check: impl Fn(&str) -> Result<T, Invalid>,
    ) -> Result<Option<T>, ConfigError> {
        self.one(id, key, flag, raw)
            .map(|given| self.check(&given, check))
            .transpose()
    }

    /// A setting whose flag clap has already parsed and checked with the
    /// same validator: the flag's value, else the file key's, validated.
    pub(super) fn typed<T>(
        &self,
        key: &'static str,
        flag: Option<T>,
        raw: &'a Option<Raw>,
        check: impl Fn(&str) -> Result<T, Invalid>,
    ) -> Result<Option<T>, ConfigError> {
        if flag.is_some() {
            return Ok(flag);
        }
        raw.as_ref()
            .and_then(|raw| self.in_file(key, raw))
            .map(|given| self.check(&given, check))
            .transpose()
    }

    /// A repeatable flag, else a list key: every item.
    pub(super) fn list(
        &self,
        id: &'static str,
        key: &'static str,
        flags: &[String],
        raw: &'a Option<Spanned<List>>,
    ) -> Vec<Given<'a>> {
        if !flags.is_empty() {
            return flags
                .iter()
                .map(|text| Given {
                    text: Some(text.clone()),
                    shown: text.clone(),
                    at: At::Flag(id),
                })
                .collect();
        }
        let (Some(file), Some(list)) = (self.file, raw) else {
            return Vec::new();
        };
        file::items(list)
            .into_iter()
            .map(|item| Given {
                text: file::text(item.value),
                shown: file::shown(item.value),
                at: At::File(file, key, item.span),
            })
            .collect()
    }
}

/// Resolve `text` (a checked `host:port`), naming `given` if it fails.
pub(super) fn look_up(src: &Sources, given: &Given, text: &str) -> Result<SocketAddr, ConfigError> {
    crate::config::resolve(text).map_err(|why| resolve_error(src, given, why))
}

pub(super) fn resolve_error(src: &Sources, given: &Given, why: String) -> ConfigError {
    ConfigError::Resolve(Box::new(BadValue {
        origin: src.origin(given),
        value: given.shown.clone(),
        why: Invalid::new(why),
    }))
}
