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

use crate::backplane::{node_channel, room_channel, Inbound};
use crate::envelope::Envelope;
use crate::protocol;
use crate::rooms::{Frame, Node, State};
use crate::shed;
use bytes::Bytes;
use limpet_config::NodeLimits;
use parking_lot::MutexGuard;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

impl State {
    /// Remembers `socket` (on `node`) as a member of `room`, within the
    /// bounds. `Ok(true)`: new member; `Ok(false)`: known already, or the
    /// room has no local members (so nobody here cares). `Err`: the bound
    /// that refused it.
    pub(crate) fn add_remote(
        &mut self,
        room: &str,
        socket: &str,
        node: &str,
        limits: &NodeLimits,
    ) -> Result<bool, &'static str> {
        let total = self.remote_total;
        let Some(r) = self.rooms.get_mut(room) else {
            return Ok(false);
        };
        if r.remote.contains_key(socket) {
            return Ok(false);
        }
        if r.remote.len() >= limits.max_remote_members_per_room {
            return Err("room_members");
        }
        if total >= limits.max_remote_members {
            return Err("node_members");
        }
        r.remote.insert(socket.to_string(), node.to_string());
        self.remote_total += 1;
        Ok(true)
    }

    /// Forgets a remote member; whether it was known.
    pub(crate) fn remove_remote(&mut self, room: &str, socket: &str) -> bool {
        let removed = self
            .rooms
            .get_mut(room)
            .is_some_and(|r| r.remote.remove(socket).is_some());
        if removed {
            self.remote_total -= 1;
        }
        removed
    }
}

impl Node {
    fn refuse_remote(&self, reason: &'static str, room: &str, node: &str) {
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
                frames.push(protocol::left(room, s, node, reason));
            }
        }
        for s in now.into_iter().filter(|s| !had.contains(*s)) {
            match st.add_remote(room, s, node, &self.config.limits) {
                Ok(true) => frames.push(protocol::joined(room, s, node)),
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
        let rooms: Vec<String> = st
            .rooms
            .iter()
            .filter(|(_, r)| r.remote.values().any(|n| n == node))
            .map(|(name, _)| name.clone())
            .collect();
        for room in rooms {
            self.apply_members(&mut st, &room, node, &[], reason);
        }
    }

    /// Handles everything that arrives from the broker.
    pub async fn run_inbound(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Inbound>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Inbound::Reconnected => self.resync(),
                Inbound::Message {
                    channel,
                    payload,
                    since,
                } => {
                    self.on_message(&channel, &payload, since);
                    self.backplane.handled(payload.len());
                }
            }
        }
    }

    /// After the broker came back: tell every room who is here, and ask
    /// who is there. (Peers' heartbeat clocks restart with the connection;
    /// see `run_heartbeats`.)
    fn resync(&self) {
        let st = self.state.lock();
        for room in st.rooms.keys() {
            let members = Envelope::Members {
                origin: self.id.clone(),
                room: room.clone(),
                members: self.local_members(&st, room),
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
                        members: self.local_members(&st, &room),
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
                let mut peers = self.peers.lock();
                let fresh = !peers.contains_key(&origin);
                if fresh && peers.len() >= self.config.limits.max_peer_nodes {
                    drop(peers);
                    self.metrics
                        .backplane
                        .rejected
                        .with_label_values(&["peers"])
                        .inc();
                    return;
                }
                peers.insert(origin.clone(), Instant::now());
                drop(peers);
                if fresh {
                    tracing::info!(node = %self.id, peer = %origin, "peer node seen");
                }
            }
            Envelope::Bye { origin } => {
                self.peers.lock().remove(&origin);
                tracing::info!(node = %self.id, peer = %origin, "peer node left");
                self.drop_node(&origin, "node_down");
            }
            Envelope::Who {
                origin,
                room,
                query,
            } => {
                let st = self.state.lock();
                let reply = Envelope::Found {
                    origin: self.id.clone(),
                    members: self.local_members(&st, &room),
                    room,
                    query,
                };
                self.publish(node_channel(&origin), &reply, b"");
            }
            Envelope::Found {
                origin,
                query,
                members,
                ..
            } => self.on_found(&origin, query, &members),
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
