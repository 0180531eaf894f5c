//! One connected client: its shared handle and its connection task.
//!
//! [`ClientHandle`] is the part other tasks see: publishers queue messages
//! into it, `CLIENT LIST` reads it, `CLIENT KILL` flags it. [`Session`] is the
//! part only the connection task touches: the parser, the output buffer,
//! the subscriptions and the protocol state.
//!
//! Output limits (Redis's `client-output-buffer-limit pubsub`): `obuf`
//! counts every byte owed to the client and not yet written to its socket,
//! queued pushes and replies alike. A publisher that finds a subscriber
//! past the hard limit, or past the soft limit for longer than allowed,
//! flags it for disconnection instead of queuing more; the publisher never
//! waits. The connection task wakes on the flag, drops the queue and closes
//! the socket, so a subscriber that never reads costs at most its limit.

use crate::codec::{Proto, Reply, RequestParser};
use crate::commands;
use crate::server::Broker;
use ahash::AHashSet;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

/// Pushed messages are moved from the queue into the output buffer only
/// while it holds less than this, so a slow reader's backlog stays in the
/// queue where publishers can see it.
const OUT_PULL_LIMIT: usize = 64 * 1024;
/// Stop running and reading requests while this many reply bytes wait for
/// the client: a client that pipelines without reading gets TCP
/// backpressure, and holds at most this plus one reply.
const OUT_READ_PAUSE: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// How long one connection may run commands before it lets the other tasks
/// on its worker thread go: a pipeline of expensive commands (publishes
/// matched against many patterns) is served in slices, not in one go.
const PROCESS_SLICE: Duration = Duration::from_millis(1);

/// When a subscriber must be cut off; shared by every publisher.
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
    pub fn proto(&self) -> Proto {
        if self.resp3.load(Relaxed) {
            Proto::Resp3
        } else {
            Proto::Resp2
        }
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

/// Subscriptions held by one client.
#[derive(Debug, Default)]
pub struct Subscriptions {
    pub channels: AHashSet<Bytes>,
    pub patterns: AHashSet<Bytes>,
    pub shards: AHashSet<Bytes>,
}

#[derive(Debug, Default)]
pub struct BatchStats {
    pub published: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
}

/// The connection task's private state.
pub struct Session {
    pub broker: Arc<Broker>,
    pub handle: Arc<ClientHandle>,
    pub out: BytesMut,
    pub proto: Proto,
    pub authenticated: bool,
    pub subs: Subscriptions,
    /// Set by QUIT, protocol errors and EOF: flush what is owed, then close.
    pub close_after_reply: bool,
    pub last_cmd: &'static str,
    /// Publish counters gathered during one read batch and added to the
    /// shared metrics once per batch, not once per command.
    pub stats: BatchStats,
    rx: mpsc::UnboundedReceiver<Bytes>,
    parser: RequestParser,
    /// Running total of bytes moved from the queue into `out`; they are
    /// already counted in `obuf`, so `process` subtracts them.
    drained: usize,
    /// `process` stopped before the end of its input (its time slice ran
    /// out): the connection task yields, then carries on without reading.
    paused: bool,
    /// Failed AUTH attempts on this connection.
    pub auth_failures: u32,
    /// Nothing is written, read or run before this (a failed AUTH's hold-back).
    hold_until: Option<tokio::time::Instant>,
}

impl Session {
    pub fn reply(&mut self) -> Reply<'_> {
        Reply {
            buf: &mut self.out,
            proto: self.proto,
        }
    }

    /// Moves every queued push into the output buffer, so that a reply
    /// written next comes after them, as in Redis's single stream.
    pub fn drain_pushes(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.drained = self.drained.wrapping_add(msg.len());
            self.out.extend_from_slice(&msg);
        }
    }

    /// Holds the connection back: the replies so far go out, and the next
    /// command runs, only after `delay`.
    pub fn hold(&mut self, delay: Duration) {
        self.hold_until = Some(tokio::time::Instant::now() + delay);
    }

    pub fn set_proto(&mut self, proto: Proto) {
        self.proto = proto;
        self.handle.resp3.store(proto == Proto::Resp3, Relaxed);
    }

    pub fn set_authenticated(&mut self, yes: bool) {
        self.authenticated = yes;
        let limits = self.broker.limits;
        self.parser.set_unauthenticated(!yes, limits);
    }

    /// Channels plus patterns: the count Redis puts in (P)(UN)SUBSCRIBE replies.
    pub fn subscription_count(&self) -> usize {
        self.subs.channels.len() + self.subs.patterns.len()
    }

    /// Any subscription at all puts a RESP2 client in subscribed mode.
    pub fn in_pubsub_mode(&self) -> bool {
        self.subscription_count() + self.subs.shards.len() > 0
    }

    pub fn sync_sub_counts(&self) {
        self.handle
            .sub_count
            .store(self.subs.channels.len(), Relaxed);
        self.handle
            .psub_count
            .store(self.subs.patterns.len(), Relaxed);
        self.handle
            .ssub_count
            .store(self.subs.shards.len(), Relaxed);
    }

    /// Parses and runs every complete request in `input`. Returns false when
    /// the connection must close at once without another reply.
    fn process(&mut self, input: &mut BytesMut) -> bool {
        let start_len = self.out.len();
        let start_drained = self.drained;
        let mut commands = 0u64;
        let started = Instant::now();
        self.paused = false;
        while !self.close_after_reply {
            if commands > 0 && started.elapsed() >= PROCESS_SLICE {
                self.paused = true;
                break;
            }
            if self.out.len() >= OUT_READ_PAUSE {
                self.paused = true;
                break;
            }
            match self.parser.next(input) {
                Ok(Some(args)) => {
                    commands += 1;
                    if !self.rx.is_empty() {
                        self.drain_pushes();
                    }
                    if !commands::dispatch(self, &args) {
                        return false;
                    }
                    if self.hold_until.is_some() {
                        self.paused = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.broker.metrics.protocol_errors.inc();
                    tracing::debug!(client = self.handle.id, peer = %self.handle.peer, "{e}");
                    self.reply().error(&format!("ERR {e}"));
                    self.close_after_reply = true;
                }
            }
        }
        let queued = input.len() + self.parser.pending_bytes();
        if queued as u64 > self.broker.config.limits.query_buffer_limit.bytes() {
            self.broker.metrics.query_buffer_disconnects.inc();
            tracing::warn!(client = self.handle.id, peer = %self.handle.peer, bytes = queued, "closing client that reached the query buffer limit");
            return false;
        }
        if commands > 0 {
            let m = &self.broker.metrics;
            m.commands.inc_by(commands);
            let stats = std::mem::take(&mut self.stats);
            if stats.published > 0 {
                m.published.inc_by(stats.published);
                m.delivered.inc_by(stats.delivered);
                m.delivered_bytes.inc_by(stats.delivered_bytes);
            }
            self.handle.info.lock().last_cmd = self.last_cmd;
            self.handle
                .last_active_ms
                .store(self.handle.connected.elapsed().as_millis() as u64, Relaxed);
        }
        let replies = (self.out.len() - start_len) - self.drained.wrapping_sub(start_drained);
        let used = self.handle.obuf.fetch_add(replies as u64, Relaxed) + replies as u64;
        let policy = if self.in_pubsub_mode() {
            &self.broker.output_policy
        } else {
            &self.broker.normal_output_policy
        };
        if let Some(reason) = policy.exceeded(used, &self.handle.soft_since) {
            self.handle.kill(reason);
        }
        true
    }

    /// Pulls queued pushes into `out` up to the pull limit.
    fn pull_pushes(&mut self) {
        while self.out.len() < OUT_PULL_LIMIT {
            match self.rx.try_recv() {
                Ok(msg) => {
                    self.drained = self.drained.wrapping_add(msg.len());
                    self.out.extend_from_slice(&msg);
                }
                Err(_) => break,
            }
        }
    }

    /// Records that `n` bytes of `out` reached the socket.
    fn wrote(&mut self, n: usize) {
        self.out.advance(n);
        self.handle.obuf.fetch_sub(n as u64, Relaxed);
        self.broker.metrics.net_output_bytes.inc_by(n as u64);
    }

    /// Unsubscribes from everything without replying (RESET, disconnect).
    pub fn drop_subscriptions(&mut self) {
        let registry = &self.broker.registry;
        for ch in self.subs.channels.drain() {
            registry.unsubscribe(crate::registry::Space::Global, &ch, self.handle.id);
        }
        for ch in self.subs.shards.drain() {
            registry.unsubscribe(crate::registry::Space::Shard, &ch, self.handle.id);
        }
        for p in self.subs.patterns.drain() {
            registry.punsubscribe(&p, self.handle.id);
        }
        self.sync_sub_counts();
        self.broker.update_channel_gauges();
    }
}

/// Creates the handle and session for a freshly accepted connection.
pub fn new_session(
    broker: Arc<Broker>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    fd: i32,
) -> Session {
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
    let authenticated = broker.config.requirepass.is_none();
    let limits = broker.limits;
    let mut parser = RequestParser::new(limits);
    parser.set_unauthenticated(!authenticated, limits);
    Session {
        broker,
        handle,
        out: BytesMut::with_capacity(READ_CHUNK),
        proto: Proto::Resp2,
        authenticated,
        subs: Subscriptions::default(),
        close_after_reply: false,
        last_cmd: "NULL",
        stats: BatchStats::default(),
        rx,
        parser,
        drained: 0,
        paused: false,
        auth_failures: 0,
        hold_until: None,
    }
}

/// Serves one connection until it closes, is killed, or the broker stops.
pub async fn run(mut s: Session, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let handle = s.handle.clone();
    let timeout = s.broker.config.timeout;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut reading = true;
    // The peer half-closed: close once everything it sent is answered.
    let mut eof = false;
    // Whether the client owes so many replies that nothing of its runs.
    let mut backpressured = false;
    let idle = tokio::time::sleep(Duration::from_secs(timeout.max(1)));
    tokio::pin!(idle);
    let reason = loop {
        if let Some(until) = s.hold_until.take() {
            tokio::select! {
                biased;
                _ = handle.kill.notified() => break "killed",
                _ = shutdown.changed() => break "shutdown",
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        if s.out.len() < OUT_PULL_LIMIT {
            s.pull_pushes();
        }
        if eof && !s.paused {
            s.close_after_reply = true;
        }
        if s.close_after_reply {
            reading = false;
            if s.out.is_empty() {
                break "closed";
            }
        }
        if !s.out.is_empty() {
            match stream.try_write(&s.out) {
                Ok(n) => {
                    s.wrote(n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break "write error",
            }
        }
        // After the write, so replies already made go out before more run.
        if s.paused && s.out.len() < OUT_READ_PAUSE {
            tokio::task::yield_now().await;
            if handle.kill_reason() != KillReason::None {
                break "killed";
            }
            if *shutdown.borrow() {
                break "shutdown";
            }
            if !s.process(&mut input) {
                break "closed";
            }
            continue;
        }
        let full = s.out.len() >= OUT_READ_PAUSE;
        if full && !backpressured {
            s.broker.metrics.output_backpressure.inc();
        }
        backpressured = full;
        let may_read = reading && !s.paused && !full;
        let idle_applies = timeout > 0 && !s.in_pubsub_mode();
        tokio::select! {
            biased;
            _ = handle.kill.notified() => break "killed",
            _ = shutdown.changed() => break "shutdown",
            r = stream.writable(), if !s.out.is_empty() => {
                if r.is_err() {
                    break "write error";
                }
            }
            r = stream.readable(), if may_read => {
                if r.is_err() {
                    break "read error";
                }
                if input.capacity() - input.len() < READ_CHUNK / 4 {
                    input.reserve(READ_CHUNK);
                }
                match stream.try_read_buf(&mut input) {
                    Ok(0) => {
                        // Half-close: answer what was sent, then close.
                        if !s.process(&mut input) {
                            break "closed";
                        }
                        reading = false;
                        eof = true;
                    }
                    Ok(n) => {
                        s.broker.metrics.net_input_bytes.inc_by(n as u64);
                        if timeout > 0 {
                            idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(timeout));
                        }
                        if !s.process(&mut input) {
                            break "closed";
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break "read error",
                }
            }
            msg = s.rx.recv(), if s.out.len() < OUT_PULL_LIMIT => {
                if let Some(msg) = msg {
                    s.drained += msg.len();
                    s.out.extend_from_slice(&msg);
                }
            }
            _ = &mut idle, if idle_applies => break "idle timeout",
        }
    };
    finish(s, reason);
}

fn finish(mut s: Session, reason: &str) {
    let handle = s.handle.clone();
    match handle.kill_reason() {
        KillReason::HardLimit | KillReason::SoftLimit => {
            let which = if handle.kill_reason() == KillReason::HardLimit {
                "hard"
            } else {
                "soft"
            };
            let m = &s.broker.metrics;
            if handle.is_pubsub() {
                m.slow_client_disconnects.with_label_values(&[which]).inc();
                tracing::warn!(
                    client = handle.id,
                    peer = %handle.peer,
                    unsent_bytes = handle.output_bytes(),
                    "disconnecting slow subscriber: output {which} limit exceeded"
                );
            } else {
                m.reply_limit_disconnects.with_label_values(&[which]).inc();
                tracing::warn!(
                    client = handle.id,
                    peer = %handle.peer,
                    unsent_bytes = handle.output_bytes(),
                    "disconnecting client that does not read its replies: output_limit_normal {which} limit exceeded"
                );
            }
        }
        KillReason::Killed => {
            tracing::info!(client = handle.id, peer = %handle.peer, "client killed")
        }
        KillReason::None => {
            tracing::debug!(client = handle.id, peer = %handle.peer, reason, "client disconnected")
        }
    }
    s.drop_subscriptions();
    s.broker.unregister(handle.id);
}
