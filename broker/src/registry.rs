//! Who is subscribed to what, and fan-out of published messages.
//!
//! Three independent maps, as in Redis: channels (`SUBSCRIBE`), patterns
//! (`PSUBSCRIBE`) and shard channels (`SSUBSCRIBE`). Each sits behind its own
//! read-write lock: publishes only read, so publishers on different
//! threads never wait for each other; a (un)subscribe takes the write lock
//! for one map insert or remove.
//!
//! A message is encoded at most once per reply dialect (RESP2 array, RESP3
//! push) and per pattern, and the same reference-counted bytes are queued to
//! every receiver. Queuing never blocks: each receiver's queue is bounded
//! by its output limit instead (see [`crate::handle::ClientHandle::deliver`]);
//! the publisher writes them out at the end of its batch ([`Fanout`]).
//!
//! Matching a publish against every pattern is the one step whose cost a
//! client can raise (many patterns, long channels); when it is large it
//! runs under `block_in_place`, so connections sharing the worker thread
//! are moved elsewhere instead of waiting.
//!
//! Ordering: a publisher queues while it holds the map's read lock, and a
//! subscriber changes its subscriptions under the write lock, so every
//! message for a channel queued before an `UNSUBSCRIBE` is already in the
//! subscriber's queue when the unsubscribe returns; the session moves them
//! ahead of its reply, exactly as Redis orders them.

use crate::codec::{encode_message, Proto};
use crate::glob::{glob_match, Glob};
use crate::handle::{ClientHandle, Fanout, OutputPolicy};
use ahash::AHashMap;
use bytes::Bytes;
use parking_lot::RwLock;
use std::sync::Arc;

type Subscribers = AHashMap<u64, Arc<ClientHandle>>;

/// Patterns × channel bytes above which a publish's pattern matching is
/// run with `block_in_place` (about a millisecond of matching): many
/// patterns and a long channel must not hold a runtime worker, and the
/// connections queued on it, for that long.
const HEAVY_MATCH_WORK: usize = 1 << 20;

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

struct PatternEntry {
    glob: Glob,
    subscribers: Subscribers,
}

/// Which of the two exact-name channel spaces a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shard,
}

#[derive(Default)]
pub struct Registry {
    channels: RwLock<AHashMap<Bytes, Subscribers>>,
    shard_channels: RwLock<AHashMap<Bytes, Subscribers>>,
    patterns: RwLock<AHashMap<Bytes, PatternEntry>>,
}

/// What one publish did, for the reply and the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Matching subscriptions (Redis's reply to PUBLISH).
    pub receivers: usize,
    /// Bytes queued across all receivers.
    pub bytes: usize,
}

/// One encoding per dialect, made on first use.
struct Encoded<'a> {
    kind: &'static [u8],
    pattern: Option<&'a [u8]>,
    channel: &'a [u8],
    payload: &'a [u8],
    resp2: Option<Bytes>,
    resp3: Option<Bytes>,
}

impl<'a> Encoded<'a> {
    fn new(
        kind: &'static [u8],
        pattern: Option<&'a [u8]>,
        channel: &'a [u8],
        payload: &'a [u8],
    ) -> Self {
        Encoded {
            kind,
            pattern,
            channel,
            payload,
            resp2: None,
            resp3: None,
        }
    }

    fn get(&mut self, resp3: bool) -> &Bytes {
        let (slot, proto) = if resp3 {
            (&mut self.resp3, Proto::Resp3)
        } else {
            (&mut self.resp2, Proto::Resp2)
        };
        slot.get_or_insert_with(|| {
            encode_message(proto, self.kind, self.pattern, self.channel, self.payload)
        })
    }

    fn send_all(
        &mut self,
        subscribers: &Subscribers,
        policy: &OutputPolicy,
        fanout: &mut Fanout,
        done: &mut Published,
    ) {
        for client in subscribers.values() {
            let msg = self.get(client.resp3());
            done.bytes += msg.len();
            client.deliver(msg, policy, fanout);
        }
        done.receivers += subscribers.len();
    }
}

impl Registry {
    fn space(&self, space: Space) -> &RwLock<AHashMap<Bytes, Subscribers>> {
        match space {
            Space::Global => &self.channels,
            Space::Shard => &self.shard_channels,
        }
    }

    /// Adds `client` to `channel`. Returns false when it was already there.
    pub fn subscribe(&self, space: Space, channel: &Bytes, client: &Arc<ClientHandle>) -> bool {
        let mut map = self.space(space).write();
        map.entry(channel.clone())
            .or_default()
            .insert(client.id, client.clone())
            .is_none()
    }

    /// Removes `client` from `channel`; the channel disappears with its last subscriber.
    pub fn unsubscribe(&self, space: Space, channel: &[u8], client_id: u64) -> bool {
        let mut map = self.space(space).write();
        let Some(subs) = map.get_mut(channel) else {
            return false;
        };
        let removed = subs.remove(&client_id).is_some();
        if subs.is_empty() {
            map.remove(channel);
        }
        removed
    }

    pub fn psubscribe(&self, pattern: &Bytes, client: &Arc<ClientHandle>) -> bool {
        let mut map = self.patterns.write();
        map.entry(pattern.clone())
            .or_insert_with(|| PatternEntry {
                glob: Glob::new(pattern),
                subscribers: Subscribers::default(),
            })
            .subscribers
            .insert(client.id, client.clone())
            .is_none()
    }

    pub fn punsubscribe(&self, pattern: &[u8], client_id: u64) -> bool {
        let mut map = self.patterns.write();
        let Some(entry) = map.get_mut(pattern) else {
            return false;
        };
        let removed = entry.subscribers.remove(&client_id).is_some();
        if entry.subscribers.is_empty() {
            map.remove(pattern);
        }
        removed
    }

    /// `PUBLISH` (channel subscribers, then every matching pattern) or
    /// `SPUBLISH` (shard channel subscribers only). The messages are
    /// queued; `fanout` writes them ([`Fanout::flush`]).
    pub fn publish(
        &self,
        space: Space,
        channel: &[u8],
        payload: &[u8],
        policy: &OutputPolicy,
        fanout: &mut Fanout,
    ) -> Published {
        let mut done = Published::default();
        let kind: &'static [u8] = match space {
            Space::Global => b"message",
            Space::Shard => b"smessage",
        };
        {
            let map = self.space(space).read();
            if let Some(subs) = map.get(channel) {
                Encoded::new(kind, None, channel, payload)
                    .send_all(subs, policy, fanout, &mut done);
            }
        }
        if space == Space::Global {
            let patterns = self.patterns.read();
            let mut match_all = || {
                for (pattern, entry) in patterns.iter() {
                    if entry.glob.matches(channel) {
                        Encoded::new(b"pmessage", Some(pattern), channel, payload).send_all(
                            &entry.subscribers,
                            policy,
                            fanout,
                            &mut done,
                        );
                    }
                }
            };
            let work = patterns.len().saturating_mul(channel.len() + 64);
            if work > HEAVY_MATCH_WORK && on_multi_thread_runtime() {
                // Long matching: the runtime moves this worker's other
                // connections to another thread meanwhile.
                tokio::task::block_in_place(match_all);
            } else {
                match_all();
            }
        }
        done
    }

    /// Channels with at least one subscriber, optionally filtered by a glob.
    pub fn channel_names(&self, space: Space, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let map = self.space(space).read();
        map.keys()
            .filter(|name| pattern.is_none_or(|p| glob_match(p, name)))
            .cloned()
            .collect()
    }

    pub fn subscriber_count(&self, space: Space, channel: &[u8]) -> usize {
        self.space(space).read().get(channel).map_or(0, |s| s.len())
    }

    pub fn channel_count(&self, space: Space) -> usize {
        self.space(space).read().len()
    }

    /// Distinct patterns with at least one subscriber (`PUBSUB NUMPAT`).
    pub fn pattern_count(&self) -> usize {
        self.patterns.read().len()
    }
}
