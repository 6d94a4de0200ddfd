//! Starting a worker process and noticing its end.
//!
//! A worker is the rrproxy binary re-executed with the hidden `worker` role
//! and its end of a fresh channel as the only inherited descriptor. Its
//! exit is observed through `waitpid` (tokio's child handling); its events
//! through the channel.

use std::io;
use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::rc::{Rc, Weak};
use std::time::Instant;

use hashbrown::HashMap;
use tracing::{info, warn};

use super::{Role, WorkerProc};
use crate::channel::fdpass::{self, Channel, Received};
use crate::channel::{Down, MAX_FRAME, Up};
use crate::cli::LogFormat;
use crate::front::{Conn, Front};
use crate::sys;

/// Spawn `exe worker --slot N --channel-fd FD` with `worker_end` inherited.
pub fn spawn_worker(
    exe: &std::path::Path,
    slot: usize,
    worker_end: &impl AsFd,
    log: &crate::cli::LogArgs,
    cpu: Option<usize>,
) -> io::Result<tokio::process::Child> {
    let fd = sys::raw(&worker_end.as_fd());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker")
        .arg("--slot")
        .arg(slot.to_string())
        .arg("--channel-fd")
        .arg(fd.to_string())
        .arg("--log-format")
        .arg(match log.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
        .stdin(Stdio::null())
        // Meant for the front only: a worker must not talk to systemd or
        // mistake the front's activated sockets for its own.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    if let Some(cpu) = cpu {
        cmd.arg("--cpu").arg(cpu.to_string());
    }
    for _ in 0..log.verbose {
        cmd.arg("-v");
    }
    for _ in 0..log.quiet {
        cmd.arg("-q");
    }
    sys::inherit_fd(&mut cmd, fd);
    tokio::process::Command::from(cmd).spawn()
}

impl Front {
    /// Start a new worker process in `slot`. It takes connections once it
    /// reports ready.
    pub fn start_worker(&mut self, slot: usize) -> io::Result<u64> {
        let (front_end, worker_end) = fdpass::pair()?;
        let cpu = self.worker_cpus.as_ref().and_then(|c| c.get(slot).copied());
        let child = spawn_worker(&self.exe, slot, &worker_end, &self.log, cpu)?;
        let pid = child.id().unwrap_or(0);
        let channel = Rc::new(Channel::new(front_end)?);
        let id = self.next_proc;
        self.next_proc += 1;
        let mut proc = WorkerProc {
            id,
            pid,
            role: Role::Starting,
            channel: channel.clone(),
            worker_end,
            full: false,
            watched: false,
            outbox: Default::default(),
            batch: Vec::new(),
            batch_fds: Vec::new(),
            active: 0,
            unread: 0,
            per_backend: HashMap::new(),
            ips: HashMap::new(),
            handed: 0,
            spawned: Instant::now(),
        };
        proc.queue_control(self.config_frame());
        self.slots[slot].procs.push(proc);
        // The reactor may not know the new channel is writable yet.
        self.arm_watchers();
        tokio::task::spawn_local(read_events(self.me.clone(), slot, id, channel));
        tokio::task::spawn_local(wait_exit(self.me.clone(), slot, id, child));
        tracing::debug!(slot, pid, "worker spawned");
        Ok(id)
    }

    /// A worker process ended: account for it, recover what it had not
    /// started, and decide what the slot does next.
    pub fn worker_exited(&mut self, slot: usize, id: u64, status: io::Result<ExitStatus>) {
        // Apply whatever it reported before dying.
        self.drain_events(slot, id);
        let Some(pos) = self.slots[slot].procs.iter().position(|p| p.id == id) else {
            return;
        };
        let mut proc = self.slots[slot].procs.remove(pos);
        let recovered = self.recover_queued(&mut proc);
        let lost = proc.active;
        for (&backend, &n) in &proc.per_backend {
            self.backends.sub_active_id(backend, n);
        }
        for (&ip, &n) in &proc.ips {
            self.release_ip_n(ip, n);
        }
        let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        let expected = proc.role == Role::Retiring || self.shutting_down;
        if expected {
            info!(slot, pid = proc.pid, %status, "worker exited");
        } else {
            warn!(
                slot,
                pid = proc.pid,
                %status,
                lost_connections = lost,
                recovered_connections = recovered.len(),
                "worker died"
            );
        }
        if !recovered.is_empty() {
            self.fm.redispatched.increment(recovered.len() as u64);
            for conn in recovered.into_iter().rev() {
                self.pending.push_front(conn);
            }
        }
        if self.slots[slot].serving().is_none() {
            self.slots[slot].metrics.up.set(0.0);
        }
        if !expected {
            self.worker_crashed(slot, proc.role);
        }
        if self.backends.reap_drained() {
            self.backends_changed();
        }
        let cap = self.per_proc_cap;
        self.refresh_view(slot, cap);
        self.retry_pending();
        self.update_paused();
        self.changed.notify_waiters();
    }

    /// Apply events still queued on a worker's channel (synchronously).
    fn drain_events(&mut self, slot: usize, id: u64) {
        let Some(channel) = self.slots[slot].proc_mut(id).map(|p| p.channel.clone()) else {
            return;
        };
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        // Bounded: a dead worker cannot add frames.
        for _ in 0..100_000 {
            match channel.try_recv(&mut buf, &mut fds) {
                Ok(Received::Frame(n)) => {
                    fds.clear();
                    if let Ok(up) = Up::decode(&buf[..n]) {
                        self.on_up(slot, id, up);
                    }
                }
                _ => break,
            }
        }
    }

    /// Take back handoffs a dead worker never read, with their descriptors.
    fn recover_queued(&mut self, proc: &mut WorkerProc) -> Vec<Conn> {
        let mut conns = Vec::new();
        // Anything batched but never sent.
        let batch = std::mem::take(&mut proc.batch);
        let fds = std::mem::take(&mut proc.batch_fds);
        for (h, fd) in batch.iter().zip(fds) {
            proc.unassign(h.backend, 1);
            proc.ip_sub(h.client.ip(), 1);
            self.backends.sub_active_id(h.backend, 1);
            conns.push(Conn {
                stream: fd.into(),
                peer: h.client,
            });
        }
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        for _ in 0..100_000 {
            fds.clear();
            match fdpass::recv_raw(proc.worker_end.as_fd(), &mut buf, &mut fds) {
                Ok(Received::Frame(n)) => {
                    let Ok(Down::Conns(handoffs)) = Down::decode(&buf[..n]) else {
                        continue;
                    };
                    for (h, fd) in handoffs.iter().zip(fds.drain(..)) {
                        proc.unassign(h.backend, 1);
                        proc.ip_sub(h.client.ip(), 1);
                        self.backends.sub_active_id(h.backend, 1);
                        conns.push(Conn {
                            stream: std::net::TcpStream::from(fd),
                            peer: h.client,
                        });
                    }
                }
                Ok(Received::Closed) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    warn!(cause = %err, "could not recover every queued connection");
                    break;
                }
            }
        }
        conns
    }
}

/// Read a worker's reports until its channel closes.
async fn read_events(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    channel: Rc<Channel>,
) {
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let mut bad_frames = 0u64;
    loop {
        let received = channel.recv(&mut buf, &mut fds).await;
        fds.clear(); // workers send no descriptors; drop any
        let n = match received {
            Ok(Received::Frame(n)) => n,
            Ok(Received::Closed) | Err(_) => return,
        };
        let Some(front) = front.upgrade() else { return };
        match Up::decode(&buf[..n]) {
            Ok(up) => {
                let mut f = front.borrow_mut();
                f.on_up(slot, id, up);
                // Capacity may have freed up: hand out what waits.
                if !f.pending.is_empty() {
                    f.retry_pending();
                }
            }
            Err(err) => {
                bad_frames += 1;
                if bad_frames.is_power_of_two() {
                    warn!(slot, cause = %err, count = bad_frames, "ignoring malformed frame from worker");
                }
            }
        }
    }
}

async fn wait_exit(
    front: Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    mut child: tokio::process::Child,
) {
    let status = child.wait().await;
    if let Some(front) = front.upgrade() {
        front.borrow_mut().worker_exited(slot, id, status);
    }
}
