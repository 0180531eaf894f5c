//! The node's local WebSocket clients as the rest of the node sees them:
//! each a bounded queue of frames (its [`Outbox`]), and the close codes.
//!
//! Everything addressed to a client is queued here without waiting; the
//! client's connection task ([`crate::connection`]) writes the queue to
//! the socket. The queue is bounded in bytes (`limits.outbound_queue_bytes`)
//! and in messages (`limits.outbound_queue`): a client that stops reading
//! fills only its own queue and is then closed as a slow consumer (4002),
//! so one stuck client never slows the others.
//!
//! An idle client's outbox holds no allocation: the queue is a `VecDeque`
//! handed whole to the writer when it drains it (a fresh, empty one takes
//! its place), and the connection task is woken through one
//! [`AtomicWaker`], with no channel preallocating slots per client.

use crate::metrics::Metrics;
use crate::ws::OpCode;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

/// What a client is sent: a data frame, or a control frame (ping, pong).
#[derive(Clone)]
pub enum Payload {
    Data(Frame),
    Control(OpCode, Bytes),
}

/// A frame queued for one client. `since` is set for room and direct
/// messages: the writer drops them when they waited too long.
pub struct Outgoing {
    pub payload: Payload,
    pub since: Option<Instant>,
}

impl Outgoing {
    /// The bytes counted against the queue's budget (control frames: 0).
    pub fn counted(&self) -> usize {
        match &self.payload {
            Payload::Data(f) => f.bytes().len(),
            Payload::Control(..) => 0,
        }
    }

    /// A text frame's text (tests read queues with it).
    pub fn text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Data(Frame::Text(t)) => Some(t.as_str()),
            _ => None,
        }
    }
}

/// One client's queue of frames, shared by whoever queues (under the
/// node's state lock) and its connection task (which writes them).
pub struct Outbox {
    queue: parking_lot::Mutex<VecDeque<Outgoing>>,
    /// Most frames waiting (`limits.outbound_queue`).
    max_frames: usize,
    /// Bytes of data frames queued and not yet written; the connection
    /// task subtracts what it has written or dropped.
    queued: AtomicUsize,
    /// A close code asked for (0: none yet); the first one wins.
    close: AtomicU16,
    /// The connection task, woken for new frames and for a close.
    waker: AtomicWaker,
}

impl Outbox {
    pub fn new(max_frames: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: parking_lot::Mutex::new(VecDeque::new()),
            max_frames,
            queued: AtomicUsize::new(0),
            close: AtomicU16::new(0),
            waker: AtomicWaker::new(),
        })
    }

    /// Registers the connection task to be woken (before it looks at the
    /// queue or the close code, so nothing queued in between is missed).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Adds a frame unless `max_frames` are waiting.
    fn push(&self, out: Outgoing) -> bool {
        let mut q = self.queue.lock();
        if q.len() >= self.max_frames {
            return false;
        }
        q.push_back(out);
        drop(q);
        self.waker.wake();
        true
    }

    /// Everything queued so far, leaving an empty queue that holds no
    /// allocation.
    pub fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *self.queue.lock())
    }

    /// `len` counted bytes have left the queue (written or dropped).
    pub fn written(&self, len: usize, metrics: &Metrics) {
        if len > 0 {
            self.queued.fetch_sub(len, Relaxed);
            metrics.outbound_bytes.sub(len as i64);
        }
    }

    /// Asks the connection task to close with `code`; the first code
    /// asked for stays. Whether this call set it.
    pub fn close(&self, code: u16) -> bool {
        let set = self
            .close
            .compare_exchange(0, code, Relaxed, Relaxed)
            .is_ok();
        self.waker.wake();
        set
    }

    /// The next frame queued, waiting for one (for tests, which read a
    /// socket's queue instead of a connection task).
    #[cfg(test)]
    pub(crate) async fn next(&self) -> Outgoing {
        std::future::poll_fn(|cx| {
            self.register(cx.waker());
            match self.queue.lock().pop_front() {
                Some(out) => std::task::Poll::Ready(out),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// The close code asked for, if any.
    pub fn close_code(&self) -> Option<u16> {
        Some(self.close.load(Relaxed)).filter(|&c| c != 0)
    }
}

/// One local client, as the rest of the node sees it.
pub struct LocalSocket {
    outbox: Arc<Outbox>,
    /// The rooms this socket joined.
    pub(crate) rooms: HashSet<String>,
    /// The user its token names (`sub`), if any.
    pub(crate) user: Option<String>,
    /// While a rejoin recovers a room's history, that room's live messages
    /// wait here (see [`Hold`]); boxed, as few sockets ever hold.
    hold: parking_lot::Mutex<Option<Box<Hold>>>,
    holding: std::sync::atomic::AtomicBool,
}

impl LocalSocket {
    pub fn new(outbox: Arc<Outbox>) -> LocalSocket {
        LocalSocket {
            outbox,
            rooms: HashSet::new(),
            user: None,
            hold: parking_lot::Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts holding `room`'s live messages for this socket, at most
    /// `max_bytes` of them (more are dropped and the recovery fails).
    pub(crate) fn start_hold(&self, room: &str, max_bytes: usize) {
        *self.hold.lock() = Some(Box::new(Hold {
            room: room.to_string(),
            frames: Vec::new(),
            bytes: 0,
            max_bytes,
            overflowed: false,
        }));
        self.holding.store(true, Relaxed);
    }

    /// Stops holding and returns what was held.
    pub(crate) fn end_hold(&self) -> Option<Box<Hold>> {
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
        let outbox = &self.outbox;
        if outbox
            .close_code()
            .is_some_and(|c| !close::flushes_queue(c))
        {
            // Closing without a flush: nothing queued will be sent.
            return false;
        }
        let len = frame.bytes().len();
        let before = outbox.queued.fetch_add(len, Relaxed);
        let full = before > 0 && before.saturating_add(len) > max_bytes;
        let queued = !full
            && outbox.push(Outgoing {
                payload: Payload::Data(frame.clone()),
                since: volatile.then(Instant::now),
            });
        if queued {
            metrics.outbound_bytes.add(len as i64);
            metrics.messages_out.with_label_values(&[scope]).inc();
            return true;
        }
        outbox.queued.fetch_sub(len, Relaxed);
        if outbox.close(close::SLOW_CONSUMER) {
            tracing::warn!(socket = %id, queued_bytes = before, "closing slow consumer: outbound queue full");
        }
        false
    }

    /// Queues a control frame (ping, pong), outside the byte count; with
    /// the queue full it is dropped (a client that pings and never reads
    /// cannot make pongs pile up; it is closed as a slow consumer by the
    /// next data frame).
    pub(crate) fn control(&self, op: OpCode, payload: Bytes) {
        let _ = self.outbox.push(Outgoing {
            payload: Payload::Control(op, payload),
            since: None,
        });
    }

    /// Asks the connection task to close the socket with `code`.
    pub(crate) fn close(&self, code: u16) {
        self.outbox.close(code);
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

    /// The body of an envelope, kept as a slice of the broker's buffer.
    pub(crate) fn from_body(body: Bytes, binary: bool) -> Option<Frame> {
        if binary {
            Some(Frame::Binary(body))
        } else {
            Utf8Bytes::try_from(body).ok().map(Frame::Text)
        }
    }
}
