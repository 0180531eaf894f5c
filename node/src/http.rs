//! HTTP on the node's port: the WebSocket upgrade, `/health`, `/metrics`,
//! the server-side publish API, and (optionally) static files.
//!
//! `POST /api/publish` lets an application backend push to a room or to
//! one socket without a WebSocket, like Centrifugo's HTTP API:
//! `{"room": "r", "event": "e", "data": ...}` or `{"socket": "id", ...}`.
//! Its bearer token (if set) is checked before the body is read, and a
//! body that does not arrive within 10 s is answered 408 and the
//! connection closed.

use crate::addresses::{self, Refusal};
use crate::auth::{token_param, AuthError, Identity};
use crate::connection;
use crate::node::Node;
use crate::protocol;
use crate::sockets::Frame;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, value::RawValue};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

type Resp = Response<Full<Bytes>>;

/// How long a client may take to send a request's headers, and then a
/// publish body. Without the second bound, headers announcing a
/// `Content-Length` followed by silence would hold a task and a socket
/// forever (the listener has no connection cap and the API token is
/// optional). 10 s is ample for a body capped at `max_message_bytes`.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

pub async fn handle(node: Arc<Node>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_string();
    if path == node.config.ws_path {
        return upgrade(node, req, peer);
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => health(&node),
        (&Method::GET, "/metrics") => {
            node.metrics
                .broker_connected
                .set(i64::from(node.backplane.is_connected()));
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                node.metrics.render(),
            )
        }
        (&Method::POST, "/api/publish") => publish_api(&node, req).await,
        (&Method::GET, _) => static_file(&node, &path).await,
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn health(node: &Node) -> Resp {
    let draining = node.draining.load(Relaxed);
    let body = json!({
        "node": node.id,
        "status": if draining { "draining" } else { "serving" },
        "broker": if node.backplane.is_connected() { "connected" } else { "disconnected" },
        "connections": node.socket_count(),
        "rooms": node.room_count(),
        "peers": node.peer_count(),
    });
    json_reply(
        if draining {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        body,
    )
}

/// Whether a refusal for `reason` should be logged: the first, then one
/// per thousand, like the backplane's refusals. Anyone can make refused
/// upgrades as fast as they can connect, and a line each would flood the
/// log; the full count is in `limpet_node_rejected_connections_total`.
fn log_refusal(node: &Node, reason: &str) -> Option<u64> {
    let so_far = node.metrics.rejected.with_label_values(&[reason]).get();
    so_far.is_multiple_of(1000).then_some(so_far)
}

fn reject(node: &Node, status: StatusCode, reason: &'static str, text: &'static str) -> Resp {
    node.metrics.rejected.with_label_values(&[reason]).inc();
    respond(status, "text/plain", text)
}

/// Whether a comma-separated header (`Connection`, `Upgrade`) lists `token`,
/// compared case-insensitively as RFC 6455 section 4.2.1 asks.
fn lists_token(headers: &hyper::HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The `Origin` check: with an allowlist, a browser's `Origin` must be
/// one of its entries byte for byte. A value that is not visible ASCII, or
/// several `Origin` headers, can never match and is refused (before, an
/// unreadable value skipped the check). No `Origin` at all is a
/// non-browser client, which the allowlist does not govern.
fn origin_allowed(allowed: &[String], headers: &hyper::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mut origins = headers.get_all("origin").iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(origin), None) => origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a == o)),
        (Some(_), Some(_)) => false,
    }
}

/// The client's identity from the `token` query parameter: `Ok(None)`
/// for an anonymous client where that is allowed.
fn authenticate(node: &Node, query: Option<&str>) -> Result<Option<Identity>, AuthError> {
    let token = token_param(query);
    match (&node.auth, token) {
        (None, _) if node.config.auth.required => Err(AuthError::Claims(
            "the node cannot check tokens (see its log)".into(),
        )),
        (None, _) => Ok(None),
        (Some(v), None) if v.required => Err(AuthError::Missing),
        (Some(_), None) => Ok(None),
        (Some(v), Some(t)) => v.verify(&t).map(Some),
    }
}

fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if req.method() != Method::GET {
        let mut r = reject(
            &node,
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "a WebSocket upgrade is a GET\n",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let headers = req.headers();
    if !lists_token(headers, "upgrade", "websocket")
        || !lists_token(headers, "connection", "upgrade")
    {
        return reject(
            &node,
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected Upgrade: websocket and Connection: upgrade\n",
        );
    }
    let Some(key) = headers.get("sec-websocket-key").cloned() else {
        return reject(
            &node,
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade\n",
        );
    };
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v != "13")
    {
        return reject(
            &node,
            StatusCode::BAD_REQUEST,
            "bad_version",
            "WebSocket version 13 required\n",
        );
    }
    if node.draining.load(Relaxed) {
        return reject(
            &node,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down\n",
        );
    }
    if !origin_allowed(&node.config.allowed_origins, headers) {
        let origin = headers
            .get("origin")
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
        if let Some(so_far) = log_refusal(&node, "origin") {
            tracing::warn!(node = %node.id, ?origin, %peer, so_far, "refused WebSocket from a foreign origin (one line per 1000)");
        }
        return reject(
            &node,
            StatusCode::FORBIDDEN,
            "origin",
            "origin not allowed\n",
        );
    }
    let identity = match authenticate(&node, req.uri().query()) {
        Ok(identity) => identity,
        Err(e) => {
            let reason = e.reason();
            let counter = node.metrics.auth_failures.with_label_values(&[reason]);
            if counter.get().is_multiple_of(1000) {
                tracing::warn!(node = %node.id, %peer, reason, "refused WebSocket: {e} (one line per 1000 per reason)");
            }
            counter.inc();
            node.metrics.rejected.with_label_values(&["auth"]).inc();
            let status = match e {
                AuthError::TooLong(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                _ => StatusCode::UNAUTHORIZED,
            };
            return respond(status, "text/plain", format!("{e}\n"));
        }
    };
    if node.socket_count() >= node.config.limits.max_connections {
        return reject(
            &node,
            StatusCode::SERVICE_UNAVAILABLE,
            "max_connections",
            "too many connections\n",
        );
    }
    // Behind a trusted proxy the client is who it forwarded for.
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let ip = addresses::client_ip(peer.ip(), &forwarded, &node.config.trusted_proxies);
    let admission = match node.addresses.admit(ip) {
        Ok(a) => a,
        Err(refusal) => {
            let reason = match refusal {
                Refusal::TooManyConnections => "address_connections",
                Refusal::TooManyAddresses => "addresses",
            };
            if let Some(so_far) = log_refusal(&node, reason) {
                tracing::warn!(node = %node.id, client = %ip, %peer, so_far, "refused WebSocket: {refusal} (one line per 1000)");
            }
            return match refusal {
                Refusal::TooManyConnections => reject(
                    &node,
                    StatusCode::TOO_MANY_REQUESTS,
                    "address_connections",
                    "too many connections from this address\n",
                ),
                Refusal::TooManyAddresses => reject(
                    &node,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "addresses",
                    "too many client addresses\n",
                ),
            };
        }
    };
    node.metrics
        .client_addresses
        .set(node.addresses.len() as i64);
    let client = if ip == peer.ip() {
        peer.to_string()
    } else {
        format!("{ip} (via {peer})")
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node2 = node.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            // The usual case, a plain TCP connection: the task holds the
            // socket itself, without hyper's boxed wrapper.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    // What the client sent past its request, copied: the
                    // bytes hyper hands over are a view of its whole read
                    // buffer, which would otherwise stay with the client.
                    let early = parts.read_buf.to_vec();
                    drop(parts.read_buf);
                    let io = parts.io.into_inner();
                    // A task of its own: this one's state (the upgrade,
                    // its arguments) is not carried for the client's life.
                    tokio::spawn(connection::serve(
                        node2, io, early, client, admission, identity,
                    ));
                }
                Err(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    tokio::spawn(connection::serve(
                        node2,
                        io,
                        Vec::new(),
                        client,
                        admission,
                        identity,
                    ));
                }
            },
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    r.headers_mut().remove(CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn upgrade_tokens_are_case_insensitive_list_items() {
        let h = headers(&[
            ("connection", b"keep-alive, Upgrade"),
            ("upgrade", b"WebSocket"),
        ]);
        assert!(lists_token(&h, "connection", "upgrade"));
        assert!(lists_token(&h, "upgrade", "websocket"));
        let h = headers(&[("connection", b"keep-alive"), ("upgrade", b"websocketx")]);
        assert!(!lists_token(&h, "connection", "upgrade"));
        assert!(!lists_token(&h, "upgrade", "websocket"));
    }

    #[test]
    fn bearer_tokens() {
        assert!(token_matches(b"t0ken", b"t0ken"));
        assert!(!token_matches(b"t0ken", b"t0keN"));
        assert!(!token_matches(b"t0ken", b"t0ke"));
        assert!(!token_matches(b"t0ken", b""));
    }

    #[test]
    fn origins() {
        let allow = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&[], &headers(&[("origin", b"https://x")])));
        assert!(origin_allowed(&allow, &headers(&[])));
        assert!(origin_allowed(
            &allow,
            &headers(&[("origin", b"https://app.example")])
        ));
        assert!(!origin_allowed(
            &allow,
            &headers(&[("origin", b"https://app.example\xc3\xa9")])
        ));
        assert!(!origin_allowed(
            &allow,
            &headers(&[
                ("origin", b"https://app.example"),
                ("origin", b"https://evil")
            ])
        ));
    }
}

/// Compares a bearer token in constant time: both sides are hashed first
/// (so neither the length nor the first differing byte shows in the time
/// taken), then the digests are compared with `subtle`.
fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(expected)
        .as_slice()
        .ct_eq(Sha256::digest(given).as_slice())
        .into()
}

#[derive(serde::Deserialize)]
struct PublishBody<'a> {
    room: Option<String>,
    socket: Option<String>,
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

async fn publish_api(node: &Node, req: Request<Incoming>) -> Resp {
    if let Some(token) = &node.config.api_token {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| token_matches(token.as_bytes(), given));
        if !ok {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token"}),
            );
        }
    }
    let max = node.config.limits.max_message_bytes.bytes() as usize;
    // The token is checked above, before any body is read, so an
    // unauthenticated client cannot make the node wait on a body at all.
    let collect = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body over {max} bytes")}),
            )
        }
        Err(_) => {
            node.metrics.publish_body_timeouts.inc();
            let mut r = json_reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "request body not received in time"}),
            );
            // The rest of the body may never come: close rather than
            // wait to read past it for a next request.
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "body is not UTF-8"}),
        );
    };
    let p: PublishBody = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not JSON: {e}")}),
            )
        }
    };
    let Some(event) = p.event.as_deref() else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "`event` is required"}),
        );
    };
    let result = match (p.room, p.socket) {
        (Some(room), None) => node.validate_room(Some(&room)).and_then(|room| {
            node.emit(
                None,
                &room,
                Node::event_frame(&room, event, "server", None, p.data),
                true,
            )
        }),
        (None, Some(socket)) => node.send_to(
            &socket,
            Frame::text(protocol::direct(event, "server", None, p.data)),
        ),
        _ => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "give exactly one of `room` or `socket`"}),
            )
        }
    };
    match result {
        Ok(()) => json_reply(StatusCode::OK, json!({"ok": true})),
        Err(f) => json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": f.message, "code": f.code.as_str()}),
        ),
    }
}

async fn static_file(node: &Node, path: &str) -> Resp {
    let Some(dir) = &node.config.static_dir else {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if rel
        .split('/')
        .any(|part| part == ".." || part.starts_with('.'))
    {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let file = std::path::Path::new(dir).join(rel);
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let ctype = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                Some("ico") => "image/x-icon",
                _ => "application/octet-stream",
            };
            respond(StatusCode::OK, ctype, bytes)
        }
        Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves HTTP connections on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(node, req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}
