//! Rooms: joining, leaving, and messages to a room or to one socket,
//! anywhere in the cluster.
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
//! Who is in a room is [`crate::membership`]; what arrives from other
//! nodes is handled in [`crate::inbound`].

use crate::backplane::{node_channel, room_channel};
use crate::envelope::Envelope;
use crate::protocol::{self, Code, Failure};
use crate::sockets::Frame;
use serde_json::value::RawValue;

// Where `main` and older callers look for them.
pub use crate::node::Node;
pub use crate::sockets::close;

impl Node {
    /// A room name from a client or the publish API, within
    /// `limits.max_room_name_bytes`.
    pub fn validate_room(&self, room: Option<&str>) -> Result<String, Failure> {
        protocol::room(room, self.config.limits.max_room_name_bytes)
    }

    pub fn join(&self, socket: &str, room: &str) -> Result<Vec<(String, String)>, Failure> {
        let mut st = self.state.lock();
        let max_rooms = self.config.limits.max_rooms_per_socket;
        let sock = st
            .sockets
            .get_mut(socket)
            .ok_or_else(|| Failure::new(Code::NoSuchSocket, "socket is gone"))?;
        if sock.rooms.contains(room) {
            return Ok(st.known_members(room, &self.id));
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
        let user = self.user_of(&st, socket);
        let frame = protocol::joined(room, socket, &self.id, user.as_deref());
        let envelope = Envelope::Join {
            origin: self.id.clone(),
            room: room.to_string(),
            socket: socket.to_string(),
        };
        self.publish(room_channel(room), &envelope, frame.as_bytes());
        self.deliver_room(&st, room, &Frame::text(frame), Some(socket), "local", false);
        Ok(st.known_members(room, &self.id))
    }

    /// Waits (at most 2 s) until every broker command queued so far has
    /// run: after a join, until the room's subscription is live, so the
    /// join's ack means that whatever is published in the room from then
    /// on, on any node, reaches the new member. Without it a message
    /// emitted elsewhere right after the ack could pass the subscription
    /// on its way and be lost (seen under load in the cluster tests).
    pub(crate) async fn subscriptions_live(&self) {
        if let Some(live) = self.backplane.barrier() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), live).await;
        }
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
        let user = self.user_of(&st, socket);
        let frame = protocol::left(room, socket, &self.id, reason, user.as_deref());
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
        if let Some(history) = &self.history {
            // Delivered once the broker has given it an offset.
            drop(st);
            if !history.write(room.to_string(), frame, except.map(str::to_string)) {
                return Err(Failure::new(
                    Code::Overloaded,
                    "the node is overloaded: message dropped, send it again later",
                ));
            }
            return Ok(());
        }
        self.deliver_and_publish(st, room, frame, except);
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

    /// Whether local socket `socket` is in `room`.
    pub(crate) fn is_member(&self, socket: &str, room: &str) -> bool {
        self.state
            .lock()
            .sockets
            .get(socket)
            .is_some_and(|s| s.rooms.contains(room))
    }

    pub fn room_count(&self) -> usize {
        self.state.lock().rooms.len()
    }

    /// This node's own members of a room.
    pub(crate) fn local_list(&self, room: &str) -> Vec<crate::peers::Member> {
        let st = self.state.lock();
        st.local_members(room)
            .into_iter()
            .map(|s| {
                let user = self.user_of(&st, &s);
                (s, self.id.clone(), user)
            })
            .collect()
    }

    /// Turns a raw data payload into an event frame.
    pub fn event_frame(
        room: &str,
        event: &str,
        from: &str,
        user: Option<&str>,
        data: Option<&RawValue>,
    ) -> Frame {
        Frame::text(protocol::event(room, event, from, user, data))
    }

    /// Holds `room`'s live messages for socket `id` while its history is
    /// replayed (see [`crate::history`]).
    pub(crate) fn start_hold(&self, id: &str, room: &str) {
        let max = self.config.limits.outbound_queue_bytes.bytes() as usize / 2;
        if let Some(s) = self.state.lock().sockets.get(id) {
            s.start_hold(room, max);
        }
    }

    /// Ends the hold: queues the replayed `frames`, then the held live
    /// messages the replay did not already cover (offset above `upto`).
    /// Whether nothing was dropped on the way.
    pub(crate) fn end_hold(&self, id: &str, frames: &[Frame], upto: Option<u64>) -> bool {
        let st = self.state.lock();
        let Some(hold) = st.sockets.get(id).and_then(|s| s.end_hold()) else {
            return false;
        };
        for f in frames {
            self.deliver(&st, id, f, "recovered");
        }
        for f in &hold.frames {
            let seen = match (crate::history::offset_of(f), upto) {
                (Some(o), Some(upto)) => o <= upto,
                _ => false,
            };
            if !seen {
                self.deliver_as(&st, id, f, "local", true);
            }
        }
        !hold.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::{Command, Memory};
    use crate::sockets::Outbox;
    use std::sync::Arc;

    /// Issue 14: a room message is parsed once (by the caller), encoded
    /// once into one buffer that every local recipient's queue shares,
    /// and published once, with that same frame as the envelope's body.
    #[test]
    fn a_room_message_is_encoded_once_shared_and_published_once() {
        let memory = Arc::new(Memory::new(None));
        let config = limpet_config::NodeConfig {
            id: Some("n1".into()),
            ..Default::default()
        };
        let node = Node::with_backplane(config, memory.clone());
        let outboxes: Vec<_> = (1..=4)
            .map(|i| {
                let id = format!("n1.x.{i}");
                let outbox = Outbox::new(64);
                node.add_socket(&id, outbox.clone());
                node.join(&id, "r").unwrap();
                outbox
            })
            .collect();
        for o in &outboxes {
            o.take();
        }
        memory.take();
        let data = serde_json::value::RawValue::from_string("{\"a\":1}".into()).unwrap();
        let frame = Node::event_frame("r", "chat", "n1.x.1", None, Some(&data));
        node.emit(Some("n1.x.1"), "r", frame, false).unwrap();

        let got: Vec<_> = outboxes.iter().map(|o| o.take()).collect();
        assert!(got[0].is_empty(), "not to the sender");
        let texts: Vec<&str> = got[1..]
            .iter()
            .map(|q| {
                assert_eq!(q.len(), 1);
                q[0].text().unwrap()
            })
            .collect();
        assert!(
            texts.iter().all(|t| t.as_ptr() == texts[0].as_ptr()),
            "every recipient queues the same bytes, not a copy"
        );
        let published: Vec<_> = memory
            .take()
            .into_iter()
            .filter_map(|c| match c {
                Command::Publish { envelope, .. } => Some(envelope),
                _ => None,
            })
            .collect();
        assert_eq!(published.len(), 1, "published once");
        let (_, body) = crate::envelope::Envelope::decode(&published[0]).unwrap();
        assert_eq!(&body[..], texts[0].as_bytes());
    }
}
