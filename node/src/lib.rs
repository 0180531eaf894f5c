//! limpet-node: a WebSocket room server whose rooms span every node.
//!
//! Module map: [`protocol`] the client JSON protocol; [`rooms`] sockets,
//! rooms and cross-node envelopes; [`backplane`] the broker connection;
//! [`presence`] node heartbeats, dead-node detection, presence queries;
//! [`connection`] one WebSocket client; [`http`] the port's HTTP side
//! (upgrade, health, metrics, publish API, static files); [`metrics`].

pub mod backplane;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod rooms;
