//! Who is in which room, as this node knows it: its own sockets and the
//! remote members other nodes announced.
//!
//! Plain data behind the node's one lock. Remote members come from the
//! network (join/leave envelopes and member lists), so what they can make
//! the node hold is bounded here: per room
//! (`limits.max_remote_members_per_room`) and per node
//! (`limits.max_remote_members`). Remote members are only remembered for
//! rooms with local members: nobody here would be told about the others.

use crate::sockets::LocalSocket;
use limpet_config::NodeLimits;
use std::collections::{HashMap, HashSet};

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

/// Which bound refused a remote member (the `reason` label of
/// `limpet_node_backplane_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Bound {
    #[error("room_members")]
    RoomMembers,
    #[error("node_members")]
    NodeMembers,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::RoomMembers => "room_members",
            Bound::NodeMembers => "node_members",
        }
    }
}

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
    ) -> Result<bool, Bound> {
        let total = self.remote_total;
        let Some(r) = self.rooms.get_mut(room) else {
            return Ok(false);
        };
        if r.remote.contains_key(socket) {
            return Ok(false);
        }
        if r.remote.len() >= limits.max_remote_members_per_room {
            return Err(Bound::RoomMembers);
        }
        if total >= limits.max_remote_members {
            return Err(Bound::NodeMembers);
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

    /// This node's own members of `room`.
    pub(crate) fn local_members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|r| r.local.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Members this node knows of in `room`, as (socket, node), sorted;
    /// `me` is this node's id.
    pub(crate) fn known_members(&self, room: &str, me: &str) -> Vec<(String, String)> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut list: Vec<(String, String)> = r
            .local
            .iter()
            .map(|s| (s.clone(), me.to_string()))
            .collect();
        list.extend(r.remote.iter().map(|(s, n)| (s.clone(), n.clone())));
        list.sort();
        list
    }

    /// The rooms `node` has members in, as we know it.
    pub(crate) fn rooms_of_node(&self, node: &str) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.remote.values().any(|n| n == node))
            .map(|(name, _)| name.clone())
            .collect()
    }
}
