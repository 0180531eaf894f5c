//! The request path: route, pick a backend (affinity first, then the
//! balancer), forward, relay the answer, and on `101` hand both sockets to
//! the tunnel.
//!
//! Failures are attributed to whoever caused them. A backend that refuses
//! the connection, or whose connection dies before any response byte, is
//! skipped and another tried (when the request was never written, or is
//! idempotent without a body); the client is then re-pinned with a fresh
//! cookie. A client that breaks its own upload gets 400/408 and the
//! backend is not blamed for it (see `client_body`).

use crate::client_body::{ClientBody, ClientFault};
use crate::headers::{self, client_ip};
use crate::metrics::class;
use crate::relay;
use crate::select::{self, ActiveGuard, Backend, Choice, NoBackend, Pool, Wish};
use crate::server::Proxy;
use crate::tunnel;
use crate::upstream::{self, Body, SendError};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, SET_COOKIE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves one client request.
pub async fn handle(
    proxy: Arc<Proxy>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    if let Some(problem) = headers::host_problem(req.version(), req.headers()) {
        proxy
            .metrics
            .bad_requests
            .with_label_values(&[problem])
            .inc();
        proxy
            .metrics
            .requests
            .with_label_values(&["", "", "4xx"])
            .inc();
        return plain(
            StatusCode::BAD_REQUEST,
            "400 bad request: an HTTP/1.1 request needs exactly one Host header",
        );
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().host())
        .map(crate::router::host_only)
        .map(str::to_string);
    // This request keeps the routing generation it started with.
    let routing = proxy.routing();
    let Some(route) = routing.router.route(host.as_deref(), req.uri().path()) else {
        proxy
            .metrics
            .requests
            .with_label_values(&["", "", "4xx"])
            .inc();
        return plain(
            StatusCode::NOT_FOUND,
            "404 not found: no route for this request",
        );
    };
    let pool = routing.pools[route.pool].clone();
    let cfg = &routing.config;
    let trusted = &cfg.trusted_proxies;
    let peer_ip = headers::canonical(peer.ip());
    let peer_trusted = trusted.iter().any(|c| c.contains(peer_ip));
    let xff = HeaderName::from_static("x-forwarded-for");
    let client = client_ip(
        peer,
        req.headers()
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        trusted,
    );
    let upgrade_to = headers::allowed_upgrade(req.headers(), &route.upgrades);
    if upgrade_to.is_none() && headers::is_upgrade(req.headers()) {
        // Goes on as a plain request, its upgrade headers removed.
        proxy.metrics.upgrades_refused.inc();
    }
    let upgrade = upgrade_to.is_some();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut up_headers = parts.headers.clone();
    headers::strip_hop_by_hop(&mut up_headers, upgrade_to);
    headers::add_forwarded(&mut up_headers, peer_ip, client, scheme, peer_trusted);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (body, body_state) = ClientBody::new(body, cfg.timeouts.client_body.get());
    // Without a body, an idempotent request can be sent again after a
    // connection dies under it: it cannot have changed anything.
    let replayable = body_state.is_done() && is_idempotent(&parts.method);
    let mut body: Option<Body> = Some(body.boxed());
    let wish = Wish::read(&pool, &parts.headers, &parts.uri, client);

    let mut tried: Vec<usize> = Vec::new();
    // A request hyper handed back unwritten, for the next attempt.
    let mut unsent: Option<Request<Body>> = None;
    // A pooled connection failed: the same backend once more, fresh.
    let mut again: Option<Choice> = None;
    loop {
        let fresh = again.is_some();
        let choice = match again.take() {
            Some(choice) => choice,
            None => match select::select(&pool, &wish, &tried) {
                Ok(choice) => choice,
                Err(none) => {
                    proxy
                        .metrics
                        .requests
                        .with_label_values(&[pool.name(), "", "5xx"])
                        .inc();
                    return match none {
                        NoBackend::Unreachable => plain(
                            StatusCode::BAD_GATEWAY,
                            "502 bad gateway: no backend could be reached",
                        ),
                        NoBackend::AllFull => {
                            proxy
                                .metrics
                                .limit_rejections
                                .with_label_values(&["max_connections_per_backend"])
                                .inc();
                            plain(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "503 service unavailable: every backend is at its connection limit",
                            )
                        }
                        NoBackend::NoneUp => plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "503 service unavailable: no backend is up",
                        ),
                    };
                }
            },
        };
        let backend = pool.backends[choice.index].clone();
        let target = upstream::Target {
            address: &backend.address,
            tls: pool.upstream_tls.as_deref(),
            connect_timeout: cfg.timeouts.connect.get(),
        };
        let conn = match upstream::obtain(
            &backend.idle,
            target,
            upgrade || fresh,
            cfg.timeouts.upstream_idle.get(),
        )
        .await
        {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(pool = %pool.name(), backend = %backend.id, "{e}; trying another backend");
                proxy
                    .metrics
                    .connect_errors
                    .with_label_values(&[pool.name(), &backend.id])
                    .inc();
                if backend.record_failure(&pool.config, Instant::now()) {
                    tracing::warn!(pool = %pool.name(), backend = %backend.id, "backend taken out for {} after failures", pool.config.passive.fail_timeout);
                }
                tried.push(choice.index);
                continue;
            }
        };
        let pooled = conn.pooled;
        // The first attempt takes the client's body; a retry gets the
        // request hyper handed back, or (replayable) an empty body again.
        let up_req = match unsent.take() {
            Some(req) => req,
            None => {
                let body = body.take().unwrap_or_else(empty_body);
                let mut up_req = Request::new(body);
                *up_req.method_mut() = parts.method.clone();
                *up_req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
                *up_req.version_mut() = Version::HTTP_11;
                *up_req.headers_mut() = up_headers.clone();
                up_req
            }
        };
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        let sent = upstream::send(
            conn,
            up_req,
            cfg.timeouts.response.get(),
            body_state.wait_done(),
        )
        .await;
        let labels = [pool.name(), backend.id.as_str()];
        let (mut resp, sender) = match sent {
            Ok(ok) => ok,
            Err(failed) => {
                let error = failed.error;
                if let Some(fault) = body_state.fault() {
                    // The client broke its own request: not the backend's failure.
                    return client_fault(&proxy, &pool, &backend, client, fault);
                }
                let timed_out = matches!(error, SendError::Timeout(_));
                let retry = !timed_out && (failed.unsent.is_some() || replayable);
                if retry {
                    tracing::info!(pool = %pool.name(), backend = %backend.id, %client, pooled, "{error}; sending the request again");
                    proxy.metrics.retries.with_label_values(&labels).inc();
                    unsent = failed.unsent;
                    if pooled {
                        // Likely the keep-alive race: try the same backend
                        // on a new connection before blaming it.
                        again = Some(choice);
                        continue;
                    }
                }
                // Only the backend's own failures count: no head in time
                // after the upload, or a fresh connection lost once the
                // whole request was sent (a pooled one may have lost the
                // keep-alive race; a dead backend fails its next connect).
                if timed_out || (body_state.is_done() && !pooled) {
                    backend.record_failure(&pool.config, Instant::now());
                }
                if retry {
                    tried.push(choice.index);
                    continue;
                }
                tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "upstream request failed: {error}");
                proxy
                    .metrics
                    .requests
                    .with_label_values(&[labels[0], labels[1], "5xx"])
                    .inc();
                return match error {
                    SendError::Timeout(_) => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 gateway timeout: the backend did not answer in time",
                    ),
                    SendError::Hyper(_) => plain(
                        StatusCode::BAD_GATEWAY,
                        "502 bad gateway: the backend connection failed",
                    ),
                };
            }
        };
        proxy
            .metrics
            .affinity
            .with_label_values(&[pool.name(), choice.outcome.label()])
            .inc();
        proxy
            .metrics
            .response_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        let status = resp.status();
        if !status.is_server_error() {
            backend.record_success();
        } else if pool.config.passive.fail_on_5xx {
            backend.record_failure(&pool.config, Instant::now());
        }
        proxy
            .metrics
            .requests
            .with_label_values(&[labels[0], labels[1], class(status.as_u16())])
            .inc();
        backend
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !upgrade {
            // Switching protocols nobody asked for: the connection's state
            // is unknown, so it is neither relayed nor reused.
            tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "101 to a request without an allowed upgrade");
            return plain(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: the backend switched protocols unasked",
            );
        }
        let keep_upgrade = switching
            .then(|| resp.headers().get(http::header::UPGRADE).cloned())
            .flatten();
        headers::strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
        if let Some(cookie) = &choice.set_cookie {
            if let Ok(v) = HeaderValue::from_str(cookie) {
                resp.headers_mut().append(SET_COOKIE, v);
            }
        }
        if pool.config.backend_header {
            if let Ok(v) = HeaderValue::from_str(&backend.id) {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-limpet-backend"), v);
            }
        }
        if switching {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                proxy.metrics.upgrades.with_label_values(&labels).inc();
                tokio::spawn(run_tunnel(
                    proxy.clone(),
                    pool.clone(),
                    backend.clone(),
                    client,
                    guard.into_tunnel(),
                    cfg.timeouts.tunnel_idle.get(),
                    client_upgrade,
                    upstream_upgrade,
                    sender,
                ));
                let (parts, _) = resp.into_parts();
                return Response::from_parts(
                    parts,
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed(),
                );
            }
        }
        // A non-101 answer to an upgrade request is relayed as is; that
        // connection is not reused, since it was asked to switch protocols.
        let reuse = (!upgrade).then_some((sender, backend.clone()));
        let (parts, incoming) = resp.into_parts();
        let tracked = relay::Tracked {
            inner: incoming,
            guard: Some(guard),
            conn: reuse,
        };
        return Response::from_parts(parts, BodyExt::boxed(tracked));
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Answers a request whose client broke its own upload: 408 when it went
/// quiet, 400 otherwise (the client is usually gone by then).
fn client_fault(
    proxy: &Proxy,
    pool: &Pool,
    backend: &Backend,
    client: IpAddr,
    fault: ClientFault,
) -> Response<Body> {
    tracing::info!(pool = %pool.name(), backend = %backend.id, %client, "{fault}");
    proxy
        .metrics
        .client_body_errors
        .with_label_values(&[fault.label()])
        .inc();
    proxy
        .metrics
        .requests
        .with_label_values(&[pool.name(), backend.id.as_str(), "4xx"])
        .inc();
    match fault {
        ClientFault::Timeout => plain(
            StatusCode::REQUEST_TIMEOUT,
            "408 request timeout: the request body stopped arriving",
        ),
        ClientFault::Aborted | ClientFault::Invalid => plain(
            StatusCode::BAD_REQUEST,
            "400 bad request: the request body was cut short or malformed",
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_tunnel(
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    backend: Arc<Backend>,
    client: IpAddr,
    guard: ActiveGuard,
    idle: std::time::Duration,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
    sender: SendRequest<Body>,
) {
    let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "upgrade failed: {e}");
            return;
        }
    };
    drop(sender);
    let started = Instant::now();
    proxy
        .tunnels
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(pool = %pool.name(), backend = %backend.id, %client, "tunnel open");
    let metrics = &proxy.metrics;
    let to_backend = metrics.tunnel_bytes.with_label_values(&["to_backend"]);
    let to_client = metrics.tunnel_bytes.with_label_values(&["to_client"]);
    let mut close = proxy.close_tunnels.subscribe();
    let copy = tunnel::run(TokioIo::new(client_io), TokioIo::new(upstream_io), idle);
    let out = tokio::select! {
        out = copy => out,
        // The shutdown drain deadline cuts the tunnel.
        _ = close.wait_for(|closed| *closed) => tunnel::Outcome { end: tunnel::End::Deadline, to_upstream: 0, to_client: 0 },
    };
    // Bytes are added once the tunnel ends (copy_bidirectional counts them).
    to_backend.inc_by(out.to_upstream);
    to_client.inc_by(out.to_client);
    drop(guard);
    proxy
        .tunnels
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        pool = %pool.name(),
        backend = %backend.id,
        %client,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_to_backend = out.to_upstream,
        bytes_to_client = out.to_client,
        end = ?out.end,
        "tunnel closed"
    );
}
