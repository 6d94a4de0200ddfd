//! The access log (`--access-log off|stderr|PATH`): one line per finished
//! connection, written by each worker, never in the way of proxying.
//!
//! A connection's worker fills an [`Entry`] as the connection goes (the
//! backend it reached, how it ended) and, when the entry drops, hands a
//! fixed-size [`Record`] to the process's [`AccessLog`]: a bounded queue
//! ([`QUEUE_RECORDS`]) to a writer thread of its own. The event loop does
//! no formatting and no I/O for it: a record is a copy into the queue,
//! and when the queue is full (the writer is stalled on a full disk, a
//! FIFO nobody reads, a stopped pipe) the record is dropped and counted
//! in the worker's `AccessLogDropped` word
//! (`rrproxy_access_log_lines_dropped_total`), never waited for. The
//! writer formats lines (`format`) and writes them in chunks of at most
//! [`CHUNK`] bytes of whole lines, so lines from several workers sharing a
//! file (`O_APPEND`) or a pipe (stderr) never interleave mid-line. After
//! writing a batch it pauses ([`PAUSE`]) unless the queue was filling up,
//! so it wakes at most about 50 times a second whatever the connection
//! rate: a record queued while it pauses costs the event loop no wake-up
//! (no system call), and lines reach the file in batches.
//!
//! Where to write comes from the front (`Down::AccessLog`): on start, when
//! a reload changes it, and again on SIGUSR1 or `ctl log reopen` to reopen
//! the file after logrotate moved it. The writer thread opens the file,
//! so a slow open never stalls the event loop; if it cannot, it logs why
//! and keeps writing to the file it had.

pub mod format;

use std::cell::{Cell, OnceCell};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

pub use crate::channel::AccessLog as Target;
use crate::stats::{ProcWord, Table};

/// Records that may wait for the writer before new ones are dropped.
pub const QUEUE_RECORDS: usize = 4096;
/// Largest single write: whole lines, within `PIPE_BUF`, so a write to a
/// pipe is atomic too.
pub const CHUNK: usize = 4096;
/// How long a stopping worker waits for its queued lines to be written.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(1);
/// The writer's pause after a batch (unless the queue was filling up).
pub const PAUSE: Duration = Duration::from_millis(20);

/// How a connection ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions closed; the client closed first.
    ClientClosed,
    /// Both directions closed; the backend closed first.
    BackendClosed,
    /// The client reset the connection (or failed first).
    ClientReset,
    /// The backend reset the connection (or failed first).
    BackendReset,
    /// Nothing moved either way for `--idle-timeout`.
    IdleTimeout,
    /// The client sent nothing within `--client-first-byte-timeout`.
    FirstByteTimeout,
    /// No backend could be reached (the client got a reset).
    ConnectFailed,
    /// The worker stopped (its drain timeout passed) while the connection
    /// was still open.
    WorkerStopped,
}

/// One finished connection: what its line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// When it ended.
    pub time: SystemTime,
    /// The front's connection id.
    pub conn: u64,
    /// The client, as the front knows it.
    pub client: SocketAddr,
    /// The backend that served it; `None` if none was reached.
    pub backend: Option<SocketAddr>,
    /// Bytes from the client to the backend.
    pub bytes_up: u64,
    /// Bytes from the backend to the client.
    pub bytes_down: u64,
    pub duration: Duration,
    pub end: End,
}

/// What the worker's event loop sends its writer.
enum Msg {
    Record(Record),
    /// Look at the pending setting.
    Check,
}

/// State shared with the writer thread.
struct Shared {
    /// A setting (target, JSON) the writer has not applied yet.
    pending: Mutex<Option<(Target, bool)>>,
    /// Where drops are counted: this worker's statistics cell.
    table: Arc<Table>,
    cell: usize,
    slot: usize,
}

impl Shared {
    fn dropped(&self, n: u64) {
        self.table
            .cell(self.cell)
            .add_shared(ProcWord::AccessLogDropped, n);
    }
}

/// One worker's access log: off until the front names a target.
pub struct AccessLog {
    shared: Arc<Shared>,
    /// The queue to the writer thread, once started.
    queue: OnceCell<SyncSender<Msg>>,
    /// Hears from the writer thread when it has finished.
    done: Cell<Option<Receiver<()>>>,
    /// Records are taken (the target is not off).
    on: Cell<bool>,
}

impl AccessLog {
    /// An access log that is off, counting its drops in `cell` of `table`.
    pub fn new(table: Arc<Table>, cell: usize, slot: usize) -> AccessLog {
        AccessLog {
            shared: Arc::new(Shared {
                pending: Mutex::new(None),
                table,
                cell,
                slot,
            }),
            queue: OnceCell::new(),
            done: Cell::new(None),
            on: Cell::new(false),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    /// Write to `target` from now on (reopening it if it is the same
    /// file). The writer thread opens it; until it has, records queue.
    pub fn set(&self, target: Target, json: bool) {
        self.on.set(target != Target::Off);
        if target == Target::Off && self.queue.get().is_none() {
            return;
        }
        if let Ok(mut pending) = self.shared.pending.lock() {
            *pending = Some((target, json));
        }
        if self.queue.get().is_none() {
            match start(self.shared.clone()) {
                Ok((queue, done)) => {
                    let _ = self.queue.set(queue);
                    self.done.set(Some(done));
                }
                Err(err) => {
                    warn!(cause = %err, "cannot start the access log writer; access log off");
                    self.on.set(false);
                    return;
                }
            }
        }
        // A full queue means the writer is busy: it looks at the pending
        // setting before its next batch anyway.
        if let Some(q) = self.queue.get() {
            let _ = q.try_send(Msg::Check);
        }
    }

    /// Queue a record; drop and count it if the writer is behind.
    pub fn push(&self, record: Record) {
        let Some(q) = self.queue.get() else { return };
        match q.try_send(Msg::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.shared.dropped(1),
        }
    }
}

impl Drop for AccessLog {
    /// Give the writer up to [`FLUSH_LIMIT`] to write what is queued.
    fn drop(&mut self) {
        self.on.set(false);
        drop(self.queue.take());
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(FLUSH_LIMIT);
        }
    }
}

/// Open `target` for appending as a worker does (the front checks at
/// start that it can). `None` for off and stderr.
pub fn open(target: &Target) -> std::io::Result<Option<File>> {
    match target {
        Target::Off => Ok(None),
        Target::Stderr => Ok(Some(File::from(
            std::io::stderr().as_fd().try_clone_to_owned()?,
        ))),
        Target::File(path) => open_file(path).map(Some),
    }
}

/// Check that the workers will be able to open `target`: open it once
/// (creating the file if need be) and close it. Never blocks: a FIFO
/// needs its reader already there.
pub fn check(target: &Target) -> std::io::Result<()> {
    match target {
        Target::File(path) => std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags((rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(path)
            .map(drop),
        Target::Off | Target::Stderr => Ok(()),
    }
}

/// What [`check`] finds, without creating the file (`rrproxy check`): an
/// existing file must open for appending; for a missing one, its
/// directory must let this user create it.
pub fn check_without_creating(target: &Target) -> std::io::Result<()> {
    let Target::File(path) = target else {
        return Ok(());
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rustix::fs::{Access, AtFlags, CWD, accessat};
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            accessat(
                CWD,
                dir,
                Access::WRITE_OK | Access::EXEC_OK,
                AtFlags::EACCESS,
            )?;
            Ok(())
        }
        _ => std::fs::OpenOptions::new()
            .append(true)
            .custom_flags((rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(path)
            .map(drop),
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path)
}

/// What a target is, for log lines.
fn describe(target: &Target) -> String {
    match target {
        Target::Off => "off".into(),
        Target::Stderr => "stderr".into(),
        Target::File(p) => p.display().to_string(),
    }
}

fn start(shared: Arc<Shared>) -> std::io::Result<(SyncSender<Msg>, Receiver<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_RECORDS);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rrproxy-access-log".into())
        .spawn(move || {
            Writer {
                shared,
                sink: None,
                json: false,
                text: String::with_capacity(CHUNK),
                last_warning: None,
            }
            .run(&rx);
            let _ = done_tx.send(());
        })?;
    Ok((tx, done_rx))
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// Where lines go now, and what it is (for log lines).
    sink: Option<(File, String)>,
    json: bool,
    /// Lines formatted and not yet written (whole lines, at most `CHUNK`).
    text: String,
    /// When a failed write was last logged.
    last_warning: Option<Instant>,
}

/// Records written per batch before the pending setting is looked at
/// again; a batch of a quarter of this is "the queue was filling up".
const BATCH: usize = QUEUE_RECORDS;

impl Writer {
    fn run(&mut self, rx: &Receiver<Msg>) {
        // Until every sender is gone and the queue is empty.
        while let Ok(first) = rx.recv() {
            self.apply_pending();
            self.take(first);
            let mut taken = 1;
            while taken < BATCH {
                match rx.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
                taken += 1;
            }
            self.flush();
            if taken < BATCH / 4 {
                std::thread::sleep(PAUSE);
            }
        }
        self.apply_pending();
        self.flush();
    }

    /// Switch to a new setting if one is waiting; keep the old file if
    /// the new one cannot be opened.
    fn apply_pending(&mut self) {
        let Some((target, json)) = self.shared.pending.lock().ok().and_then(|mut p| p.take())
        else {
            return;
        };
        self.flush();
        let what = describe(&target);
        match open(&target) {
            Ok(Some(file)) => {
                info!(slot = self.shared.slot, access_log = %what, "access log (re)opened");
                self.sink = Some((file, what));
                self.json = json;
            }
            Ok(None) => self.sink = None,
            Err(err) => {
                let keeping = self.sink.as_ref().map_or(
                    "lines are dropped until it can be opened".to_string(),
                    |(_, w)| format!("still writing to {w}"),
                );
                warn!(
                    slot = self.shared.slot,
                    access_log = %what,
                    cause = %err,
                    "cannot open the access log; {keeping}"
                );
            }
        }
    }

    fn take(&mut self, msg: Msg) {
        let Msg::Record(r) = msg else { return };
        if self.sink.is_none() {
            self.shared.dropped(1);
            return;
        }
        let before = self.text.len();
        format::line(&mut self.text, &r, self.shared.slot, self.json);
        if self.text.len() > CHUNK && before > 0 {
            // Write what was there; this line starts the next chunk.
            let line = self.text.split_off(before);
            self.flush();
            self.text = line;
        }
    }

    /// Write the lines held; count them as dropped if that fails.
    fn flush(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let lines = self.text.matches('\n').count() as u64;
        let result = match &mut self.sink {
            Some((file, _)) => file.write_all(self.text.as_bytes()),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        self.text.clear();
        if let Err(err) = result {
            self.shared.dropped(lines);
            if self
                .last_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                self.last_warning = Some(Instant::now());
                let what = self.sink.as_ref().map_or("", |(_, w)| w.as_str());
                warn!(
                    slot = self.shared.slot,
                    access_log = %what,
                    cause = %err,
                    lines,
                    "cannot write the access log; lines dropped"
                );
            }
        }
    }
}

/// Bytes one connection moved, each way: counted by the worker's pump as
/// they move, read here when the entry drops. (Defined here, below the
/// worker, so the log needs nothing from it.)
#[derive(Debug, Default)]
pub struct ConnBytes {
    /// From the client to the backend.
    pub up: Cell<u64>,
    /// From the backend to the client.
    pub down: Cell<u64>,
}

/// One connection's access log entry, filled in as the connection goes;
/// its record is queued when it drops, however the connection ended (a
/// connection still open when the worker stops is `WorkerStopped`).
pub struct Entry<'a> {
    log: &'a AccessLog,
    bytes: &'a ConnBytes,
    started: tokio::time::Instant,
    conn: u64,
    client: SocketAddr,
    pub backend: Option<SocketAddr>,
    pub end: Option<End>,
    /// The connection went back to the front (no line: it goes on).
    given_back: bool,
}

impl<'a> Entry<'a> {
    /// The connection was given back to the front, which hands it to
    /// another worker: this one writes no line for it.
    pub fn given_back(&mut self) {
        self.given_back = true;
    }

    pub fn new(
        log: &'a AccessLog,
        bytes: &'a ConnBytes,
        started: tokio::time::Instant,
        conn: u64,
        client: SocketAddr,
    ) -> Entry<'a> {
        Entry {
            log,
            bytes,
            started,
            conn,
            client,
            backend: None,
            end: None,
            given_back: false,
        }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if !self.log.is_on() || self.given_back {
            return;
        }
        self.log.push(Record {
            time: SystemTime::now(),
            conn: self.conn,
            client: self.client,
            backend: self.backend,
            bytes_up: self.bytes.up.get(),
            bytes_down: self.bytes.down.get(),
            duration: self.started.elapsed(),
            end: self.end.unwrap_or(End::WorkerStopped),
        });
    }
}

#[cfg(test)]
mod tests;
