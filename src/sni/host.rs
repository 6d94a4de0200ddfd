//! Server names as TLS clients send them and as the config lists them:
//! the checks both share ([`check_name`]) and the value a ClientHello's
//! name becomes ([`HostName`]: lowercase, on the stack, at most
//! [`MAX_NAME_LEN`] bytes).
//!
//! What a valid name is (RFC 6066 §3 asks for an ASCII DNS host name, no
//! trailing dot, no IP literal; real clients send a little more):
//! - 1 to [`MAX_NAME_LEN`] bytes, after one trailing dot is dropped
//!   (`example.com.` is `example.com`; RFC 6066 forbids the dot, but some
//!   clients send it and both spellings name the same host);
//! - labels of 1 to 63 bytes separated by single dots (no empty label: no
//!   leading dot, no `..`);
//! - ASCII letters (folded to lowercase), digits, `-` and `_` (seen in real
//!   names, accepted by browsers). Anything else — a NUL, a space, a byte
//!   of 0x80 or more (an internationalised name must travel in its `xn--`
//!   form) — makes the name invalid.
//!
//! A name made only of digits and dots (an IPv4 literal, which RFC 6066
//! forbids in SNI) passes these checks: it is a well-formed string that no
//! configured name can match (the config refuses address-like patterns).

/// The longest name, trailing dot excluded (DNS: 253 characters).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label (DNS: 63 bytes).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name is not a valid host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    EmptyLabel,
    LabelTooLong,
    /// A byte that may not appear in a host name.
    Byte(u8),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => f.write_str("the name is empty"),
            NameError::TooLong => write!(f, "longer than {MAX_NAME_LEN} characters"),
            NameError::EmptyLabel => f.write_str("empty label (a leading dot or '..')"),
            NameError::LabelTooLong => write!(f, "a label longer than {MAX_LABEL_LEN} characters"),
            NameError::Byte(b) if *b >= 0x80 => f.write_str(
                "non-ASCII character (write an internationalised name in its xn-- form)",
            ),
            NameError::Byte(b) => write!(
                f,
                "character {:?} (letters, digits, '-', '_' and '.' only)",
                char::from(*b)
            ),
        }
    }
}

/// Drop one trailing dot.
pub fn strip_root(name: &[u8]) -> &[u8] {
    name.strip_suffix(b".").unwrap_or(name)
}

/// Whether `name` (its trailing dot already dropped) is a valid host name.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        if let Some(&b) = label
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(NameError::Byte(b));
        }
    }
    Ok(())
}

/// A valid server name, lowercase, held on the stack (no allocation).
/// Derefs to `str`.
#[derive(Clone, Copy)]
pub struct HostName {
    bytes: [u8; MAX_NAME_LEN],
    len: u8,
}

impl HostName {
    /// `name` as a host name (one trailing dot dropped, letters folded to
    /// lowercase), or why it is not one.
    pub fn new(name: &[u8]) -> Result<HostName, NameError> {
        let name = strip_root(name);
        check_name(name)?;
        let mut bytes = [0u8; MAX_NAME_LEN];
        for (to, from) in bytes.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        Ok(HostName {
            bytes,
            // check_name bounds the length by MAX_NAME_LEN (< 256).
            len: name.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes pass check_name; fall back to "" rather than
        // panic should that ever change.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for HostName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for HostName {
    fn eq(&self, other: &HostName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HostName {}

impl std::hash::Hash for HostName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostName({:?})", self.as_str())
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
