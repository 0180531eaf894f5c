//! limpet-node: a WebSocket room server whose rooms span every node.
//!
//! Module map: [`protocol`] the client JSON protocol; [`addresses`]
//! per-client-address limits; [`bucket`] the token bucket; [`rooms`] sockets
//! and rooms; [`envelope`] cross-node envelopes; [`seal`] their HMAC seal;
//! [`inbound`] what arrives from other nodes, within bounds;
//! [`backplane`] the broker connection; [`shed`] the byte budgets and
//! age limit that keep the message path's queues short under load;
//! [`presence`] node heartbeats, dead-node detection, presence queries;
//! [`redact`] broker URLs as logs show them (no password);
//! [`connection`] one WebSocket client; [`http`] the port's HTTP side
//! (upgrade, health, metrics, publish API, static files); [`metrics`].

pub mod addresses;
pub mod backplane;
pub mod bucket;
pub mod connection;
pub mod envelope;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod redact;
pub mod rooms;
pub mod seal;
pub mod shed;
