//! Listening and accepting: the broker's front door.
//!
//! [`Server::bind`] opens the listeners (so a caller learns the real ports
//! before serving, which is how the tests run a broker on port 0), and
//! [`Server::run`] accepts until the shutdown signal, then tells every
//! connection to close and waits for them. Connections past `maxclients`
//! get Redis's error and are closed without taking a slot. Each accepted
//! connection is handed to [`crate::connection::run`]; the state they share
//! is [`crate::state::Broker`], re-exported here as the crate's public
//! entry point (`server::Broker::new`, then `Server::bind`).

use crate::connection;
pub use crate::state::Broker;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Opens every configured listen address.
    pub async fn bind(broker: Arc<Broker>) -> io::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &broker.config.bind {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(listener);
        }
        Ok(Server { broker, listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` turns true, then closes every client.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut accepts = JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening for Redis-protocol clients");
            }
            accepts.spawn(accept_loop(self.broker.clone(), listener, shutdown.clone()));
        }
        // Active expiry, ten times a second, like Redis's `hz 10`.
        let broker = self.broker.clone();
        let mut stop = shutdown.clone();
        accepts.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        broker.expire_cycle();
                    }
                }
            }
        });
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        // Each accept loop waits for its own connections before returning.
        while accepts.join_next().await.is_some() {}
        tracing::info!("all clients closed");
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    broker.metrics.connections.inc();
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    match broker.admit(peer, local, stream.as_raw_fd()) {
                        Some(handle) => {
                            broker.metrics.clients.inc();
                            tracing::debug!(client = handle.id, %peer, "client connected");
                            conns.spawn(connection::run(broker.clone(), handle, stream, shutdown.clone()));
                        }
                        None => {
                            let refused = broker.metrics.rejected_connections.get();
                            broker.metrics.rejected_connections.inc();
                            // A flood of connections must not flood the log.
                            if refused.is_multiple_of(1000) {
                                tracing::warn!(%peer, max = broker.config.maxclients, refused = refused + 1, "refusing client: maxclients reached (logged once per 1,000)");
                            }
                            // Each refusal may wait up to a second for its
                            // error to be written; past a cap the socket is
                            // just closed, so a flood holds few descriptors.
                            if REFUSING.fetch_add(1, Relaxed) < MAX_REFUSING {
                                tokio::spawn(async move {
                                    refuse(stream).await;
                                    REFUSING.fetch_sub(1, Relaxed);
                                });
                            } else {
                                REFUSING.fetch_sub(1, Relaxed);
                            }
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Refusals being written right now, and how many may be at once.
static REFUSING: AtomicUsize = AtomicUsize::new(0);
const MAX_REFUSING: usize = 256;

async fn refuse(mut stream: TcpStream) {
    let write = stream.write_all(b"-ERR max number of clients reached\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
