//! The node's local WebSocket clients as the rest of the node sees them:
//! each a bounded queue of frames, and the close codes.
//!
//! Everything addressed to a client is queued here without waiting; the
//! client's connection task ([`crate::connection`]) writes the queue to
//! the socket. The queue is bounded in bytes (`limits.outbound_queue_bytes`)
//! and in messages (`limits.outbound_queue`): a client that stops reading
//! fills only its own queue and is then closed as a slow consumer (4002),
//! so one stuck client never slows the others.

use crate::metrics::Metrics;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Close codes the node uses.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const HEARTBEAT: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4002;
    pub const MISBEHAVING: u16 = 4003;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client broke RFC 6455 framing (reserved bits, bad opcodes, an
    /// unmasked frame, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The token's `exp` passed without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4004;

    /// How long queued frames may take to reach a closing client.
    pub const FLUSH_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

    /// Whether frames already queued are sent before this close: yes when
    /// the client is still reading (it caused the close, or we drain);
    /// no for a slow consumer or a client that stopped answering pings.
    pub fn flushes_queue(code: u16) -> bool {
        !matches!(code, SLOW_CONSUMER | HEARTBEAT)
    }
}

/// Live room messages held during a recovery, bounded in bytes.
pub(crate) struct Hold {
    room: String,
    pub(crate) frames: Vec<Frame>,
    bytes: usize,
    max_bytes: usize,
    /// Some were dropped: the client cannot be told it missed nothing.
    pub(crate) overflowed: bool,
}

/// A frame queued for one client. `since` is set for room and direct
/// messages: the writer drops them when they waited too long.
pub struct Outgoing {
    pub msg: Message,
    pub since: Option<Instant>,
}

/// One local client, as the rest of the node sees it.
pub struct LocalSocket {
    tx: mpsc::Sender<Outgoing>,
    /// Bytes of frames queued for this socket and not yet written; the
    /// writer subtracts what it has sent.
    queued: Arc<AtomicUsize>,
    /// The rooms this socket joined.
    pub(crate) rooms: HashSet<String>,
    /// The user its token names (`sub`), if any.
    pub(crate) user: Option<String>,
    /// While a rejoin recovers a room's history, that room's live messages
    /// wait here (see [`Hold`]).
    hold: parking_lot::Mutex<Option<Hold>>,
    holding: std::sync::atomic::AtomicBool,
    /// Set to a close code to make the connection task close the socket.
    closer: watch::Sender<Option<u16>>,
}

impl LocalSocket {
    pub fn new(
        tx: mpsc::Sender<Outgoing>,
        queued: Arc<AtomicUsize>,
        closer: watch::Sender<Option<u16>>,
    ) -> LocalSocket {
        LocalSocket {
            tx,
            queued,
            rooms: HashSet::new(),
            user: None,
            hold: parking_lot::Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
            closer,
        }
    }

    /// Starts holding `room`'s live messages for this socket, at most
    /// `max_bytes` of them (more are dropped and the recovery fails).
    pub(crate) fn start_hold(&self, room: &str, max_bytes: usize) {
        *self.hold.lock() = Some(Hold {
            room: room.to_string(),
            frames: Vec::new(),
            bytes: 0,
            max_bytes,
            overflowed: false,
        });
        self.holding.store(true, Relaxed);
    }

    /// Stops holding and returns what was held.
    pub(crate) fn end_hold(&self) -> Option<Hold> {
        self.holding.store(false, Relaxed);
        self.hold.lock().take()
    }

    /// Keeps `frame` if this socket is holding `room`; whether it did
    /// (then it must not be queued).
    pub(crate) fn held(&self, room: &str, frame: &Frame) -> bool {
        if !self.holding.load(Relaxed) {
            return false;
        }
        let mut hold = self.hold.lock();
        let Some(h) = hold.as_mut().filter(|h| h.room == room) else {
            return false;
        };
        let len = frame.bytes().len();
        if h.bytes + len > h.max_bytes {
            h.overflowed = true;
        } else {
            h.bytes += len;
            h.frames.push(frame.clone());
        }
        true
    }

    /// Queues `frame`; a queue full in bytes or in messages closes the
    /// socket (slow consumer) instead of blocking anyone. A frame bigger
    /// than the whole byte budget still goes to an idle socket, so one
    /// large message never closes a reader that keeps up. `volatile` (room
    /// and direct messages): the writer drops it if it waits past
    /// `limits.max_queue_delay`. `id` names the socket in the log.
    pub(crate) fn queue(
        &self,
        id: &str,
        frame: &Frame,
        volatile: bool,
        max_bytes: usize,
        metrics: &Metrics,
        scope: &str,
    ) -> bool {
        let len = frame.bytes().len();
        let before = self.queued.fetch_add(len, Relaxed);
        let full = before > 0 && before.saturating_add(len) > max_bytes;
        let result = if full {
            Err(mpsc::error::TrySendError::Full(()))
        } else {
            let out = Outgoing {
                msg: frame.to_message(),
                since: volatile.then(Instant::now),
            };
            self.tx.try_send(out).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            })
        };
        match result {
            Ok(()) => {
                metrics.outbound_bytes.add(len as i64);
                metrics.messages_out.with_label_values(&[scope]).inc();
                true
            }
            Err(e) => {
                self.queued.fetch_sub(len, Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(()))
                    && self
                        .closer
                        .send_replace(Some(close::SLOW_CONSUMER))
                        .is_none()
                {
                    tracing::warn!(socket = %id, queued_bytes = before, "closing slow consumer: outbound queue full");
                }
                false
            }
        }
    }

    /// Queues a control message (ping), outside the byte count.
    pub(crate) fn control(&self, msg: Message) {
        let _ = self.tx.try_send(Outgoing { msg, since: None });
    }

    /// Asks the connection task to close the socket with `code`.
    pub(crate) fn close(&self, code: u16) {
        let _ = self.closer.send(Some(code));
    }
}

/// A frame for clients, text or binary. Both hold reference-counted
/// bytes: a room message is encoded once and every recipient's queue
/// holds the same buffer, so fan-out to N sockets costs N pointers, not
/// N copies.
#[derive(Clone)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    pub fn text(text: String) -> Frame {
        Frame::Text(text.into())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    pub(crate) fn to_message(&self) -> Message {
        match self {
            Frame::Text(t) => Message::Text(t.clone()),
            Frame::Binary(b) => Message::Binary(b.clone()),
        }
    }

    /// The body of an envelope, kept as a slice of the broker's buffer.
    pub(crate) fn from_body(body: Bytes, binary: bool) -> Option<Frame> {
        if binary {
            Some(Frame::Binary(body))
        } else {
            Utf8Bytes::try_from(body).ok().map(Frame::Text)
        }
    }
}
