//! limpet-broker: a pub/sub broker that speaks the Redis protocol.
//!
//! Module map: [`codec`] reads requests and writes RESP2/RESP3 replies;
//! [`commands`] holds the command table and handlers; [`registry`] keeps
//! subscriptions and fans messages out; [`client`] is one connection's
//! task and output queue; [`glob`] matches Redis patterns; [`server`] owns
//! listeners and shutdown; [`metrics`] serves Prometheus `/metrics`;
//! [`auth_guard`] makes password guessing slow and its logging cheap.

pub mod auth_guard;
pub mod client;
pub mod codec;
pub mod commands;
pub mod glob;
pub mod metrics;
pub mod registry;
pub mod server;
