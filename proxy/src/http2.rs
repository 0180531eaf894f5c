//! HTTP/2 on TLS listeners (ALPN `h2`; cleartext h2c is never spoken),
//! toward HTTP/1.1 backends.
//!
//! [`serve_h2`] runs one client connection with the `[http2]` limits: open
//! streams, header list size, and the rapid-reset guard (CVE-2023-44487:
//! a client that opens streams and resets them before they are taken up
//! gets GOAWAY past `max_pending_reset_streams`). Each stream is a request
//! for `forward`, the same path HTTP/1.1 requests take, with the same
//! affinity, limits and timeouts; [`prepare`] first makes it look like the
//! HTTP/1.1 request the backend will get (a `Host` from `:authority`, its
//! cookies in one header as RFC 9113 §8.2.3 asks).
//!
//! A connection that serves nothing (no request in flight, no response
//! body still going out, no tunnel) for `timeouts.header_read` gets GOAWAY
//! and is closed, as an idle HTTP/1.1 keep-alive connection is: otherwise
//! a client could hold its connection slots for free ([`Busy`]).
//!
//! WebSocket over HTTP/2 (RFC 8441): the listener sends
//! SETTINGS_ENABLE_CONNECT_PROTOCOL, and an extended CONNECT with
//! `:protocol websocket` becomes an HTTP/1.1 `GET` with `Upgrade:
//! websocket` and a key of the proxy's own ([`Bridge`]). The backend's
//! `101` is checked against that key ([`Bridge::accepts`]) and the client
//! gets `200`; then the stream and the backend socket are one more tunnel
//! for `tunnel` (same metrics, idle timeout and drain).

use crate::error::ForwardError;
use crate::forward;
use crate::limits::SharedSlot;
use crate::live::Proxy;
use crate::metrics::GaugeHeld;
use base64::Engine;
use http::header::{
    HeaderMap, HeaderValue, CONNECTION, COOKIE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    UPGRADE,
};
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// ALPN protocol ids, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";

/// An extended CONNECT made into an HTTP/1.1 upgrade: the key the proxy
/// sent, to check the backend's answer by. Rides in the request's
/// extensions from [`prepare`] to `forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    key: String,
}

impl Bridge {
    /// True when the backend's `101` answers this bridge's key (RFC 6455
    /// §4.2.2: SHA-1 of the key and the protocol's GUID, base64).
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        headers
            .get(SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept_key(&self.key).as_bytes())
    }
}

fn accept_key(key: &str) -> String {
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Makes an HTTP/2 request ready for `forward` and an HTTP/1.1 backend.
/// A CONNECT that is not an RFC 8441 WebSocket is refused: the proxy is
/// not a forward proxy.
pub fn prepare(req: &mut Request<Incoming>) -> Result<(), ForwardError> {
    if !req.headers().contains_key(HOST) {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    join_cookies(req.headers_mut());
    if req.method() != Method::CONNECT {
        return Ok(());
    }
    let websocket = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Err(ForwardError::ConnectRefused);
    }
    let mut raw = [0u8; 16];
    // Without an OS RNG nothing secure can be done; refuse loudly.
    getrandom::fill(&mut raw).expect("the OS random number generator works");
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    *req.method_mut() = Method::GET;
    let headers = req.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, v);
    }
    req.extensions_mut().insert(Bridge { key });
    Ok(())
}

/// HTTP/2 may split cookies over several fields; HTTP/1.1 wants one.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, v);
    }
}

/// Serves HTTP/2 on one client connection until it ends; a shutdown, or
/// `timeouts.header_read` with nothing to serve, sends GOAWAY and lets
/// open streams (and tunnels, which live on them) finish.
pub async fn serve_h2<IO>(
    proxy: &Arc<Proxy>,
    io: IO,
    client: SocketAddr,
    hsts: Option<HeaderValue>,
    mut shutdown: watch::Receiver<bool>,
    slot: SharedSlot,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let routing = proxy.routing();
    let limits = &routing.config.http2;
    let metrics = &proxy.metrics;
    metrics.http2_connections.inc();
    let _open = GaugeHeld::new(&metrics.http2_open_connections);
    let busy = Busy {
        streams: Arc::new(AtomicUsize::new(0)),
        slot: slot.clone(),
    };
    let service = {
        let proxy = proxy.clone();
        let streams = busy.streams.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let proxy = proxy.clone();
            let hsts = hsts.clone();
            req.extensions_mut().insert(slot.clone());
            let stream = StreamGuard::new(&streams);
            async move {
                let prepared = prepare(&mut req);
                let kind = match (&prepared, req.extensions().get::<Bridge>()) {
                    (Ok(()), Some(_)) => "websocket",
                    (Ok(()), None) => "request",
                    (Err(_), _) => "refused",
                };
                proxy.metrics.http2_streams.with_label_values(&[kind]).inc();
                let mut resp = match prepared {
                    Ok(()) => forward::handle(proxy, req, client, "https").await,
                    Err(e) => forward::refuse(&proxy, e),
                };
                if let Some(v) = hsts {
                    resp.headers_mut()
                        .insert(hyper::header::STRICT_TRANSPORT_SECURITY, v);
                }
                // The stream counts as busy until hyper has sent its body
                // (or dropped it): the body's frame mapper owns the guard.
                let resp = resp.map(|body| {
                    body.map_frame(move |frame| {
                        let _busy = &stream;
                        frame
                    })
                    .boxed()
                });
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(limits.max_header_list_size.bytes()).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        .max_local_error_reset_streams(limits.max_error_reset_streams)
        .enable_connect_protocol()
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = busy.idle_for(routing.config.timeouts.header_read.get());
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = idle => {
            tracing::debug!(%client, "idle HTTP/2 connection: GOAWAY");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        let why = why_ended(&e);
        metrics
            .http2_connection_errors
            .with_label_values(&[why])
            .inc();
        if why == "enhance_your_calm" {
            tracing::warn!(%client, "HTTP/2 connection closed with ENHANCE_YOUR_CALM: {e} (too many reset streams: a rapid-reset flood?)");
        } else {
            tracing::debug!(%client, "HTTP/2 connection ended: {e}");
        }
    }
}

/// The label of `limpet_proxy_http2_connection_errors_total` for how a
/// connection failed: `enhance_your_calm` is the proxy's GOAWAY for too
/// many reset streams (the rapid-reset guard).
fn why_ended(e: &hyper::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => "enhance_your_calm",
                Some(h2::Reason::PROTOCOL_ERROR) => "protocol_error",
                _ if h2.is_io() => "io",
                _ => "other",
            };
        }
        source = err.source();
    }
    if e.is_timeout() {
        "timeout"
    } else {
        "other"
    }
}

/// What one connection is still serving: streams whose response (head and
/// body) is not yet sent ([`StreamGuard`]), and tunnels, which each hold a
/// clone of the connection's slot (see `SharedSlot`).
struct Busy {
    streams: Arc<AtomicUsize>,
    slot: SharedSlot,
}

impl Busy {
    /// True with nothing to serve. The slot's clones are: this one, the
    /// service's, and one per request not yet taken apart or tunnel open.
    fn is_idle(&self) -> bool {
        self.streams.load(Relaxed) == 0 && Arc::strong_count(&self.slot.0) <= 2
    }

    /// Resolves once the connection has been idle for `limit` (checked
    /// four times per period, so after between 1 and 1.25 × `limit`).
    async fn idle_for(&self, limit: Duration) {
        let tick = (limit / 4).max(Duration::from_millis(10));
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            if self.is_idle() {
                quiet += tick;
                if quiet >= limit {
                    return;
                }
            } else {
                quiet = Duration::ZERO;
            }
        }
    }
}

/// Counts one stream as busy until dropped.
struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(streams: &Arc<AtomicUsize>) -> StreamGuard {
        streams.fetch_add(1, Relaxed);
        StreamGuard(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        // The example of RFC 6455 §1.3.
        let bridge = Bridge {
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(bridge.accepts(&headers));
        headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("wrong"));
        assert!(!bridge.accepts(&headers));
        assert!(!bridge.accepts(&HeaderMap::new()));
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("limpet_sticky=x"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(COOKIE).iter().count(), 1);
        assert_eq!(headers[COOKIE], "a=1; limpet_sticky=x");
    }
}
