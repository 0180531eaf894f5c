//! The shared half of a client: what other tasks may see and do to it.
//!
//! [`ClientHandle`] is what the registry holds for every subscriber and
//! what `CLIENT LIST` / `CLIENT KILL` read: publishers queue messages into
//! it, any task may flag it for disconnection. [`OutputPolicy`] says when
//! a client owes too much unsent output; [`KillReason`] why it must go.
//!
//! Output limits (Redis's `client-output-buffer-limit`): `obuf` counts
//! every byte owed to the client and not yet written to its socket, queued
//! pushes and replies alike. A publisher that finds a subscriber past the
//! hard limit, or past the soft limit for longer than allowed, flags it for
//! disconnection instead of queuing more; the publisher never waits. The
//! connection task wakes on the flag, drops the queue and closes the
//! socket, so a subscriber that never reads costs at most its limit.
//!
//! This module imports nothing else from the crate, so that the registry
//! (and everything else) can depend on it without a loop.

use bytes::Bytes;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

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
#[derive(Debug)]
pub struct ClientHandle {
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
    resp3: AtomicBool,
    tx: mpsc::UnboundedSender<Bytes>,
    obuf: AtomicU64,
    soft_since: AtomicU64,
    kill_reason: AtomicU8,
    kill: Notify,
}

impl ClientHandle {
    /// Creates the handle of a freshly accepted connection, and the queue
    /// its connection task reads pushed messages from.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        fd: i32,
    ) -> (Arc<ClientHandle>, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(ClientHandle {
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
            tx,
            obuf: AtomicU64::new(0),
            soft_since: AtomicU64::new(0),
            kill_reason: AtomicU8::new(KillReason::None as u8),
            kill: Notify::new(),
        });
        (handle, rx)
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
    pub fn deliver(&self, msg: &Bytes, policy: &OutputPolicy) {
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
        if self.tx.send(msg.clone()).is_err() {
            // The connection task is gone; nothing will write these bytes.
            self.obuf.fetch_sub(len, Relaxed);
        }
    }

    /// Counts `n` more reply bytes owed to the client, and flags it when that
    /// takes it past `policy` (replies are never refused: the client asked).
    pub fn owe(&self, n: u64, policy: &OutputPolicy) {
        let used = self.obuf.fetch_add(n, Relaxed) + n;
        if let Some(reason) = policy.exceeded(used, &self.soft_since) {
            self.kill(reason);
        }
    }

    /// Records that `n` owed bytes reached the socket.
    pub fn wrote(&self, n: u64) {
        self.obuf.fetch_sub(n, Relaxed);
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
