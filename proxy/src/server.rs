//! The proxy process: shared state, client listeners, shutdown.
//!
//! [`Proxy::bind`] opens the listeners first so that a caller (and the
//! tests, which use port 0) learns the real addresses before serving.

use crate::forward;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::router::Router;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use limpet_config::ProxyConfig;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    pub config: ProxyConfig,
    pub pools: Vec<Arc<Pool>>,
    pub router: Router,
    pub metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::new(p.clone())))
            .collect();
        let router = Router::new(&config.routes, |name| {
            pools.iter().position(|p| p.name() == name)
        });
        Proxy {
            config,
            pools,
            router,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

pub struct Listeners {
    listeners: Vec<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &ProxyConfig) -> io::Result<Listeners> {
        let mut listeners = Vec::new();
        for l in &config.listen {
            let listener = TcpListener::bind(l.bind).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind))
            })?;
            listeners.push(listener);
        }
        Ok(Listeners { listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(self, proxy: Arc<Proxy>, shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening for HTTP and WebSocket clients");
            }
            tasks.spawn(accept_loop(proxy.clone(), listener, shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        proxy.metrics.connections.inc();
        tokio::spawn(serve_connection(proxy.clone(), tcp, peer, shutdown.clone()));
    }
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    proxy.metrics.open_connections.inc();
    let cfg = &proxy.config;
    let service = {
        let proxy = proxy.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(forward::handle(proxy, req, peer, "http").await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header_read.get())
        .max_buf_size(cfg.limits.max_header_bytes.bytes() as usize)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "client connection ended: {e}");
            }
        }
        _ = shutdown.changed() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        }
    }
    proxy.metrics.open_connections.dec();
}
