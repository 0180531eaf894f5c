//! Recovery: a rejoin with `since` gets the messages it missed.
//!
//! The node reads the room's stream from `since.offset + 1` (see
//! [`crate::history`] for how offsets and epochs are made) and queues
//! those messages to the client before the join's ack. Meanwhile the
//! room's live messages for that client are held (bounded in bytes, half
//! of `limits.outbound_queue_bytes`) and released after the replay, minus
//! those the replay already covered: each message once, in order. The
//! history is read only after the room's subscription is live (a
//! backplane barrier), so a message published during the rejoin is in the
//! read or among the held, never in neither.
//!
//! A wrong epoch, an offset that fell out of the window, a replay larger
//! than half the client's queue, or a hold that overflowed all answer
//! `recovered: false`: the client must resync from its own source. An
//! offset beyond the room's last is a `bad_request`.

use crate::history::{as_string, new_epoch, parse_id, stamp, valid_epoch, History};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::{Code, Failure, Since};
use crate::sockets::Frame;
use bytes::Bytes;
use redis::Value;
use serde_json::json;
use std::sync::Arc;

use crate::history::{epoch_key, stream_key};

/// What a rejoin with `since` gets.
pub struct Recovery {
    /// The missed messages, in order, stamped (empty unless recovered).
    pub frames: Vec<Frame>,
    pub recovered: bool,
    /// The room's current epoch and last offset, when known.
    pub epoch: Option<String>,
    pub offset: Option<u64>,
}

impl History {
    /// Where `room`'s history stands: its epoch (created if the room has
    /// none yet, so a client can recover from its very first message) and
    /// last offset. `None` when the broker cannot be asked.
    pub async fn position(&self, room: &str) -> Option<(String, u64)> {
        let ekey = epoch_key(room);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let set = pipe.cmd("SET").arg(&ekey).arg(new_epoch()).arg("NX");
        if self.ttl > 0 {
            set.arg("EX").arg(self.ttl);
        }
        set.ignore();
        pipe.cmd("GET")
            .arg(&ekey)
            .cmd("XREVRANGE")
            .arg(stream_key(room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let replies = self.link.query(&pipe).await.ok()?;
        let [epoch, last] = <[Value; 2]>::try_from(replies).ok()?;
        let epoch = as_string(&epoch).filter(|e| valid_epoch(e))?;
        let top = entries_of(&last).last().map_or(0, |(o, _, _)| *o);
        Some((epoch, top))
    }

    /// The messages of `room` after `since`, if the history still has all
    /// of them under the same epoch.
    pub async fn recover(&self, room: &str, since: &Since) -> Result<Recovery, Failure> {
        let skey = stream_key(room);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(epoch_key(room))
            .cmd("XREVRANGE")
            .arg(&skey)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&skey)
            .arg(format!("0-{}", since.offset.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            // MAXLEN ~ may keep somewhat more than `size`.
            .arg(self.size.saturating_mul(2).saturating_add(100));
        let unavailable = |e: redis::RedisError| {
            Failure::new(
                Code::Overloaded,
                format!("history unavailable, try again: {e}"),
            )
        };
        let replies = self.link.query(&pipe).await.map_err(unavailable)?;
        let [epoch, last, entries] = <[Value; 3]>::try_from(replies)
            .map_err(|_| Failure::new(Code::Overloaded, "history unavailable: unexpected reply"))?;
        let epoch = as_string(&epoch).filter(|e| valid_epoch(e));
        let top = entries_of(&last).last().map(|(o, _, _)| *o);
        let resync = |metrics: &Metrics, epoch: Option<String>, offset: Option<u64>| {
            metrics.recoveries.with_label_values(&["resync"]).inc();
            Ok(Recovery {
                frames: Vec::new(),
                recovered: false,
                epoch,
                offset,
            })
        };
        let Some(epoch) = epoch else {
            return resync(&self.metrics, None, None);
        };
        if epoch != since.epoch {
            return resync(&self.metrics, Some(epoch), top);
        }
        let top = top.unwrap_or(0);
        if since.offset > top {
            return Err(Failure::new(
                Code::BadRequest,
                format!(
                    "`since`: offset {} is in the future (the room is at {top})",
                    since.offset
                ),
            ));
        }
        let list = entries_of(&entries);
        let mut frames = Vec::with_capacity(list.len());
        let mut expected = since.offset + 1;
        let mut bytes = 0;
        for (offset, binary, body) in list {
            // A gap (trimmed, or out of the window) cannot be recovered.
            if offset != expected {
                return resync(&self.metrics, Some(epoch), Some(top));
            }
            bytes += body.len();
            if bytes > self.max_recovery_bytes {
                return resync(&self.metrics, Some(epoch), Some(top));
            }
            let frame = if binary {
                Frame::Binary(body)
            } else {
                match Frame::from_body(body, false) {
                    Some(f) => f,
                    None => return resync(&self.metrics, Some(epoch), Some(top)),
                }
            };
            frames.push(stamp(&frame, offset, &epoch));
            expected += 1;
        }
        if expected != top + 1 {
            return resync(&self.metrics, Some(epoch), Some(top));
        }
        self.metrics
            .recoveries
            .with_label_values(&["recovered"])
            .inc();
        self.metrics.recovered_messages.inc_by(frames.len() as u64);
        Ok(Recovery {
            frames,
            recovered: true,
            epoch: Some(epoch),
            offset: Some(top),
        })
    }
}

/// A join with `since`: the room's live messages are held while its
/// history after `since` is read and queued, then released (those the
/// replay did not cover), so the client gets each message once, in order,
/// all before the ack.
/// A plain join on a node with history: the ack tells the client where
/// the room's history stands (`epoch`, `offset`), read once the room's
/// subscription is live, so every message after that offset reaches it
/// live and it can rejoin `since` that point.
pub(crate) async fn join_at(
    node: &Arc<Node>,
    id: &str,
    room: &str,
    history: &History,
) -> Result<serde_json::Value, Failure> {
    let members = node.join(id, room)?;
    node.subscriptions_live().await;
    let mut ack = json!({"room": room, "members": crate::connection::members_json(&members)});
    if let Some((epoch, offset)) = history.position(room).await {
        ack["epoch"] = json!(epoch);
        ack["offset"] = json!(offset);
    }
    Ok(ack)
}

pub(crate) async fn rejoin(
    node: &Arc<Node>,
    id: &str,
    room: &str,
    since: &Since,
    history: &History,
) -> Result<serde_json::Value, Failure> {
    let fresh = !node.is_member(id, room);
    node.start_hold(id, room);
    let members = match node.join(id, room) {
        Ok(m) => m,
        Err(f) => {
            node.end_hold(id, &[], None);
            return Err(f);
        }
    };
    // Read the history only once the room's subscription is live: a
    // message published in between is then either in what is read or
    // among the live messages held, never in neither.
    node.subscriptions_live().await;
    let recovery = match history.recover(room, since).await {
        Ok(r) => r,
        // The history cannot be read now (the broker is away): the join
        // stands and the client resyncs.
        Err(f) if f.code == Code::Overloaded => {
            tracing::debug!(node = %node.id, socket = %id, %room, "recovery failed: {}", f.message);
            history
                .metrics
                .recoveries
                .with_label_values(&["resync"])
                .inc();
            Recovery {
                frames: Vec::new(),
                recovered: false,
                epoch: None,
                offset: None,
            }
        }
        // A bad request (an offset in the future): refused, and a join
        // made only for it undone.
        Err(f) => {
            node.end_hold(id, &[], None);
            if fresh {
                let _ = node.leave(id, room, "leave");
            }
            return Err(f);
        }
    };
    let complete = node.end_hold(id, &recovery.frames, recovery.offset);
    let recovered = recovery.recovered && complete;
    let mut ack = json!({
        "room": room,
        "members": crate::connection::members_json(&members),
        "recovered": recovered,
        "missed": recovery.frames.len(),
    });
    if let Some(epoch) = recovery.epoch {
        ack["epoch"] = json!(epoch);
    }
    if let Some(offset) = recovery.offset {
        ack["offset"] = json!(offset);
    }
    Ok(ack)
}

/// (offset, binary, body) of each entry of an XRANGE reply, skipping any
/// that is not ours.
fn entries_of(v: &Value) -> Vec<(u64, bool, Bytes)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let offset = parse_id(&as_string(pair.first()?)?)?;
            let Value::Array(fields) = pair.get(1)? else {
                return None;
            };
            let binary = match fields.first()? {
                Value::BulkString(f) if f == b"b" => true,
                Value::BulkString(f) if f == b"t" => false,
                _ => return None,
            };
            let Value::BulkString(body) = fields.get(1)? else {
                return None;
            };
            Some((offset, binary, Bytes::copy_from_slice(body)))
        })
        .collect()
}
