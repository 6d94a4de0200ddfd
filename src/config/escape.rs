//! Bytes written as text with escapes, both ways: [`parse`] reads what a
//! user writes for `--health-send` and `--health-expect` (`PING\r\n`),
//! [`show`] writes bytes a backend sent back in the same notation for a
//! log line or `ctl backends`, bounded in length.
//!
//! Escapes: `\r`, `\n`, `\t`, `\\`, `\0` and `\xNN` (two hex digits, any
//! byte). Anything else after a backslash is an error naming its position.

use super::error::Invalid;

/// Longest `--health-send` or `--health-expect`, in bytes after escapes.
pub const MAX_PROBE: usize = 1024;

/// The bytes `text` stands for. Empty text, a bad escape (with its
/// 1-based character position) or more than [`MAX_PROBE`] bytes are
/// refused.
pub fn parse(text: &str) -> Result<Vec<u8>, Invalid> {
    const ESCAPES: &str = "use \\r, \\n, \\t, \\0, \\\\ or \\xNN";
    if text.is_empty() {
        return Err(Invalid::new(
            "expected some text (leave it out for a plain TCP connect check)",
        ));
    }
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.char_indices().enumerate().peekable();
    while let Some((pos, (_, c))) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let at = pos + 1;
        let bad = |what: String| Invalid::new(format!("{what} at position {at} ({ESCAPES})"));
        let Some((_, (_, e))) = chars.next() else {
            return Err(bad("a lone '\\' at the end".into()));
        };
        match e {
            'r' => out.push(b'\r'),
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            '0' => out.push(0),
            '\\' => out.push(b'\\'),
            'x' => {
                let hex: String = (0..2)
                    .filter_map(|_| chars.next().map(|(_, (_, h))| h))
                    .collect();
                let byte = (hex.len() == 2)
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| bad(format!("bad escape '\\x{hex}'")))?;
                out.push(byte);
            }
            other => return Err(bad(format!("bad escape '\\{other}'"))),
        }
    }
    if out.len() > MAX_PROBE {
        return Err(Invalid::new(format!(
            "{} bytes: at most {MAX_PROBE}",
            out.len()
        )));
    }
    Ok(out)
}

/// `bytes` as text in [`parse`]'s notation (printable ASCII as is, `\r`,
/// `\n`, `\t`, `\\`, the rest as `\xNN`), cut after `limit` bytes with
/// `...` when there were more.
pub fn show(bytes: &[u8], limit: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(limit) + 3);
    for &b in bytes.iter().take(limit) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > limit {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_read_and_written_back() {
        assert_eq!(parse("PING\\r\\n").unwrap(), b"PING\r\n");
        assert_eq!(
            parse("a\\tb\\\\c\\x00\\xFF\\0").unwrap(),
            b"a\tb\\c\x00\xff\x00"
        );
        assert_eq!(parse("+PONG").unwrap(), b"+PONG");
        assert_eq!(parse("é").unwrap(), "é".as_bytes());
        let bytes = b"-LOADING\r\n\x01\xfe\\";
        assert_eq!(show(bytes, 64), "-LOADING\\r\\n\\x01\\xfe\\\\");
        assert_eq!(parse(&show(bytes, 64)).unwrap(), bytes);
        assert_eq!(show(b"abcdef", 3), "abc...");
        assert_eq!(show(b"abc", 3), "abc");
    }

    #[test]
    fn bad_escapes_name_their_position() {
        let e = |t: &str| parse(t).unwrap_err().expected;
        assert_eq!(
            e("PING\\q"),
            "bad escape '\\q' at position 5 (use \\r, \\n, \\t, \\0, \\\\ or \\xNN)"
        );
        assert!(e("ab\\x4").starts_with("bad escape '\\x4' at position 3"));
        assert!(e("\\xZZ").starts_with("bad escape '\\xZZ' at position 1"));
        assert!(e("abc\\").starts_with("a lone '\\' at the end at position 4"));
        assert!(e("").starts_with("expected some text"));
        assert!(e(&"x".repeat(MAX_PROBE + 1)).contains("at most 1024"));
        // Positions count characters, not bytes.
        assert!(e("éé\\y").contains("position 3"));
    }
}
