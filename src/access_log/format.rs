//! One access log line from a [`Record`]: text (`key=value` pairs, the
//! time first) or one JSON object. Every field is a number, an address, a
//! timestamp or a fixed word, so nothing needs escaping.

use std::fmt::Write as _;

use super::{End, Record};

/// Append the line for `r` (with its newline) to `out`.
pub fn line(out: &mut String, r: &Record, worker: usize, json: bool) {
    let time = humantime::format_rfc3339_millis(r.time);
    let secs = r.duration.as_secs_f64();
    if json {
        let _ = write!(
            out,
            "{{\"time\":\"{time}\",\"conn\":{},\"client\":\"{}\",\"worker\":{worker},\"backend\":",
            r.conn, r.client
        );
        match r.backend {
            Some(b) => {
                let _ = write!(out, "\"{b}\"");
            }
            None => out.push_str("null"),
        }
        let _ = writeln!(
            out,
            ",\"bytes_up\":{},\"bytes_down\":{},\"duration\":{secs:.6},\"end\":\"{}\"}}",
            r.bytes_up,
            r.bytes_down,
            r.end.as_str()
        );
    } else {
        let _ = write!(
            out,
            "time={time} conn={} client={} worker={worker} backend=",
            r.conn, r.client
        );
        match r.backend {
            Some(b) => {
                let _ = write!(out, "{b}");
            }
            None => out.push('-'),
        }
        let _ = writeln!(
            out,
            " bytes_up={} bytes_down={} duration={secs:.6} end={}",
            r.bytes_up,
            r.bytes_down,
            r.end.as_str()
        );
    }
}

impl End {
    /// The word the log uses.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::IdleTimeout => "idle_timeout",
            End::FirstByteTimeout => "first_byte_timeout",
            End::ConnectFailed => "connect_failed",
            End::WorkerStopped => "worker_stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn record(backend: Option<&str>, end: End) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_460_800_250),
            conn: 42,
            client: "[2001:db8::7]:40000".parse().unwrap(),
            backend: backend.map(|b| b.parse().unwrap()),
            bytes_up: 78,
            bytes_down: 1_234_567,
            duration: Duration::from_micros(4_512),
            end,
        }
    }

    #[test]
    fn text_lines_are_key_value_pairs_with_the_time_first() {
        let mut out = String::new();
        line(
            &mut out,
            &record(Some("127.0.0.1:8081"), End::BackendClosed),
            3,
            false,
        );
        assert_eq!(
            out,
            "time=2025-11-30T00:00:00.250Z conn=42 client=[2001:db8::7]:40000 worker=3 \
             backend=127.0.0.1:8081 bytes_up=78 bytes_down=1234567 duration=0.004512 \
             end=backend_closed\n"
        );
        out.clear();
        line(&mut out, &record(None, End::ConnectFailed), 0, false);
        assert!(out.contains(" backend=- ") && out.ends_with("end=connect_failed\n"));
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        for (backend, end) in [
            (Some("[::1]:9000"), End::ClientReset),
            (None, End::ConnectFailed),
        ] {
            let mut out = String::new();
            line(&mut out, &record(backend, end), 1, true);
            assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["time"], "2025-11-30T00:00:00.250Z");
            assert_eq!(v["conn"], 42);
            assert_eq!(v["client"], "[2001:db8::7]:40000");
            assert_eq!(v["worker"], 1);
            assert_eq!(
                v["backend"],
                backend.map_or(serde_json::Value::Null, |b| b.into())
            );
            assert_eq!(v["bytes_up"], 78);
            assert_eq!(v["bytes_down"], 1_234_567);
            assert_eq!(v["duration"], 0.004512);
            assert_eq!(v["end"], end.as_str());
        }
    }
}
