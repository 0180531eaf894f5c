//! Client listeners: accept, the connection limits, then each connection,
//! on one of the connection threads ([`crate::cores`]), through its
//! handshakes (`handshake`) to HTTP/1.1 (`connection`), or to HTTP/2
//! (`http2`) when a TLS client chose `h2` by ALPN.
//!
//! A connection over a limit is answered at once with a short error and
//! closed, instead of being accepted and left to stall: 503 past
//! `limits.max_connections`, 429 past `limits.max_connections_per_ip`
//! (counted once the real client address is known, after a PROXY header).
//! On shutdown a listener stops accepting and waits for its connections'
//! requests in flight; tunnels follow the drain deadline. A process
//! started by a binary upgrade takes its listening sockets from the old
//! one (`handover`) instead of binding them.

use crate::accept::Acceptor;
use crate::connection::{serve_http, serve_plain, serve_redirect};
use crate::cores::Cores;
use crate::error::ForwardError;
use crate::handover::{self, Inherited, Kind, Socket};
use crate::handshake;
use crate::headers::canonical;
use crate::http2;
use crate::limits::{SharedSlot, Slot};
use crate::live::Proxy;
use crate::tls;
use hyper_util::rt::TokioIo;
use limpet_config::{ListenConfig, ProxyConfig};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

pub struct Listeners {
    listeners: Vec<(Acceptor, ListenConfig)>,
}

impl Listeners {
    /// Binds every `[[listen]]`, or takes the socket `inherited` from an
    /// old process has for its address.
    pub async fn bind(
        config: &ProxyConfig,
        mut inherited: Option<&mut Inherited>,
    ) -> io::Result<Listeners> {
        let mut listeners = Vec::new();
        for l in &config.listen {
            let listener = handover::take_or_bind(inherited.as_deref_mut(), Kind::Listen, l.bind)
                .await
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind))
                })?;
            let acceptor = Acceptor::new(listener).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot accept on {}: {e}", l.bind))
            })?;
            listeners.push((acceptor, l.clone()));
        }
        Ok(Listeners { listeners })
    }

    /// Copies of the listening sockets, for a binary upgrade to hand over.
    pub fn sockets(&self) -> io::Result<Vec<Socket>> {
        self.listeners
            .iter()
            .map(|(a, cfg)| Socket::of(Kind::Listen, cfg.bind, a.local_addr()?, a.as_fd()))
            .collect()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` turns true, then lets connections finish
    /// their requests (tunnels run on until `Proxy::close_tunnels`).
    pub async fn run(self, proxy: Arc<Proxy>, cores: Cores, shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        // `bind` cannot name a listener: several may bind port 0. They are
        // bound in config order, the order of `Proxy::listen`.
        for (index, (acceptor, cfg)) in self.listeners.into_iter().enumerate() {
            if let Ok(addr) = acceptor.local_addr() {
                tracing::info!(
                    %addr,
                    proxy_protocol = cfg.proxy_protocol,
                    tls = cfg.tls.is_some(),
                    redirect_https = cfg.redirect_https,
                    "listening for HTTP and WebSocket clients"
                );
            }
            let mode = Mode {
                proxy_protocol: cfg.proxy_protocol,
                tls: proxy.tls.get(index).cloned().flatten(),
                listener: index,
            };
            tasks.spawn(accept_loop(
                proxy.clone(),
                acceptor,
                mode,
                cores.clone(),
                shutdown.clone(),
            ));
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
    acceptor: Acceptor,
    mode: Mode,
    cores: Cores,
    mut shutdown: watch::Receiver<bool>,
) {
    // Counts the connection tasks for the shutdown's wait, without waking
    // this loop each time one ends (a `JoinSet` would, on another thread).
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = acceptor.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        proxy.metrics.connections.inc();
        let max = proxy.routing().config.limits.max_connections;
        let Some(slot) = proxy.connections.admit(max) else {
            proxy
                .metrics
                .limit_rejections
                .with_label_values(&["max_connections"])
                .inc();
            match TcpStream::from_std(tcp) {
                Ok(tcp) => drop(tokio::spawn(refuse(tcp, ForwardError::TooManyConnections))),
                Err(e) => tracing::warn!(%peer, "cannot register a refused connection: {e}"),
            }
            continue;
        };
        // What crosses to the connection thread is only the socket and
        // what the task is made of: the task itself (about 2.3 KB,
        // aligned) is allocated there, from that thread's heap, where it
        // is freed. Spawned from here, it came from this thread's heap and
        // went back to it from the other thread: a burst of connections
        // grew that heap an `mprotect` at a time.
        let (proxy, mode, shutdown, conns_there) =
            (proxy.clone(), mode.clone(), shutdown.clone(), conns.clone());
        let hand_over = async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => drop(
                    conns_there.spawn(serve_connection(proxy, tcp, peer, mode, slot, shutdown)),
                ),
                Err(e) => tracing::warn!(%peer, "cannot register the connection: {e}"),
            }
        };
        drop(conns.spawn_on(hand_over, cores.pick()));
    }
    // Stop accepting; connections finish their requests.
    drop(acceptor);
    conns.close();
    conns.wait().await;
}

/// Answers with a short error and closes, instead of accepting and stalling.
async fn refuse(mut tcp: TcpStream, why: ForwardError) {
    let resp = why.refusal();
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
    let client = if mode.proxy_protocol {
        match handshake::proxy_header(cfg, &proxy.metrics, &mut tcp, peer).await {
            Some(client) => client,
            None => return,
        }
    } else {
        peer
    };
    let per_ip = cfg.limits.max_connections_per_ip;
    if per_ip > 0 && !slot.count_address(canonical(client.ip()), per_ip) {
        proxy
            .metrics
            .limit_rejections
            .with_label_values(&["max_connections_per_ip"])
            .inc();
        // Give the global slot back first: the refusal may linger (up to
        // two seconds) for a client that does not close, and one address
        // must not fill `max_connections` with its own refusals.
        drop(slot);
        // Boxed, as the TLS branch below: a future holds room for its
        // largest branch, and this one (a 4 KiB drain buffer) is rare.
        Box::pin(refuse(tcp, ForwardError::TooManyFromAddress)).await;
        return;
    }
    let listen = &proxy.listen[mode.listener];
    let slot = SharedSlot(Arc::new(slot));
    match (&mode.tls, &listen.tls) {
        // Boxed: TLS state (handshake, rustls streams, HTTP/2) is several
        // KiB, and inline it would make every plain connection's task
        // that large too.
        (Some(server), Some(tls_cfg)) => {
            Box::pin(async {
                let timeout = tls_cfg.handshake_timeout.get();
                let Some(stream) =
                    handshake::tls(server, timeout, &proxy.metrics, tcp, client).await
                else {
                    return;
                };
                let hsts = tls_cfg
                    .hsts_max_age
                    .map(|d| format!("max-age={}", d.get().as_secs()));
                if stream.get_ref().1.alpn_protocol() == Some(http2::ALPN_H2) {
                    let hsts = hsts.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok());
                    http2::serve_h2(&proxy, TokioIo::new(stream), client, hsts, shutdown, slot)
                        .await;
                    return;
                }
                serve_http(
                    &proxy,
                    TokioIo::new(stream),
                    client,
                    "https",
                    hsts,
                    shutdown,
                    slot,
                )
                .await;
            })
            .await
        }
        _ if listen.redirect_https => {
            // Boxed as TLS is: the plain connections' task need not hold it.
            Box::pin(serve_redirect(&proxy, TokioIo::new(tcp), listen.https_port)).await;
            drop(slot);
        }
        _ => serve_plain(&proxy, tcp, client, shutdown, slot).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A plain connection's task holds `serve_connection`'s future for the
    /// connection's whole life (keep-alive, long polling). TLS and the
    /// drain of a refused client are boxed, so it holds neither: 2,160
    /// bytes in a release build (with parking, see `park`), against 6,096
    /// when both were inline.
    #[tokio::test]
    async fn a_plain_connection_task_holds_no_tls_state() {
        let config: ProxyConfig = limpet_config::parse_str(
            "[[listen]]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\nid = \"b\"\naddress = \"127.0.0.1:9\"\n[[route]]\npool = \"p\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let proxy = Proxy::new(config, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, _held) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let slot = proxy.connections.admit(1).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let mode = Mode {
            proxy_protocol: false,
            tls: None,
            listener: 0,
        };
        let serve = serve_connection(proxy.clone(), tcp.unwrap(), addr, mode, slot, shutdown);
        let size = std::mem::size_of_val(&serve);
        assert!(size <= 2304, "serve_connection's future is {size} bytes");
    }
}
