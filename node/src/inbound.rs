//! What arrives from the broker: other nodes' room messages, joins and
//! leaves, member lists, heartbeats and presence answers.
//!
//! Everything here comes from the network and, without `cluster_secret`,
//! from anyone who can publish on the broker. So what it can make the node
//! hold is bounded: remote members per room
//! (`limits.max_remote_members_per_room`) and per node
//! (`limits.max_remote_members`), peer nodes (`limits.max_peer_nodes`),
//! and the bytes waiting in the inbound queue (`limits.inbound_queue_bytes`,
//! enforced by the backplane). Past a bound the envelope is ignored and
//! counted in `limpet_node_backplane_rejected_total{reason}`.

use crate::backplane::{node_channel, room_channel, Inbound, InboundQueue, NODES_CHANNEL};
use crate::envelope::Envelope;
use crate::membership::{Bound, State};
use crate::node::Node;
use crate::protocol;
use crate::shed;
use crate::sockets::Frame;
use bytes::Bytes;
use parking_lot::MutexGuard;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

impl Node {
    fn refuse_remote(&self, bound: Bound, room: &str, node: &str) {
        let reason = bound.as_str();
        let counter = self.metrics.backplane.rejected.with_label_values(&[reason]);
        // One line per thousand refusals: a flood must not flood the log.
        if counter.get().is_multiple_of(1000) {
            tracing::warn!(node = %self.id, %room, peer = %node, bound = reason, "remote member not remembered: bound reached");
        }
        counter.inc();
    }

    /// Applies a node's full member list for a room: members new to us are
    /// announced as joined, vanished ones as left.
    fn apply_members(
        &self,
        st: &mut State,
        room: &str,
        node: &str,
        members: &[String],
        reason: &str,
    ) {
        let Some(r) = st.rooms.get(room) else {
            return;
        };
        let had: HashSet<String> = r
            .remote
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(s, _)| s.clone())
            .collect();
        let now: HashSet<&String> = members.iter().collect();
        let mut frames = Vec::new();
        for s in had.iter().filter(|s| !now.contains(s)) {
            if st.remove_remote(room, s) {
                frames.push(protocol::left(room, s, node, reason, None));
            }
        }
        for s in now.into_iter().filter(|s| !had.contains(*s)) {
            match st.add_remote(room, s, node, &self.config.limits) {
                Ok(true) => frames.push(protocol::joined(room, s, node, None)),
                Ok(false) => {}
                Err(reason) => self.refuse_remote(reason, room, node),
            }
        }
        self.metrics.remote_members.set(st.remote_total as i64);
        for f in frames {
            self.deliver_room(st, room, &Frame::text(f), None, "cross_node", false);
        }
    }

    /// Drops every member of a dead or departed node.
    pub(crate) fn drop_node(&self, node: &str, reason: &str) {
        let mut st = self.state.lock();
        for room in st.rooms_of_node(node) {
            self.apply_members(&mut st, &room, node, &[], reason);
        }
    }

    /// Handles everything that arrives from the broker, on the runtime
    /// that reads the broker connection (the node's own, or the link
    /// thread's with `broker_link_thread`), else on a thread of its own.
    /// (Handling is synchronous: it only takes locks and queues frames.)
    pub fn run_inbound(self: Arc<Self>, queue: InboundQueue) -> std::io::Result<()> {
        let InboundQueue { mut rx, runtime } = queue;
        if let Some(runtime) = runtime {
            runtime.spawn(async move {
                while let Some(msg) = rx.recv().await {
                    self.on_inbound(msg);
                }
            });
            return Ok(());
        }
        std::thread::Builder::new()
            .name("limpet-inbound".into())
            .spawn(move || {
                while let Some(msg) = rx.blocking_recv() {
                    self.on_inbound(msg);
                }
            })
            .map(drop)
    }

    /// Handles one message from the backplane.
    pub fn on_inbound(&self, msg: Inbound) {
        match msg {
            Inbound::Reconnected => self.resync(),
            Inbound::Message {
                channel,
                payload,
                since,
            } => {
                if let Some(lag) = &self.lag {
                    lag.inbound_waited(since.elapsed());
                }
                self.on_message(&channel, &payload, since);
                self.backplane.handled(payload.len());
            }
        }
    }

    /// After the broker came back: tell every room who is here, and ask
    /// who is there. (Peers' heartbeat clocks restart with the connection;
    /// see `run_heartbeats`.)
    ///
    /// A heartbeat goes first: a peer that declared us dead during the
    /// outage takes us back as live before our member lists arrive (the
    /// broker keeps one connection's publishes in order), so a presence
    /// query there right after the `joined` events already counts us. The
    /// periodic heartbeat could come up to `node_interval` later.
    fn resync(&self) {
        let hb = Envelope::Heartbeat {
            origin: self.id.clone(),
        };
        self.publish(NODES_CHANNEL.to_string(), &hb, b"");
        let st = self.state.lock();
        for room in st.rooms.keys() {
            let members = Envelope::Members {
                origin: self.id.clone(),
                room: room.clone(),
                members: st.local_members(room),
            };
            self.publish(room_channel(room), &members, b"");
            let sync = Envelope::Sync {
                origin: self.id.clone(),
                room: room.clone(),
            };
            self.publish(room_channel(room), &sync, b"");
        }
    }

    /// `since`: when it came off the broker connection; a room or direct
    /// message that waited past `limits.max_queue_delay` is dropped.
    fn on_message(&self, _channel: &str, payload: &Bytes, since: Instant) {
        let Some((envelope, body)) = Envelope::decode(payload) else {
            tracing::debug!(node = %self.id, "ignoring a malformed backplane message");
            return;
        };
        if envelope.origin() == self.id {
            // Our own publish: already delivered locally.
            return;
        }
        if envelope.volatile() && self.max_age.expired(since) {
            shed::count(
                &self.metrics.backplane.shed,
                shed::Path::BrokerToNode,
                shed::Reason::TooOld,
            );
            return;
        }
        match envelope {
            Envelope::Emit { room, binary, .. } => {
                let Some(frame) = Frame::from_body(body, binary) else {
                    return;
                };
                let st = self.state.lock();
                self.deliver_room(&st, &room, &frame, None, "cross_node", true);
            }
            Envelope::Join {
                origin,
                room,
                socket,
            } => {
                let mut st = self.state.lock();
                // Only news is announced: a join we already know of, or one
                // past the bounds, is not.
                let news = match st.add_remote(&room, &socket, &origin, &self.config.limits) {
                    Ok(added) => added,
                    Err(reason) => {
                        self.refuse_remote(reason, &room, &origin);
                        false
                    }
                };
                self.announce(st, &room, body, news);
            }
            Envelope::Leave { room, socket, .. } => {
                let mut st = self.state.lock();
                // Nor is a leave of someone we never listed.
                let news = st.remove_remote(&room, &socket);
                self.announce(st, &room, body, news);
            }
            Envelope::Sync { origin, room } => {
                let st = self.state.lock();
                if st.rooms.contains_key(&room) {
                    let reply = Envelope::Members {
                        origin: self.id.clone(),
                        members: st.local_members(&room),
                        room,
                    };
                    self.publish(node_channel(&origin), &reply, b"");
                }
            }
            Envelope::Members {
                origin,
                room,
                members,
            } => {
                let mut st = self.state.lock();
                self.apply_members(&mut st, &room, &origin, &members, "disconnect");
            }
            Envelope::Direct { socket, binary, .. } => {
                let Some(frame) = Frame::from_body(body, binary) else {
                    return;
                };
                let st = self.state.lock();
                if !self.deliver_as(&st, &socket, &frame, "cross_node", true) {
                    tracing::debug!(node = %self.id, %socket, "direct message for an unknown socket dropped");
                }
            }
            Envelope::Heartbeat { origin } => {
                match self.peers.heard(&origin, self.config.limits.max_peer_nodes) {
                    Ok(true) => tracing::info!(node = %self.id, peer = %origin, "peer node seen"),
                    Ok(false) => {}
                    Err(full) => self
                        .metrics
                        .backplane
                        .rejected
                        .with_label_values(&[&full.to_string()])
                        .inc(),
                }
            }
            Envelope::Bye { origin } => {
                self.peers.forget(&origin);
                tracing::info!(node = %self.id, peer = %origin, "peer node left");
                self.drop_node(&origin, "node_down");
            }
            Envelope::Who {
                origin,
                room,
                query,
            } => {
                let st = self.state.lock();
                let members = st.local_members(&room);
                let users = members
                    .iter()
                    .map(|s| self.user_of(&st, s).unwrap_or_default())
                    .collect();
                let reply = Envelope::Found {
                    origin: self.id.clone(),
                    members,
                    users,
                    room,
                    query,
                };
                self.publish(node_channel(&origin), &reply, b"");
            }
            Envelope::Found {
                origin,
                query,
                members,
                users,
                ..
            } => self.peers.answer(query, &origin, &members, &users),
        }
    }

    /// After a remote join or leave: updates the gauge and, when it was
    /// news, hands the body (the `joined`/`left` frame) to local members.
    fn announce(&self, st: MutexGuard<'_, State>, room: &str, body: Bytes, news: bool) {
        self.metrics.remote_members.set(st.remote_total as i64);
        if news {
            if let Some(frame) = Frame::from_body(body, false) {
                self.deliver_room(&st, room, &frame, None, "cross_node", false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::{Command, Memory};
    use crate::sockets::Outbox;
    use limpet_config::NodeConfig;

    const SECRET: &str = "0123456789abcdef";

    /// A node "n1" on an in-memory backplane.
    fn node(edit: impl FnOnce(&mut NodeConfig)) -> (Arc<Node>, Arc<Memory>) {
        let mut config = NodeConfig {
            id: Some("n1".into()),
            ..NodeConfig::default()
        };
        edit(&mut config);
        let memory = Arc::new(Memory::new(config.cluster_secret.as_deref()));
        let node = Node::with_backplane(config, memory.clone());
        (node, memory)
    }

    /// A local socket; its queue, to read what it was sent.
    fn socket(node: &Node, id: &str) -> Arc<Outbox> {
        let outbox = Outbox::new(64);
        node.add_socket(id, outbox.clone());
        outbox
    }

    /// The text frames queued for a socket so far.
    fn frames(outbox: &Outbox) -> Vec<serde_json::Value> {
        outbox
            .take()
            .iter()
            .map(|o| serde_json::from_str(o.text().unwrap_or_default()).unwrap_or_default())
            .collect()
    }

    /// What the broker would hand the node, sealed with the node's own
    /// secret (if any), as a peer of the same cluster would.
    fn feed(node: &Node, memory: &Memory, envelope: &Envelope, body: &str) {
        let channel = match envelope {
            Envelope::Direct { .. } => node_channel(&node.id),
            _ => room_channel("r"),
        };
        let payload = envelope.encode(body.as_bytes());
        let payload =
            crate::seal::Seal::new(node.config.cluster_secret.as_deref()).seal(&channel, payload);
        feed_raw(node, memory, &channel, payload);
    }

    fn feed_raw(node: &Node, memory: &Memory, channel: &str, payload: Bytes) {
        if let Some(msg) = memory.receive(channel, payload) {
            node.on_inbound(msg);
        }
    }

    fn join(from: &str, socket: &str) -> (Envelope, String) {
        let e = Envelope::Join {
            origin: from.into(),
            room: "r".into(),
            socket: socket.into(),
        };
        (e, protocol::joined("r", socket, from, None))
    }

    fn remote(node: &Node) -> Vec<(String, String)> {
        let st = node.state.lock();
        let mut list: Vec<_> = st
            .rooms
            .get("r")
            .map(|r| {
                r.remote
                    .iter()
                    .map(|(s, n)| (s.clone(), n.clone()))
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list
    }

    #[test]
    fn a_local_join_subscribes_then_announces() {
        let (node, memory) = node(|_| {});
        let _a = socket(&node, "n1.x.1");
        memory.take();
        node.join("n1.x.1", "r").unwrap();
        let cmds = memory.take();
        assert_eq!(cmds[0], Command::Subscribe(room_channel("r")));
        let kinds: Vec<Envelope> = cmds[1..]
            .iter()
            .filter_map(|c| match c {
                Command::Publish { envelope, .. } => Envelope::decode(envelope).map(|(e, _)| e),
                _ => None,
            })
            .collect();
        assert!(matches!(kinds[0], Envelope::Sync { .. }));
        assert!(matches!(kinds[1], Envelope::Join { ref socket, .. } if socket == "n1.x.1"));
    }

    #[test]
    fn a_join_from_another_node_is_remembered_and_announced_once() {
        let (node, memory) = node(|_| {});
        let a = socket(&node, "n1.x.1");
        node.join("n1.x.1", "r").unwrap();
        frames(&a);
        let (e, body) = join("n2", "n2.y.1");
        feed(&node, &memory, &e, &body);
        feed(&node, &memory, &e, &body);
        assert_eq!(remote(&node), vec![("n2.y.1".into(), "n2".into())]);
        let got = frames(&a);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "joined");
        assert_eq!(got[0]["socket"], "n2.y.1");
        assert_eq!(node.metrics.remote_members.get(), 1);
        // The local member list now includes the remote member.
        let members = node.join("n1.x.1", "r").unwrap();
        assert!(members.contains(&("n2.y.1".into(), "n2".into())));
    }

    #[test]
    fn a_leave_from_another_node_removes_the_member() {
        let (node, memory) = node(|_| {});
        let a = socket(&node, "n1.x.1");
        node.join("n1.x.1", "r").unwrap();
        let (e, body) = join("n2", "n2.y.1");
        feed(&node, &memory, &e, &body);
        frames(&a);
        let leave = Envelope::Leave {
            origin: "n2".into(),
            room: "r".into(),
            socket: "n2.y.1".into(),
        };
        let left = protocol::left("r", "n2.y.1", "n2", "leave", None);
        feed(&node, &memory, &leave, &left);
        // A second leave is not news.
        feed(&node, &memory, &leave, &left);
        assert!(remote(&node).is_empty());
        let got = frames(&a);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "left");
        assert_eq!(node.metrics.remote_members.get(), 0);
    }

    #[test]
    fn an_emit_reaches_each_local_member_once_and_no_one_else() {
        let (node, memory) = node(|_| {});
        let a = socket(&node, "n1.x.1");
        let b = socket(&node, "n1.x.2");
        let outsider = socket(&node, "n1.x.3");
        node.join("n1.x.1", "r").unwrap();
        node.join("n1.x.2", "r").unwrap();
        for s in [&a, &b, &outsider] {
            frames(s);
        }
        let emit = |origin: &str| Envelope::Emit {
            origin: origin.into(),
            room: "r".into(),
            binary: false,
        };
        let body = protocol::event("r", "chat", "n2.y.1", None, None);
        feed(&node, &memory, &emit("n2"), &body);
        // Our own envelope coming back from the broker is not delivered again.
        feed(&node, &memory, &emit("n1"), &body);
        for s in [&a, &b] {
            let got = frames(s);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0]["event"], "chat");
        }
        assert!(frames(&outsider).is_empty());
    }

    #[test]
    fn remote_members_stay_within_their_bounds() {
        let (node, memory) = node(|c| {
            c.limits.max_remote_members_per_room = 2;
            c.limits.max_remote_members = 3;
        });
        let _a = socket(&node, "n1.x.1");
        node.join("n1.x.1", "r").unwrap();
        for i in 0..5 {
            let (e, body) = join("n2", &format!("n2.y.{i}"));
            feed(&node, &memory, &e, &body);
        }
        assert_eq!(remote(&node).len(), 2);
        let rejected = |why: &str| {
            node.metrics
                .backplane
                .rejected
                .with_label_values(&[why])
                .get()
        };
        assert_eq!(rejected("room_members"), 3);
        // A member list cannot go past the bound either.
        let list = Envelope::Members {
            origin: "n3".into(),
            room: "r".into(),
            members: (0..10).map(|i| format!("n3.z.{i}")).collect(),
        };
        feed(&node, &memory, &list, "");
        assert_eq!(remote(&node).len(), 2);
        assert_eq!(rejected("room_members"), 13);
        // Nor heartbeats from more peers than allowed.
        let max = node.config.limits.max_peer_nodes;
        for i in 0..max + 5 {
            let hb = Envelope::Heartbeat {
                origin: format!("p{i}"),
            };
            feed(&node, &memory, &hb, "");
        }
        assert_eq!(node.peer_count(), max);
        assert_eq!(rejected("peers"), 5);
    }

    #[test]
    fn an_unsealed_envelope_is_dropped_when_a_secret_is_set() {
        let (node, memory) = node(|c| c.cluster_secret = Some(SECRET.into()));
        let a = socket(&node, "n1.x.1");
        node.join("n1.x.1", "r").unwrap();
        frames(&a);
        let (e, body) = join("n2", "n2.y.1");
        let channel = room_channel("r");
        feed_raw(&node, &memory, &channel, e.encode(body.as_bytes()));
        let forged = crate::seal::Seal::new(Some("another secret!!"))
            .seal(&channel, e.encode(body.as_bytes()));
        feed_raw(&node, &memory, &channel, forged);
        assert!(remote(&node).is_empty());
        assert!(frames(&a).is_empty());
        // Sealed with the cluster's secret, the same join is taken.
        feed(&node, &memory, &e, &body);
        assert_eq!(remote(&node).len(), 1);
        assert_eq!(frames(&a).len(), 1);
    }
}
