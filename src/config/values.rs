//! Validators for the values of flags and config keys: one function per
//! kind of value, used for the flag (as clap's value parser, or when the
//! config is built) and for the file key alike, so both say the same thing.
//! Each takes the value as text and returns what it means or an
//! [`Invalid`] saying what is accepted. Nothing here resolves host names.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};

use super::error::Invalid;
use super::{MAX_DURATION, MAX_RETRIES, MAX_WORKERS, parse::check_host_port};
use crate::channel::{AccessLog, Splice};

/// How a duration is written.
const DURATION: &str = "like 5s, 500ms or 2m (a bare number is seconds)";

/// Any duration up to [`MAX_DURATION`], zero included (`--drain-timeout`).
/// The cap keeps every deadline computed from a setting far from where
/// `Instant` arithmetic would overflow.
pub fn duration(text: &str) -> Result<Duration, Invalid> {
    let text = text.trim();
    let d = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|_| Invalid::new(format!("expected a duration {DURATION}")))?,
    };
    if d > MAX_DURATION {
        return Err(Invalid::new(format!("too long: at most 24h ({DURATION})")));
    }
    Ok(d)
}

/// A duration greater than zero (timeouts).
pub fn timeout(text: &str) -> Result<Duration, Invalid> {
    match duration(text)? {
        d if d.is_zero() => Err(Invalid::new(format!(
            "expected a duration greater than 0, {DURATION}"
        ))),
        d => Ok(d),
    }
}

/// A duration, or `off` (also 0): `None`.
pub fn interval(text: &str) -> Result<Option<Duration>, Invalid> {
    if text.trim() == "off" {
        return Ok(None);
    }
    let written_as_duration =
        text.trim().parse::<u64>().is_ok() || humantime::parse_duration(text.trim()).is_ok();
    duration(text)
        .map(|d| Some(d).filter(|d| !d.is_zero()))
        .map_err(|e| {
            if written_as_duration {
                e // too long
            } else {
                Invalid::new(format!("expected a duration {DURATION}, or off"))
            }
        })
}

/// A whole number in `min..=max`.
fn number(text: &str, min: u64, max: u64) -> Result<u64, Invalid> {
    let expected = || {
        if max == u64::MAX {
            Invalid::new(format!("expected a whole number, {min} or more"))
        } else {
            Invalid::new(format!("expected a whole number {min}..={max}"))
        }
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(expected()),
    }
}

/// A connection limit as given: a number, or `off` (`None`: no limit,
/// which is also what leaving it out means; on the command line, `off`
/// overrides a number in the file). No limit is ever derived from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

/// A limit up to `max`, or `off`; 0 is refused with a hint at `off`
/// (0 could as well mean "refuse everyone").
fn limit(text: &str, max: u64) -> Result<Limit, Invalid> {
    if text.trim() == "off" {
        return Ok(Limit(None));
    }
    number(text, 1, max).map(|n| Limit(Some(n))).map_err(|_| {
        let e = if max == u64::MAX {
            Invalid::new("expected a whole number, 1 or more, or off")
        } else {
            Invalid::new(format!("expected a whole number 1..={max}, or off"))
        };
        if text.trim() == "0" {
            e.hint("for no limit, write off (or leave it out)")
        } else {
            e
        }
    })
}

/// `--backlog`.
pub fn backlog(text: &str) -> Result<u32, Invalid> {
    number(text, 1, u32::MAX.into()).map(|n| n as u32)
}

/// `--max-conns`, `--max-conns-per-worker`.
pub fn limit_u64(text: &str) -> Result<Limit, Invalid> {
    limit(text, u64::MAX)
}

/// `--max-conns-per-ip`.
pub fn limit_u32(text: &str) -> Result<Limit, Invalid> {
    limit(text, u32::MAX.into())
}

/// `--rise`, `--fall`: consecutive checks.
pub fn checks(text: &str) -> Result<u32, Invalid> {
    number(text, 1, u32::MAX.into()).map(|n| n as u32)
}

/// `--retries`: other backends tried after a failed connect.
pub fn retries(text: &str) -> Result<u8, Invalid> {
    number(text, 0, u64::from(MAX_RETRIES)).map(|n| n as u8)
}

/// `--sticky-ipv6-prefix`.
pub fn ipv6_prefix(text: &str) -> Result<u8, Invalid> {
    number(text, 1, 128).map(|n| n as u8)
}

/// A client network for `--allow`, `--deny` and `--accept-proxy`: an IP
/// address with an optional `/prefix`. Host names are refused (an access
/// list must not change with DNS).
pub fn cidr(text: &str) -> Result<crate::acl::Cidr, Invalid> {
    text.parse().map_err(|e: crate::acl::CidrError| {
        let bad = Invalid::new(e.to_string());
        match e {
            crate::acl::CidrError::HostName(_) => {
                bad.hint("write its address (or its network) instead")
            }
            _ => bad,
        }
    })
}

/// `auto` (one per available core) or a count in 1..=MAX_WORKERS.
pub fn workers(text: &str) -> Result<usize, Invalid> {
    let text = text.trim();
    if text == "auto" {
        return Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS));
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(
            Invalid::new(format!("expected a number 1..={MAX_WORKERS} or auto"))
                .similar(text, ["auto"]),
        ),
    }
}

/// One of a clap `ValueEnum`'s names (`--policy`, `--log-format`).
pub fn choice<T: ValueEnum>(text: &str) -> Result<T, Invalid> {
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect();
    T::from_str(text.trim(), false).map_err(|_| {
        Invalid::new(format!("expected {}", one_of(&names)))
            .similar(text.trim(), names.iter().map(String::as_str))
    })
}

/// `a, b or c`.
fn one_of(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// `--splice`: auto, on or off (true/yes and false/no too).
pub fn splice(text: &str) -> Result<Splice, Invalid> {
    text.parse().map_err(|_| {
        Invalid::new("expected auto, on or off").similar(text.trim(), ["auto", "on", "off"])
    })
}

/// A yes/no key of the config file (`cpu-affinity`).
pub fn switch(text: &str) -> Result<bool, Invalid> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Invalid::new("expected true or false")),
    }
}

/// A listen address, syntax only: `HOST:PORT`, `[IPV6]:PORT`, or `:PORT`
/// for every IPv4 interface. Returns it with `:PORT` spelled out.
pub fn listen(text: &str) -> Result<String, Invalid> {
    address(text, "expected HOST:PORT, [IPV6]:PORT or :PORT")
}

/// `--metrics`: an address as for `--listen`, or `off` (`None`).
pub fn metrics(text: &str) -> Result<Option<String>, Invalid> {
    if text.trim() == "off" {
        return Ok(None);
    }
    address(text, "expected HOST:PORT, [IPV6]:PORT, :PORT or off").map(Some)
}

fn address(text: &str, expected: &str) -> Result<String, Invalid> {
    let text = text.trim();
    let full = match text.strip_prefix(':') {
        Some(_) => format!("0.0.0.0{text}"),
        None => text.to_string(),
    };
    if full.parse::<SocketAddr>().is_ok() {
        return Ok(full);
    }
    check_host_port(&full).map(|()| full).map_err(|why| {
        let bad = if why == "expected HOST:PORT" {
            Invalid::new(expected)
        } else {
            Invalid::new(why)
        };
        if text.parse::<u16>().is_ok() {
            bad.hint(format!(
                "':{text}' means port {text} on every IPv4 interface, '127.0.0.1:{text}' on this host only"
            ))
        } else {
            bad
        }
    })
}

/// `--pid-file`: a file path (made absolute when the config is built).
pub fn pid_file(text: &str) -> Result<Option<PathBuf>, Invalid> {
    match text {
        "" => Err(Invalid::new("expected a file path")),
        path if path.contains('\0') => Err(Invalid::new("a path cannot contain a NUL byte")),
        path => Ok(Some(PathBuf::from(path))),
    }
}

/// `--access-log`: `off`, `stderr`, or a file path (made absolute when
/// the config is built).
pub fn access_log(text: &str) -> Result<AccessLog, Invalid> {
    match text {
        "off" => Ok(AccessLog::Off),
        "stderr" => Ok(AccessLog::Stderr),
        "" => Err(Invalid::new("expected off, stderr or a file path")),
        path if path.contains('\0') => Err(Invalid::new("a path cannot contain a NUL byte")),
        path => Ok(AccessLog::File(PathBuf::from(path))),
    }
}

/// `--user`, `--group`: a name or a number, syntax only (looked up when
/// the config is built).
pub fn account(text: &str) -> Result<String, Invalid> {
    let ok = !text.is_empty()
        && text.len() <= 256
        && !text.contains(|c: char| c.is_whitespace() || c == ':' || c == '\0');
    if ok {
        Ok(text.to_string())
    } else {
        Err(Invalid::new("expected a name or a number"))
    }
}

/// `--control`: a socket path, or `off` (`None`).
pub fn control(text: &str) -> Result<Option<PathBuf>, Invalid> {
    match text {
        "off" => Ok(None),
        "" => Err(Invalid::new("expected a socket path or off")),
        path => Ok(Some(PathBuf::from(path))),
    }
}

/// A clap value parser for a `ValueEnum` that refuses a value with
/// [`choice`]'s words (so flag and file agree) while keeping the possible
/// values for `--help` and shell completions.
#[derive(Clone)]
pub struct Choice<T>(PhantomData<T>);

impl<T> Choice<T> {
    pub fn new() -> Choice<T> {
        Choice(PhantomData)
    }
}

impl<T> Default for Choice<T> {
    fn default() -> Self {
        Choice::new()
    }
}

impl<T: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        StringValueParser::new()
            .try_map(|text| choice::<T>(&text))
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            T::value_variants()
                .iter()
                .filter_map(ValueEnum::to_possible_value),
        ))
    }
}
