//! Prometheus metrics for a node, served at `/metrics` on the node's port.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// Counters the broker connection updates ([`crate::broker`]).
pub struct Counters {
    pub published: prometheus::IntCounter,
    pub received: prometheus::IntCounter,
    pub lost: prometheus::IntCounter,
    pub reconnects: prometheus::IntCounter,
    /// SUBSCRIBEs the broker refused with an error reply.
    pub subscribe_refused: prometheus::IntCounter,
    /// Envelopes dropped, by reason: auth, inbound_full (here), and
    /// room_members, node_members, peers (in [`crate::inbound`]).
    pub rejected: prometheus::IntCounterVec,
    pub inbound_bytes: prometheus::IntGauge,
    pub publish_bytes: prometheus::IntGauge,
    /// Messages shed on the message path, by path and reason.
    pub shed: prometheus::IntCounterVec,
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub rejected: IntCounterVec,
    pub rooms: IntGauge,
    pub messages_in: IntCounter,
    pub messages_out: IntCounterVec,
    pub outbound_bytes: IntGauge,
    pub remote_members: IntGauge,
    pub client_addresses: IntGauge,
    pub address_rate_limited: IntCounter,
    pub publish_body_timeouts: IntCounter,
    pub errors: IntCounterVec,
    pub closes: IntCounterVec,
    pub node_down: IntCounter,
    pub broker_connected: IntGauge,
    /// WebSocket upgrades refused for their token, by reason.
    pub auth_failures: IntCounterVec,
    /// Room messages written to the history (given an offset).
    pub history_writes: IntCounter,
    /// Room messages whose history write failed (delivered without offset).
    pub history_failures: IntCounter,
    /// Rejoins with `since`, by result (recovered, resync).
    pub recoveries: IntCounterVec,
    pub recovered_messages: IntCounter,
    pub backplane: Arc<Counters>,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let gauge =
            |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter_vec = |name: &str, help: &str, label: &str| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let backplane = Arc::new(Counters {
            published: counter(
                "limpet_node_cross_node_published_total",
                "Messages published to other nodes",
            ),
            received: counter(
                "limpet_node_cross_node_received_total",
                "Messages received from the broker",
            ),
            lost: counter(
                "limpet_node_cross_node_lost_total",
                "Cross-node messages dropped while the broker was away",
            ),
            reconnects: counter(
                "limpet_node_broker_reconnects_total",
                "Broker connections restored",
            ),
            subscribe_refused: counter(
                "limpet_node_broker_subscribe_refused_total",
                "SUBSCRIBEs the broker refused with an error reply (e.g. its per-client channel cap); the connection is kept",
            ),
            rejected: counter_vec(
                "limpet_node_backplane_rejected_total",
                "Broker messages dropped: auth (no valid cluster_secret tag), inbound_full, room_members, node_members, peers (bounds)",
                "reason",
            ),
            inbound_bytes: gauge(
                "limpet_node_inbound_queued_bytes",
                "Bytes of broker messages waiting to be handled",
            ),
            publish_bytes: gauge(
                "limpet_node_publish_queued_bytes",
                "Bytes of publishes waiting to go to the broker",
            ),
            shed: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "limpet_node_shed_total",
                        "Room and direct messages dropped under load, by path (node_to_broker, broker_to_node, node_to_client) and reason (queue_full, too_old)",
                    ),
                    &["path", "reason"],
                )
                .expect("valid metric"),
            ),
        });
        Metrics {
            connections: gauge("limpet_node_connections", "WebSocket clients connected now"),
            connections_total: counter("limpet_node_connections_total", "WebSocket clients accepted"),
            rejected: counter_vec("limpet_node_rejected_connections_total", "Upgrades refused", "reason"),
            rooms: gauge("limpet_node_rooms", "Rooms with members on this node"),
            messages_in: counter("limpet_node_messages_in_total", "Client messages received"),
            messages_out: counter_vec("limpet_node_messages_out_total", "Messages queued to local clients, by origin", "scope"),
            outbound_bytes: gauge("limpet_node_outbound_queued_bytes", "Bytes queued to local clients and not yet written (all sockets)"),
            client_addresses: gauge("limpet_node_client_addresses", "Client addresses tracked for per-address limits"),
            address_rate_limited: counter("limpet_node_address_rate_limited_total", "Client messages refused by the per-address rate limit"),
            publish_body_timeouts: counter("limpet_node_publish_body_timeouts_total", "POST /api/publish requests answered 408 because the body did not arrive in time"),
            remote_members: gauge("limpet_node_remote_members", "Members on other nodes remembered, all rooms"),
            errors: counter_vec("limpet_node_errors_total", "Error frames sent to clients", "code"),
            closes: counter_vec(
                "limpet_node_closes_total",
                "Connections closed by the server (slow_consumer, heartbeat, misbehaving, protocol_error, shutdown)",
                "reason",
            ),
            node_down: counter("limpet_node_peer_down_total", "Peer nodes declared dead"),
            broker_connected: gauge("limpet_node_broker_connected", "1 while the broker connection is up"),
            auth_failures: counter_vec(
                "limpet_node_auth_failures_total",
                "WebSocket upgrades and refreshes refused for their token: missing, too_long, malformed, alg_none, wrong_algorithm, forged, expired, claims, other_user",
                "reason",
            ),
            history_writes: counter("limpet_node_history_writes_total", "Room messages appended to the room's history in the broker"),
            history_failures: counter("limpet_node_history_failures_total", "Room messages whose history write failed (delivered to local members without an offset)"),
            recoveries: counter_vec("limpet_node_recoveries_total", "Rejoins with `since`, by result: recovered, resync", "result"),
            recovered_messages: counter("limpet_node_recovered_messages_total", "Missed messages replayed to rejoining clients"),
            backplane,
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
