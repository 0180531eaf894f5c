//! The admin listener: Prometheus `/metrics`, `/health`, and the admin API
//! (JSON in and out), loopback by default, optionally behind a bearer
//! token:
//!
//! * `GET  /health` — `200 ok`, or `503` with the reason when every
//!   backend of every pool is down or in maint: an L4 balancer or a DNS
//!   health check in front of several proxies then sends clients to
//!   another one instead of to a proxy that can only answer 503.
//!
//! * `GET  /api/pools` — every pool and backend with health, admin state,
//!   open requests and tunnels, requests served.
//! * `PUT  /api/pools/{pool}/backends/{id}` with `{"state": "drain"}` —
//!   `ready`, `drain` (no new sessions; cookie holders still reach it, like
//!   HAProxy's drain) or `maint` (nothing new; cookie holders re-pinned).
//! * `POST /api/reload` — the same as `SIGHUP`.
//! * `POST /api/upgrade` — the same as `SIGUSR2` (binary upgrade,
//!   `upgrade`), answered once it is decided: the new pid, or why not.
//!   `GET /api/upgrade` says which process answers and whether one runs.
//! * `GET  /` — the status page (`status.html`): one HTML page with no
//!   external assets that polls `/api/pools` and draws the live state,
//!   with drain, maint and ready buttons calling the API above.
//!
//! With a token, the API and the page want it as `Authorization: Bearer
//! <token>`, or from a browser as HTTP Basic with the token as password
//! (the page answers 401 with a Basic challenge, and the browser then
//! sends it with the page's own API calls). A browser request that
//! changes something must come from the admin's own origin: a page
//! elsewhere cannot drain backends through a browser that is logged in
//! (or on loopback, where no token is set).
//!
//! The admin port is private but not trusted: a request body must arrive
//! within `admin.request_timeout` (a declared length that never comes used
//! to hold the connection for good), and the bearer token is compared in
//! constant time, so response timing does not reveal how much of a guess
//! was right.

use crate::live::Proxy;
use crate::select::AdminState;
use crate::upgrade::{UpgradeError, Upgrader};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Resp = Response<Full<Bytes>>;

pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    upgrader: Arc<Upgrader>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (proxy, upgrader) = (proxy.clone(), upgrader.clone());
        let request_timeout = proxy.routing().config.admin.request_timeout.get();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (proxy, upgrader) = (proxy.clone(), upgrader.clone());
                async move { Ok::<_, Infallible>(respond(&proxy, &upgrader, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(request_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn json_reply(status: StatusCode, v: Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_reply(status, json!({"error": message.into()}))
}

async fn respond(
    proxy: &Arc<Proxy>,
    upgrader: &Arc<Upgrader>,
    req: Request<hyper::body::Incoming>,
) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            return text(StatusCode::OK, proxy.metrics.render(&proxy.routing().pools))
        }
        (&Method::GET, "/health") => {
            return match nothing_up(proxy) {
                None => text(StatusCode::OK, "ok\n".into()),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            }
        }
        _ => {}
    }
    let page = path == "/" && req.method() == Method::GET;
    if !path.starts_with("/api/") && !page {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /, /metrics or /api/pools\n".into(),
        );
    }
    if let Some(token) = &proxy.routing().config.admin.token {
        if !authorized(req.headers(), token) {
            count_refusal(proxy, "unauthorized");
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static(
                    "Basic realm=\"limpet-proxy admin\", charset=\"UTF-8\"",
                ),
            );
            return resp;
        }
    }
    if page {
        return status_page();
    }
    if !same_origin(&req) {
        count_refusal(proxy, "cross_origin");
        return error(
            StatusCode::FORBIDDEN,
            "a browser request from another origin cannot change anything here",
        );
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["api", "pools"]) => json_reply(StatusCode::OK, pools_json(proxy, None)),
        (Method::GET, ["api", "pools", pool]) => match find_pool(proxy, pool) {
            true => json_reply(StatusCode::OK, pools_json(proxy, Some(pool))),
            false => error(StatusCode::NOT_FOUND, format!("no pool named `{pool}`")),
        },
        (Method::PUT | Method::POST, ["api", "pools", pool, "backends", id]) => {
            let (pool, id) = (pool.to_string(), id.to_string());
            set_state(proxy, &pool, &id, req).await
        }
        (Method::POST, ["api", "reload"]) => match proxy.reload() {
            Ok(()) => json_reply(StatusCode::OK, json!({"reloaded": true})),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        },
        (Method::POST, ["api", "upgrade"]) => upgrade(proxy, upgrader).await,
        (Method::GET, ["api", "upgrade"]) => json_reply(
            StatusCode::OK,
            json!({"pid": std::process::id(), "upgrading": upgrader.in_progress()}),
        ),
        (_, ["api", "pools", ..] | ["api", "reload"] | ["api", "upgrade"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// Runs a binary upgrade in a task of its own (a client that hangs up
/// must not cancel it half way) and answers with its outcome.
async fn upgrade(proxy: &Arc<Proxy>, upgrader: &Arc<Upgrader>) -> Resp {
    let run = tokio::spawn(upgrader.clone().upgrade(proxy.clone()));
    match run.await {
        Ok(Ok(pid)) => json_reply(StatusCode::OK, json!({"upgraded": true, "pid": pid})),
        Ok(Err(e @ (UpgradeError::Busy | UpgradeError::HandedOver(_)))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Counts an admin request refused, by `reason`.
fn count_refusal(proxy: &Proxy, reason: &str) {
    proxy
        .metrics
        .admin_errors
        .with_label_values(&[reason])
        .inc();
}

/// The status page: static, everything live comes from `/api/pools`.
fn status_page() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(include_bytes!("status.html"))));
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing from elsewhere: no external assets, no framing.
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
        ),
    );
    resp
}

/// The admin token as `Bearer <token>`, or as the password of HTTP Basic
/// (any user name), which is how a browser sends it.
fn authorized(headers: &hyper::HeaderMap, token: &str) -> bool {
    use base64::Engine;
    let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    if let Some(given) = value.strip_prefix(b"Bearer ") {
        return token_matches(given, token.as_bytes());
    }
    let Some(encoded) = value.strip_prefix(b"Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
        return false;
    };
    match decoded.iter().position(|&b| b == b':') {
        Some(colon) => token_matches(&decoded[colon + 1..], token.as_bytes()),
        None => false,
    }
}

/// False for a request that changes something and that a browser sent
/// from a page of another origin (its `Origin` names another host than
/// the `Host` it was sent to). Clients that are not browsers send no
/// `Origin` and are not concerned.
fn same_origin(req: &Request<hyper::body::Incoming>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return true;
    }
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return true;
    };
    let host = req.headers().get(hyper::header::HOST);
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host.and_then(|h| h.to_str().ok())), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Compares digests in constant time: neither the position of the first
/// wrong byte nor the token's length shows in how long this takes.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(given)
        .as_slice()
        .ct_eq(Sha256::digest(token).as_slice())
        .into()
}

/// Why this proxy cannot serve anything: every backend of every pool is
/// down (health checks, passive failures) or in maint. `None` while one
/// can take clients, or when there are no pools at all (nothing to judge).
fn nothing_up(proxy: &Proxy) -> Option<String> {
    let routing = proxy.routing();
    let now = Instant::now();
    let mut out = Vec::new();
    for pool in &routing.pools {
        let mut backends = Vec::new();
        for b in &pool.backends {
            let state = match (b.is_available(now), b.admin_state()) {
                (true, AdminState::Maint) => "maint",
                (true, _) => return None,
                (false, _) => "down",
            };
            backends.push(format!("{} {state}", b.id));
        }
        out.push(format!("{}: {}", pool.name(), backends.join(", ")));
    }
    (!out.is_empty()).then(|| format!("no backend is up in any pool ({})\n", out.join("; ")))
}

fn find_pool(proxy: &Proxy, name: &str) -> bool {
    proxy.routing().pools.iter().any(|p| p.name() == name)
}

fn pools_json(proxy: &Proxy, only: Option<&str>) -> Value {
    let routing = proxy.routing();
    let now = Instant::now();
    let pools: Vec<Value> = routing
        .pools
        .iter()
        .filter(|p| only.is_none_or(|o| p.name() == o))
        .map(|p| {
            let backends: Vec<Value> = p
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "id": b.id,
                        "address": b.address,
                        "weight": b.weight,
                        "health": if b.is_available(now) { "up" } else { "down" },
                        "state": b.admin_state().as_str(),
                        "active": b.active.load(Relaxed),
                        "tunnels": b.tunnels.load(Relaxed),
                        "requests": b.requests.load(Relaxed),
                        "bytes": b.bytes.load(Relaxed),
                        "failures": b.failures.load(Relaxed),
                    })
                })
                .collect();
            json!({"name": p.name(), "affinity": format!("{:?}", p.config.affinity).to_lowercase(), "backends": backends})
        })
        .collect();
    match only {
        Some(_) => pools.into_iter().next().unwrap_or(Value::Null),
        None => json!({"pools": pools}),
    }
}

async fn set_state(
    proxy: &Proxy,
    pool: &str,
    id: &str,
    req: Request<hyper::body::Incoming>,
) -> Resp {
    let limit: Duration = proxy.routing().config.admin.request_timeout.get();
    let read = tokio::time::timeout(limit, Limited::new(req.into_body(), 4096).collect());
    let body = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            count_refusal(proxy, "body_too_large");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 4 KiB");
        }
        Err(_) => {
            count_refusal(proxy, "body_timeout");
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {limit:?}"),
            );
        }
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let Some(wanted) = parsed.get("state").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"state\": \"ready\" | \"drain\" | \"maint\"}",
        );
    };
    let Some(state) = AdminState::parse(wanted) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown state `{wanted}`: use ready, drain or maint"),
        );
    };
    let routing = proxy.routing();
    let Some(p) = routing.pools.iter().find(|p| p.name() == pool) else {
        return error(StatusCode::NOT_FOUND, format!("no pool named `{pool}`"));
    };
    let Some(b) = p.backends.iter().find(|b| b.id == id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no backend `{id}` in pool `{pool}`"),
        );
    };
    let before = b.set_admin_state(state);
    proxy
        .metrics
        .admin_changes
        .with_label_values(&[state.as_str()])
        .inc();
    tracing::info!(%pool, backend = %id, from = before.as_str(), to = state.as_str(), "backend state changed by the admin API");
    json_reply(
        StatusCode::OK,
        json!({"pool": pool, "id": id, "state": state.as_str(), "previous": before.as_str()}),
    )
}

#[cfg(test)]
mod tests {
    use super::{authorized, token_matches};

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches(b"sesame-0123", b"sesame-0123"));
        assert!(!token_matches(b"sesame-0124", b"sesame-0123"));
        assert!(!token_matches(b"sesame-012", b"sesame-0123"));
        assert!(!token_matches(b"", b"sesame-0123"));
    }

    #[test]
    fn bearer_or_basic_with_the_token_as_password() {
        let with = |value: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::AUTHORIZATION, value.parse().unwrap());
            authorized(&h, "sesame-0123")
        };
        assert!(with("Bearer sesame-0123"));
        // admin:sesame-0123 and :sesame-0123
        assert!(with("Basic YWRtaW46c2VzYW1lLTAxMjM="));
        assert!(with("Basic OnNlc2FtZS0wMTIz"));
        // admin:wrong, no colon, not base64, another scheme
        assert!(!with("Basic YWRtaW46d3Jvbmc="));
        assert!(!with("Basic c2VzYW1lLTAxMjM="));
        assert!(!with("Basic !!!"));
        assert!(!with("Digest sesame-0123"));
        assert!(!authorized(&hyper::HeaderMap::new(), "sesame-0123"));
    }
}
