//! Codec and fd-passing tests; property tests (round trips, arbitrary
//! bytes) are in `tests/props.rs`.

mod props;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use super::fdpass::{self, Received};
use super::*;
use crate::proxy_protocol::Version;

fn sample_config() -> WorkerConfig {
    WorkerConfig {
        seq: 42,
        connect_timeout: Duration::from_millis(1500),
        idle_timeout: Duration::from_secs(300),
        drain_timeout: Duration::from_secs(30),
        first_byte_timeout: Some(Duration::from_secs(3)),
        splice: Splice::Auto,
        report_closes: true,
        backends: vec![
            BackendEntry {
                id: 0,
                column: 0,
                addr: "10.0.0.5:80".parse().unwrap(),
                routable: true,
                send_proxy: None,
                source: Some(1),
                service: None,
                limited: true,
                counted: true,
            },
            BackendEntry {
                id: 7,
                column: 1023,
                addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8443),
                routable: false,
                send_proxy: Some(Version::V2),
                source: Some(0),
                service: Some(1),
                limited: false,
                counted: false,
            },
            BackendEntry {
                id: 8,
                column: 2,
                addr: "10.0.0.6:80".parse().unwrap(),
                routable: true,
                send_proxy: Some(Version::V1),
                source: None,
                service: Some(0),
                limited: false,
                counted: false,
            },
        ],
        sources: vec![
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
        ],
        services: vec![
            ServiceConns {
                connect_timeout: Duration::from_millis(300),
                idle_timeout: Duration::from_secs(7),
                first_byte_timeout: None,
            },
            ServiceConns {
                connect_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(60),
                first_byte_timeout: Some(Duration::from_millis(500)),
            },
        ],
    }
}

fn sample_events() -> Vec<Event> {
    vec![
        Event::ConnectFailed {
            backend: 1,
            reason: FailReason::Refused,
        },
        Event::Closed {
            client: "127.0.0.9".parse().unwrap(),
        },
        Event::Closed {
            client: IpAddr::V6(Ipv6Addr::LOCALHOST),
        },
        Event::Ended { conn: u64::MAX },
        Event::Draining,
        Event::Wake,
        Event::Released { backend: 42 },
    ]
}

#[test]
fn down_messages_round_trip() {
    let msgs = [
        Down::Hello {
            cell: 3,
            build: "86d678c0b35b73c74558a6fb920c5c0becbe11b9".into(),
        },
        Down::Config(sample_config()),
        Down::Conns(vec![
            Handoff {
                conn: 1,
                backend: 0,
                fallbacks: Fallbacks::default(),
                client: "127.0.0.2:5000".parse().unwrap(),
                destination: None,
            },
            Handoff {
                conn: u64::MAX,
                backend: 7,
                fallbacks: Fallbacks::new(&[3, 1, u32::MAX - 1, 9]),
                client: "[2001:db8::1]:65535".parse().unwrap(),
                destination: Some("[2001:db8::2]:443".parse().unwrap()),
            },
            Handoff {
                conn: 3,
                backend: 8,
                fallbacks: Fallbacks::new(&[1]),
                client: "192.0.2.7:40000".parse().unwrap(),
                destination: Some("10.0.0.1:80".parse().unwrap()),
            },
        ]),
        Down::Conns(vec![]),
        Down::Drain {
            timeout: Duration::from_secs(30),
        },
        Down::AccessLog {
            target: AccessLog::File("/var/log/rrproxy/access.log".into()),
            json: true,
        },
        Down::AccessLog {
            target: AccessLog::Stderr,
            json: false,
        },
        Down::AccessLog {
            target: AccessLog::Off,
            json: false,
        },
    ];
    let mut buf = Vec::new();
    for msg in msgs {
        msg.encode(&mut buf).unwrap();
        assert_eq!(Down::decode(&buf).unwrap(), msg);
    }
}

#[test]
fn up_messages_round_trip() {
    let mut buf = Vec::new();
    let ready = Up::Ready {
        pid: 4242,
        build: "abc".into(),
    };
    let returned = Up::Returned(Handoff {
        conn: 77,
        backend: 3,
        fallbacks: Fallbacks::new(&[4, 5]),
        client: "127.0.0.9:4000".parse().unwrap(),
        destination: Some("10.0.0.1:80".parse().unwrap()),
    });
    for msg in [ready, Up::Events(sample_events()), returned] {
        msg.encode(&mut buf).unwrap();
        assert_eq!(Up::decode(&buf).unwrap(), msg);
    }
}

/// A table without limits (`limited`: a backend's `maxconn`; `counted`:
/// a service's own limits) encodes as before each flag existed (an older
/// worker reads it during an upgrade), and each flag survives a round
/// trip as one bit.
#[test]
fn the_one_bit_flags_are_absent_without_their_limits() {
    type Flag = fn(&mut BackendEntry) -> &mut bool;
    let flags: [(&str, Flag); 2] = [
        ("limited", |b| &mut b.limited),
        ("counted", |b| &mut b.counted),
    ];
    for (name, flag) in flags {
        let mut cfg = sample_config();
        let mut with = Vec::new();
        Down::Config(cfg.clone()).encode(&mut with).unwrap();
        for b in &mut cfg.backends {
            *flag(b) = false;
        }
        let mut without = Vec::new();
        Down::Config(cfg.clone()).encode(&mut without).unwrap();
        assert_eq!(with.len(), without.len(), "{name}");
        assert_ne!(with, without, "{name}");
        let Down::Config(mut back) = Down::decode(&with).unwrap() else {
            panic!("not a config");
        };
        assert!(*flag(&mut back.backends[0]), "{name}");
        assert!(!*flag(&mut back.backends[1]), "{name}");
    }
}

#[test]
fn encoded_events_fit_the_declared_maximum() {
    let mut buf = Vec::new();
    for ev in sample_events() {
        Up::Events(vec![ev]).encode(&mut buf).unwrap();
        assert!(
            buf.len() - 4 <= EVENT_MAX_LEN,
            "{ev:?} took {}",
            buf.len() - 4
        );
    }
    let v6 = Handoff {
        conn: 1,
        backend: 2,
        fallbacks: Fallbacks::new(&[1, 2, 3, 4]),
        client: "[2001:db8::1]:80".parse().unwrap(),
        destination: Some("[2001:db8::2]:443".parse().unwrap()),
    };
    Down::encode_conns(&[v6], &mut buf).unwrap();
    assert_eq!(buf.len() - 4, HANDOFF_LEN);
    // A whole batch of the largest handoffs fits a frame.
    Down::encode_conns(&[v6; MAX_FDS], &mut buf).unwrap();
    assert!(buf.len() <= MAX_FRAME);
}

/// `send-proxy` and a handoff's destination use bits that were invalid
/// before they existed: a frame without them is byte for byte what the
/// previous build sent and read, so a front and workers of either build
/// understand each other while an upgrade rolls.
#[test]
fn frames_without_the_proxy_fields_are_unchanged() {
    let mut buf = Vec::new();
    let h = Handoff {
        conn: 5,
        backend: 2,
        fallbacks: Fallbacks::new(&[9]),
        client: "127.0.0.2:80".parse().unwrap(),
        destination: None,
    };
    Down::encode_conns(&[h], &mut buf).unwrap();
    let mut want = vec![VERSION, 0x02, 1, 0];
    want.extend_from_slice(&5u64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.push(1); // one fallback, no destination
    want.extend_from_slice(&9u32.to_le_bytes());
    want.extend_from_slice(&[4, 127, 0, 0, 2, 80, 0, 0, 0, 0, 0]);
    assert_eq!(buf, want);

    let mut cfg = sample_config();
    cfg.backends.truncate(1);
    cfg.backends[0].source = None;
    cfg.backends[0].limited = false;
    cfg.backends[0].counted = false;
    cfg.sources.clear();
    Down::Config(cfg).encode(&mut buf).unwrap();
    // The last byte of the only entry: routable, no send-proxy.
    assert_eq!(buf.last(), Some(&1));
    // Flags the codec does not know are refused, naming them.
    let at = buf.len() - 1;
    buf[at] = 0b110;
    assert_eq!(
        Down::decode(&buf),
        Err(FrameError::Invalid {
            what: "backend flags",
            value: 0b110
        })
    );
}

#[test]
fn source_lists_travel_once_and_are_named_by_index() {
    let cfg = sample_config();
    let mut buf = Vec::new();
    Down::Config(cfg.clone()).encode(&mut buf).unwrap();
    assert_eq!(Down::decode(&buf), Ok(Down::Config(cfg.clone())));
    // An index past the lists is refused, naming it.
    let mut bad = cfg.clone();
    bad.backends[2].source = Some(2);
    Down::Config(bad).encode(&mut buf).unwrap();
    assert_eq!(
        Down::decode(&buf),
        Err(FrameError::Invalid {
            what: "source list index",
            value: 2
        })
    );
    // So is a list longer than a backend may have.
    let mut long = cfg;
    long.sources[0] = vec![IpAddr::V6(Ipv6Addr::LOCALHOST); 17];
    assert!(Down::Config(long).encode(&mut buf).is_err());
}

#[test]
fn malformed_frames_are_errors_naming_the_problem() {
    assert_eq!(Down::decode(&[]), Err(FrameError::Empty));
    assert_eq!(Down::decode(&[9, 1]), Err(FrameError::Version(9)));
    assert_eq!(Down::decode(&[VERSION, 0x55]), Err(FrameError::Kind(0x55)));
    assert_eq!(
        Up::decode(&[VERSION, 0x81, 1, 2]),
        Err(FrameError::Truncated("pid"))
    );
    assert_eq!(
        Up::decode(&[VERSION, 0x81, 1, 2, 3, 4, 0, 5]),
        Err(FrameError::Trailing(1))
    );
    assert_eq!(
        Up::decode(&[VERSION, 0x81, 1, 2, 3, 4, 200]),
        Err(FrameError::Invalid {
            what: "build id",
            value: 200
        })
    );
    let too_long = Up::Ready {
        pid: 1,
        build: "x".repeat(MAX_BUILD_LEN + 1),
    };
    assert!(too_long.encode(&mut Vec::new()).is_err());
    // A count larger than the kernel's descriptor limit per frame.
    assert!(matches!(
        Down::decode(&[VERSION, 0x02, 0xff, 0xff]),
        Err(FrameError::Invalid { .. })
    ));
}

#[test]
fn an_access_log_path_must_be_absolute_without_nul_and_short_enough() {
    let path = |p: &str| Down::AccessLog {
        target: AccessLog::File(p.into()),
        json: false,
    };
    for bad in ["", "relative/access.log", "/a\0b"] {
        assert!(path(bad).encode(&mut Vec::new()).is_err(), "{bad:?}");
    }
    let long = format!("/{}", "x".repeat(MAX_PATH_LEN));
    assert!(path(&long).encode(&mut Vec::new()).is_err());
    // The same rules when decoding what a peer sent.
    let frame = |target: u8, path: &[u8]| {
        let mut f = vec![VERSION, 0x05, 0, target];
        f.extend_from_slice(&(path.len() as u16).to_le_bytes());
        f.extend_from_slice(path);
        f
    };
    assert!(Down::decode(&frame(2, b"/ok")).is_ok());
    for bad in [&b"rel"[..], b"", b"/nul\0"] {
        assert!(matches!(
            Down::decode(&frame(2, bad)),
            Err(FrameError::Invalid {
                what: "access log path",
                ..
            })
        ));
    }
    assert_eq!(
        Down::decode(&[VERSION, 0x05, 0, 3]),
        Err(FrameError::Invalid {
            what: "access log target",
            value: 3
        })
    );
    assert_eq!(
        Down::decode(&[VERSION, 0x05, 2, 0]),
        Err(FrameError::Invalid {
            what: "access log format",
            value: 2
        })
    );
}

#[test]
fn every_truncation_of_a_valid_frame_is_rejected() {
    let mut buf = Vec::new();
    Down::Config(sample_config()).encode(&mut buf).unwrap();
    for len in 0..buf.len() {
        assert!(
            Down::decode(&buf[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
    Up::Events(sample_events()).encode(&mut buf).unwrap();
    for len in 0..buf.len() {
        assert!(
            Up::decode(&buf[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn descriptors_travel_with_their_frame() {
    let (front, worker) = fdpass::pair().unwrap();
    // Two connected socket pairs stand in for client connections.
    let (mut a_local, a_remote) = std::os::unix::net::UnixStream::pair().unwrap();
    let (mut b_local, b_remote) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut frame = Vec::new();
    let client = "127.0.0.9:1234".parse().unwrap();
    let handoffs = [
        Handoff {
            conn: 1,
            backend: 3,
            fallbacks: Fallbacks::new(&[7]),
            client,
            destination: None,
        },
        Handoff {
            conn: 2,
            backend: 4,
            fallbacks: Fallbacks::new(&[7]),
            client,
            destination: None,
        },
    ];
    Down::encode_conns(&handoffs, &mut frame).unwrap();
    fdpass::send_raw(front.as_fd(), &frame, &[a_remote.as_fd(), b_remote.as_fd()]).unwrap();
    drop((a_remote, b_remote)); // the only copies left are in flight

    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let got = fdpass::recv_raw(worker.as_fd(), &mut buf, &mut fds).unwrap();
    let Received::Frame(n) = got else {
        panic!("expected a frame")
    };
    assert_eq!(
        Down::decode(&buf[..n]).unwrap(),
        Down::Conns(handoffs.to_vec())
    );
    assert_eq!(fds.len(), 2);
    // The received descriptors are the same connections.
    let mut a = std::os::unix::net::UnixStream::from(fds.remove(0));
    let mut b = std::os::unix::net::UnixStream::from(fds.remove(0));
    a.write_all(b"to-a").unwrap();
    b.write_all(b"to-b").unwrap();
    let mut got = [0u8; 4];
    a_local.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-a");
    b_local.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-b");

    // Nothing more queued, then end of stream once the front end closes.
    let err = fdpass::recv_raw(worker.as_fd(), &mut buf, &mut fds).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    drop(front);
    assert_eq!(
        fdpass::recv_raw(worker.as_fd(), &mut buf, &mut fds).unwrap(),
        Received::Closed
    );
}

#[test]
fn a_full_channel_refuses_instead_of_blocking() {
    let (front, _worker) = fdpass::pair().unwrap();
    let frame = vec![VERSION; 4096];
    let mut sent = 0;
    let err = loop {
        match fdpass::send_raw(front.as_fd(), &frame, &[]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1_000_000, "channel never filled up");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(sent > 0);
}
