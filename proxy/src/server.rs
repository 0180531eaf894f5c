//! The proxy process: shared state, client listeners, connection limits,
//! PROXY protocol, reload and shutdown.
//!
//! Routing state (config, pools, routes) lives in an `ArcSwap`: a request
//! takes the current generation when it starts and keeps it to the end,
//! so a reload never changes anything under a request or tunnel in flight
//! (pingora keeps its backends the same way). Listeners are fixed at start.

use crate::forward;
use crate::health;
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::router::Router;
use crate::select::Pool;
use crate::tls;
use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use limpet_config::{ListenConfig, ProxyConfig};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One generation of routing state.
pub struct Routing {
    pub config: ProxyConfig,
    pub pools: Vec<Arc<Pool>>,
    pub router: Router,
    /// Stops this generation's health checks once it is replaced.
    stop_health: watch::Sender<bool>,
}

impl Routing {
    fn build(
        config: ProxyConfig,
        previous: Option<&Routing>,
        metrics: &Arc<Metrics>,
    ) -> Result<Routing, String> {
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
            health::spawn(pool.clone(), metrics.clone(), stop_rx.clone());
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
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Open tunnels across all generations.
    pub tunnels: AtomicUsize,
    /// Turns true at the shutdown drain deadline: tunnels close.
    pub close_tunnels: watch::Sender<bool>,
    /// TLS state per listener (same order as `listen`).
    pub tls: Vec<Option<Arc<tls::ServerTls>>>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, config_path: Option<PathBuf>) -> Result<Arc<Proxy>, String> {
        let metrics = Arc::new(Metrics::new());
        let listen = config.listen.clone();
        let mut tls = Vec::new();
        for l in &listen {
            match &l.tls {
                Some(t) => {
                    let server = tls::server(t).map_err(|e| format!("TLS for {}: {e}", l.bind))?;
                    metrics.record_cert_expiries(
                        &l.bind.to_string(),
                        &server.resolver.store.load().expiries,
                    );
                    tls.push(Some(Arc::new(server)));
                }
                None => tls.push(None),
            }
        }
        let routing = Routing::build(config, None, &metrics)?;
        Ok(Arc::new(Proxy {
            current: ArcSwap::from_pointee(routing),
            metrics,
            config_path,
            listen,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            tunnels: AtomicUsize::new(0),
            close_tunnels: watch::channel(false).0,
            tls,
        }))
    }

    /// Loads certificates again for every TLS listener from `config`; a
    /// listener whose files fail keeps its current certificates.
    pub fn reload_certificates(&self, config: &ProxyConfig) -> Result<(), String> {
        let mut errors = Vec::new();
        for (i, server) in self.tls.iter().enumerate() {
            let (Some(server), Some(listen)) = (server, config.listen.get(i)) else {
                continue;
            };
            let Some(cfg) = &listen.tls else { continue };
            match tls::CertStore::load(cfg) {
                Ok(store) => {
                    self.metrics
                        .record_cert_expiries(&listen.bind.to_string(), &store.expiries);
                    server.resolver.store.store(Arc::new(store));
                    self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(listener = %listen.bind, "certificates reloaded");
                }
                Err(e) => {
                    self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(listener = %listen.bind, "new certificate refused, keeping the current one: {e}");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Polls certificate files and reloads them when they change.
    pub async fn watch_certificates(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut seen: Vec<Option<std::time::SystemTime>> = self
            .listen
            .iter()
            .map(|l| l.tls.as_ref().and_then(tls::newest_mtime))
            .collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let config = self.routing().config.clone();
            for (i, listen) in config.listen.iter().enumerate() {
                let Some(cfg) = listen.tls.as_ref().filter(|t| t.watch) else {
                    continue;
                };
                let now = tls::newest_mtime(cfg);
                if now != seen.get(i).copied().flatten() {
                    if let Some(slot) = seen.get_mut(i) {
                        *slot = now;
                    }
                    tracing::info!(listener = %listen.bind, "certificate files changed on disk");
                    let single = ProxyConfig {
                        listen: config
                            .listen
                            .iter()
                            .enumerate()
                            .map(|(j, l)| {
                                let mut l = l.clone();
                                if j != i {
                                    l.tls = None;
                                }
                                l
                            })
                            .collect(),
                        ..config.clone()
                    };
                    let _ = self.reload_certificates(&single);
                }
            }
        }
    }

    /// The routing generation in force now.
    pub fn routing(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// Re-reads the config file; on any error the running config stays.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.reloads.with_label_values(&[outcome]).inc();
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or("started without --config: nothing to reload")?;
        let config: ProxyConfig = limpet_config::load_file(path).map_err(|e| e.to_string())?;
        if config.listen != self.listen {
            tracing::warn!("[[listen]] changes take effect only after a restart; keeping the current listeners");
        }
        let old = self.routing();
        let new = Routing::build(config, Some(&old), &self.metrics)?;
        // Certificates reload with the config; a bad one is refused on its own.
        let certs = self.reload_certificates(&new.config);
        self.current.store(Arc::new(new));
        let _ = old.stop_health.send(true);
        certs.map_err(|e| format!("routes reloaded, but {e}"))
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Relaxed)
    }
}

/// Releases a client connection's slot (and its per-address count).
struct Slot {
    proxy: Arc<Proxy>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.proxy.open.fetch_sub(1, Relaxed);
        self.proxy.metrics.open_connections.dec();
        if let Some(ip) = self.ip {
            let mut map = self.proxy.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

pub struct Listeners {
    listeners: Vec<(TcpListener, ListenConfig)>,
}

impl Listeners {
    pub async fn bind(config: &ProxyConfig) -> io::Result<Listeners> {
        let mut listeners = Vec::new();
        for l in &config.listen {
            let listener = TcpListener::bind(l.bind).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind))
            })?;
            listeners.push((listener, l.clone()));
        }
        Ok(Listeners { listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` turns true, then lets connections finish
    /// their requests (tunnels run on until `Proxy::close_tunnels`).
    pub async fn run(self, proxy: Arc<Proxy>, shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        for (listener, cfg) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, proxy_protocol = cfg.proxy_protocol, "listening for HTTP and WebSocket clients");
            }
            let index = proxy
                .listen
                .iter()
                .position(|l| l.bind == cfg.bind)
                .unwrap_or(0);
            let mode = Mode {
                proxy_protocol: cfg.proxy_protocol,
                tls: proxy.tls.get(index).cloned().flatten(),
                listener: index,
            };
            tasks.spawn(accept_loop(proxy.clone(), listener, mode, shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// How a listener treats its connections.
#[derive(Clone)]
struct Mode {
    proxy_protocol: bool,
    tls: Option<Arc<tls::ServerTls>>,
    /// Index into `Proxy::listen`.
    listener: usize,
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mode: Mode,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
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
        let max = proxy.routing().config.limits.max_connections;
        if max > 0 && proxy.open.load(Relaxed) >= max {
            proxy
                .metrics
                .limit_rejections
                .with_label_values(&["max_connections"])
                .inc();
            tokio::spawn(refuse(
                tcp,
                "503 Service Unavailable",
                "too many connections",
            ));
            continue;
        }
        proxy.open.fetch_add(1, Relaxed);
        proxy.metrics.open_connections.inc();
        let slot = Slot {
            proxy: proxy.clone(),
            ip: None,
        };
        conns.spawn(serve_connection(
            proxy.clone(),
            tcp,
            peer,
            mode.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    // Stop accepting; connections finish their requests.
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Answers with a short error and closes, instead of accepting and stalling.
async fn refuse(mut tcp: TcpStream, status: &str, why: &str) {
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tcp.write_all(resp.as_bytes()).await;
        let _ = tcp.shutdown().await;
        // Read what the client sent until it closes: closing with unread
        // bytes would send a reset that can destroy our answer in flight.
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    mode: Mode,
    mut slot: Slot,
    shutdown: watch::Receiver<bool>,
) {
    let routing = proxy.routing();
    let cfg = &routing.config;
    let mut client = peer;
    if mode.proxy_protocol {
        let peer_ip = crate::headers::canonical(peer.ip());
        if !cfg.trusted_proxies.iter().any(|c| c.contains(peer_ip)) {
            tracing::warn!(%peer, "PROXY header from an untrusted peer refused; add it to trusted_proxies");
            proxy
                .metrics
                .proxy_protocol_errors
                .with_label_values(&["untrusted"])
                .inc();
            return;
        }
        match tokio::time::timeout(
            cfg.timeouts.header_read.get(),
            proxy_protocol::read_header(&mut tcp),
        )
        .await
        {
            Ok(Ok(Some(addr))) => client = addr,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%peer, "closing connection: {e}");
                proxy
                    .metrics
                    .proxy_protocol_errors
                    .with_label_values(&[e.label()])
                    .inc();
                return;
            }
            Err(_) => {
                proxy
                    .metrics
                    .proxy_protocol_errors
                    .with_label_values(&["timeout"])
                    .inc();
                return;
            }
        }
    }
    let per_ip = cfg.limits.max_connections_per_ip;
    if per_ip > 0 {
        let ip = crate::headers::canonical(client.ip());
        let over = {
            let mut map = proxy.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            *n += 1;
            *n > per_ip
        };
        slot.ip = Some(ip);
        if over {
            proxy
                .metrics
                .limit_rejections
                .with_label_values(&["max_connections_per_ip"])
                .inc();
            refuse(
                tcp,
                "429 Too Many Requests",
                "too many connections from your address",
            )
            .await;
            return;
        }
    }
    let listen = &proxy.listen[mode.listener];
    match &mode.tls {
        Some(server) => {
            let tls_cfg = listen
                .tls
                .as_ref()
                .expect("a TLS listener has TLS settings");
            match tokio::time::timeout(tls_cfg.handshake_timeout.get(), server.acceptor.accept(tcp))
                .await
            {
                Ok(Ok(stream)) => {
                    let version = match stream.get_ref().1.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                        _ => "other",
                    };
                    proxy
                        .metrics
                        .handshakes
                        .with_label_values(&["ok", version])
                        .inc();
                    let hsts = tls_cfg
                        .hsts_max_age
                        .map(|d| format!("max-age={}", d.get().as_secs()));
                    serve_http(
                        &proxy,
                        TokioIo::new(stream),
                        client,
                        "https",
                        hsts,
                        shutdown,
                    )
                    .await;
                }
                Ok(Err(e)) => {
                    proxy
                        .metrics
                        .handshakes
                        .with_label_values(&["error", ""])
                        .inc();
                    tracing::debug!(%client, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    proxy
                        .metrics
                        .handshakes
                        .with_label_values(&["timeout", ""])
                        .inc();
                    tracing::debug!(%client, "TLS handshake timed out");
                }
            }
        }
        None if listen.redirect_https => {
            serve_redirect(&proxy, TokioIo::new(tcp), listen.https_port).await
        }
        None => serve_http(&proxy, TokioIo::new(tcp), client, "http", None, shutdown).await,
    }
    drop(slot);
}

/// Serves HTTP/1.1 (with upgrades) on one client connection.
async fn serve_http<IO>(
    proxy: &Arc<Proxy>,
    io: IO,
    client: SocketAddr,
    scheme: &'static str,
    hsts: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let routing = proxy.routing();
    let cfg = &routing.config;
    let hsts = hsts.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok());
    let service = {
        let proxy = proxy.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let hsts = hsts.clone();
            async move {
                let mut resp = forward::handle(proxy, req, client, scheme).await;
                if let Some(v) = hsts {
                    resp.headers_mut()
                        .insert(hyper::header::STRICT_TRANSPORT_SECURITY, v);
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header_read.get())
        .max_buf_size(cfg.limits.max_header_bytes.bytes() as usize)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%client, "client connection ended: {e}");
            }
        }
        _ = shutdown.changed() => {
            // Finish the request in flight (an upgrade hands off to its
            // tunnel, which follows the drain deadline), then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers every request with a 301 to the same host and path over https.
async fn serve_redirect<IO>(proxy: &Arc<Proxy>, io: IO, https_port: Option<u16>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_read = proxy.routing().config.timeouts.header_read.get();
    let service = service_fn(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(crate::router::host_only)
                .unwrap_or("localhost")
                .to_string();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let port = https_port.map(|p| format!(":{p}")).unwrap_or_default();
            let location = format!("https://{host}{port}{path}");
            let mut resp = crate::error::plain(
                hyper::StatusCode::MOVED_PERMANENTLY,
                &format!("moved to {location}"),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(hyper::header::LOCATION, v);
            }
            Ok::<_, Infallible>(resp)
        },
    );
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(io, service)
        .await;
}
