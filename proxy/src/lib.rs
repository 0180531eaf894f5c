//! limpet-proxy: a sticky HTTP/WebSocket reverse proxy.
//!
//! A request flows down this list, and each module uses only those below
//! it (no import loops):
//!
//! * [`listen`] accepts clients ([`accept`]) and applies the connection
//!   [`limits`];
//!   [`handshake`] reads the PROXY header ([`proxy_protocol`]) and does
//!   the TLS handshake ([`tls`]); [`connection`] serves HTTP/1.1 on it
//!   (a plain one parked while idle, [`park`], with the head deadline of
//!   [`head_timer`]), [`http2`] HTTP/2 when a TLS client chose it.
//! * [`forward`] is the request path: [`router`] finds the pool,
//!   [`headers`] rewrites forwarding headers and finds the client address,
//!   [`select`] picks the backend (sticky cookies, rendezvous hashing,
//!   balancers, the pools and their health state), [`upstream`] connects
//!   and sends with the client's body in [`client_body`], [`relay`]
//!   carries the answer back and [`tunnel`] copies upgraded bytes (plain
//!   TCP ones in [`tcp_relay`], with buffers lent by [`bufpool`]); every
//!   failure becomes an answer in [`error`].
//! * [`live`] holds the state all of them read (the routing generation in
//!   force, metrics, counts); [`reload`] replaces it from a changed config
//!   or certificate; [`health`] runs active checks.
//! * [`metrics`] and [`admin`]: the Prometheus endpoint and the admin API.
//! * [`upgrade`] starts a new binary on `SIGUSR2` and hands it the
//!   listening sockets ([`handover`]), which [`listen`] takes over;
//!   [`notify`] tells systemd when a process serves and which one is the
//!   service's main process.

pub mod accept;
pub mod admin;
pub mod bufpool;
pub mod client_body;
pub mod connection;
pub mod cores;
pub mod error;
pub mod forward;
pub mod handover;
pub mod handshake;
pub mod head_timer;
pub mod headers;
pub mod health;
pub mod http2;
pub mod limits;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod park;
pub mod prefixed;
pub mod proxy_protocol;
pub mod relay;
pub mod reload;
pub mod router;
pub mod select;
pub mod signal;
pub mod tcp_relay;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
