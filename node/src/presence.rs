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

use crate::backplane::NODES_CHANNEL;
use crate::envelope::Envelope;
use crate::rooms::{Node, WhoQuery};
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

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
            let now = Instant::now();
            let dead: Vec<String> = {
                let mut peers = self.peers.lock();
                let dead: Vec<String> = peers
                    .iter()
                    // Silence during our own outage does not count.
                    .filter(|(_, seen)| now.duration_since((**seen).max(up_since)) > timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &dead {
                    peers.remove(n);
                }
                dead
            };
            for peer in dead {
                self.metrics.node_down.inc();
                tracing::warn!(node = %self.id, %peer, "peer node silent for {timeout:?}: reporting its members as left");
                self.drop_node(&peer, "node_down");
            }
        }
    }

    /// Peer nodes heard from within the timeout.
    pub fn peer_count(&self) -> usize {
        self.peers.lock().len()
    }

    /// Tells peers we are leaving (graceful shutdown).
    pub fn say_bye(&self) {
        let bye = Envelope::Bye {
            origin: self.id.clone(),
        };
        self.publish(NODES_CHANNEL.to_string(), &bye, b"");
    }

    /// Everyone in `room` across the cluster: ((socket, node) sorted, complete).
    pub async fn presence(&self, room: &str) -> (Vec<(String, String)>, bool) {
        let mut members = self.local_list(room);
        let expected: HashSet<String> = self.peers.lock().keys().cloned().collect();
        if expected.is_empty() {
            members.sort();
            return (members, self.backplane.is_connected());
        }
        let q = self.next_query.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.queries.lock().insert(
            q,
            WhoQuery {
                expected: expected.clone(),
                members: Vec::new(),
                answered: HashSet::new(),
                done: Some(tx),
            },
        );
        let who = Envelope::Who {
            origin: self.id.clone(),
            room: room.to_string(),
            query: q,
        };
        self.publish(NODES_CHANNEL.to_string(), &who, b"");
        let complete = tokio::time::timeout(QUERY_TIMEOUT, rx).await.is_ok();
        let query = self.queries.lock().remove(&q);
        if let Some(query) = query {
            members.extend(query.members);
        }
        members.sort();
        (members, complete)
    }

    /// A node's answer to our presence query `q`.
    pub(crate) fn on_found(&self, origin: &str, q: u64, found: &[String]) {
        let mut queries = self.queries.lock();
        let Some(query) = queries.get_mut(&q) else {
            return;
        };
        if query.answered.insert(origin.to_string()) {
            query
                .members
                .extend(found.iter().map(|s| (s.clone(), origin.to_string())));
        }
        if query.expected.is_subset(&query.answered) {
            if let Some(done) = query.done.take() {
                let _ = done.send(());
            }
        }
    }
}
