//! Which build this process runs: the package version and a build id.
//!
//! The build id is the GNU build-id note the linker writes into the
//! executable (a hash of its contents), read from the running image through
//! `/proc/self/exe`, so two different binaries never share one and a
//! byte-identical copy keeps it. A binary linked without the note falls
//! back to a hash of the whole file. The front and every worker compare
//! ids in the channel handshake: a worker of another build is refused.

use std::io::Read;
use std::sync::OnceLock;

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This process's build id, as lowercase hex (computed once).
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let path = std::path::Path::new("/proc/self/exe");
        match read_build_id(path) {
            Ok(id) => id,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot read this executable's build id");
                "unknown".into()
            }
        }
    })
}

/// `VERSION` and the first 12 hex digits of the build id, for logs.
pub fn describe() -> String {
    let id = build_id();
    format!("{VERSION} (build {})", &id[..id.len().min(12)])
}

/// The build id of the executable at `path`: its GNU build-id note, or a
/// hash of the whole file when it has none.
pub fn read_build_id(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_up_to(&mut file, &mut head)?;
    head.truncate(n);
    if let Some(id) = elf_note_build_id(&head, &mut file) {
        return Ok(hex(&id));
    }
    // No note: hash everything (slow, but only for unusual toolchains).
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(&head);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
    }
    Ok(format!("file{:016x}", hasher.finish()))
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Find `NT_GNU_BUILD_ID` in the `PT_NOTE` segments of a 64-bit
/// little-endian ELF file whose first bytes are `head`.
fn elf_note_build_id(head: &[u8], file: &mut std::fs::File) -> Option<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    // ELF magic, 64-bit class, little-endian.
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(head, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(head, 0x36)?);
    let phnum = usize::from(u16_at(head, 0x38)?);
    for i in 0..phnum.min(128) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        const PT_NOTE: u32 = 4;
        if u32_at(head, ph)? != PT_NOTE {
            continue;
        }
        let offset = u64_at(head, ph + 8)?;
        let size = usize::try_from(u64_at(head, ph + 32)?).ok()?.min(64 * 1024);
        let mut notes = vec![0u8; size];
        file.seek(SeekFrom::Start(offset)).ok()?;
        let n = read_up_to(file, &mut notes).ok()?;
        notes.truncate(n);
        if let Some(id) = find_gnu_build_id(&notes) {
            return Some(id);
        }
    }
    None
}

/// Walk a note segment: (namesz, descsz, type, name, desc), 4-byte aligned.
fn find_gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(align(namesz)?)?;
        let desc_end = name_end.checked_add(align(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.to_vec());
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_stable_build_id() {
        let a = read_build_id(std::path::Path::new("/proc/self/exe")).unwrap();
        let b = read_build_id(std::path::Path::new("/proc/self/exe")).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 16, "{a}");
    }

    #[test]
    fn notes_are_walked_with_alignment() {
        let mut seg = Vec::new();
        // An unrelated note first: name "ab\0" (padded to 4), desc 5 bytes.
        seg.extend_from_slice(&3u32.to_le_bytes());
        seg.extend_from_slice(&5u32.to_le_bytes());
        seg.extend_from_slice(&1u32.to_le_bytes());
        seg.extend_from_slice(b"ab\0\0");
        seg.extend_from_slice(&[9, 9, 9, 9, 9, 0, 0, 0]);
        seg.extend_from_slice(&4u32.to_le_bytes());
        seg.extend_from_slice(&4u32.to_le_bytes());
        seg.extend_from_slice(&3u32.to_le_bytes());
        seg.extend_from_slice(b"GNU\0");
        seg.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(find_gnu_build_id(&seg), Some(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(find_gnu_build_id(&seg[..20]), None);
    }
}
