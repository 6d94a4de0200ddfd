//! Building ClientHellos for the tests: any server name bytes, extensions
//! before and after it, padding to a size, and any split into records.

/// What to put in a ClientHello.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `host_name` entry's bytes; `None`: no `server_name` extension.
    pub sni: Option<Vec<u8>>,
    /// Other extensions (type, data), before and after `server_name`.
    pub before: Vec<(u16, Vec<u8>)>,
    pub after: Vec<(u16, Vec<u8>)>,
    pub session_id: usize,
    pub suites: usize,
    /// `false`: no extension block at all (a TLS 1.2 hello may omit it).
    pub extensions: bool,
}

impl Spec {
    pub fn named(host: &str) -> Spec {
        Spec {
            sni: Some(host.as_bytes().to_vec()),
            before: vec![(10, vec![0, 2, 0, 0x1d])],
            after: vec![(43, vec![2, 3, 4])],
            session_id: 32,
            suites: 3,
            extensions: true,
        }
    }

    /// Add a padding extension (type 21) before `server_name` so the
    /// handshake message is `len` bytes long (when it can be).
    pub fn padded_to(mut self, len: usize) -> Spec {
        let now = message(&self).len();
        if len >= now + 4 {
            self.before.push((21, vec![0; len - now - 4]));
        }
        self
    }
}

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits 16 bits").to_be_bytes()
}

fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16be(data.len()));
    out.extend_from_slice(data);
}

/// The `server_name` extension's data for one host name entry.
pub fn server_name_data(host: &[u8]) -> Vec<u8> {
    let mut d = u16be(host.len() + 3).to_vec();
    d.push(0);
    d.extend_from_slice(&u16be(host.len()));
    d.extend_from_slice(host);
    d
}

/// The handshake message (type, 24-bit length, body).
pub fn message(spec: &Spec) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    body.push(spec.session_id as u8);
    body.extend(std::iter::repeat_n(0xab, spec.session_id));
    body.extend_from_slice(&u16be(spec.suites * 2));
    for i in 0..spec.suites {
        body.extend_from_slice(&[0x13, i as u8]);
    }
    body.extend_from_slice(&[1, 0]);
    if spec.extensions {
        let mut exts = Vec::new();
        for (k, d) in &spec.before {
            extension(&mut exts, *k, d);
        }
        if let Some(host) = &spec.sni {
            extension(&mut exts, 0, &server_name_data(host));
        }
        for (k, d) in &spec.after {
            extension(&mut exts, *k, d);
        }
        body.extend_from_slice(&u16be(exts.len()));
        body.extend_from_slice(&exts);
    }
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

/// `payload` as handshake records whose payloads have the sizes of
/// `sizes` in turn (repeating the last; 16384 at most); version 3.1 for
/// the first record, 3.3 after, as real clients do.
pub fn records(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes.get(i).or(sizes.last()).copied().unwrap_or(16384);
        let n = size.clamp(1, 16384).min(rest.len());
        let minor = if i == 0 { 1 } else { 3 };
        out.extend_from_slice(&[22, 3, minor]);
        out.extend_from_slice(&u16be(n));
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// The handshake payload of a run of records (for re-splitting a captured
/// hello).
pub fn payload(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let n = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        out.extend_from_slice(&wire[at + 5..(at + 5 + n).min(wire.len())]);
        at += 5 + n;
    }
    out
}

/// `spec` in one record.
pub fn hello(spec: &Spec) -> Vec<u8> {
    records(&message(spec), &[16384])
}
