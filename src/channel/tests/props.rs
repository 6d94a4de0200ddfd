//! Property tests of the codec: any message that encodes decodes back to
//! itself, no strict prefix of a frame decodes, and arbitrary or damaged
//! bytes never panic.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use proptest::prelude::*;

use super::super::*;
use crate::proxy_protocol::Version;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// Socket addresses as the codec carries them: IPv6 with its scope id but
/// without a flow label (the channel does not carry one).
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::new(o.into(), p)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>())
            .prop_map(|(o, p, scope)| SocketAddr::V6(SocketAddrV6::new(o.into(), p, 0, scope))),
    ]
}

/// Durations in whole microseconds (the channel's unit).
fn micros() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_micros),
        (0u64..100_000_000).prop_map(Duration::from_micros),
    ]
}

fn worker_config() -> impl Strategy<Value = WorkerConfig> {
    let send_proxy = prop_oneof![Just(None), Just(Some(Version::V1)), Just(Some(Version::V2)),];
    let backend = (
        any::<u32>(),
        any::<u16>(),
        socket_addr(),
        any::<bool>(),
        send_proxy,
        prop::option::of(any::<u16>()),
        prop::option::of(any::<u16>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, column, addr, routable, send_proxy, source, service, limited, counted)| {
                BackendEntry {
                    id,
                    column,
                    addr,
                    routable,
                    send_proxy,
                    source,
                    service,
                    limited,
                    counted,
                }
            },
        );
    let service = (
        micros(),
        micros(),
        prop::option::of(micros().prop_filter("zero means off", |d| !d.is_zero())),
    )
        .prop_map(|(connect_timeout, idle_timeout, first_byte_timeout)| {
            crate::channel::ServiceConns {
                connect_timeout,
                idle_timeout,
                first_byte_timeout,
            }
        });
    let ip = socket_addr().prop_map(|a| a.ip());
    let sources = prop::collection::vec(
        prop::collection::vec(ip, 1..=crate::channel::MAX_SOURCES),
        0..4,
    );
    (
        (any::<u64>(), micros(), micros(), micros()),
        (
            prop::option::of(micros().prop_filter("zero means off", |d| !d.is_zero())),
            prop_oneof![Just(Splice::Off), Just(Splice::On), Just(Splice::Auto)],
            any::<bool>(),
        ),
        prop::collection::vec(backend, 0..24),
        sources,
        prop::collection::vec(service, 0..4),
    )
        .prop_map(
            |(
                (seq, connect_timeout, idle_timeout, drain_timeout),
                (first_byte_timeout, splice, report_closes),
                mut backends,
                mut sources,
                mut services,
            )| {
                // A backend names one of the services that travel with it.
                for b in &mut backends {
                    b.service = b
                        .service
                        .filter(|_| !services.is_empty())
                        .map(|i| i % services.len() as u16);
                }
                if backends.iter().all(|b| b.service.is_none()) {
                    services.clear();
                }
                // A backend names one of the lists that travel with it.
                for b in &mut backends {
                    b.source = b
                        .source
                        .filter(|_| !sources.is_empty())
                        .map(|i| i % sources.len() as u16);
                }
                // Lists travel only with an entry that names one.
                if backends.iter().all(|b| b.source.is_none()) {
                    sources.clear();
                }
                WorkerConfig {
                    seq,
                    connect_timeout,
                    idle_timeout,
                    drain_timeout,
                    first_byte_timeout,
                    splice,
                    report_closes,
                    backends,
                    sources,
                    services,
                }
            },
        )
}

fn handoff() -> impl Strategy<Value = Handoff> {
    (
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..=MAX_FALLBACKS),
        socket_addr(),
        prop::option::of(socket_addr()),
    )
        .prop_map(|(conn, backend, fallbacks, client, destination)| Handoff {
            conn,
            backend,
            fallbacks: Fallbacks::new(&fallbacks),
            client,
            destination,
        })
}

/// A build id as the channel carries it: up to 64 bytes of text.
fn build() -> impl Strategy<Value = String> {
    "[0-9a-f]{0,64}"
}

/// Where an access log may go: off, stderr, or an absolute path of any
/// bytes but NUL (the longest the channel carries included).
fn access_log() -> impl Strategy<Value = AccessLog> {
    use std::os::unix::ffi::OsStringExt;
    let path = prop_oneof![
        prop::collection::vec(1u8..=255, 0..200),
        Just(vec![b'x'; MAX_PATH_LEN - 1]),
    ]
    .prop_map(|rest| {
        let bytes = [vec![b'/'], rest].concat();
        AccessLog::File(std::ffi::OsString::from_vec(bytes).into())
    });
    prop_oneof![Just(AccessLog::Off), Just(AccessLog::Stderr), path]
}

fn down() -> impl Strategy<Value = Down> {
    prop_oneof![
        (access_log(), any::<bool>()).prop_map(|(target, json)| Down::AccessLog { target, json }),
        (any::<u32>(), build()).prop_map(|(cell, build)| Down::Hello { cell, build }),
        worker_config().prop_map(Down::Config),
        prop::collection::vec(handoff(), 0..=24).prop_map(Down::Conns),
        micros().prop_map(|timeout| Down::Drain { timeout }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let reason = prop_oneof![
        Just(FailReason::Refused),
        Just(FailReason::Timeout),
        Just(FailReason::Other),
    ];
    prop_oneof![
        (any::<u32>(), reason)
            .prop_map(|(backend, reason)| Event::ConnectFailed { backend, reason }),
        ip().prop_map(|client| Event::Closed { client }),
        Just(Event::Draining),
        Just(Event::Wake),
        any::<u32>().prop_map(|backend| Event::Released { backend }),
        any::<u64>().prop_map(|conn| Event::Ended { conn }),
    ]
}

fn up() -> impl Strategy<Value = Up> {
    prop_oneof![
        (any::<u32>(), build()).prop_map(|(pid, build)| Up::Ready { pid, build }),
        prop::collection::vec(event(), 0..40).prop_map(Up::Events),
        handoff().prop_map(Up::Returned),
    ]
}

/// Bytes that often start like a frame, so decoding goes past the header.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(vec![]),
            prop::sample::select(vec![0x01u8, 0x02, 0x03, 0x04, 0x05, 0x81, 0x82, 0x83])
                .prop_map(|k| vec![VERSION, k]),
        ],
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(head, rest)| [head, rest].concat())
}

/// The encoding of any message either way.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    let encoded = |r: Result<(), FrameError>, buf: Vec<u8>| {
        r.expect("a generated message encodes");
        buf
    };
    prop_oneof![
        down().prop_map(move |m| {
            let mut buf = Vec::new();
            encoded(m.encode(&mut buf), buf)
        }),
        up().prop_map(move |m| {
            let mut buf = Vec::new();
            encoded(m.encode(&mut buf), buf)
        }),
    ]
}

proptest! {
    #[test]
    fn down_messages_round_trip(msg in down()) {
        let mut buf = Vec::new();
        msg.encode(&mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_FRAME);
        prop_assert_eq!(Down::decode(&buf), Ok(msg));
        for len in 0..buf.len() {
            prop_assert!(Down::decode(&buf[..len]).is_err(), "prefix of {} bytes decoded", len);
        }
    }

    #[test]
    fn up_messages_round_trip(msg in up()) {
        let mut buf = Vec::new();
        msg.encode(&mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_FRAME);
        if let Up::Events(events) = &msg {
            prop_assert!(buf.len() <= 4 + events.len() * EVENT_MAX_LEN);
        }
        prop_assert_eq!(Up::decode(&buf), Ok(msg));
        for len in 0..buf.len() {
            prop_assert!(Up::decode(&buf[..len]).is_err(), "prefix of {} bytes decoded", len);
        }
    }

    #[test]
    fn handoff_batches_encode_like_the_enum(conns in prop::collection::vec(handoff(), 0..=MAX_FDS)) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Down::encode_conns(&conns, &mut a).unwrap();
        Down::Conns(conns.clone()).encode(&mut b).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(a.len() <= 4 + conns.len() * HANDOFF_LEN);
    }

    #[test]
    fn arbitrary_bytes_never_panic(frame in frame_like_bytes()) {
        // Whatever decodes must be a message that encodes within the limit.
        let mut buf = Vec::new();
        if let Ok(msg) = Down::decode(&frame) {
            prop_assert!(msg.encode(&mut buf).is_ok());
        }
        if let Ok(msg) = Up::decode(&frame) {
            prop_assert!(msg.encode(&mut buf).is_ok());
        }
    }

    #[test]
    fn damaged_frames_never_panic(
        mut frame in valid_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for (at, xor) in flips {
            let i = at.index(frame.len());
            frame[i] ^= xor;
        }
        let _ = Down::decode(&frame);
        let _ = Up::decode(&frame);
        let end = cut.index(frame.len() + 1);
        let _ = Down::decode(&frame[..end]);
        let _ = Up::decode(&frame[..end]);
    }
}
