//! [`Session`]: one connection's protocol state, which only its own task
//! touches — reply dialect, authentication, subscriptions, the request
//! parser, the output buffer and the queue of pushed messages.
//!
//! The commands work on a `Session` and nothing else, so this module knows
//! nothing of sockets or of the command table: the socket loop is
//! [`crate::connection`], running a batch of requests is
//! [`crate::requests`]. That keeps it testable without a socket (see
//! `requests::tests`).

use crate::blocking::Blocked;
use crate::codec::{Proto, Reply, RequestParser};
use crate::commands::Multi;
use crate::handle::ClientHandle;
use crate::registry::Space;
use crate::state::Broker;
use ahash::AHashSet;
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pushed messages are moved from the queue into the output buffer only
/// while it holds less than this, so a slow reader's backlog stays in the
/// queue where publishers can see it.
pub const OUT_PULL_LIMIT: usize = 64 * 1024;
/// Stop running and reading requests while this many reply bytes wait for
/// the client: a client that pipelines without reading gets TCP
/// backpressure, and holds at most this plus one reply.
pub const OUT_READ_PAUSE: usize = 1024 * 1024;
/// Initial size of the input and output buffers, and the read size.
pub const READ_CHUNK: usize = 16 * 1024;

/// Subscriptions held by one client.
#[derive(Debug, Default)]
pub struct Subscriptions {
    pub channels: AHashSet<Bytes>,
    pub patterns: AHashSet<Bytes>,
    pub shards: AHashSet<Bytes>,
}

/// Publish counters gathered during one read batch.
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
    /// Most bytes `out` may hold while a reply is written (see
    /// [`Reply`]); `reply_over` is set when a reply needed more.
    pub reply_cap: usize,
    pub reply_over: bool,
    pub proto: Proto,
    pub authenticated: bool,
    pub subs: Subscriptions,
    /// Set by QUIT, protocol errors and EOF: flush what is owed, then close.
    pub close_after_reply: bool,
    pub last_cmd: &'static str,
    /// Publish counters gathered during one read batch and added to the
    /// shared metrics once per batch, not once per command.
    pub stats: BatchStats,
    /// Failed AUTH attempts on this connection.
    pub auth_failures: u32,
    pub(crate) rx: mpsc::UnboundedReceiver<Bytes>,
    pub(crate) parser: RequestParser,
    /// Running total of bytes moved from the queue into `out`; they are
    /// already counted in the handle's output bytes, so a batch subtracts
    /// them from what it adds.
    pub(crate) drained: usize,
    /// A batch stopped before the end of its input (its time slice ran
    /// out): the connection task yields, then carries on without reading.
    pub(crate) paused: bool,
    /// Nothing is written, read or run before this (a failed AUTH's hold-back).
    pub(crate) hold_until: Option<tokio::time::Instant>,
    /// Set by an XREAD BLOCK that found nothing: the connection waits in
    /// [`crate::blocking::wait`] and runs nothing else until it is let go.
    pub(crate) blocked: Option<Blocked>,
    /// The transaction being queued, between MULTI and EXEC/DISCARD.
    pub(crate) multi: Option<Multi>,
    /// Raised when a WATCHed key changes (see [`crate::commands`]' multi).
    pub(crate) watch_flag: Arc<AtomicBool>,
    pub(crate) watched: Vec<Bytes>,
    /// EXEC is running the queued commands (XREAD BLOCK must not block).
    pub(crate) in_exec: bool,
    /// CLIENT REPLY OFF: replies are dropped until CLIENT REPLY ON.
    pub(crate) reply_off: bool,
    /// CLIENT REPLY SKIP: the next command's reply is dropped.
    pub(crate) skip_next: bool,
    /// The command being run is the one a SKIP covers.
    pub(crate) skip_this: bool,
    /// Per-command and per-error counts of this batch, merged into the
    /// broker's once per batch (INFO commandstats / errorstats).
    pub(crate) cmd_stats: crate::stats::BatchCommandStats,
    /// Set by dispatch: the command it resolved, and whether it refused it.
    pub(crate) dispatched: Option<&'static str>,
    pub(crate) rejected: bool,
}

/// The most a connection's output buffer may hold while replies are
/// written: the larger output hard limit (a client past it is closed
/// anyway), or 1 GiB when both are off.
fn reply_cap(config: &limpet_config::BrokerConfig) -> usize {
    let hard = config
        .output_limit_normal
        .hard
        .bytes()
        .max(config.output_limit.hard.bytes());
    let cap = if hard == 0 { 1 << 30 } else { hard };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

impl Session {
    /// The session of a freshly admitted client (see [`Broker::admit`]).
    pub fn new(
        broker: Arc<Broker>,
        handle: Arc<ClientHandle>,
        rx: mpsc::UnboundedReceiver<Bytes>,
    ) -> Session {
        let authenticated = broker.config.requirepass.is_none();
        let limits = broker.limits;
        let reply_cap = reply_cap(&broker.config);
        let mut parser = RequestParser::new(limits);
        parser.set_unauthenticated(!authenticated, limits);
        Session {
            broker,
            handle,
            out: BytesMut::with_capacity(READ_CHUNK),
            reply_cap,
            reply_over: false,
            proto: Proto::Resp2,
            authenticated,
            subs: Subscriptions::default(),
            close_after_reply: false,
            last_cmd: "NULL",
            stats: BatchStats::default(),
            auth_failures: 0,
            rx,
            parser,
            drained: 0,
            paused: false,
            hold_until: None,
            blocked: None,
            multi: None,
            watch_flag: Arc::new(AtomicBool::new(false)),
            watched: Vec::new(),
            in_exec: false,
            reply_off: false,
            skip_next: false,
            skip_this: false,
            cmd_stats: Default::default(),
            dispatched: None,
            rejected: false,
        }
    }

    pub fn reply(&mut self) -> Reply<'_> {
        Reply {
            buf: &mut self.out,
            proto: self.proto,
            cap: self.reply_cap,
            over: &mut self.reply_over,
        }
    }

    /// Moves queued pushes into the output buffer while it holds less than
    /// `limit` bytes. The only way pushes reach `out`, so their bytes are
    /// counted once.
    pub fn move_pushes(&mut self, limit: usize) {
        while self.out.len() < limit {
            match self.rx.try_recv() {
                Ok(msg) => self.append_push(&msg),
                Err(_) => break,
            }
        }
    }

    /// Appends one push already taken off the queue.
    pub fn append_push(&mut self, msg: &Bytes) {
        self.drained = self.drained.wrapping_add(msg.len());
        self.out.extend_from_slice(msg);
    }

    /// Moves every queued push into the output buffer, so that a reply
    /// written next comes after them, as in Redis's single stream.
    pub fn drain_pushes(&mut self) {
        self.move_pushes(usize::MAX);
    }

    /// Whether EXEC is running this client's queued commands.
    pub fn in_exec(&self) -> bool {
        self.in_exec
    }

    /// Parks the client in a blocking XREAD (see [`crate::blocking`]).
    pub fn block(&mut self, mut b: Blocked) {
        self.broker.metrics.blocked_clients.inc();
        // Under CLIENT REPLY OFF or SKIP, the late reply is dropped too.
        b.silent = self.reply_off || self.skip_this;
        self.blocked = Some(b);
    }

    /// Holds the connection back: the replies so far go out, and the next
    /// command runs, only after `delay`.
    pub fn hold(&mut self, delay: Duration) {
        self.hold_until = Some(tokio::time::Instant::now() + delay);
    }

    pub fn set_proto(&mut self, proto: Proto) {
        self.proto = proto;
        self.handle.set_resp3(proto == Proto::Resp3);
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

    /// Records that `n` bytes of `out` reached the socket.
    pub fn wrote(&mut self, n: usize) {
        self.out.advance(n);
        self.handle.wrote(n as u64);
        self.broker.metrics.net_output_bytes.inc_by(n as u64);
    }

    /// Writes what the socket takes now of the pending output, without
    /// waiting: `Ok(true)` if some went out, `Ok(false)` if nothing is
    /// pending or the socket is full.
    pub fn try_flush(&mut self, stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
        if self.out.is_empty() {
            return Ok(false);
        }
        match stream.try_write(&self.out) {
            Ok(n) => {
                self.wrote(n);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unsubscribes from everything without replying (RESET, disconnect).
    pub fn drop_subscriptions(&mut self) {
        let registry = &self.broker.registry;
        for ch in self.subs.channels.drain() {
            registry.unsubscribe(Space::Global, &ch, self.handle.id);
        }
        for ch in self.subs.shards.drain() {
            registry.unsubscribe(Space::Shard, &ch, self.handle.id);
        }
        for p in self.subs.patterns.drain() {
            registry.punsubscribe(&p, self.handle.id);
        }
        self.sync_sub_counts();
        self.broker.update_channel_gauges();
    }
}
