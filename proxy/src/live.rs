//! The proxy's live state: the routing generation in force, and what lives
//! as long as the process (metrics, listeners' TLS, connection and tunnel
//! counts).
//!
//! Routing state (config, pools, routes) lives in an `ArcSwap`: a request
//! takes the current generation when it starts and keeps it to the end,
//! so a reload never changes anything under a request or tunnel in flight
//! (pingora keeps its backends the same way). Listeners are fixed at
//! start. How a new generation is made from a changed file is `reload`'s
//! business; this module only builds and installs one.

use crate::health;
use crate::limits::Connections;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::select::{Pool, PoolError};
use crate::signal::Signal;
use crate::tls;
use arc_swap::ArcSwap;
use limpet_config::{ListenConfig, ProxyConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::watch;

/// Why the proxy, or a new routing generation, cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("TLS for {bind}: {source}")]
    ListenerTls {
        bind: SocketAddr,
        #[source]
        source: Box<tls::TlsError>,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// One generation of routing state.
pub struct Routing {
    pub config: ProxyConfig,
    pub pools: Vec<Arc<Pool>>,
    pub router: Router,
    /// Stops this generation's health checks once it is replaced.
    stop_health: watch::Sender<bool>,
}

impl Routing {
    /// Builds a generation and starts its health checks; backends that did
    /// not change since `previous` keep their live state (see `Pool::new`).
    pub fn build(
        config: ProxyConfig,
        previous: Option<&Routing>,
        metrics: &Arc<Metrics>,
    ) -> Result<Routing, SetupError> {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for p in &config.pools {
            let old = previous.and_then(|r| r.pools.iter().find(|o| o.name() == p.name));
            pools.push(Arc::new(Pool::new(p.clone(), old.map(|o| &**o))?));
        }
        let router = Router::new(&config.routes, |name| {
            pools.iter().position(|p| p.name() == name)
        });
        let (stop_health, stop_rx) = watch::channel(false);
        for pool in &pools {
            health::spawn(
                pool.clone(),
                crate::upstream::Keepalive::of(&config),
                metrics.clone(),
                stop_rx.clone(),
            );
        }
        Ok(Routing {
            config,
            pools,
            router,
            stop_health,
        })
    }
}

pub struct Proxy {
    current: ArcSwap<Routing>,
    pub metrics: Arc<Metrics>,
    /// Where the config came from, for SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Listeners as started; a reload cannot change them.
    pub listen: Vec<ListenConfig>,
    /// Open client connections (`limits`).
    pub connections: Arc<Connections>,
    /// Open tunnels across all generations.
    pub tunnels: AtomicUsize,
    /// Fired at the shutdown drain deadline: tunnels close, those opened
    /// after it too.
    pub close_tunnels: Signal,
    /// TLS state per listener (same order as `listen`).
    pub tls: Vec<Option<Arc<tls::ServerTls>>>,
    /// `http2.enabled` as started: TLS listeners offer `h2` by ALPN.
    pub http2: bool,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Proxy>, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let listen = config.listen.clone();
        let mut tls = Vec::new();
        for l in &listen {
            match &l.tls {
                Some(t) => {
                    let server = tls::server(t, config.http2.enabled).map_err(|source| {
                        SetupError::ListenerTls {
                            bind: l.bind,
                            source: Box::new(source),
                        }
                    })?;
                    metrics.record_cert_expiries(
                        &l.bind.to_string(),
                        &server.resolver.store.load().expiries,
                    );
                    tls.push(Some(Arc::new(server)));
                }
                None => tls.push(None),
            }
        }
        let http2 = config.http2.enabled;
        let routing = Routing::build(config, None, &metrics)?;
        Ok(Arc::new(Proxy {
            current: ArcSwap::from_pointee(routing),
            connections: Arc::new(Connections::new(metrics.open_connections.clone())),
            metrics,
            config_path,
            listen,
            tunnels: AtomicUsize::new(0),
            close_tunnels: Signal::default(),
            tls,
            http2,
        }))
    }

    /// The routing generation in force now.
    pub fn routing(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// Puts `new` in force; requests already running keep the old one,
    /// whose health checks stop.
    pub fn install(&self, new: Routing) {
        let old = self.current.swap(Arc::new(new));
        let _ = old.stop_health.send(true);
    }

    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }
}
