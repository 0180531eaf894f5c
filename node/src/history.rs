//! Room history in the broker, and recovery after a reconnect.
//!
//! With `history.size > 0` every room message gets an `offset` (per room,
//! cluster-wide, +1 per message) and an `epoch` (the history's generation)
//! before anyone sees it, and is appended to the room's stream, so any
//! node can replay what a client missed.
//!
//! **Offsets come from the stream ids.** Each message is `XADD`ed with the
//! id `0-*`: the broker (limpet-broker, Redis ≥ 7, Redis Cluster alike)
//! assigns `0-<last+1>` atomically, so two nodes appending to one room at
//! once get distinct, consecutive offsets without a separate counter, and
//! the offset *is* the entry's id: recovery is one `XRANGE` from `0-(N+1)`,
//! no mapping to keep. (`INCR` then `XADD` would be two commands whose
//! order two nodes can interleave, leaving the stream out of offset
//! order.) Trimming (`MAXLEN ~ size`) keeps the last id, so offsets never
//! go back while the stream exists.
//!
//! **The epoch** is a random string kept next to the stream (`SET NX`, the
//! same TTL). When the history is lost (a broker restart, the TTL passed,
//! a flush), the next write creates a new epoch and offsets restart: a
//! client holding the old epoch is told `recovered: false`. Epoch, `XADD`
//! and the TTLs go in one `MULTI`/`EXEC`, so they cannot drift apart.
//! The keys are `{limpet:room:<room>}:hist` and `...:epoch`: their hash
//! tag is the room's channel name, so on a Redis Cluster the stream, the
//! epoch and the room's channel live in one slot.
//!
//! **The write path.** A message's frame must carry its offset, and the
//! offset only exists once the broker has assigned it: for rooms with
//! history, local delivery waits for that one round trip (there is no way
//! around it without giving up cluster-wide offsets). To keep it one
//! round trip however busy the node is, writes wait in one queue and go
//! out in batches: everything queued is one `MULTI`/`EXEC` (one room per
//! batch on a Redis Cluster, whose transactions cannot cross slots), and
//! when the reply comes the messages are delivered locally and published
//! to other nodes, in order. The queue is bounded in bytes
//! (`limits.publish_queue_bytes`) and by age (`limits.max_queue_delay`),
//! like the publish queue: past them a message is dropped and counted in
//! `limpet_node_shed_total{path="node_to_broker"}`. While the broker is
//! away messages still reach local members, without an offset (they are
//! not in the history). With history off (the default) none of this runs.
//!
//! Direct messages (`send`) have no history: they stay at-most-once.

use crate::backplane::room_channel;
use crate::metrics::Metrics;
use crate::node::Node;

use crate::shed::{self, ByteBudget, MaxAge};
use crate::sockets::Frame;

use redis::Value;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The key of a room's stream: its hash tag is the room's channel.
pub fn stream_key(room: &str) -> String {
    slot_key(&room_channel(room), ":hist")
}

pub fn epoch_key(room: &str) -> String {
    slot_key(&room_channel(room), ":epoch")
}

/// `channel` + `suffix`, hashed to the channel's cluster slot: a channel
/// with a hash tag of its own keeps it (the suffix has no braces); one
/// without gets the whole channel as its tag.
fn slot_key(channel: &str, suffix: &str) -> String {
    let has_tag = channel
        .find('{')
        .and_then(|open| channel[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if has_tag {
        format!("{channel}{suffix}")
    } else {
        format!("{{{channel}}}{suffix}")
    }
}

/// A message waiting for its offset.
pub(crate) struct Write {
    pub room: String,
    /// The frame as members get it, without offset and epoch.
    pub frame: Frame,
    /// The sender, when it asked not to get its own message.
    pub except: Option<String>,
    since: Instant,
}

/// One connection to the broker for history, standalone or cluster,
/// opened on first use and again after a failure.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }
}

/// How long a history command may take before the connection is
/// declared broken.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Link {
    urls: Vec<String>,
    cluster: bool,
    conn: tokio::sync::Mutex<(Option<Conn>, Option<Instant>)>,
}

impl Link {
    async fn get(&self) -> redis::RedisResult<Conn> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Ok(c.clone());
        }
        // After a failed connect, fail fast for a second rather than make
        // every emit wait on a dead broker.
        if guard
            .1
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "history broker unreachable",
            )));
        }
        let opened = tokio::time::timeout(TIMEOUT, self.open()).await;
        match opened {
            Ok(Ok(c)) => {
                *guard = (Some(c.clone()), None);
                Ok(c)
            }
            Ok(Err(e)) => {
                guard.1 = Some(Instant::now());
                Err(e)
            }
            Err(_) => {
                guard.1 = Some(Instant::now());
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "history broker connect timed out",
                )))
            }
        }
    }

    async fn open(&self) -> redis::RedisResult<Conn> {
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .response_timeout(TIMEOUT)
                .build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let info = redis::IntoConnectionInfo::into_connection_info(self.urls[0].as_str())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let c = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(Some(TIMEOUT)),
            )
            .await?;
        Ok(Conn::Single(c))
    }

    async fn broken(&self) {
        self.conn.lock().await.0 = None;
    }

    pub(crate) async fn query(&self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        let mut c = self.get().await?;
        let r = c.query(pipe).await;
        if let Err(e) = &r {
            if !crate::link::refused_by_server(e) {
                self.broken().await;
            }
        }
        r
    }
}

/// The history of every room, in the broker.
pub struct History {
    pub(crate) size: usize,
    pub(crate) ttl: u64,
    tx: mpsc::UnboundedSender<Write>,
    budget: Arc<ByteBudget>,
    max_age: MaxAge,
    pub(crate) link: Arc<Link>,
    pub(crate) metrics: Arc<Metrics>,
    /// Most bytes one recovery may queue to a client.
    pub(crate) max_recovery_bytes: usize,
}

impl History {
    /// `None` when history is off (`history.size = 0`). Spawns the writer
    /// on the current runtime.
    pub(crate) fn spawn(
        node: Weak<Node>,
        config: &limpet_config::NodeConfig,
        metrics: Arc<Metrics>,
    ) -> Option<History> {
        let h = &config.history;
        if h.size == 0 {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            urls: config.broker.clone(),
            cluster: config.cluster,
            conn: tokio::sync::Mutex::new((None, None)),
        });
        let budget = Arc::new(ByteBudget::new(
            config.limits.publish_queue_bytes.bytes() as usize
        ));
        let history = History {
            size: h.size,
            ttl: h.ttl.get().as_secs(),
            tx,
            budget: budget.clone(),
            max_age: MaxAge::new(config.limits.max_queue_delay.get()),
            link: link.clone(),
            metrics,
            max_recovery_bytes: (config.limits.outbound_queue_bytes.bytes() as usize) / 2,
        };
        let writer = Writer {
            node,
            rx,
            budget,
            link,
            size: h.size,
            ttl: history.ttl,
            cluster: config.cluster,
            max_age: history.max_age,
        };
        tokio::spawn(writer.run());
        Some(history)
    }

    /// Queues a room message for its offset; `false` (counted) when the
    /// queue is full.
    pub(crate) fn write(&self, room: String, frame: Frame, except: Option<String>) -> bool {
        let len = frame.bytes().len() + room.len();
        if !self.budget.take(len, 1) {
            shed::count(
                &self.metrics.backplane.shed,
                shed::Path::NodeToBroker,
                shed::Reason::QueueFull,
            );
            return false;
        }
        let w = Write {
            room,
            frame,
            except,
            since: Instant::now(),
        };
        if self.tx.send(w).is_err() {
            self.budget.release(len);
            return false;
        }
        true
    }
}

/// The writer: batches of queued writes, one `MULTI`/`EXEC` each, then
/// delivery in order.
struct Writer {
    node: Weak<Node>,
    rx: mpsc::UnboundedReceiver<Write>,
    budget: Arc<ByteBudget>,
    link: Arc<Link>,
    size: usize,
    ttl: u64,
    cluster: bool,
    max_age: MaxAge,
}

/// Most writes, and bytes, in one transaction.
const BATCH: usize = 256;
const BATCH_BYTES: usize = 256 * 1024;

impl Writer {
    async fn run(mut self) {
        let mut next: Option<Write> = None;
        loop {
            let first = match next.take() {
                Some(w) => w,
                None => match self.rx.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let Some(node) = self.node.upgrade() else {
                return;
            };
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut candidate = Some(first);
            while let Some(w) = candidate.take() {
                if self.cluster && batch.first().is_some_and(|b: &Write| b.room != w.room) {
                    next = Some(w);
                    break;
                }
                if self.max_age.expired(w.since) {
                    self.release(&w);
                    shed::count(
                        &node.metrics.backplane.shed,
                        shed::Path::NodeToBroker,
                        shed::Reason::TooOld,
                    );
                } else {
                    bytes += w.frame.bytes().len();
                    batch.push(w);
                }
                if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                    break;
                }
                candidate = self.rx.try_recv().ok();
            }
            if batch.is_empty() {
                continue;
            }
            let result = self.link.query(&self.transaction(&batch)).await;
            let stamps = match result {
                Ok(values) => parse_stamps(values, batch.len()),
                Err(e) => {
                    if node.metrics.history_failures.get().is_multiple_of(1000) {
                        tracing::warn!(node = %node.id, "history write failed: {e}; messages go to local members without an offset");
                    }
                    None
                }
            };
            if stamps.is_some() {
                node.metrics.history_writes.inc_by(batch.len() as u64);
            } else {
                node.metrics.history_failures.inc_by(batch.len() as u64);
            }
            for (i, w) in batch.into_iter().enumerate() {
                self.release(&w);
                match stamps.as_ref().and_then(|s| s.get(i)) {
                    Some((offset, epoch)) => {
                        let frame = stamp(&w.frame, *offset, epoch);
                        node.deliver_stamped(&w.room, frame, w.except.as_deref());
                    }
                    None => node.deliver_stamped(&w.room, w.frame, w.except.as_deref()),
                }
            }
        }
    }

    fn release(&self, w: &Write) {
        self.budget.release(w.frame.bytes().len() + w.room.len());
    }

    /// One `MULTI`: per write, the epoch (created if missing), the entry,
    /// and both keys' TTL.
    fn transaction(&self, batch: &[Write]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in batch {
            let (skey, ekey) = (stream_key(&w.room), epoch_key(&w.room));
            let set = pipe.cmd("SET").arg(&ekey).arg(new_epoch()).arg("NX");
            if self.ttl > 0 {
                set.arg("EX").arg(self.ttl);
            }
            set.ignore();
            pipe.cmd("GET").arg(&ekey);
            let field = if matches!(w.frame, Frame::Binary(_)) {
                "b"
            } else {
                "t"
            };
            pipe.cmd("XADD")
                .arg(&skey)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.size)
                .arg("0-*")
                .arg(field)
                .arg(w.frame.bytes());
            if self.ttl > 0 {
                pipe.cmd("EXPIRE").arg(&skey).arg(self.ttl).ignore();
                pipe.cmd("EXPIRE").arg(&ekey).arg(self.ttl).ignore();
            }
        }
        pipe
    }
}

/// (offset, epoch) per write from the transaction's replies (a GET and an
/// XADD each); `None` if any is missing or malformed.
fn parse_stamps(values: Vec<Value>, n: usize) -> Option<Vec<(u64, String)>> {
    if values.len() != 2 * n {
        return None;
    }
    values
        .chunks(2)
        .map(|pair| {
            let epoch = as_string(&pair[0]).filter(|e| valid_epoch(e))?;
            let offset = parse_id(&as_string(&pair[1])?)?;
            Some((offset, epoch))
        })
        .collect()
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The offset in a stream id `0-N`.
pub(crate) fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// Epochs are ours (hex), but come back from the broker: anything else is
/// refused rather than pasted into a frame.
pub(crate) fn valid_epoch(e: &str) -> bool {
    !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A fresh epoch: 16 hex digits, different on every node and every call.
pub(crate) fn new_epoch() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = Sha256::new();
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(SEQ.fetch_add(1, Relaxed).to_le_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The frame with `"offset":N,"epoch":"E",` first in its JSON object (a
/// binary frame's header line is a JSON object too).
pub fn stamp(frame: &Frame, offset: u64, epoch: &str) -> Frame {
    let body = frame.bytes();
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    let head = format!("{{\"offset\":{offset},\"epoch\":\"{epoch}\",");
    let mut out = Vec::with_capacity(head.len() + rest.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(rest);
    match frame {
        Frame::Text(_) => match String::from_utf8(out) {
            Ok(s) => Frame::text(s),
            Err(_) => frame.clone(),
        },
        Frame::Binary(_) => Frame::Binary(out.into()),
    }
}

/// The offset of a stamped frame (see [`stamp`]).
pub(crate) fn offset_of(frame: &Frame) -> Option<u64> {
    let rest = frame.bytes().strip_prefix(b"{\"offset\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::Memory;
    use crate::sockets::Outbox;
    use limpet_config::{ByteSize, NodeConfig};

    /// On a single-threaded runtime the writer cannot run while the test
    /// emits, so what the queue holds is exactly what was emitted.
    #[tokio::test(flavor = "current_thread")]
    async fn the_history_queue_is_bounded_in_bytes_and_counts_what_it_sheds() {
        let mut config = NodeConfig {
            id: Some("n1".into()),
            // Nothing listens there: the writer's connect fails.
            broker: vec!["redis://127.0.0.1:1/".into()],
            ..NodeConfig::default()
        };
        config.history.size = 10;
        config.limits.max_message_bytes = ByteSize(1024);
        config.limits.publish_queue_bytes = ByteSize(4096);
        let node = Node::with_backplane(config, Arc::new(Memory::new(None)));
        let rx = Outbox::new(64);
        node.add_socket("n1.a.1", rx.clone());
        node.add_socket("n1.a.2", Outbox::new(64));
        node.join("n1.a.1", "r").unwrap();
        node.join("n1.a.2", "r").unwrap();
        rx.take();
        let frame = Frame::text(format!("{{\"x\":\"{}\"}}", "x".repeat(990)));
        let refused = (0..10)
            .filter(|_| {
                node.emit(Some("n1.a.2"), "r", frame.clone(), false)
                    .is_err()
            })
            .count();
        // 997 + 1 bytes each: four fit in 4,096.
        assert_eq!(refused, 6);
        let shed = node
            .metrics
            .backplane
            .shed
            .with_label_values(&["node_to_broker", "queue_full"])
            .get();
        assert_eq!(shed, 6);
        // Once the writer runs (its broker is unreachable) the four accepted
        // still reach the local member, without an offset.
        for _ in 0..4 {
            let out = rx.next().await;
            let t = out.text().expect("a text frame");
            assert!(t.starts_with("{\"x\""), "{t}");
        }
        assert_eq!(node.metrics.history_failures.get(), 4);
    }

    #[test]
    fn keys_share_the_channel_slot() {
        assert_eq!(stream_key("lobby"), "{limpet:room:lobby}:hist");
        assert_eq!(epoch_key("lobby"), "{limpet:room:lobby}:epoch");
        // A room with a hash tag of its own: the channel hashes on it, so
        // the keys keep it.
        assert_eq!(stream_key("a{b}c"), "limpet:room:a{b}c:hist");
        assert_eq!(stream_key("a{}c"), "{limpet:room:a{}c}:hist");
    }

    #[test]
    fn stamping() {
        let f = Frame::text(r#"{"type":"event","room":"r"}"#.into());
        let s = stamp(&f, 42, "abc");
        assert_eq!(
            s.bytes(),
            br#"{"offset":42,"epoch":"abc","type":"event","room":"r"}"#
        );
        assert_eq!(offset_of(&s), Some(42));
        assert_eq!(offset_of(&f), None);
        assert_eq!(parse_id("0-17"), Some(17));
        assert_eq!(parse_id("1-17"), None);
        assert!(valid_epoch("0af3") && !valid_epoch("a\"b") && !valid_epoch(""));
    }
}
