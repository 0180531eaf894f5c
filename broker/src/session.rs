//! [`Session`]: one connection's protocol state, which only its own task
//! touches — reply dialect, authentication, subscriptions, the request
//! parser, the buffer its replies are made in, and the subscribers its
//! publishes queued messages for.
//!
//! Output: a batch of requests runs between [`Session::begin`] and
//! [`Session::commit`]; its replies build up in `out`, and the commit hands
//! them to the client's [`crate::outbox::Outbox`] in their place among the
//! pushes and writes what the socket takes, then writes the messages the
//! batch published to other subscribers' sockets.
//!
//! The commands work on a `Session` and nothing else, so this module knows
//! nothing of sockets or of the command table: the socket loop is
//! [`crate::connection`], running a batch of requests is
//! [`crate::requests`]. That keeps it testable without a socket (see
//! `requests::tests`).

use crate::blocking::Blocked;
use crate::codec::{Proto, Reply, RequestParser};
use crate::commands::Multi;
use crate::handle::{ClientHandle, Fanout};
use crate::registry::Space;
use crate::state::Broker;
use ahash::AHashSet;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Stop running and reading requests while this many bytes wait for the
/// client: a client that pipelines without reading gets TCP backpressure,
/// and holds at most this plus one reply.
pub const OUT_READ_PAUSE: usize = 1024 * 1024;

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
    pub(crate) parser: RequestParser,
    /// Running total of bytes moved from the outbox into `out`; they are
    /// already counted in the handle's output bytes, so a batch subtracts
    /// them from what it adds.
    pub(crate) drained: usize,
    /// Subscribers this connection's publishes queued messages for, written
    /// when its batch ends.
    pub(crate) fanout: Fanout,
    /// Bytes are owed that the socket would not take: the connection task
    /// waits for it to have room.
    pub(crate) writing: bool,
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
    pub fn new(broker: Arc<Broker>, handle: Arc<ClientHandle>) -> Session {
        let authenticated = broker.config.requirepass.is_none();
        let limits = broker.limits;
        let reply_cap = reply_cap(&broker.config);
        let mut parser = RequestParser::new(limits);
        parser.set_unauthenticated(!authenticated, limits);
        Session {
            broker,
            handle,
            // Borrowed per batch ([`crate::buffers`]): idle, it holds nothing.
            out: BytesMut::new(),
            reply_cap,
            reply_over: false,
            proto: Proto::Resp2,
            authenticated,
            subs: Subscriptions::default(),
            close_after_reply: false,
            last_cmd: "NULL",
            stats: BatchStats::default(),
            auth_failures: 0,
            parser,
            drained: 0,
            fanout: Fanout::default(),
            writing: false,
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

    /// Moves the pushes queued since the batch began into the output
    /// buffer, so that a reply written next comes after them, as in
    /// Redis's single stream. Their bytes are already counted as owed.
    pub fn drain_pushes(&mut self) {
        let moved = self.handle.take_held(&mut self.out);
        self.drained = self.drained.wrapping_add(moved);
    }

    /// A batch of requests starts: pushes arriving now wait behind its
    /// replies (see [`crate::outbox::Outbox`]).
    pub fn begin(&mut self) {
        crate::buffers::take(&mut self.out);
        self.handle.begin();
    }

    /// The batch ends: its replies join the client's outbox and go out
    /// as far as the socket takes them, then the messages it published go
    /// out to their subscribers. `Err` when the client's socket failed.
    ///
    /// While the connection is held back ([`Session::hold`]) the replies
    /// stay here, ahead of any push, until the connection task commits
    /// again when the hold is over.
    pub fn commit(&mut self) -> std::io::Result<()> {
        // Others' messages first, as Redis's event loop writes them before
        // the publisher's replies: the publisher's next requests then find
        // the fan-out done, instead of queuing behind it.
        let net_output = &self.broker.metrics.net_output_bytes;
        self.fanout.flush(net_output);
        if self.hold_until.is_none() {
            let (own, left) = self.handle.commit(&mut self.out)?;
            net_output.inc_by(own as u64);
            self.writing = left;
            // Written or queued: the buffer goes back until the next batch.
            crate::buffers::give(&mut self.out);
        }
        Ok(())
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

    /// Writes what the socket takes now of what is owed, without waiting
    /// (after the socket said it has room). Clears `writing` once nothing
    /// is left.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let (written, left) = self.handle.flush()?;
        self.writing = left;
        self.broker.metrics.net_output_bytes.inc_by(written as u64);
        Ok(())
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
