//! The shared half of a client: what other tasks may see and do to it.
//!
//! [`ClientHandle`] is what the registry holds for every subscriber and
//! what `CLIENT LIST` / `CLIENT KILL` read: publishers queue messages into
//! its [`Outbox`] and write them to its socket, any task may flag it for
//! disconnection. [`OutputPolicy`] says when a client owes too much unsent
//! output; [`KillReason`] why it must go.
//!
//! Delivery: a publisher queues each message and notes the subscriber in
//! its [`Fanout`]; at the end of its batch of requests it writes each noted
//! subscriber's queue to that subscriber's socket with one `writev`. Only
//! when the socket does not take it all is the subscriber's own task woken
//! (once) to wait for room, so a message costs no task wake-up and many
//! messages to one subscriber cost one system call, as in Redis's event
//! loop.
//!
//! Output limits (Redis's `client-output-buffer-limit`): `obuf` counts
//! every byte owed to the client and not yet written to its socket, queued
//! pushes and replies alike. A publisher that finds a subscriber past the
//! hard limit, or past the soft limit for longer than allowed, flags it for
//! disconnection instead of queuing more; the publisher never waits. The
//! connection task wakes on the flag, drops the queue and closes the
//! socket, so a subscriber that never reads costs at most its limit.
//!
//! This module imports nothing else from the crate but [`crate::outbox`],
//! so that the registry (and everything else) can depend on it without a
//! loop.

use crate::outbox::Outbox;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct OutputPolicy {
    pub hard: u64,
    pub soft: u64,
    pub soft_for: Duration,
    pub clock: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    None = 0,
    HardLimit = 1,
    SoftLimit = 2,
    Killed = 3,
}

impl KillReason {
    fn from_u8(v: u8) -> KillReason {
        match v {
            1 => KillReason::HardLimit,
            2 => KillReason::SoftLimit,
            3 => KillReason::Killed,
            _ => KillReason::None,
        }
    }
}

impl OutputPolicy {
    /// Checks `used` unsent bytes against the limits, starting or clearing
    /// the soft-limit clock kept in `soft_since` (ms since `clock`, 0 = not over).
    fn exceeded(&self, used: u64, soft_since: &AtomicU64) -> Option<KillReason> {
        if self.hard != 0 && used >= self.hard {
            return Some(KillReason::HardLimit);
        }
        if self.soft != 0 && used >= self.soft {
            let now = self.clock.elapsed().as_millis() as u64 + 1;
            match soft_since.compare_exchange(0, now, Relaxed, Relaxed) {
                Ok(_) => None,
                Err(since) if now.saturating_sub(since) > self.soft_for.as_millis() as u64 => {
                    Some(KillReason::SoftLimit)
                }
                Err(_) => None,
            }
        } else {
            if soft_since.load(Relaxed) != 0 {
                soft_since.store(0, Relaxed);
            }
            None
        }
    }
}

/// What `CLIENT LIST` shows that changes rarely.
#[derive(Debug, Default, Clone)]
pub struct ClientInfo {
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub db: i64,
    pub last_cmd: &'static str,
}

/// The shared half of a client.
///
/// `repr(C)`, hot fields first: a delivery reads the kill flag, the
/// dialect and the output counters, then takes the outbox's lock, so they
/// sit together at the start, next to the `Arc`'s reference counts, and
/// what `CLIENT LIST` alone reads comes after.
#[derive(Debug)]
#[repr(C)]
pub struct ClientHandle {
    kill_reason: AtomicU8,
    resp3: AtomicBool,
    obuf: AtomicU64,
    soft_since: AtomicU64,
    out: Mutex<Outbox>,
    /// Tells the connection task to wait for its socket and write what a
    /// publisher could not.
    write_wanted: Notify,
    kill: Notify,
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub fd: i32,
    pub connected: Instant,
    /// Milliseconds since `connected` of the last request.
    pub last_active_ms: AtomicU64,
    pub info: Mutex<ClientInfo>,
    pub sub_count: AtomicUsize,
    pub psub_count: AtomicUsize,
    pub ssub_count: AtomicUsize,
}

impl ClientHandle {
    /// Creates the handle of a freshly accepted connection (its socket is
    /// attached by the connection task, [`ClientHandle::attach`]).
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, fd: i32) -> Arc<ClientHandle> {
        Arc::new(ClientHandle {
            id,
            peer,
            local,
            fd,
            connected: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            info: Mutex::new(ClientInfo {
                last_cmd: "NULL",
                ..ClientInfo::default()
            }),
            sub_count: AtomicUsize::new(0),
            psub_count: AtomicUsize::new(0),
            ssub_count: AtomicUsize::new(0),
            resp3: AtomicBool::new(false),
            out: Mutex::new(Outbox::default()),
            write_wanted: Notify::new(),
            obuf: AtomicU64::new(0),
            soft_since: AtomicU64::new(0),
            kill_reason: AtomicU8::new(KillReason::None as u8),
            kill: Notify::new(),
        })
    }

    /// Gives publishers the socket to write to.
    pub fn attach(&self, sock: Arc<TcpStream>) {
        self.out.lock().attach(sock);
    }

    /// The connection is closing: what is owed is dropped, the socket let
    /// go, and later messages are refused.
    pub fn detach(&self) {
        let dropped = self.out.lock().close();
        self.obuf.fetch_sub(dropped as u64, Relaxed);
    }

    /// Whether pushes to this client are RESP3 (`HELLO 3`) or RESP2 arrays.
    pub fn resp3(&self) -> bool {
        self.resp3.load(Relaxed)
    }

    pub fn set_resp3(&self, on: bool) {
        self.resp3.store(on, Relaxed);
    }

    /// Unsent output in bytes (Redis's `omem`).
    pub fn output_bytes(&self) -> u64 {
        self.obuf.load(Relaxed)
    }

    /// Queues a pushed message unless that would put the client past its
    /// output limit, in which case the client is flagged for disconnection.
    /// `fanout` notes the client, to be written at the end of the
    /// publisher's batch ([`Fanout::flush`]).
    pub fn deliver(self: &Arc<Self>, msg: &Bytes, policy: &OutputPolicy, fanout: &mut Fanout) {
        if self.kill_reason.load(Relaxed) != KillReason::None as u8 {
            return;
        }
        let len = msg.len() as u64;
        let used = self.obuf.fetch_add(len, Relaxed) + len;
        if let Some(reason) = policy.exceeded(used, &self.soft_since) {
            self.obuf.fetch_sub(len, Relaxed);
            self.kill(reason);
            return;
        }
        let mut out = self.out.lock();
        if out.closed {
            // The connection task is gone; nothing will write these bytes.
            self.obuf.fetch_sub(len, Relaxed);
            return;
        }
        out.push(msg.clone());
        if !out.scheduled {
            out.scheduled = true;
            fanout.pending.push(self.clone());
        }
    }

    /// The publisher's side of [`Fanout::flush`] for this client.
    fn flush_for_publisher(&self) -> usize {
        let (written, wake) = self.out.lock().flush_publisher();
        self.obuf.fetch_sub(written as u64, Relaxed);
        if wake {
            self.write_wanted.notify_one();
        }
        written
    }

    /// The client's task starts running requests (see [`Outbox::begin`]).
    pub fn begin(&self) {
        self.out.lock().begin();
    }

    /// Moves what was pushed since [`ClientHandle::begin`] into `out`;
    /// returns the bytes moved (already counted as owed).
    pub fn take_held(&self, out: &mut BytesMut) -> usize {
        self.out.lock().take_held(out)
    }

    /// Ends the client's batch (see [`Outbox::commit`]). Returns the bytes
    /// written and whether some are left for the task to write when the
    /// socket has room.
    pub fn commit(&self, out: &mut BytesMut) -> io::Result<(usize, bool)> {
        let mut o = self.out.lock();
        let written = o.commit(out)?;
        self.obuf.fetch_sub(written as u64, Relaxed);
        Ok((written, o.writer))
    }

    /// The client's task writes what is owed once the socket has room.
    /// Returns the bytes written and whether some are still left.
    pub fn flush(&self) -> io::Result<(usize, bool)> {
        let mut o = self.out.lock();
        let written = o.flush_owner()?;
        self.obuf.fetch_sub(written as u64, Relaxed);
        Ok((written, o.writer))
    }

    /// Resolves when a publisher left bytes for the client's task to write.
    pub async fn write_wanted(&self) {
        self.write_wanted.notified().await;
    }

    /// Bytes queued and not yet written (`output_bytes` less the replies
    /// of a batch still running).
    pub fn unsent_bytes(&self) -> usize {
        self.out.lock().bytes
    }

    /// Everything queued, as if written (tests without a socket).
    #[cfg(test)]
    pub(crate) fn take_unsent(&self) -> Vec<u8> {
        let all = self.out.lock().take_all();
        self.obuf.fetch_sub(all.len() as u64, Relaxed);
        all
    }

    /// Counts `n` more reply bytes owed to the client, and flags it when that
    /// takes it past `policy` (replies are never refused: the client asked).
    pub fn owe(&self, n: u64, policy: &OutputPolicy) {
        let used = self.obuf.fetch_add(n, Relaxed) + n;
        if let Some(reason) = policy.exceeded(used, &self.soft_since) {
            self.kill(reason);
        }
    }

    /// Resolves once the client is flagged (or already was).
    pub async fn killed(&self) {
        self.kill.notified().await;
    }

    /// Asks the connection task to close (first reason wins).
    pub fn kill(&self, reason: KillReason) {
        if self
            .kill_reason
            .compare_exchange(KillReason::None as u8, reason as u8, Relaxed, Relaxed)
            .is_ok()
        {
            self.kill.notify_one();
        }
    }

    pub fn kill_reason(&self) -> KillReason {
        KillReason::from_u8(self.kill_reason.load(Relaxed))
    }

    pub fn is_pubsub(&self) -> bool {
        self.sub_count.load(Relaxed) + self.psub_count.load(Relaxed) + self.ssub_count.load(Relaxed)
            > 0
    }
}

/// The subscribers a publisher queued messages for during one batch of
/// requests, to be written at its end: one system call per subscriber per
/// batch, however many messages it got.
#[derive(Default)]
pub struct Fanout {
    pending: Vec<Arc<ClientHandle>>,
}

fn write_all(clients: impl Iterator<Item = Arc<ClientHandle>>) -> u64 {
    clients
        .map(|client| client.flush_for_publisher() as u64)
        .sum()
}

impl Fanout {
    /// Writes every noted subscriber's queue to its socket, as far as the
    /// socket takes it now, and counts the bytes in `written`. (Handing
    /// half of a wide fan-out to a helper task on the other worker thread
    /// was measured: fewer deliveries per second and a worse p99.)
    pub fn flush(&mut self, written: &prometheus::IntCounter) {
        written.inc_by(write_all(self.pending.drain(..)));
    }
}

impl Drop for Fanout {
    /// A batch that ends without its flush (a connection closing at once)
    /// still writes what it queued: nothing else would.
    fn drop(&mut self) {
        write_all(self.pending.drain(..));
    }
}
