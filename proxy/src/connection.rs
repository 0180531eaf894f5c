//! One client connection once its handshakes are done: HTTP/1.1 (with
//! upgrades) whose every request goes to `forward`, or, on a listener with
//! `redirect_https`, a 301 to the same place over https for every request.
//!
//! hyper enforces the head limits here (`header_read` timeout,
//! `max_header_bytes`); a shutdown lets the request in flight finish and
//! then closes the connection. A connection accepted just before the
//! shutdown gets its first request served too (see `serve_http`).

use crate::error::plain;
use crate::forward;
use crate::limits::SharedSlot;
use crate::live::Proxy;
use crate::router::host_only;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Serves HTTP/1.1 (with upgrades) on one client connection.
pub async fn serve_http<IO>(
    proxy: &Arc<Proxy>,
    io: IO,
    client: SocketAddr,
    scheme: &'static str,
    hsts: Option<String>,
    mut shutdown: watch::Receiver<bool>,
    slot: SharedSlot,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let routing = proxy.routing();
    let cfg = &routing.config;
    let hsts = hsts.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok());
    let (started_tx, mut started) = watch::channel(false);
    let service = {
        let proxy = proxy.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // Only the first request changes it: a send that changes
            // nothing would still wake (and lock) the watch's waiter
            // lists on every keep-alive request.
            started_tx.send_if_modified(|started| !std::mem::replace(started, true));
            let proxy = proxy.clone();
            let hsts = hsts.clone();
            // An upgrade takes the slot into its tunnel (see SharedSlot).
            // Only a request asking to upgrade can become one, and an
            // extension costs a map allocated per request.
            if crate::headers::is_upgrade(req.headers()) {
                req.extensions_mut().insert(slot.clone());
            }
            // Routed now: what hyper stores per request is the wait alone.
            let answer = forward::handle(proxy, req, client, scheme);
            async move {
                let mut resp = answer.await;
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
            // hyper closes a connection with no request in flight at
            // once, a fresh one too: its client, which did nothing wrong,
            // would see its first request fail (during a binary upgrade,
            // a connection the old process accepted last). Give it the
            // head-read time to send one.
            let first = tokio::time::timeout(
                cfg.timeouts.header_read.get(),
                started.wait_for(|s| *s),
            );
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = first => {}
            }
            // Finish the request in flight (an upgrade hands off to its
            // tunnel, which follows the drain deadline), then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers every request with a 301 to the same host and path over https.
pub async fn serve_redirect<IO>(proxy: &Arc<Proxy>, io: IO, https_port: Option<u16>)
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
                .map(host_only)
                .unwrap_or("localhost")
                .to_string();
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let port = https_port.map(|p| format!(":{p}")).unwrap_or_default();
            let location = format!("https://{host}{port}{path}");
            let mut resp = plain(
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
