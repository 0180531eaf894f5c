//! What a client connection must get through before any HTTP: the PROXY
//! protocol header (from trusted peers only) and the TLS handshake, each
//! within its deadline.
//!
//! Both run before the proxy has spent anything on the connection but its
//! slot, and both are where a slow or hostile peer would otherwise hold a
//! connection open for free: a peer that sends nothing is cut at the
//! deadline, and every failure is counted by reason and closes the
//! connection.

use crate::headers::canonical;
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::tls::ServerTls;
use limpet_config::ProxyConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Reads the PROXY header of a connection from `peer`: the client address
/// it names (the peer itself for a `LOCAL` header), or `None` when the
/// connection is to be closed (untrusted peer, bad header, deadline).
pub async fn proxy_header(
    cfg: &ProxyConfig,
    metrics: &Metrics,
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let errors = &metrics.proxy_protocol_errors;
    let peer_ip = canonical(peer.ip());
    if !cfg.trusted_proxies.iter().any(|c| c.contains(peer_ip)) {
        tracing::warn!(%peer, "PROXY header from an untrusted peer refused; add it to trusted_proxies");
        errors.with_label_values(&["untrusted"]).inc();
        return None;
    }
    match tokio::time::timeout(
        cfg.timeouts.header_read.get(),
        proxy_protocol::read_header(tcp),
    )
    .await
    {
        Ok(Ok(Some(addr))) => Some(addr),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(e)) => {
            tracing::warn!(%peer, "closing connection: {e}");
            errors.with_label_values(&[e.label()]).inc();
            None
        }
        Err(_) => {
            errors.with_label_values(&["timeout"]).inc();
            None
        }
    }
}

/// The TLS handshake, at most `timeout` long; `None` when it failed
/// (counted, and logged at debug: scanners fail handshakes all day).
pub async fn tls(
    server: &ServerTls,
    timeout: Duration,
    metrics: &Metrics,
    tcp: TcpStream,
    client: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let handshakes = &metrics.handshakes;
    match tokio::time::timeout(timeout, server.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let version = match stream.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "other",
            };
            handshakes.with_label_values(&["ok", version]).inc();
            if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                metrics.resumed_handshakes.inc();
            }
            Some(stream)
        }
        Ok(Err(e)) => {
            handshakes.with_label_values(&["error", ""]).inc();
            tracing::debug!(%client, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            handshakes.with_label_values(&["timeout", ""]).inc();
            tracing::debug!(%client, "TLS handshake timed out");
            None
        }
    }
}
