//! The backplane as the node sees it: a small trait (subscribe,
//! unsubscribe, publish) and the names of the channels every node agrees on.
//!
//! The node never talks to the broker itself: it queues commands on a
//! [`Backplane`] and reads what other nodes sent as [`Inbound`] messages.
//! The real implementation is [`crate::broker::Broker`] (limpet-broker,
//! Redis or Redis Cluster); [`Memory`] records what the node asked for, so
//! the node's logic can be unit-tested without a broker or a runtime.

use crate::seal::Seal;
use bytes::Bytes;
use parking_lot::Mutex;
use std::time::Instant;

/// The channel names every node agrees on.
pub fn room_channel(room: &str) -> String {
    format!("limpet:room:{room}")
}

pub fn node_channel(node: &str) -> String {
    format!("limpet:node:{node}")
}

pub const NODES_CHANNEL: &str = "limpet:nodes";

/// What the backplane hands to the node.
pub enum Inbound {
    Message {
        channel: String,
        payload: Bytes,
        /// When it came off the broker connection (for the age limit).
        since: Instant,
    },
    Reconnected,
}

/// What a backplane hands the node to read: its inbound messages, and the
/// runtime to handle them on (the one that reads the broker connection),
/// or `None` for a thread of their own.
pub struct InboundQueue {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Inbound>,
    pub runtime: Option<tokio::runtime::Handle>,
}

/// What the node needs from a backplane. Every call returns at once:
/// commands run later, in the order they were queued (a subscribe before a
/// publish on the same channel takes effect first).
pub trait Backplane: Send + Sync {
    fn subscribe(&self, channel: String);
    fn unsubscribe(&self, channel: String);
    /// Queues an envelope for `channel`. `volatile` (room and direct
    /// messages) may be shed under load; the others are kept longer.
    fn publish(&self, channel: String, envelope: Bytes, volatile: bool);
    /// The node has handled an inbound message of `len` bytes (it leaves
    /// the inbound byte budget).
    fn handled(&self, len: usize);
    /// Resolves once every command queued before it has run (e.g. a
    /// subscription is live); `None` when the backplane cannot tell.
    fn barrier(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
    fn is_connected(&self) -> bool;
    /// When the current connection came up; `None` while disconnected.
    fn connected_since(&self) -> Option<Instant>;
}

/// One command a [`Memory`] backplane was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish {
        channel: String,
        envelope: Bytes,
        volatile: bool,
    },
}

/// A backplane that only records: for tests of the node.
pub struct Memory {
    commands: Mutex<Vec<Command>>,
    since: Instant,
    seal: Seal,
}

impl Memory {
    /// `secret`: the cluster's, checked on what [`Memory::receive`] gets.
    pub fn new(secret: Option<&str>) -> Memory {
        Memory {
            commands: Mutex::new(Vec::new()),
            since: Instant::now(),
            seal: Seal::new(secret),
        }
    }

    /// What the node is handed for a broker message, after the same seal
    /// check the broker connection makes; `None` when it is refused.
    pub fn receive(&self, channel: &str, payload: Bytes) -> Option<Inbound> {
        let envelope = self.seal.open(channel, payload).ok()?;
        Some(Inbound::Message {
            channel: channel.to_string(),
            payload: envelope,
            since: Instant::now(),
        })
    }

    /// The commands given since the last call.
    pub fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *self.commands.lock())
    }
}

impl Backplane for Memory {
    fn subscribe(&self, channel: String) {
        self.commands.lock().push(Command::Subscribe(channel));
    }

    fn unsubscribe(&self, channel: String) {
        self.commands.lock().push(Command::Unsubscribe(channel));
    }

    fn publish(&self, channel: String, envelope: Bytes, volatile: bool) {
        self.commands.lock().push(Command::Publish {
            channel,
            envelope,
            volatile,
        });
    }

    fn handled(&self, _len: usize) {}

    fn is_connected(&self) -> bool {
        true
    }

    fn connected_since(&self) -> Option<Instant> {
        Some(self.since)
    }
}
