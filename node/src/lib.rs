//! limpet-node: a WebSocket room server whose rooms span every node.
//!
//! Module map, from the client in to the broker:
//! [`http`] the port's HTTP side (upgrade, health, metrics, publish API,
//! static files); [`addresses`] per-client-address limits; [`bucket`] the
//! token bucket; [`connection`] one WebSocket client; [`wire`] its socket,
//! buffer-free while idle; [`ws`] RFC 6455 framing; [`protocol`] the
//! client JSON protocol; [`peek`] a request's id without parsing it; [`node`] the node's shared state and delivery
//! plumbing; [`sockets`] local clients and their bounded queues;
//! [`rooms`] join, leave, room and direct messages; [`membership`] who is
//! in which room; [`inbound`] what arrives from other nodes, within
//! bounds; [`presence`] node heartbeats, dead-node detection, presence
//! queries; [`peers`] the peer table and open queries; [`envelope`]
//! cross-node envelopes; [`seal`] their HMAC seal; [`backplane`] the
//! backplane trait and channel names; [`broker`] the backplane over a
//! Redis-protocol broker; [`link`] its connections; [`single`] the one
//! connection to a single broker; [`resp`] the Redis protocol as that
//! connection reads it; [`shed`] the byte budgets and age limit that keep
//! the message path's queues short under load; [`redact`] broker URLs as
//! logs show them (no password); [`metrics`]; [`auth`] JSON Web Tokens
//! and what they allow; [`history`] room history in the broker and
//! offsets; [`recovery`] replaying it on a rejoin.

pub mod addresses;
pub mod auth;
pub mod backoff;
pub mod backplane;
pub mod broker;
pub mod bucket;
pub mod connection;
pub mod envelope;
pub mod history;
pub mod http;
pub mod inbound;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peek;
pub mod peers;
pub mod presence;
pub mod protocol;
pub mod recovery;
pub mod redact;
pub mod resp;
pub mod rooms;
pub mod seal;
pub mod shards;
pub mod shed;
pub mod single;
pub mod sockets;
pub mod wire;
pub mod ws;
