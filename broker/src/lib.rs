//! limpet-broker: a pub/sub broker that speaks the Redis protocol.
//!
//! Module map, top-down (each module uses only those below it):
//! [`server`] listens and accepts; [`connection`] is one connection's
//! socket loop; [`requests`] runs a batch of its requests; [`commands`]
//! holds the command table and handlers; [`session`] is one connection's
//! protocol state; [`state`] is what all connections share ([`state::Broker`]);
//! [`registry`] keeps subscriptions and fans messages out; [`keyspace`]
//! holds keys, values, expiry and notifications; [`handle`] is
//! the shared half of a client (output queue, limits, kill flag) and
//! [`outbox`] its ordered output and the one place its socket is written. Leaves:
//! [`codec`] reads requests and writes RESP2/RESP3 replies; [`glob`]
//! matches Redis patterns; [`metrics`] serves Prometheus `/metrics`;
//! [`auth_guard`] makes password guessing slow and its logging cheap;
//! [`blocking`] parks a client in XREAD BLOCK until an XADD wakes it;
//! [`stats`] counts calls and errors per command (INFO commandstats);
//! [`buffers`] lends I/O buffers so that idle connections hold none.

pub mod auth_guard;
pub mod blocking;
pub mod buffers;
pub mod codec;
pub mod commands;
pub mod connection;
pub mod glob;
pub mod handle;
pub mod keyspace;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod requests;
pub mod server;
pub mod session;
pub mod state;
pub mod stats;
