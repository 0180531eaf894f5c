//! Sockets and rooms of one node, and the messages that keep rooms whole
//! across nodes.
//!
//! Each room with members here is one broker channel: subscribed when the
//! first local member joins, unsubscribed after the last leaves, so
//! cross-node traffic follows interest. A room message is delivered to
//! local members in-process and published once; every published envelope
//! names its origin node, and a node ignores its own envelopes, so nobody
//! gets a message twice. Rooms also keep the remote members they have
//! heard of (from join/leave announcements and sync replies), which is how
//! a dead node's members are reported as left.
//!
//! Envelopes are built in [`crate::envelope`]; what arrives from the
//! broker is handled in [`crate::inbound`].

use crate::addresses::Addresses;
use crate::backplane::{node_channel, room_channel, Backplane, Inbound, Settings, NODES_CHANNEL};
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::protocol::{self, Code, Failure};
use crate::seal::Seal;
use crate::shed::MaxAge;
use bytes::Bytes;
use limpet_config::NodeConfig;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
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

    /// How long queued frames may take to reach a closing client.
    pub const FLUSH_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

    /// Whether frames already queued are sent before this close: yes when
    /// the client is still reading (it caused the close, or we drain);
    /// no for a slow consumer or a client that stopped answering pings.
    pub fn flushes_queue(code: u16) -> bool {
        !matches!(code, SLOW_CONSUMER | HEARTBEAT)
    }
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
    rooms: HashSet<String>,
    /// Set to a close code to make the connection task close the socket.
    closer: watch::Sender<Option<u16>>,
}

#[derive(Default)]
pub struct Room {
    pub(crate) local: HashSet<String>,
    /// Remote socket id → its node.
    pub(crate) remote: HashMap<String, String>,
}

#[derive(Default)]
pub struct State {
    pub(crate) sockets: HashMap<String, LocalSocket>,
    pub(crate) rooms: HashMap<String, Room>,
    /// Remote members across all rooms (bounded by `limits.max_remote_members`).
    pub(crate) remote_total: usize,
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

    fn bytes(&self) -> &[u8] {
        match self {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    fn to_message(&self) -> Message {
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

/// A presence query waiting for other nodes' answers.
pub(crate) struct WhoQuery {
    pub expected: HashSet<String>,
    pub members: Vec<(String, String)>,
    pub answered: HashSet<String>,
    pub done: Option<oneshot::Sender<()>>,
}

pub struct Node {
    pub id: String,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    pub backplane: Backplane,
    pub draining: AtomicBool,
    pub addresses: Arc<Addresses>,
    pub(crate) state: Mutex<State>,
    /// Peer node → last heartbeat.
    pub(crate) peers: Mutex<HashMap<String, Instant>>,
    pub(crate) queries: Mutex<HashMap<u64, WhoQuery>>,
    pub(crate) next_query: AtomicU64,
    incarnation: String,
    next_socket: AtomicU64,
    /// How long a room or direct message may wait in one queue.
    pub(crate) max_age: MaxAge,
}

impl Node {
    /// Creates the node and its backplane; returns the stream of backplane
    /// messages for [`Node::run_inbound`].
    pub fn new(config: NodeConfig) -> (Arc<Node>, mpsc::UnboundedReceiver<Inbound>) {
        let metrics = Arc::new(Metrics::new());
        let max_age = MaxAge::new(config.limits.max_queue_delay.get());
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let backplane = Backplane::spawn(
            Settings {
                urls: config.broker.clone(),
                cluster: config.cluster,
                seal: Seal::new(config.cluster_secret.as_deref()),
                inbound_queue_bytes: config.limits.inbound_queue_bytes.bytes() as usize,
                publish_queue_bytes: config.limits.publish_queue_bytes.bytes() as usize,
                max_age,
            },
            inbound_tx,
            metrics.backplane.clone(),
        );
        let id = config.node_id();
        let addresses = Addresses::new(&config.limits);
        backplane.subscribe(node_channel(&id));
        backplane.subscribe(NODES_CHANNEL.to_string());
        // Socket ids must not repeat across restarts of the same node id.
        let incarnation = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                % 0xff_ffff_ffff
        );
        let node = Arc::new(Node {
            id,
            config,
            metrics,
            backplane,
            draining: AtomicBool::new(false),
            addresses,
            state: Mutex::new(State::default()),
            peers: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
            next_query: AtomicU64::new(1),
            incarnation,
            next_socket: AtomicU64::new(1),
            max_age,
        });
        (node, inbound_rx)
    }

    pub fn next_socket_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.id,
            self.incarnation,
            self.next_socket.fetch_add(1, Relaxed)
        )
    }

    pub fn add_socket(
        &self,
        id: &str,
        tx: mpsc::Sender<Outgoing>,
        queued: Arc<AtomicUsize>,
        closer: watch::Sender<Option<u16>>,
    ) {
        self.state.lock().sockets.insert(
            id.to_string(),
            LocalSocket {
                tx,
                queued,
                rooms: HashSet::new(),
                closer,
            },
        );
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
    }

    /// Forgets a socket, leaving its rooms (others see `left`/`disconnect`).
    pub fn remove_socket(&self, id: &str) {
        let rooms: Vec<String> = {
            let st = self.state.lock();
            match st.sockets.get(id) {
                Some(s) => s.rooms.iter().cloned().collect(),
                None => return,
            }
        };
        for room in rooms {
            let _ = self.leave(id, &room, "disconnect");
        }
        if self.state.lock().sockets.remove(id).is_some() {
            self.metrics.connections.dec();
        }
    }

    pub fn socket_count(&self) -> usize {
        self.state.lock().sockets.len()
    }

    /// Asks every local socket's connection task to close with `code`.
    pub fn close_all(&self, code: u16) {
        for s in self.state.lock().sockets.values() {
            let _ = s.closer.send(Some(code));
        }
    }

    /// Queues a frame to every local socket (the shutdown notice).
    pub fn broadcast_local(&self, frame: &str) {
        let st = self.state.lock();
        let msg = Frame::text(frame.to_string());
        for (id, _) in st.sockets.iter() {
            self.deliver(&st, id, &msg, "local");
        }
    }

    /// Queues `frame` for socket `id`; a queue full in bytes or in
    /// messages closes the socket (slow consumer) instead of blocking
    /// anyone. A frame bigger than the whole byte budget still goes to an
    /// idle socket, so one large message never closes a reader that keeps up.
    pub(crate) fn deliver(&self, st: &State, id: &str, frame: &Frame, scope: &str) -> bool {
        self.deliver_as(st, id, frame, scope, false)
    }

    /// [`Node::deliver`], for a room or direct message when `volatile`:
    /// the writer drops it if it waits past `limits.max_queue_delay`.
    pub(crate) fn deliver_as(
        &self,
        st: &State,
        id: &str,
        frame: &Frame,
        scope: &str,
        volatile: bool,
    ) -> bool {
        let Some(sock) = st.sockets.get(id) else {
            return false;
        };
        let len = frame.bytes().len();
        let max = self.config.limits.outbound_queue_bytes.bytes() as usize;
        let before = sock.queued.fetch_add(len, Relaxed);
        let full = before > 0 && before.saturating_add(len) > max;
        let result = if full {
            Err(mpsc::error::TrySendError::Full(()))
        } else {
            let out = Outgoing {
                msg: frame.to_message(),
                since: volatile.then(Instant::now),
            };
            sock.tx.try_send(out).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            })
        };
        match result {
            Ok(()) => {
                self.metrics.outbound_bytes.add(len as i64);
                self.metrics.messages_out.with_label_values(&[scope]).inc();
                true
            }
            Err(e) => {
                sock.queued.fetch_sub(len, Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(()))
                    && sock
                        .closer
                        .send_replace(Some(close::SLOW_CONSUMER))
                        .is_none()
                {
                    tracing::warn!(node = %self.id, socket = %id, queued_bytes = before, "closing slow consumer: outbound queue full");
                }
                false
            }
        }
    }

    /// Queues a control message (ping) for one socket.
    pub fn reply_message(&self, id: &str, msg: Message) {
        if let Some(sock) = self.state.lock().sockets.get(id) {
            let _ = sock.tx.try_send(Outgoing { msg, since: None });
        }
    }

    /// Sends a frame to one socket from the connection task itself.
    pub fn reply(&self, id: &str, text: String) {
        let st = self.state.lock();
        self.deliver(&st, id, &Frame::text(text), "local");
    }

    pub(crate) fn deliver_room(
        &self,
        st: &State,
        room: &str,
        frame: &Frame,
        except: Option<&str>,
        scope: &str,
        volatile: bool,
    ) {
        if let Some(r) = st.rooms.get(room) {
            for member in &r.local {
                if Some(member.as_str()) != except {
                    self.deliver_as(st, member, frame, scope, volatile);
                }
            }
        }
    }

    /// Room and direct messages are volatile on the backplane (shed
    /// first); membership and control envelopes are not.
    pub(crate) fn publish(&self, channel: String, envelope: &Envelope, body: &[u8]) {
        self.backplane
            .publish(channel, envelope.encode(body), envelope.volatile());
    }

    pub fn validate_room(&self, room: Option<&str>) -> Result<String, Failure> {
        let room = room.ok_or_else(|| Failure::new(Code::BadRequest, "`room` is required"))?;
        if room.is_empty() {
            return Err(Failure::new(
                Code::InvalidRoom,
                "room names cannot be empty",
            ));
        }
        let max = self.config.limits.max_room_name_bytes;
        if room.len() > max {
            return Err(Failure::new(
                Code::RoomNameTooLong,
                format!("room names are at most {max} bytes"),
            ));
        }
        Ok(room.to_string())
    }

    /// Members this node knows of in `room`: (socket, node).
    fn known_members(&self, st: &State, room: &str) -> Vec<(String, String)> {
        let Some(r) = st.rooms.get(room) else {
            return Vec::new();
        };
        let mut list: Vec<(String, String)> = r
            .local
            .iter()
            .map(|s| (s.clone(), self.id.clone()))
            .collect();
        list.extend(r.remote.iter().map(|(s, n)| (s.clone(), n.clone())));
        list.sort();
        list
    }

    pub fn join(&self, socket: &str, room: &str) -> Result<Vec<(String, String)>, Failure> {
        let mut st = self.state.lock();
        let max_rooms = self.config.limits.max_rooms_per_socket;
        let sock = st
            .sockets
            .get_mut(socket)
            .ok_or_else(|| Failure::new(Code::NoSuchSocket, "socket is gone"))?;
        if sock.rooms.contains(room) {
            return Ok(self.known_members(&st, room));
        }
        if sock.rooms.len() >= max_rooms {
            return Err(Failure::new(
                Code::TooManyRooms,
                format!("a socket may be in at most {max_rooms} rooms"),
            ));
        }
        sock.rooms.insert(room.to_string());
        let fresh = !st.rooms.contains_key(room);
        st.rooms
            .entry(room.to_string())
            .or_default()
            .local
            .insert(socket.to_string());
        if fresh {
            self.metrics.rooms.inc();
            // Subscribe first: the backplane runs commands in order, so the
            // announcements below go out after the subscription is live.
            self.backplane.subscribe(room_channel(room));
            let sync = Envelope::Sync {
                origin: self.id.clone(),
                room: room.to_string(),
            };
            self.publish(room_channel(room), &sync, b"");
        }
        let frame = protocol::joined(room, socket, &self.id);
        let envelope = Envelope::Join {
            origin: self.id.clone(),
            room: room.to_string(),
            socket: socket.to_string(),
        };
        self.publish(room_channel(room), &envelope, frame.as_bytes());
        self.deliver_room(&st, room, &Frame::text(frame), Some(socket), "local", false);
        Ok(self.known_members(&st, room))
    }

    pub fn leave(&self, socket: &str, room: &str, reason: &str) -> Result<(), Failure> {
        let mut st = self.state.lock();
        let member = st
            .sockets
            .get_mut(socket)
            .is_some_and(|s| s.rooms.remove(room));
        if !member {
            return Err(Failure::new(
                Code::NotMember,
                format!("not a member of `{room}`"),
            ));
        }
        let now_empty = match st.rooms.get_mut(room) {
            Some(r) => {
                r.local.remove(socket);
                r.local.is_empty()
            }
            None => true,
        };
        let frame = protocol::left(room, socket, &self.id, reason);
        let envelope = Envelope::Leave {
            origin: self.id.clone(),
            room: room.to_string(),
            socket: socket.to_string(),
        };
        self.publish(room_channel(room), &envelope, frame.as_bytes());
        self.deliver_room(&st, room, &Frame::text(frame), None, "local", false);
        if now_empty {
            if let Some(gone) = st.rooms.remove(room) {
                st.remote_total -= gone.remote.len();
                self.metrics.remote_members.set(st.remote_total as i64);
            }
            self.metrics.rooms.dec();
            self.backplane.unsubscribe(room_channel(room));
        }
        Ok(())
    }

    /// A room message from a local socket (or from the publish API when
    /// `socket` is `None`).
    pub fn emit(
        &self,
        socket: Option<&str>,
        room: &str,
        frame: Frame,
        include_self: bool,
    ) -> Result<(), Failure> {
        let st = self.state.lock();
        if let Some(socket) = socket {
            let member = st
                .sockets
                .get(socket)
                .is_some_and(|s| s.rooms.contains(room));
            if !member {
                return Err(Failure::new(
                    Code::NotMember,
                    format!("join `{room}` before emitting to it"),
                ));
            }
        }
        let except = if include_self { None } else { socket };
        self.deliver_room(&st, room, &frame, except, "local", true);
        drop(st);
        let envelope = Envelope::Emit {
            origin: self.id.clone(),
            room: room.to_string(),
            binary: matches!(frame, Frame::Binary(_)),
        };
        self.publish(room_channel(room), &envelope, frame.bytes());
        Ok(())
    }

    /// A message to one socket anywhere in the cluster.
    pub fn send_to(&self, to: &str, frame: Frame) -> Result<(), Failure> {
        let node = protocol::node_of(to).ok_or_else(|| {
            Failure::new(Code::NoSuchSocket, format!("`{to}` is not a socket id"))
        })?;
        if node == self.id {
            let st = self.state.lock();
            if !st.sockets.contains_key(to) {
                return Err(Failure::new(
                    Code::NoSuchSocket,
                    format!("no socket `{to}`"),
                ));
            }
            self.deliver_as(&st, to, &frame, "local", true);
            return Ok(());
        }
        let envelope = Envelope::Direct {
            origin: self.id.clone(),
            socket: to.to_string(),
            binary: matches!(frame, Frame::Binary(_)),
        };
        self.publish(node_channel(node), &envelope, frame.bytes());
        Ok(())
    }

    pub(crate) fn local_members(&self, st: &State, room: &str) -> Vec<String> {
        st.rooms
            .get(room)
            .map(|r| r.local.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn room_count(&self) -> usize {
        self.state.lock().rooms.len()
    }

    /// This node's own members of a room.
    pub(crate) fn local_list(&self, room: &str) -> Vec<(String, String)> {
        let st = self.state.lock();
        self.local_members(&st, room)
            .into_iter()
            .map(|s| (s, self.id.clone()))
            .collect()
    }

    /// Turns a raw data payload into an event frame.
    pub fn event_frame(room: &str, event: &str, from: &str, data: Option<&RawValue>) -> Frame {
        Frame::text(protocol::event(room, event, from, data))
    }
}
