//! The broker process: shared state, listeners, accept loop, shutdown.
//!
//! [`Broker`] is everything connections share. [`Server::bind`] opens the
//! listeners (so a caller learns the real ports before serving, which is
//! how the tests run a broker on port 0), and [`Server::run`] accepts until
//! the shutdown signal, then tells every connection to close and waits for
//! them. Connections past `maxclients` get Redis's error and are closed
//! without taking a slot.

use crate::auth_guard::AuthGuard;
use crate::client::{self, ClientHandle, OutputPolicy};
use crate::codec::Limits;
use crate::metrics::Metrics;
use crate::registry::{Registry, Space};
use ahash::AHashMap;
use limpet_config::BrokerConfig;
use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Redis version reported to clients. Some clients gate features on it;
/// 7.2 is the release whose pub/sub and `CLIENT SETINFO` behaviour we follow.
pub const REDIS_VERSION: &str = "7.2.0";

/// State shared by all connections.
pub struct Broker {
    pub config: BrokerConfig,
    pub config_file: Option<String>,
    pub limits: Limits,
    pub registry: Registry,
    pub metrics: Metrics,
    /// `output_limit` applies to clients with subscriptions,
    /// `output_limit_normal` to the others.
    pub output_policy: OutputPolicy,
    pub normal_output_policy: OutputPolicy,
    pub auth_guard: AuthGuard,
    pub started: Instant,
    pub run_id: String,
    clients: Mutex<AHashMap<u64, Arc<ClientHandle>>>,
    next_id: AtomicU64,
}

impl Broker {
    pub fn new(config: BrokerConfig, config_file: Option<String>) -> Broker {
        let limits = Limits {
            max_bulk_len: config.limits.max_bulk_len.bytes(),
            max_multibulk_len: config.limits.max_multibulk_len,
            max_inline_len: config.limits.max_inline_len.bytes() as usize,
        };
        let output_policy = OutputPolicy {
            hard: config.output_limit.hard.bytes(),
            soft: config.output_limit.soft.bytes(),
            soft_for: Duration::from_secs(config.output_limit.soft_seconds),
            clock: Instant::now(),
        };
        let n = &config.output_limit_normal;
        let normal_output_policy = OutputPolicy {
            hard: n.hard.bytes(),
            soft: n.soft.bytes(),
            soft_for: Duration::from_secs(n.soft_seconds),
            clock: output_policy.clock,
        };
        Broker {
            normal_output_policy,
            auth_guard: AuthGuard::new(&config),
            config,
            config_file,
            limits,
            registry: Registry::default(),
            metrics: Metrics::new(),
            output_policy,
            started: Instant::now(),
            run_id: make_run_id(),
            clients: Mutex::new(AHashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut list: Vec<_> = self.clients.lock().values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn unregister(&self, id: u64) {
        if self.clients.lock().remove(&id).is_some() {
            self.metrics.clients.dec();
        }
    }

    pub fn update_channel_gauges(&self) {
        let m = &self.metrics;
        m.channels
            .set(self.registry.channel_count(Space::Global) as i64);
        m.shard_channels
            .set(self.registry.channel_count(Space::Shard) as i64);
        m.patterns.set(self.registry.pattern_count() as i64);
    }

    /// Counts a command refused by the limit named by its config key.
    pub fn note_limit(&self, key: &str) {
        self.metrics
            .limit_rejections
            .with_label_values(&[key])
            .inc();
    }

    /// Takes a slot for a new client, or `None` when `maxclients` is reached.
    fn admit(self: &Arc<Self>, stream: &TcpStream, peer: SocketAddr) -> Option<client::Session> {
        let local = stream.local_addr().unwrap_or(peer);
        let id = self.next_id.fetch_add(1, Relaxed);
        let session = client::new_session(self.clone(), id, peer, local, stream.as_raw_fd());
        let mut clients = self.clients.lock();
        if clients.len() >= self.config.maxclients {
            return None;
        }
        clients.insert(id, session.handle.clone());
        Some(session)
    }
}

fn make_run_id() -> String {
    let state = ahash::RandomState::new();
    (0..5)
        .map(|i| {
            format!(
                "{:08x}",
                state.hash_one((i, std::process::id(), Instant::now())) as u32
            )
        })
        .collect()
}

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
                    match broker.admit(&stream, peer) {
                        Some(session) => {
                            broker.metrics.clients.inc();
                            tracing::debug!(client = session.handle.id, %peer, "client connected");
                            conns.spawn(client::run(session, stream, shutdown.clone()));
                        }
                        None => {
                            broker.metrics.rejected_connections.inc();
                            tracing::warn!(%peer, max = broker.config.maxclients, "refusing client: maxclients reached");
                            tokio::spawn(refuse(stream));
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

async fn refuse(mut stream: TcpStream) {
    let write = stream.write_all(b"-ERR max number of clients reached\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
