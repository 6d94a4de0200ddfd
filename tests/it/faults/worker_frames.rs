//! A real worker process on a channel the test holds, fed frames the
//! front never means to send: one that does not decode, one longer than
//! the channel limit, one whose descriptor list the kernel had to cut.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rrproxy::channel::fdpass::{self, Received};
use rrproxy::channel::{
    BackendEntry, Down, Event, Handoff, MAX_FDS, MAX_FRAME, Splice, Up, VERSION, WorkerConfig,
};
use rrproxy::stats::ProcWord;

use crate::support::*;

/// A worker process, the front's end of its channel, and the statistics
/// table it counts in (cell 0).
struct Worker {
    child: Child,
    table: rrproxy::stats::Table,
    /// The front's end; `None` once closed.
    front: Option<OwnedFd>,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Worker {
    fn start(config: WorkerConfig) -> Worker {
        let dir = temp_dir("worker");
        let log = dir.join("stderr.log");
        let (front, end) = fdpass::pair().unwrap();
        let raw = rrproxy::sys::raw(&end);
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "--slot", "0", "--channel-fd", &raw.to_string()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("RUST_LOG", "info");
        rrproxy::sys::inherit_fd(&mut cmd, raw);
        let child = cmd.spawn().unwrap();
        drop(end);
        let w = Worker {
            child,
            table: rrproxy::stats::Table::create(1, 4, 1).unwrap(),
            front: Some(front),
            log,
            dir,
        };
        let build = rrproxy::version::read_build_id(std::path::Path::new(BIN)).unwrap();
        w.send(&Down::Hello { cell: 0, build }, &[w.table.fd()]);
        w.send(&Down::Config(config), &[]);
        match w.recv() {
            Up::Ready { .. } => {}
            other => panic!("expected Ready, got {other:?}"),
        }
        w
    }

    fn send(&self, msg: &Down, fds: &[BorrowedFd<'_>]) {
        let mut frame = Vec::new();
        msg.encode(&mut frame).unwrap();
        self.send_raw(&frame, fds);
    }

    /// Send bytes and descriptors as they are, however many (the kernel
    /// allows 253 descriptors; the channel's sender stops at 64).
    fn send_raw(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = vec![std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let iov = [std::io::IoSlice::new(frame)];
        let sent = rustix::net::sendmsg(self.fd(), &iov, &mut control, SendFlags::NOSIGNAL)
            .expect("send to the worker");
        assert_eq!(sent, frame.len());
    }

    /// The next frame from the worker (waiting up to 10 s).
    fn recv(&self) -> Up {
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match fdpass::recv_raw(self.fd(), &mut buf, &mut fds) {
                Ok(Received::Frame(n)) => return Up::decode(&buf[..n]).unwrap(),
                Ok(Received::Closed) => panic!("worker closed its channel:\n{}", self.stderr()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no frame from the worker");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("receive from the worker: {e}"),
            }
        }
    }

    /// Events until `done` says enough (waiting up to 10 s in all).
    fn events_until(&self, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let mut all = Vec::new();
        while !done(&all) {
            if let Up::Events(evs) = self.recv() {
                all.extend(evs);
            }
        }
        all
    }

    /// A word of the worker's statistics cell.
    fn count(&self, w: ProcWord) -> u64 {
        self.table.cell(0).get(w)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.front.as_ref().expect("channel open").as_fd()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- worker stderr ---\n{}", self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client connection and the server side of it (what the front would
/// hand to a worker).
fn client_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server)
}

/// The client sees its connection closed (EOF or reset), not a hang.
fn closed(client: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match client.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn handoff(conn: u64, client: &TcpStream) -> Handoff {
    Handoff {
        conn,
        backend: 0,
        fallbacks: Default::default(),
        client: client.local_addr().unwrap(),
        destination: None,
    }
}

/// What is promised: a worker that receives a frame it cannot use skips
/// it, closes every descriptor that came with it (each of those clients
/// sees a close at once, none hangs), counts the connections the frame
/// described as taken and finished unserved (so the front's counts stay
/// right) and reports their closes when asked to, logs it, and goes on
/// serving: the next good connection is proxied. Only the channel closing
/// ends the worker (and then cleanly).
#[test]
fn a_worker_skips_bad_frames_closes_their_descriptors_and_keeps_serving() {
    let echo = echo_backend();
    let mut w = Worker::start(WorkerConfig {
        seq: 1,
        report_closes: true,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        first_byte_timeout: None,
        splice: Splice::Auto,
        backends: vec![BackendEntry {
            id: 0,
            column: 0,
            addr: echo.addr,
            routable: true,
            send_proxy: None,
            source: None,
            service: None,
            limited: false,
            counted: false,
        }],
        sources: Vec::new(),
        services: Vec::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();

    // 1. A frame that does not decode (a handoff count with no handoffs),
    //    carrying two connections.
    let (mut a, a_srv) = client_pair(&listener);
    let (mut b, b_srv) = client_pair(&listener);
    w.send_raw(&[VERSION, 0x02, 2, 0], &[a_srv.as_fd(), b_srv.as_fd()]);
    drop((a_srv, b_srv));
    assert!(
        closed(&mut a) && closed(&mut b),
        "undecodable frame's clients"
    );

    // 2. A frame longer than the channel limit (its tail is cut).
    let (mut c, c_srv) = client_pair(&listener);
    let mut long = vec![VERSION, 0x02];
    long.resize(MAX_FRAME + 100, 0);
    w.send_raw(&long, &[c_srv.as_fd()]);
    drop(c_srv);
    assert!(closed(&mut c), "truncated frame's client");
    assert!(
        w.alive(),
        "worker exited on a truncated frame:\n{}",
        w.stderr()
    );

    // 3. A good frame whose descriptor list is longer than a worker takes
    //    at once: the kernel drops the rest (MSG_CTRUNC).
    let (mut d, d_srv) = client_pair(&listener);
    let dups: Vec<OwnedFd> = (0..MAX_FDS + 6)
        .map(|_| d_srv.as_fd().try_clone_to_owned().unwrap())
        .collect();
    let borrowed: Vec<BorrowedFd<'_>> = dups.iter().map(|f| f.as_fd()).collect();
    let mut frame = Vec::new();
    Down::encode_conns(&[handoff(3, &d)], &mut frame).unwrap();
    w.send_raw(&frame, &borrowed);
    drop(borrowed);
    drop((dups, d_srv));
    assert!(closed(&mut d), "cut descriptor list: every copy closed");
    let d_ip = d.local_addr().unwrap().ip();
    let events = w.events_until(|evs| {
        evs.iter()
            .any(|e| matches!(e, Event::Closed { client, .. } if *client == d_ip))
    });
    assert!(
        events.iter().any(|e| matches!(e, Event::Closed { .. })),
        "{events:?}"
    );
    // Taken, finished, unserved: three frames' worth (two, one, one).
    assert_eq!(w.count(ProcWord::Received), 4);
    assert_eq!(w.count(ProcWord::Finished), 4);
    assert_eq!(w.count(ProcWord::Failed), 4);
    assert!(w.alive(), "worker exited on a cut descriptor list");

    // 4. And a good connection is served.
    let (mut e, e_srv) = client_pair(&listener);
    w.send(&Down::Conns(vec![handoff(4, &e)]), &[e_srv.as_fd()]);
    drop(e_srv);
    e.write_all(b"still serving\n").unwrap();
    e.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    e.read_to_string(&mut got).unwrap();
    assert_eq!(got, "still serving\n");
    // The worker logs through a non-blocking writer: the line may land
    // after the connection is served.
    wait_until(Duration::from_secs(10), "the bad-frame log line", || {
        w.stderr().contains("skipped a bad frame from the front")
    });
    let log = w.stderr();
    // At most one line a second: three skips within a second or so log
    // fewer than three lines, or say what they hid.
    let lines = log.matches("skipped a bad frame").count();
    assert!(lines <= 3, "{log}");

    // Only a channel that is gone ends the worker, cleanly.
    w.front = None;
    let st = wait_for(Duration::from_secs(10), "worker to exit", || {
        w.child.try_wait().unwrap()
    });
    assert!(st.success(), "worker exit: {st}\n{}", w.stderr());
}

/// What is promised: a worker started on a descriptor that is not a
/// channel (a standard descriptor, a file, a stream socket, a TCP socket)
/// refuses in one line naming the descriptor and what it is, and exits
/// with failure without touching it.
#[test]
fn a_worker_refuses_a_descriptor_that_is_not_a_channel() {
    let dir = temp_dir("notchannel");
    let file = std::fs::File::create(dir.join("plain")).unwrap();
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let cases: [(Option<BorrowedFd<'_>>, i32, &str); 5] = [
        (None, 1, "standard descriptor"),
        (None, -3, "cannot be negative"),
        (Some(file.as_fd()), 0, "not a socket"),
        (Some(stream.as_fd()), 0, "not a SEQPACKET one"),
        (Some(tcp.as_fd()), 0, "not a Unix one"),
    ];
    for (fd, number, says) in cases {
        let number = fd.map_or(number, |f| rrproxy::sys::raw(&f));
        let mut cmd = Command::new(BIN);
        cmd.args(["worker", "--slot", "3", &format!("--channel-fd={number}")]);
        if fd.is_some() {
            rrproxy::sys::inherit_fd(&mut cmd, number);
        }
        let (st, err) = run_to_exit(cmd, Duration::from_secs(10));
        assert!(!st.success(), "{number}: {st}");
        let line = err.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(&format!("worker slot 3: channel fd {number} is not usable"))
                && line.contains(says),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
