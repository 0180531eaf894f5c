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
use crate::envelope::open_envelope;
use crate::protocol;
use crate::rooms::{Frame, Node, State};
use crate::shed;
use bytes::Bytes;
use limpet_config::NodeLimits;
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
            let mut h = self.header("members");
            h.r = Some(room.clone());
            h.m = Some(self.local_members(&st, room));
            self.publish(room_channel(room), &h, b"");
            let mut h = self.header("sync");
            h.r = Some(room.clone());
            self.publish(room_channel(room), &h, b"");
        }
    }

    /// `since`: when it came off the broker connection; a room or direct
    /// message that waited past `limits.max_queue_delay` is dropped.
    fn on_message(&self, _channel: &str, payload: &Bytes, since: Instant) {
        let Some((h, body)) = open_envelope(payload) else {
            tracing::debug!(node = %self.id, "ignoring a malformed backplane message");
            return;
        };
        if h.o == self.id {
            // Our own publish: already delivered locally.
            return;
        }
        if matches!(h.k.as_str(), "emit" | "direct") && self.max_age.expired(since) {
            shed::count(
                &self.metrics.backplane.shed,
                shed::Path::BrokerToNode,
                shed::Reason::TooOld,
            );
            return;
        }
        match h.k.as_str() {
            "emit" => {
                let (Some(room), Some(frame)) = (h.r.as_deref(), Frame::from_body(body, h.b))
                else {
                    return;
                };
                let st = self.state.lock();
                self.deliver_room(&st, room, &frame, None, "cross_node", true);
            }
            "join" | "leave" => {
                let (Some(room), Some(socket)) = (h.r.as_deref(), h.s.as_deref()) else {
                    return;
                };
                let mut st = self.state.lock();
                // Only news is announced: a join we already know of, one past
                // the bounds, or a leave of someone we never listed is not.
                let news = if h.k == "join" {
                    match st.add_remote(room, socket, &h.o, &self.config.limits) {
                        Ok(added) => added,
                        Err(reason) => {
                            self.refuse_remote(reason, room, &h.o);
                            false
                        }
                    }
                } else {
                    st.remove_remote(room, socket)
                };
                self.metrics.remote_members.set(st.remote_total as i64);
                if news {
                    if let Some(frame) = Frame::from_body(body, false) {
                        self.deliver_room(&st, room, &frame, None, "cross_node", false);
                    }
                }
            }
            "sync" => {
                let Some(room) = h.r.as_deref() else { return };
                let st = self.state.lock();
                if st.rooms.contains_key(room) {
                    let mut reply = self.header("members");
                    reply.r = Some(room.to_string());
                    reply.m = Some(self.local_members(&st, room));
                    self.publish(node_channel(&h.o), &reply, b"");
                }
            }
            "members" => {
                let (Some(room), Some(members)) = (h.r.as_deref(), h.m.as_ref()) else {
                    return;
                };
                let mut st = self.state.lock();
                self.apply_members(&mut st, room, &h.o, members, "disconnect");
            }
            "direct" => {
                let (Some(socket), Some(frame)) = (h.s.as_deref(), Frame::from_body(body, h.b))
                else {
                    return;
                };
                let st = self.state.lock();
                if !self.deliver_as(&st, socket, &frame, "cross_node", true) {
                    tracing::debug!(node = %self.id, %socket, "direct message for an unknown socket dropped");
                }
            }
            "hb" => {
                let mut peers = self.peers.lock();
                let fresh = !peers.contains_key(&h.o);
                if fresh && peers.len() >= self.config.limits.max_peer_nodes {
                    drop(peers);
                    self.metrics
                        .backplane
                        .rejected
                        .with_label_values(&["peers"])
                        .inc();
                    return;
                }
                peers.insert(h.o.clone(), Instant::now());
                drop(peers);
                if fresh {
                    tracing::info!(node = %self.id, peer = %h.o, "peer node seen");
                }
            }
            "bye" => {
                self.peers.lock().remove(&h.o);
                tracing::info!(node = %self.id, peer = %h.o, "peer node left");
                self.drop_node(&h.o, "node_down");
            }
            "who" => {
                let (Some(room), Some(q)) = (h.r.as_deref(), h.q) else {
                    return;
                };
                let st = self.state.lock();
                let mut reply = self.header("found");
                reply.r = Some(room.to_string());
                reply.q = Some(q);
                reply.m = Some(self.local_members(&st, room));
                self.publish(node_channel(&h.o), &reply, b"");
            }
            "found" => self.on_found(&h),
            other => {
                tracing::debug!(node = %self.id, kind = other, "unknown backplane message kind")
            }
        }
    }
}
