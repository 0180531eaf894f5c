//! limpet-proxy: a sticky HTTP/WebSocket reverse proxy.
//!
//! Module map: [`server`] listeners and shared state; [`forward`] the
//! request path; [`router`] routes to pools; [`select`] picks the backend
//! (sealed cookies, consistent hashing, balancers) from a pool's backends
//! and their health state; [`health`]
//! active checks; [`client_body`] the client's upload (idle timeout, who
//! broke it); [`relay`] the backend's answer back to the client and its
//! connection back to the pool; [`proxy_protocol`] PROXY v1/v2 headers; [`upstream`] backend connections and pooling;
//! [`tls`] rustls certificates (SNI, reload) and upstream TLS; [`tunnel`] upgraded byte copying; [`headers`] forwarding headers and client addresses;
//! [`error`] every forwarding failure and its answer; [`metrics`] and
//! [`admin`] the Prometheus endpoint.

pub mod admin;
pub mod client_body;
pub mod error;
pub mod forward;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod proxy_protocol;
pub mod relay;
pub mod router;
pub mod select;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod upstream;
