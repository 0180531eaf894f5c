//! The backplane over a broker: one Redis-protocol connection set per node,
//! to limpet-broker, a Redis server, or a Redis Cluster (sharded pub/sub).
//!
//! A single task owns the connections. Callers queue commands without
//! waiting: subscribe, unsubscribe, publish. Commands run in the order they
//! were queued (a join's subscribe completes before the join is announced),
//! and consecutive publishes go out as one pipeline. When the broker goes
//! away the task reconnects with exponential backoff and resubscribes
//! every channel; publishes queued meanwhile are dropped and counted, and
//! the node is told (`Inbound::Reconnected`) so it can resynchronise.
//! A SUBSCRIBE the broker refuses with an error reply (e.g. a per-client
//! channel cap) is counted and logged and the link kept: that room stays
//! local to this node. Local delivery never waits for any of this. The
//! connections themselves are in [`crate::link`].
//!
//! A broker behind a silent black hole (no RST) is noticed by time: every
//! command, SUBSCRIBE included, has `broker_response_timeout` (5 s) to be
//! answered, and the heartbeat publishes every `heartbeat.node_interval`,
//! so the link is declared lost within about 5 s plus one interval.
//!
//! Reconnect attempts start 100 ms apart, doubling up to
//! `broker_backoff_max` (1 s), counted from the start of the failed
//! attempt, and each is bounded by `broker_connect_timeout` (2 s). A broker
//! that refuses (restarting) is tried again every second at most; one
//! behind a black hole is tried again as soon as an attempt times out, so
//! a SYN goes out at least every second (the attempt's own retransmit
//! after 1 s, then the next attempt) and the node is back about a second
//! after the broker is reachable again. A longer back-off would add its
//! whole length to every outage: with 5 s, a broker back after a restart
//! waited up to 5 s more for the nodes.
//!
//! On a Redis Cluster one member may be cut off while the others answer:
//! its failures cost only the rooms on its slots, and the link is lost
//! only when no member answers (see [`crate::shards`]).
//!
//! Outgoing envelopes are sealed and incoming ones checked here (see
//! [`crate::seal::Seal`]), so a forged envelope is dropped before it
//! takes a place in the inbound queue. That queue is bounded in bytes
//! (`limits.inbound_queue_bytes`): a broker (or a publisher on it) that
//! sends faster than the node handles gets its excess dropped and counted,
//! instead of growing the node without limit. The broker connection is
//! read by its own task, so those messages are counted against the budget
//! as soon as they arrive, even while a publish is waiting for the broker
//! (the Redis client would otherwise buffer them without limit).
//!
//! Publishes wait in a queue bounded in bytes too
//! (`limits.publish_queue_bytes`), and room and direct messages that wait
//! longer than `limits.max_queue_delay` are dropped instead of sent late;
//! see [`crate::shed`].

use crate::backoff::Backoff;
use crate::backplane::{Backplane, Inbound};
pub use crate::link::Deadlines;
use crate::link::{open, refused, refused_by_server, Incoming, LinkError, Pushed};
use crate::metrics::Counters;
use crate::seal::Seal;
use crate::shards::{Done, Shards};
use crate::shed::{self, ByteBudget, MaxAge};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

enum Cmd {
    Subscribe(String),
    Unsubscribe(String),
    Publish(Publish),
    /// Answered once every command queued before it has run.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A sealed envelope waiting to go to the broker.
pub(crate) struct Publish {
    pub(crate) channel: String,
    pub(crate) payload: Bytes,
    since: Instant,
    /// A room or direct message: shed first, and when it is too old.
    volatile: bool,
}

#[cfg(test)]
impl Publish {
    pub(crate) fn new(channel: String, payload: Bytes) -> Publish {
        Publish {
            channel,
            payload,
            since: Instant::now(),
            volatile: true,
        }
    }
}

/// How the backplane connects and what it accepts.
pub struct Settings {
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The longest one connection attempt may take (`broker_connect_timeout`)
    /// and one command (`broker_response_timeout`).
    pub deadlines: Deadlines,
    /// The longest wait between the starts of two reconnect attempts
    /// (`broker_backoff_max`).
    pub backoff_max: Duration,
    /// `broker_link_thread`: the link on a thread of its own.
    pub link_thread: bool,
    pub seal: Seal,
    pub inbound_queue_bytes: usize,
    pub publish_queue_bytes: usize,
    pub max_age: MaxAge,
}

/// What the connection task shares with the handles.
struct Shared {
    connected: AtomicBool,
    /// When the current broker connection came up.
    since: parking_lot::Mutex<Option<std::time::Instant>>,
    seal: Seal,
    /// Messages from the broker not yet handled by the node.
    budget: ByteBudget,
    /// Publishes not yet handed to the broker.
    outbox: ByteBudget,
    max_age: MaxAge,
    counters: Arc<Counters>,
}

/// The backplane over a Redis-protocol broker: a handle on the task that
/// owns the connections.
#[derive(Clone)]
pub struct Broker {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    /// The runtime that reads the broker connection, where the node
    /// handles what arrives (see [`Broker::link_runtime`]); `None` if no
    /// runtime could be named (the link thread did not start).
    link: Option<tokio::runtime::Handle>,
}

impl Broker {
    /// Starts the connection task (it connects, and reconnects, on its own).
    pub fn spawn(
        settings: Settings,
        inbound: mpsc::UnboundedSender<Inbound>,
        counters: Arc<Counters>,
    ) -> Broker {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            since: parking_lot::Mutex::new(None),
            seal: settings.seal,
            budget: ByteBudget::new(settings.inbound_queue_bytes),
            outbox: ByteBudget::new(settings.publish_queue_bytes),
            max_age: settings.max_age,
            counters,
        });
        // The longest message the link reads: longer ones could not be
        // queued anyway, and are dropped unread and counted as such (at
        // least 1 MiB, for a deliberately small budget).
        let max_message = settings.inbound_queue_bytes.max(1 << 20);
        let task = run(
            settings.urls,
            settings.cluster,
            settings.deadlines,
            max_message,
            settings.backoff_max,
            rx,
            inbound,
            shared.clone(),
        );
        // Outside a runtime (none to share), the link gets a thread.
        if !settings.link_thread {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(task);
                let link = Some(runtime);
                return Broker { tx, shared, link };
            }
        }
        // `broker_link_thread`: the broker connections (and the Redis
        // client's own tasks) run on a thread of their own, so that as a
        // few tasks among many busy ones they still get the OS scheduler's
        // share of turns.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let link = match runtime {
            Ok(rt) => {
                let handle = rt.handle().clone();
                let spawned = std::thread::Builder::new()
                    .name("limpet-broker-link".into())
                    .spawn(move || rt.block_on(task));
                match spawned {
                    Ok(_) => Some(handle),
                    Err(e) => {
                        tracing::error!("cannot start the broker link thread: {e}");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "no runtime of its own for the broker link ({e}); sharing the node's"
                );
                tokio::spawn(task);
                None
            }
        };
        Broker { tx, shared, link }
    }

    /// The runtime that reads the broker connection: the node's own, or
    /// the link thread's with `broker_link_thread`. The node handles
    /// inbound messages there, so a message read from the broker is
    /// handled without waking another thread: a thread of its own for the
    /// handler cost a cross-thread wake-up (a futex call and a context
    /// switch) per message.
    pub fn link_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.link.clone()
    }
}

impl Backplane for Broker {
    /// The node has handled a message of `len` bytes: it leaves the
    /// inbound queue's budget.
    fn handled(&self, len: usize) {
        self.shared.budget.release(len);
        self.shared.counters.inbound_bytes.sub(len as i64);
    }

    fn subscribe(&self, channel: String) {
        let _ = self.tx.send(Cmd::Subscribe(channel));
    }

    fn unsubscribe(&self, channel: String) {
        let _ = self.tx.send(Cmd::Unsubscribe(channel));
    }

    /// Queues an envelope for the broker, or drops and counts it when the
    /// queue is full. `volatile` (room and direct messages) are dropped at
    /// the budget; joins, leaves and member lists get as much again, since
    /// losing them leaves rooms inconsistent until the next sync.
    fn publish(&self, channel: String, envelope: Bytes, volatile: bool) {
        let payload = self.shared.seal.seal(&channel, envelope);
        let len = payload.len();
        if !self.shared.outbox.take(len, if volatile { 1 } else { 2 }) {
            let c = &self.shared.counters;
            shed::count(&c.shed, shed::Path::NodeToBroker, shed::Reason::QueueFull);
            return;
        }
        self.shared.counters.publish_bytes.add(len as i64);
        let publish = Publish {
            channel,
            payload,
            since: Instant::now(),
            volatile,
        };
        if self.tx.send(Cmd::Publish(publish)).is_err() {
            self.shared.sent(len);
        }
    }

    fn barrier(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Cmd::Barrier(tx)).ok().map(|()| rx)
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }

    /// When the current connection came up; `None` while disconnected.
    fn connected_since(&self) -> Option<std::time::Instant> {
        *self.shared.since.lock()
    }
}

impl Shared {
    /// A message of `bytes` from the broker that the inbound queue could
    /// not take (full, or the message larger than the whole queue, which
    /// the link drops unread): counted as shed.
    fn inbound_full(&self, channel: &str, bytes: u64) {
        let counter = self.counters.rejected.with_label_values(&["inbound_full"]);
        if counter.get().is_multiple_of(1000) {
            tracing::warn!(%channel, bytes, queued = self.budget.queued(), "dropping a broker message: inbound queue full");
        }
        counter.inc();
        shed::count(
            &self.counters.shed,
            shed::Path::BrokerToNode,
            shed::Reason::QueueFull,
        );
    }

    /// A publish of `len` bytes has left the queue.
    fn sent(&self, len: usize) {
        self.outbox.release(len);
        self.counters.publish_bytes.sub(len as i64);
    }

    /// Checks a message from the broker and queues it for the node, or
    /// drops it (forged, or the queue is full) and counts why.
    fn receive(&self, inbound: &mpsc::UnboundedSender<Inbound>, channel: String, payload: Bytes) {
        self.counters.received.inc();
        let envelope = match self.seal.open(&channel, payload) {
            Ok(e) => e,
            Err(e) => {
                let counter = self.counters.rejected.with_label_values(&["auth"]);
                if counter.get().is_multiple_of(1000) {
                    tracing::warn!(%channel, "dropping a broker message: {e}");
                }
                counter.inc();
                return;
            }
        };
        let len = envelope.len();
        if !self.budget.take(len, 1) {
            self.inbound_full(&channel, len as u64);
            return;
        }
        self.counters.inbound_bytes.add(len as i64);
        if inbound
            .send(Inbound::Message {
                channel,
                payload: envelope,
                since: Instant::now(),
            })
            .is_err()
        {
            self.budget.release(len);
            self.counters.inbound_bytes.sub(len as i64);
        }
    }
}

/// Reads until the connection is gone, queueing (or shedding) each
/// message as it arrives.
async fn drain(
    mut incoming: Incoming,
    inbound: mpsc::UnboundedSender<Inbound>,
    shared: Arc<Shared>,
) {
    while let Some(pushed) = incoming.next().await {
        match pushed {
            Pushed::Message(channel, payload) => shared.receive(&inbound, channel, payload),
            Pushed::TooLarge { channel, bytes } => {
                shared.counters.received.inc();
                shared.inbound_full(&channel, bytes);
            }
        }
    }
}

/// Aborts the connection's reader when the connection is given up.
struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    urls: Vec<String>,
    cluster: bool,
    deadlines: Deadlines,
    max_message: usize,
    backoff_max: Duration,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    inbound: mpsc::UnboundedSender<Inbound>,
    shared: Arc<Shared>,
) {
    let counters = shared.counters.clone();
    let (connected, since) = (&shared.connected, &shared.since);
    let mut desired: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(backoff_max);
    let mut ever_connected = false;
    let mut pending: Option<Cmd> = None;
    // Shown in logs: never with the password (see crate::redact).
    let target = crate::redact::broker_urls(&urls);
    loop {
        let attempt = tokio::time::Instant::now();
        let link = tokio::select! {
            r = open(&urls, cluster, deadlines, max_message) => r,
            // Keep the wish list current while connecting.
            cmd = rx.recv() => {
                match cmd {
                    None => return,
                    Some(cmd) => apply_offline(cmd, &mut desired, &shared),
                }
                continue;
            }
        };
        let (mut link, incoming) = match link {
            Ok(link) => link,
            Err(e) => {
                let wait = backoff.wait(attempt);
                // After an attempt that timed out (a black hole) the next
                // starts at once.
                let when = if wait.is_zero() {
                    "now".to_string()
                } else {
                    format!("in {wait:?}")
                };
                tracing::warn!(broker = %target, "broker unreachable: {e}; retrying {when}");
                if !backoff
                    .sleep(attempt, &mut rx, |cmd| {
                        apply_offline(cmd, &mut desired, &shared)
                    })
                    .await
                {
                    return;
                }
                continue;
            }
        };
        let mut reader = Reader(tokio::spawn(drain(
            incoming,
            inbound.clone(),
            shared.clone(),
        )));
        let mut healthy = true;
        let mut shards = Shards::new();
        for ch in &desired {
            match link.subscribe(ch).await {
                Ok(()) => {}
                // Kept in `desired`: the next reconnect tries it again.
                Err(e) if refused(&e) => note_refused(&counters, ch, &e),
                // A cluster member cut off: its channels are retried in
                // the background, the others work meanwhile.
                Err(e) if link.is_cluster() => {
                    tracing::warn!(channel = %ch, "resubscribe failed: {e}; retrying in the background");
                    shards.subscribe_failed(ch.clone());
                }
                Err(e) => {
                    tracing::warn!(broker = %target, "resubscribe failed: {e}; retrying after the back-off");
                    healthy = false;
                    break;
                }
            }
        }
        if !healthy {
            // The same back-off as a failed connect: without it a broker
            // that accepts connections but fails them is retried in a
            // tight loop. The connection is closed now, not after it.
            drop(reader);
            drop(link);
            if !backoff
                .sleep(attempt, &mut rx, |cmd| {
                    apply_offline(cmd, &mut desired, &shared)
                })
                .await
            {
                return;
            }
            continue;
        }
        backoff.reset();
        *since.lock() = Some(std::time::Instant::now());
        connected.store(true, Relaxed);
        if ever_connected {
            counters.reconnects.inc();
            tracing::info!(broker = %target, channels = desired.len(), "broker connection restored; resubscribed");
            let _ = inbound.send(Inbound::Reconnected);
        } else {
            tracing::info!(broker = %target, "connected to broker");
        }
        ever_connected = true;

        let mut retry_tick = tokio::time::interval(backoff_max);
        loop {
            let cmd = match pending.take() {
                Some(cmd) => cmd,
                None => tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(cmd) => cmd,
                    },
                    // The reader ends when the connection is gone.
                    _ = &mut reader.0 => break,
                    done = shards.next(), if shards.busy() => {
                        if let Done::Published(sent, bytes) = done {
                            shared.sent(bytes);
                            counters.published.inc_by(sent.ok);
                            if let Some(e) = sent.error {
                                crate::shards::note_member_failed(&counters, sent.failed, &e);
                                if !refused_by_server(&e) && shards.silent_for(deadlines.response) {
                                    tracing::warn!(broker = %target, "broker command failed: {e}; no cluster member answered for {:?}", deadlines.response);
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    _ = retry_tick.tick(), if shards.wants_retry() => {
                        shards.retry(&link);
                        continue;
                    }
                },
            };
            let result = match cmd {
                Cmd::Subscribe(ch) => {
                    if desired.insert(ch.clone()) {
                        match link.subscribe(&ch).await {
                            Err(e) if refused(&e) => {
                                note_refused(&counters, &ch, &e);
                                Ok(())
                            }
                            Err(e) if link.is_cluster() => {
                                tracing::warn!(channel = %ch, "subscribe failed: {e}; retrying in the background");
                                shards.subscribe_failed(ch);
                                Ok(())
                            }
                            r => {
                                if r.is_ok() {
                                    shards.ok();
                                }
                                r
                            }
                        }
                    } else {
                        Ok(())
                    }
                }
                Cmd::Barrier(done) => {
                    let _ = done.send(());
                    Ok(())
                }
                Cmd::Unsubscribe(ch) => {
                    shards.forget(&ch);
                    if desired.remove(&ch) {
                        match link.unsubscribe(&ch).await {
                            // The member went away with the subscription.
                            Err(e) if link.is_cluster() => {
                                tracing::debug!(channel = %ch, "unsubscribe failed: {e}");
                                Ok(())
                            }
                            r => {
                                if r.is_ok() {
                                    shards.ok();
                                }
                                r
                            }
                        }
                    } else {
                        Ok(())
                    }
                }
                Cmd::Publish(first) => {
                    let batch = next_batch(first, &mut rx, &mut pending, &shared);
                    let n = batch.len() as u64;
                    if let Some(fut) = link.publish_detached(&batch) {
                        let bytes = batch.iter().map(|p| p.payload.len()).sum();
                        shards.publish(fut, n, bytes);
                        continue;
                    }
                    let r = if batch.is_empty() {
                        Ok(())
                    } else {
                        link.publish(&batch).await
                    };
                    for p in &batch {
                        shared.sent(p.payload.len());
                    }
                    if r.is_ok() {
                        counters.published.inc_by(n);
                        shards.ok();
                    } else {
                        counters.lost.inc_by(n);
                    }
                    r
                }
            };
            if let Err(e) = result {
                tracing::warn!(broker = %target, "broker command failed: {e}");
                break;
            }
        }
        let (bytes, messages) = shards.abandon();
        shared.sent(bytes);
        counters.lost.inc_by(messages);
        drop(reader);
        connected.store(false, Relaxed);
        *since.lock() = None;
        tracing::warn!(broker = %target, "lost the broker connection; local delivery continues, cross-node messages are dropped until it is back");
    }
}

/// The publishes queued right now, up to 512 or 256 KiB, as one pipeline. A room or
/// direct message that waited past the age limit is dropped here rather
/// than sent late. A command other than a publish ends the batch and is
/// kept in `pending`, so commands still run in order.
fn next_batch(
    first: Publish,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    pending: &mut Option<Cmd>,
    shared: &Shared,
) -> Vec<Publish> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(p) = next.take() {
        if p.volatile && shared.max_age.expired(p.since) {
            shared.sent(p.payload.len());
            shed::count(
                &shared.counters.shed,
                shed::Path::NodeToBroker,
                shed::Reason::TooOld,
            );
        } else {
            bytes += p.payload.len();
            batch.push(p);
        }
        // A pipeline must come back within the client's response timeout
        // even on a slow link, so it is bounded in bytes too.
        if batch.len() >= 512 || bytes >= 256 * 1024 {
            break;
        }
        match rx.try_recv() {
            Ok(Cmd::Publish(p)) => next = Some(p),
            Ok(other) => *pending = Some(other),
            Err(_) => {}
        }
    }
    batch
}

/// Counts a SUBSCRIBE the broker refused; logs the first and every 100th,
/// since a node over a broker's channel cap meets one per room joined.
fn note_refused(counters: &Counters, channel: &str, e: &LinkError) {
    if counters.subscribe_refused.get().is_multiple_of(100) {
        tracing::warn!(%channel, "broker refused a subscribe: {e}; rooms on this channel stay local to this node");
    }
    counters.subscribe_refused.inc();
}

fn apply_offline(cmd: Cmd, desired: &mut HashSet<String>, shared: &Shared) {
    match cmd {
        Cmd::Subscribe(ch) => {
            desired.insert(ch);
        }
        Cmd::Unsubscribe(ch) => {
            desired.remove(&ch);
        }
        Cmd::Publish(p) => {
            shared.sent(p.payload.len());
            shared.counters.lost.inc();
        }
        // Offline, nothing is pending: whoever waits goes on.
        Cmd::Barrier(done) => drop(done),
    }
}

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
