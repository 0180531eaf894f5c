//! The request path: route, ask `select` for a backend, send, relay the
//! answer, and on `101` hand both sockets to the tunnel.
//!
//! Failures are attributed to whoever caused them. A backend that refuses
//! the connection, or whose connection dies before any response byte, is
//! skipped and another tried (when the request was never written, or is
//! idempotent without a body); the client is then re-pinned with a fresh
//! cookie. A client that breaks its own upload gets 400/408 and the
//! backend is not blamed for it (see `client_body`). A request still
//! waiting for the head of a backend that health checks mark down meanwhile
//! goes to another backend when it is replayable, else gets 502 (see
//! `health`). Whatever gives up
//! returns a [`ForwardError`]; `fail` counts it and answers.

use crate::client_body::{BodyState, ClientBody};
use crate::error::ForwardError;
use crate::headers::{self, client_ip};
use crate::http2::Bridge;
use crate::limits::SharedSlot;
use crate::live::{Proxy, Routing};
use crate::metrics::{class, class_index};
use crate::relay;
use crate::router::{host_only, Route};
use crate::select::socketio::Learner;
use crate::select::{self, ActiveGuard, Backend, Choice, Pool, Wish};
use crate::tunnel;
use crate::upstream::{self, Body, Conn, SendError};
use futures_util::future::Either;
use http::header::{HeaderMap, HeaderValue, HOST, SET_COOKIE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use limpet_config::ProxyConfig;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Serves one client request. A plain function that routes and rewrites
/// the request before returning what waits for the backend: a future
/// holds its arguments beside its body's state, and this one is stored
/// and moved once per request, so it carries only what the wait needs.
pub fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
    match prepare(&proxy, req, peer, scheme) {
        // Boxed: hyper keeps a box the size of this future for each
        // connection's whole life, idle keep-alive included; a request
        // in flight needs the room, an idle connection does not.
        Ok(Routed { routing, pool, out }) => {
            Either::Left(Box::pin(forward(proxy, routing, pool, out)))
        }
        Err(refused) => Either::Right(std::future::ready(*refused)),
    }
}

/// A request routed and made ready for the backends.
struct Routed {
    /// The routing generation the request keeps to its end.
    routing: Arc<Routing>,
    pool: Arc<Pool>,
    out: Outgoing,
}

/// Routes a request and makes it ready for the backends, or the answer
/// that refuses it.
fn prepare(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Result<Routed, Box<Response<Body>>> {
    if let Some(problem) = headers::host_problem(req.version(), req.headers()) {
        return Err(Box::new(fail(
            proxy,
            ["", ""],
            ForwardError::BadHost(problem),
        )));
    }
    let routing = proxy.routing();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().host())
        .map(host_only);
    let Some(route) = routing.router.route(host, req.uri().path()) else {
        return Err(Box::new(fail(proxy, ["", ""], ForwardError::NoRoute)));
    };
    if req.extensions().get::<Bridge>().is_some()
        && !route.upgrades.iter().any(|p| p == "websocket")
    {
        // A 2xx to a CONNECT opens a tunnel: it must not come from a
        // backend that was sent a plain GET.
        return Err(Box::new(fail(
            proxy,
            ["", ""],
            ForwardError::ConnectRefused,
        )));
    }
    let pool = routing.pools[route.pool].clone();
    let out = Outgoing::new(proxy, &routing, &pool, route, req, peer, scheme);
    Ok(Routed { routing, pool, out })
}

/// Answers a request the proxy refuses before routing it, counted as
/// every failure is.
pub fn refuse(proxy: &Proxy, error: ForwardError) -> Response<Body> {
    fail(proxy, ["", ""], error)
}

/// Counts a failure and answers it. Every request the proxy answers
/// itself goes through here.
fn fail(proxy: &Proxy, labels: [&str; 2], error: ForwardError) -> Response<Body> {
    let metrics = &proxy.metrics;
    match error {
        ForwardError::BadHost(problem) => metrics.bad_requests.with_label_values(&[problem]).inc(),
        ForwardError::AllFull => metrics
            .limit_rejections
            .with_label_values(&["max_connections_per_backend"])
            .inc(),
        ForwardError::ClientBody(fault) => metrics
            .client_body_errors
            .with_label_values(&[fault.label()])
            .inc(),
        _ => {}
    }
    // A 101 nobody asked for, or a bad answer to a bridged WebSocket, was
    // counted when it arrived.
    if !matches!(
        error,
        ForwardError::SwitchedUnasked | ForwardError::BadWebSocketAnswer
    ) {
        let status = class(error.status().as_u16());
        metrics
            .requests
            .with_label_values(&[labels[0], labels[1], status])
            .inc();
    }
    error.response()
}

/// A client request made ready for the backends.
struct Outgoing {
    method: Method,
    /// The client's path and query (origin form), for the backend.
    path: Uri,
    /// Rewritten for the backend (hop-by-hop out, forwarding headers in).
    headers: HeaderMap,
    /// The client's body, until the first attempt takes it.
    body: Option<Body>,
    body_state: Arc<BodyState>,
    /// Without a body, an idempotent request can be sent again after a
    /// connection dies under it: it cannot have changed anything.
    replayable: bool,
    client: IpAddr,
    /// The client's side of an upgrade the route allows.
    upgrade: Option<OnUpgrade>,
    /// The client connection's slot, for the tunnel to hold.
    slot: Option<SharedSlot>,
    /// An HTTP/2 WebSocket (extended CONNECT) sent on as an HTTP/1.1 upgrade.
    bridge: Option<Bridge>,
    wish: Wish,
}

impl Outgoing {
    fn new(
        proxy: &Proxy,
        routing: &Routing,
        pool: &Pool,
        route: &Route,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Outgoing {
        let cfg = &routing.config;
        let trusted = &cfg.trusted_proxies;
        let peer_ip = headers::canonical(peer.ip());
        let peer_trusted = trusted.iter().any(|c| c.contains(peer_ip));
        let client = client_ip(
            peer,
            req.headers()
                .get_all(headers::X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            trusted,
        );
        let asks_upgrade = headers::is_upgrade(req.headers());
        let upgrade_to = asks_upgrade
            .then(|| headers::allowed_upgrade(req.headers(), &route.upgrades))
            .flatten();
        if upgrade_to.is_none() && asks_upgrade {
            // Goes on as a plain request, its upgrade headers removed.
            proxy.metrics.upgrades_refused.inc();
        }
        let upgrade = upgrade_to.is_some().then(|| hyper::upgrade::on(&mut req));
        let slot = upgrade
            .is_some()
            .then(|| req.extensions_mut().remove::<SharedSlot>())
            .flatten();
        let bridge = req.extensions_mut().remove::<Bridge>();
        let (parts, body) = req.into_parts();
        // The wish reads the headers as the client sent them; after that
        // they are rewritten in place, not copied.
        let wish = Wish::read(pool, &parts.headers, &parts.uri, client);
        let http::request::Parts {
            method,
            uri,
            headers: mut up_headers,
            ..
        } = parts;
        headers::strip_hop_by_hop(&mut up_headers, upgrade_to);
        headers::add_forwarded(&mut up_headers, peer_ip, client, scheme, peer_trusted);
        let (body, body_state) = ClientBody::new(body, cfg.timeouts.client_body.get());
        // No body (most requests): an empty one, which boxes without
        // allocating and has nothing to time out or record.
        let body = if body_state.is_done() {
            empty_body()
        } else {
            body.boxed()
        };
        Outgoing {
            // Shares the parsed bytes: no string made and parsed again.
            path: uri
                .path_and_query()
                .cloned()
                .map_or_else(|| Uri::from_static("/"), Uri::from),
            headers: up_headers,
            body: Some(body),
            replayable: body_state.is_done() && is_idempotent(&method),
            body_state,
            client,
            upgrade,
            slot,
            bridge,
            wish,
            method,
        }
    }

    /// The request for the backend: the client's body the first time, an
    /// empty one after that (only a replayable request is sent again).
    fn request(&mut self) -> Request<Body> {
        let body = self.body.take().unwrap_or_else(empty_body);
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// What to do after a send that got no response head.
enum Next {
    /// A pooled connection failed: the same backend once more, fresh.
    Again,
    /// Another backend.
    Another,
    Fail(ForwardError),
}

/// Tries backends until one answers or none is left.
async fn forward(
    proxy: Arc<Proxy>,
    routing: Arc<Routing>,
    pool: Arc<Pool>,
    mut out: Outgoing,
) -> Response<Body> {
    let (proxy, cfg, pool) = (&proxy, &routing.config, &pool);
    let mut tried: Vec<usize> = Vec::new();
    // A request hyper handed back unwritten, for the next attempt.
    let mut unsent: Option<Request<Body>> = None;
    let mut again: Option<Choice> = None;
    loop {
        let fresh = again.is_some();
        let choice = match again.take() {
            Some(choice) => choice,
            None => match select::select(pool, &out.wish, &tried) {
                Ok(choice) => choice,
                Err(none) => return fail(proxy, [pool.name(), ""], none.into()),
            },
        };
        let backend = pool.backends[choice.index].clone();
        let Some(conn) = connect(proxy, cfg, pool, &backend, out.upgrade.is_some() || fresh).await
        else {
            tried.push(choice.index);
            continue;
        };
        let pooled = conn.pooled;
        let up_req = unsent.take().unwrap_or_else(|| out.request());
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        let response_timeout = cfg.timeouts.response.get();
        let sent = upstream::send(
            conn,
            up_req,
            response_timeout,
            out.body_state.wait_done(),
            backend.sessions_shut_down(),
        )
        .await;
        let failed = match sent {
            Ok((resp, sender)) => {
                let answer = Answer {
                    choice,
                    backend,
                    guard,
                    started,
                    resp,
                    sender,
                };
                return respond(proxy, cfg, pool, &mut out, answer);
            }
            Err(failed) => failed,
        };
        let labels = [pool.name(), backend.id.as_str()];
        match after_failure(
            proxy,
            pool,
            &backend,
            &out,
            &failed.error,
            failed.unsent.is_some(),
            pooled,
        ) {
            Next::Again => {
                unsent = failed.unsent;
                again = Some(choice);
            }
            Next::Another => {
                unsent = failed.unsent;
                tried.push(choice.index);
            }
            Next::Fail(error) => return fail(proxy, labels, error),
        }
    }
}

/// A connection to `backend`, or `None` after counting the failure
/// against it (the caller tries another).
async fn connect(
    proxy: &Proxy,
    cfg: &ProxyConfig,
    pool: &Pool,
    backend: &Backend,
    fresh: bool,
) -> Option<Conn> {
    let target = upstream::Target {
        address: &backend.address,
        tls: pool.upstream_tls.as_deref(),
        connect_timeout: cfg.timeouts.connect.get(),
        keepalive: upstream::Keepalive::of(cfg),
    };
    let idle = cfg.timeouts.upstream_idle.get();
    match upstream::obtain(&backend.idle, target, fresh, idle).await {
        Ok(conn) => Some(conn),
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
            None
        }
    }
}

/// Decides who broke a send that got no response head, and what next.
fn after_failure(
    proxy: &Proxy,
    pool: &Pool,
    backend: &Backend,
    out: &Outgoing,
    error: &SendError,
    unsent: bool,
    pooled: bool,
) -> Next {
    let client = out.client;
    if let Some(fault) = out.body_state.fault() {
        // The client broke its own request: not the backend's failure.
        tracing::info!(pool = %pool.name(), backend = %backend.id, %client, "{fault}");
        return Next::Fail(fault.into());
    }
    if matches!(error, SendError::MarkedDown) {
        // Already out: nothing to count against it. Only a request that
        // cannot have changed anything goes to another backend.
        tracing::info!(pool = %pool.name(), backend = %backend.id, %client, "{error}");
        return if out.replayable {
            Next::Another
        } else {
            Next::Fail(error.into())
        };
    }
    let timed_out = matches!(error, SendError::Timeout(_));
    let retry = !timed_out && (unsent || out.replayable);
    if retry {
        tracing::info!(pool = %pool.name(), backend = %backend.id, %client, pooled, "{error}; sending the request again");
        proxy
            .metrics
            .retries
            .with_label_values(&[pool.name(), backend.id.as_str()])
            .inc();
        if pooled {
            // Likely the keep-alive race: try the same backend on a new
            // connection before blaming it.
            return Next::Again;
        }
    }
    // Only the backend's own failures count: no head in time after the
    // upload, or a fresh connection lost once the whole request was sent
    // (a pooled one may have lost the keep-alive race; a dead backend
    // fails its next connect).
    if timed_out || (out.body_state.is_done() && !pooled) {
        backend.record_failure(&pool.config, Instant::now());
    }
    if retry {
        return Next::Another;
    }
    tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "upstream request failed: {error}");
    Next::Fail(error.into())
}

/// A backend's response head, and what came with it.
struct Answer {
    choice: Choice,
    backend: Arc<Backend>,
    guard: ActiveGuard,
    started: Instant,
    resp: Response<Incoming>,
    sender: SendRequest<Body>,
}

/// Counts the answer, judges the backend by it, and passes it on: its
/// body relayed, or on `101` both connections handed to a tunnel.
fn respond(
    proxy: &Arc<Proxy>,
    cfg: &ProxyConfig,
    pool: &Arc<Pool>,
    out: &mut Outgoing,
    answer: Answer,
) -> Response<Body> {
    let Answer {
        choice,
        backend,
        guard,
        started,
        mut resp,
        sender,
    } = answer;
    let client = out.client;
    let labels = [pool.name(), backend.id.as_str()];
    let metrics = &proxy.metrics;
    pool.affinity[choice.outcome.index()]
        .get_or_init(|| {
            metrics
                .affinity
                .with_label_values(&[pool.name(), choice.outcome.label()])
        })
        .inc();
    let series = &backend.series;
    series
        .response_seconds
        .get_or_init(|| metrics.response_seconds.with_label_values(&labels))
        .observe(started.elapsed().as_secs_f64());
    let status = resp.status();
    if !status.is_server_error() {
        backend.record_success();
    } else if pool.config.passive.fail_on_5xx {
        backend.record_failure(&pool.config, Instant::now());
    }
    let code = status.as_u16();
    series.requests[class_index(code)]
        .get_or_init(|| {
            metrics
                .requests
                .with_label_values(&[labels[0], labels[1], class(code)])
        })
        .inc();
    backend
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let client_upgrade = out.upgrade.take();
    if switching && client_upgrade.is_none() {
        tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "101 to a request without an allowed upgrade");
        return fail(proxy, labels, ForwardError::SwitchedUnasked);
    }
    if let Some(bridge) = &out.bridge {
        // The client asked with an HTTP/2 CONNECT: it gets 200 for a valid
        // 101, and a 2xx for anything else would open a tunnel to nothing.
        let valid = switching && bridge.accepts(resp.headers());
        if !valid && (switching || status.is_success()) {
            tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, %status, "invalid answer to a bridged WebSocket handshake");
            return fail(proxy, labels, ForwardError::BadWebSocketAnswer);
        }
    }
    let keep_upgrade = switching
        .then(|| resp.headers().get(http::header::UPGRADE).cloned())
        .flatten()
        .filter(|_| out.bridge.is_none());
    headers::strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
    if switching && out.bridge.is_some() {
        resp.headers_mut()
            .remove(http::header::SEC_WEBSOCKET_ACCEPT);
    }
    if let Some(cookie) = &choice.set_cookie {
        if let Ok(v) = HeaderValue::from_str(cookie) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
    }
    if pool.config.backend_header {
        if let Ok(v) = HeaderValue::from_str(&backend.id) {
            resp.headers_mut().insert(headers::X_LIMPET_BACKEND, v);
        }
    }
    match client_upgrade {
        Some(client_upgrade) if switching => {
            metrics.upgrades.with_label_values(&labels).inc();
            let handoff = tunnel::Handoff {
                pool: pool.clone(),
                client,
                guard: guard.into_tunnel(),
                idle: cfg.timeouts.tunnel_idle.get(),
                client_upgrade,
                upstream_upgrade: hyper::upgrade::on(&mut resp),
                sender,
                backend,
                slot: out.slot.take(),
            };
            tokio::spawn(tunnel::serve(proxy.clone(), handoff));
            let (mut parts, _) = resp.into_parts();
            if out.bridge.is_some() {
                parts.status = StatusCode::OK;
            }
            Response::from_parts(parts, empty_body())
        }
        // A non-101 answer to an upgrade request is relayed as is; that
        // connection is not reused, since it was asked to switch protocols.
        upgrade => {
            let learn = learner(pool, &out.wish, &resp, &backend.id);
            let reuse = upgrade.is_none().then_some((sender, backend));
            let (parts, incoming) = resp.into_parts();
            let tracked = relay::Tracked {
                inner: incoming,
                guard: Some(guard),
                conn: reuse,
                learn,
            };
            Response::from_parts(parts, BodyExt::boxed(tracked))
        }
    }
}

/// A reader for the sid of an engine.io handshake answer: a `200` to a
/// polling request without a sid, in a pool with socketio affinity. A
/// compressed answer is left alone (engine.io compresses only answers
/// above 1 KiB, which an open packet is not).
fn learner(pool: &Pool, wish: &Wish, resp: &Response<Incoming>, backend: &str) -> Option<Learner> {
    let handshake = matches!(
        wish,
        Wish::Session {
            handshake: true,
            ..
        }
    );
    let identity = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let table = pool.sids.as_ref()?;
    (handshake && identity && resp.status() == StatusCode::OK)
        .then(|| Learner::new(table.clone(), backend))
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
