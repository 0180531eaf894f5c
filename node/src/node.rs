//! `Node`: one node's shared state, and the plumbing every part of it
//! uses: registering sockets, queueing frames to them, publishing
//! envelopes.
//!
//! The operations live with what they are about: room membership in
//! [`crate::rooms`], what other nodes send in [`crate::inbound`],
//! heartbeats and presence in [`crate::presence`]. The backplane is a
//! [`Backplane`] trait object: [`Node::new`] starts the real one over the
//! broker, [`Node::with_backplane`] takes any (tests use
//! [`crate::backplane::Memory`]).

use crate::addresses::Addresses;
use crate::auth::Verifier;
use crate::backplane::{node_channel, Backplane, InboundQueue, NODES_CHANNEL};
use crate::broker::{Broker, Settings};
use crate::envelope::Envelope;
use crate::history::History;
use crate::membership::State;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::seal::Seal;
use crate::shed::{Lag, MaxAge};
use crate::sockets::{Frame, LocalSocket, Outbox};
use crate::ws::OpCode;
use limpet_config::NodeConfig;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Node {
    pub id: String,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    pub backplane: Arc<dyn Backplane>,
    pub draining: AtomicBool,
    pub addresses: Arc<Addresses>,
    pub(crate) state: Mutex<State>,
    pub(crate) peers: Peers,
    incarnation: String,
    next_socket: AtomicU64,
    /// How long a room or direct message may wait in one queue.
    pub(crate) max_age: MaxAge,
    /// How far behind the node is; `None` with shedding off.
    pub(crate) lag: Option<Arc<Lag>>,
    /// Room history and recovery; `None` with `history.size = 0`.
    pub history: Option<History>,
    /// Token checks; `None` without an `auth` key.
    pub auth: Option<Verifier>,
}

impl Node {
    /// Creates the node and its backplane over the broker; returns the
    /// stream of backplane messages for [`Node::run_inbound`].
    pub fn new(config: NodeConfig) -> (Arc<Node>, InboundQueue) {
        let metrics = Arc::new(Metrics::new());
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let broker = Broker::spawn(
            Settings {
                urls: config.broker.clone(),
                cluster: config.cluster,
                deadlines: crate::broker::Deadlines {
                    connect: config.broker_connect_timeout.get(),
                    response: config.broker_response_timeout.get(),
                },
                backoff_max: config.broker_backoff_max.get(),
                link_thread: config.broker_link_thread,
                seal: Seal::new(config.cluster_secret.as_deref()),
                inbound_queue_bytes: config.limits.inbound_queue_bytes.bytes() as usize,
                publish_queue_bytes: config.limits.publish_queue_bytes.bytes() as usize,
                max_age: MaxAge::new(config.limits.max_queue_delay.get()),
            },
            inbound_tx,
            metrics.backplane.clone(),
        );
        let queue = InboundQueue {
            rx: inbound_rx,
            runtime: broker.link_runtime(),
        };
        (Node::build(config, metrics, Arc::new(broker)), queue)
    }

    /// A node on any backplane; nothing is spawned.
    pub fn with_backplane(config: NodeConfig, backplane: Arc<dyn Backplane>) -> Arc<Node> {
        Node::build(config, Arc::new(Metrics::new()), backplane)
    }

    fn build(
        config: NodeConfig,
        metrics: Arc<Metrics>,
        backplane: Arc<dyn Backplane>,
    ) -> Arc<Node> {
        let id = config.node_id();
        let addresses = Addresses::new(&config.limits);
        let max_age = MaxAge::new(config.limits.max_queue_delay.get());
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
        let auth = match Verifier::from_config(&config) {
            Ok(v) => v,
            Err(e) => {
                // Fail closed: with `auth.required`, every upgrade is refused.
                tracing::error!("{e}; tokens cannot be checked");
                None
            }
        };
        Arc::new_cyclic(|weak| Node {
            history: History::spawn(weak.clone(), &config, metrics.clone()),
            auth,
            id,
            config,
            metrics,
            backplane,
            draining: AtomicBool::new(false),
            addresses,
            state: Mutex::new(State::default()),
            peers: Peers::default(),
            incarnation,
            next_socket: AtomicU64::new(1),
            max_age,
            lag: Lag::spawn(max_age),
        })
    }

    /// Names the user of a local socket (its token's `sub`).
    pub fn set_user(&self, id: &str, user: &str) {
        if let Some(s) = self.state.lock().sockets.get_mut(id) {
            s.user = Some(user.to_string());
        }
    }

    /// The user of a local socket, if it has one.
    pub(crate) fn user_of(&self, st: &State, id: &str) -> Option<String> {
        st.sockets.get(id).and_then(|s| s.user.clone())
    }

    /// A room message back from the history writer (stamped with its
    /// offset, or not when the write failed): local delivery, then one
    /// publish for the other nodes.
    pub(crate) fn deliver_stamped(&self, room: &str, frame: Frame, except: Option<&str>) {
        self.deliver_and_publish(self.state.lock(), room, frame, except);
    }

    /// A room message's way out of this node: delivered to the local
    /// members under `st` (the caller's hold on the state, released here),
    /// then published once for the other nodes.
    pub(crate) fn deliver_and_publish(
        &self,
        st: parking_lot::MutexGuard<'_, State>,
        room: &str,
        frame: Frame,
        except: Option<&str>,
    ) {
        self.deliver_room(&st, room, &frame, except, "local", true);
        drop(st);
        let envelope = Envelope::Emit {
            origin: self.id.clone(),
            room: room.to_string(),
            binary: matches!(frame, Frame::Binary(_)),
        };
        self.publish(
            crate::backplane::room_channel(room),
            &envelope,
            frame.bytes(),
        );
    }

    pub fn next_socket_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.id,
            self.incarnation,
            self.next_socket.fetch_add(1, Relaxed)
        )
    }

    pub fn add_socket(&self, id: &str, outbox: Arc<Outbox>) {
        self.state
            .lock()
            .sockets
            .insert(id.to_string(), LocalSocket::new(outbox));
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

    /// Whether new room and direct messages are refused at the door: the
    /// node is too far behind (see [`crate::shed`]).
    pub(crate) fn overloaded(&self) -> bool {
        self.lag.as_ref().is_some_and(|lag| lag.overloaded())
    }

    pub fn socket_count(&self) -> usize {
        self.state.lock().sockets.len()
    }

    /// Asks every local socket's connection task to close with `code`.
    pub fn close_all(&self, code: u16) {
        for s in self.state.lock().sockets.values() {
            s.close(code);
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

    /// Queues `frame` for socket `id` (see [`LocalSocket::queue`]); whether
    /// it was queued.
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
        let max = self.config.limits.outbound_queue_bytes.bytes() as usize;
        sock.queue(id, frame, volatile, max, &self.metrics, scope)
    }

    /// Queues `frame` for the local members of `room`, but `except`.
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
                    // A member recovering this room's history gets live
                    // messages after the replay (see crate::history).
                    if volatile && st.sockets.get(member).is_some_and(|s| s.held(room, frame)) {
                        continue;
                    }
                    self.deliver_as(st, member, frame, scope, volatile);
                }
            }
        }
    }

    /// Queues a control frame (ping, pong) for one socket.
    pub(crate) fn reply_control(&self, id: &str, op: OpCode, payload: bytes::Bytes) {
        if let Some(sock) = self.state.lock().sockets.get(id) {
            sock.control(op, payload);
        }
    }

    /// Sends a frame to one socket from the connection task itself.
    pub fn reply(&self, id: &str, text: String) {
        let st = self.state.lock();
        self.deliver(&st, id, &Frame::text(text), "local");
    }

    /// Publishes an envelope with `body`. Room and direct messages are
    /// volatile on the backplane (shed first); membership and control
    /// envelopes are not.
    pub(crate) fn publish(&self, channel: String, envelope: &Envelope, body: &[u8]) {
        self.backplane
            .publish(channel, envelope.encode(body), envelope.volatile());
    }
}
