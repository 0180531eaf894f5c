//! Which nodes are alive, and who is in a room across the cluster.
//!
//! Every node publishes a heartbeat on `limpet:nodes` each
//! `heartbeat.node_interval`. A peer silent for `heartbeat.node_timeout` is
//! declared dead and its members are reported as `left` with reason
//! `node_down`: with the defaults (1 s, 5 s) that happens at most 6 s after
//! the node died. While our own broker link is down nobody is declared
//! dead (we would only be measuring our own outage).
//!
//! A presence query asks every live node for its local members of the room
//! and waits for all of them (or 1 s, then answers with `complete: false`).
//! The peer table and the open queries are [`crate::peers`].

use crate::backplane::NODES_CHANNEL;
use crate::envelope::Envelope;
use crate::node::Node;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

impl Node {
    /// Heartbeats and the dead-peer check, until shutdown.
    pub async fn run_heartbeats(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let interval = self.config.heartbeat.node_interval.get();
        let timeout = self.config.heartbeat.node_timeout.get();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let connected = self.backplane.is_connected();
            self.metrics.broker_connected.set(i64::from(connected));
            let Some(up_since) = self.backplane.connected_since() else {
                continue;
            };
            let hb = Envelope::Heartbeat {
                origin: self.id.clone(),
            };
            self.publish(NODES_CHANNEL.to_string(), &hb, b"");
            // Silence during our own outage does not count.
            for peer in self.peers.expire(Instant::now(), up_since, timeout) {
                self.metrics.node_down.inc();
                tracing::warn!(node = %self.id, %peer, "peer node silent for {timeout:?}: reporting its members as left");
                self.drop_node(&peer, "node_down");
            }
        }
    }

    /// Peer nodes heard from within the timeout.
    pub fn peer_count(&self) -> usize {
        self.peers.count()
    }

    /// Tells peers we are leaving (graceful shutdown).
    pub fn say_bye(&self) {
        let bye = Envelope::Bye {
            origin: self.id.clone(),
        };
        self.publish(NODES_CHANNEL.to_string(), &bye, b"");
    }

    /// Everyone in `room` across the cluster: ((socket, node, user) sorted, complete).
    pub async fn presence(&self, room: &str) -> (Vec<crate::peers::Member>, bool) {
        let mut members = self.local_list(room);
        let expected = self.peers.names();
        if expected.is_empty() {
            members.sort();
            return (members, self.backplane.is_connected());
        }
        let (q, rx) = self.peers.ask(expected);
        let who = Envelope::Who {
            origin: self.id.clone(),
            room: room.to_string(),
            query: q,
        };
        self.publish(NODES_CHANNEL.to_string(), &who, b"");
        let complete = tokio::time::timeout(QUERY_TIMEOUT, rx).await.is_ok();
        members.extend(self.peers.close(q));
        members.sort();
        (members, complete)
    }
}
