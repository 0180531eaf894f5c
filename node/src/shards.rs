//! The commands of a Redis Cluster link that must not wait for one
//! another: on a cluster one member may be cut off (a partition, a master
//! down before its failover) while the others answer, and a publish or a
//! subscribe waiting for that member must not hold up the rooms whose
//! slots live elsewhere.
//!
//! Publishes run detached ([`crate::link::Link::publish_detached`]) and
//! are polled here alongside new commands; their bytes stay counted
//! against `limits.publish_queue_bytes` until they are answered, so a cut
//! member costs bounded memory. A SUBSCRIBE that failed is kept and
//! retried in the background until it is confirmed. The link is declared
//! lost only when no command has succeeded for a whole response timeout
//! (every member gone); until then a member's failures cost only its own
//! rooms' cross-node messages, counted as lost.

use crate::link::{Link, Sent};
use crate::metrics::Counters;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What finished.
pub(crate) enum Done {
    /// A detached publish batch: its outcome and its bytes, to release.
    Published(Sent, usize),
    /// A retried SUBSCRIBE, confirmed or not.
    Subscribed,
}

pub(crate) struct Shards {
    publishes: FuturesUnordered<BoxFuture<'static, (Sent, usize)>>,
    /// Bytes and messages of the publishes not yet answered.
    bytes: usize,
    messages: u64,
    last_ok: Instant,
    /// Channels whose SUBSCRIBE failed (their member cut off).
    retry: HashSet<String>,
    subscribes: FuturesUnordered<BoxFuture<'static, (String, redis::RedisResult<()>)>>,
}

impl Shards {
    pub(crate) fn new() -> Shards {
        Shards {
            publishes: FuturesUnordered::new(),
            bytes: 0,
            messages: 0,
            last_ok: Instant::now(),
            retry: HashSet::new(),
            subscribes: FuturesUnordered::new(),
        }
    }

    /// Starts `fut`, a batch of `n` publishes of `bytes`.
    pub(crate) fn publish(
        &mut self,
        fut: impl std::future::Future<Output = Sent> + Send + 'static,
        n: u64,
        bytes: usize,
    ) {
        self.bytes += bytes;
        self.messages += n;
        self.publishes
            .push(Box::pin(async move { (fut.await, bytes) }));
    }

    /// A command answered: the link works.
    pub(crate) fn ok(&mut self) {
        self.last_ok = Instant::now();
    }

    /// Whether no command has succeeded for `limit`: every member gone.
    pub(crate) fn silent_for(&self, limit: Duration) -> bool {
        self.last_ok.elapsed() > limit
    }

    /// `channel`'s SUBSCRIBE failed; it is retried by [`Shards::retry`].
    pub(crate) fn subscribe_failed(&mut self, channel: String) {
        self.retry.insert(channel);
    }

    /// A channel no longer wanted is not retried.
    pub(crate) fn forget(&mut self, channel: &str) {
        self.retry.remove(channel);
    }

    pub(crate) fn wants_retry(&self) -> bool {
        !self.retry.is_empty() && self.subscribes.is_empty()
    }

    /// Retries every failed SUBSCRIBE in the background.
    pub(crate) fn retry(&mut self, link: &Link) {
        for ch in self.retry.iter() {
            if let Some(fut) = link.subscribe_detached(ch) {
                let ch = ch.clone();
                self.subscribes
                    .push(Box::pin(async move { (ch, fut.await) }));
            }
        }
    }

    pub(crate) fn busy(&self) -> bool {
        !self.publishes.is_empty() || !self.subscribes.is_empty()
    }

    /// The next detached command to finish (pending while none runs).
    pub(crate) async fn next(&mut self) -> Done {
        tokio::select! {
            Some((sent, bytes)) = self.publishes.next() => {
                self.bytes -= bytes;
                self.messages -= sent.ok + sent.failed;
                if sent.ok > 0 {
                    self.ok();
                }
                Done::Published(sent, bytes)
            }
            Some((ch, r)) = self.subscribes.next() => {
                if r.is_ok() {
                    self.ok();
                    self.retry.remove(&ch);
                    tracing::info!(channel = %ch, "subscribed again after a cluster member came back");
                }
                Done::Subscribed
            }
            else => std::future::pending().await,
        }
    }

    /// The link is given up: the bytes and messages still in flight, to
    /// release and count as lost.
    pub(crate) fn abandon(self) -> (usize, u64) {
        (self.bytes, self.messages)
    }
}

/// A cluster member did not take a publish (cut off, or failing over):
/// its rooms lose those cross-node messages (counted as lost), the others
/// go on. Logged the first time and about every 1,000th.
pub(crate) fn note_member_failed(counters: &Counters, failed: u64, e: &redis::RedisError) {
    let before = counters.lost.get();
    counters.lost.inc_by(failed);
    if before == 0 || before / 1000 != (before + failed) / 1000 {
        tracing::warn!("a Redis Cluster member did not take a publish: {e}; rooms on its slots lose cross-node messages until it is back");
    }
}
