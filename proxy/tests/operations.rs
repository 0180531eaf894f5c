//! Operating limpet-proxy: drain and maint through the admin API, SIGHUP
//! reload with tunnels open, graceful SIGTERM, connection limits, and the
//! PROXY protocol. All with the real binary.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COOKIE: &str = "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"ops-test-secret-0123\"";

async fn admin(
    proxy: &ProxyProcess,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> HttpReply {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut headers = vec!["Host: admin"];
    headers.extend(auth.as_deref());
    request(proxy.admin, method, path, &headers, body).await
}

async fn cookie_for(proxy: &ProxyProcess, backend: &str) -> String {
    for _ in 0..40 {
        let r = http(proxy.addr, "GET", "/", &[]).await;
        if r.backend() == Some(backend) {
            return cookie_pair(r.header("set-cookie").unwrap());
        }
    }
    panic!("no new session landed on {backend}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_cookie_holders_and_maint_repins_them() {
    let (b1, b2, b3) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    );
    let proxy = ProxyProcess::start(&config(&[&b1, &b2, &b3], "", COOKIE));
    let holder = cookie_for(&proxy, "b1").await;

    let r = admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        r#"{"state":"drain"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(r#""state":"drain""#) && r.body.contains(r#""previous":"ready""#),
        "{}",
        r.body
    );
    // The cookie holder still reaches b1, with no new cookie.
    for _ in 0..5 {
        let r = http(proxy.addr, "GET", "/", &[("cookie", &holder)]).await;
        assert_eq!(r.backend(), Some("b1"));
        assert!(r.header("set-cookie").is_none());
    }
    // New sessions never go to b1.
    for _ in 0..20 {
        assert_ne!(
            http(proxy.addr, "GET", "/", &[]).await.backend(),
            Some("b1")
        );
    }
    let pools = admin(&proxy, "GET", "/api/pools", "", None).await;
    assert_eq!(pools.status, 200);
    let v: serde_json::Value = serde_json::from_str(&pools.body).unwrap();
    let b1_json = &v["pools"][0]["backends"][0];
    assert_eq!(
        (
            b1_json["id"].as_str(),
            b1_json["state"].as_str(),
            b1_json["health"].as_str()
        ),
        (Some("b1"), Some("drain"), Some("up"))
    );
    assert!(b1_json["requests"].as_u64().unwrap() >= 6);

    // maint: the holder is moved, with a fresh cookie.
    admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        r#"{"state":"maint"}"#,
        None,
    )
    .await;
    let moved = http(proxy.addr, "GET", "/", &[("cookie", &holder)]).await;
    assert_ne!(moved.backend(), Some("b1"));
    assert!(
        moved.header("set-cookie").is_some(),
        "re-pinned with a new cookie"
    );
    // Back to ready: b1 takes new sessions again.
    admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        r#"{"state":"ready"}"#,
        None,
    )
    .await;
    cookie_for(&proxy, "b1").await;
    assert_eq!(
        proxy
            .metric("limpet_proxy_backend_state_changes_total{state=\"drain\"}")
            .await,
        1.0
    );

    // Errors say what was wrong.
    let cases = [
        (
            "/api/pools/nope/backends/b1",
            r#"{"state":"drain"}"#,
            404,
            "no pool named `nope`",
        ),
        (
            "/api/pools/nodes/backends/zz",
            r#"{"state":"drain"}"#,
            404,
            "no backend `zz`",
        ),
        ("/api/pools/nodes/backends/b1", "{", 400, "not JSON"),
        (
            "/api/pools/nodes/backends/b1",
            r#"{"state":"off"}"#,
            400,
            "unknown state `off`",
        ),
    ];
    for (path, body, status, text) in cases {
        let r = admin(&proxy, "PUT", path, body, None).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert!(r.body.contains(text), "{}", r.body);
    }
}

/// A config with free-form sections: `top` (top-level keys and tables
/// such as [limits]), `listen` (keys of the [[listen]] table), `admin`
/// (keys of [admin]), `pool` (inside [[pool]]).
fn raw_config(
    backends: &[&TestBackend],
    top: &str,
    listen: &str,
    admin: &str,
    pool: &str,
) -> String {
    let mut text = format!(
        "{top}\n[[listen]]\nbind = \"127.0.0.1:0\"\n{listen}\n[admin]\nbind = \"127.0.0.1:0\"\n{admin}\n[[pool]]\nname = \"nodes\"\nbackend_header = true\n{pool}\n"
    );
    text.push_str(&backends_and_route(backends));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_enforced() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&raw_config(&[&b1], "", "", "token = \"sesame-0123\"", ""));
    assert_eq!(
        admin(&proxy, "GET", "/api/pools", "", None).await.status,
        401
    );
    assert_eq!(
        admin(&proxy, "GET", "/api/pools", "", Some("wrong-token"))
            .await
            .status,
        401
    );
    assert_eq!(
        admin(&proxy, "GET", "/api/pools", "", Some("sesame-0123"))
            .await
            .status,
        200
    );
    // Metrics stay scrapeable without the token.
    assert_eq!(admin(&proxy, "GET", "/metrics", "", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_open_tunnels_and_refuses_a_broken_config() {
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    let first = raw_config(&[&b1], "", "", "", COOKIE);
    let proxy = ProxyProcess::start(&first);
    let path = proxy.config_path.clone();
    let (mut tunnel, _) = ws_connect(proxy.addr, "/", None).await.unwrap();
    assert_eq!(echo(&mut tunnel, "before").await, "b1:before");

    let before = proxy.metrics().await;
    assert!(
        before
            .lines()
            .any(|l| l.starts_with("limpet_proxy_backend_up") && l.contains("\"b1\"")),
        "{before}"
    );

    // The pool now holds b2 only.
    std::fs::write(&path, raw_config(&[&b2], "", "", "", COOKIE)).unwrap();
    proxy.signal("HUP");
    eventually("reload applied", || async {
        proxy
            .metric("limpet_proxy_reloads_total{outcome=\"ok\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(
        echo(&mut tunnel, "during").await,
        "b1:during",
        "the open tunnel stays on its old backend"
    );
    // The removed backend leaves no per-backend series behind (before: b1
    // kept reporting backend_up 1 after the reload removed it).
    let metrics = proxy.metrics().await;
    let stale: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("limpet_proxy_backend_") && l.contains("\"b1\""))
        .collect();
    assert!(stale.is_empty(), "series of the removed backend: {stale:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("limpet_proxy_backend_up") && l.contains("\"b2\"")),
        "{metrics}"
    );
    let (mut fresh, _) = ws_connect(proxy.addr, "/", None).await.unwrap();
    assert_eq!(
        echo(&mut fresh, "new").await,
        "b2:new",
        "new connections use the new pool"
    );
    assert_eq!(
        http(proxy.addr, "GET", "/", &[]).await.backend(),
        Some("b2")
    );

    // A broken file is refused; the running config stays.
    std::fs::write(&path, "[[pool]]\nname = 3\n").unwrap();
    proxy.signal("HUP");
    eventually("reload refused", || async {
        proxy
            .metric("limpet_proxy_reloads_total{outcome=\"error\"}")
            .await
            == 1.0
    })
    .await;
    assert!(
        proxy
            .log_text()
            .contains("reload refused, keeping the running configuration"),
        "{}",
        proxy.log_text()
    );
    assert_eq!(
        http(proxy.addr, "GET", "/", &[]).await.backend(),
        Some("b2")
    );
    assert_eq!(echo(&mut tunnel, "after").await, "b1:after");
    // The admin API reload says why.
    let r = admin(&proxy, "POST", "/api/reload", "", None).await;
    assert_eq!(r.status, 422);
    assert!(
        r.body
            .contains(":2:8: invalid type: integer `3`, expected a string"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_tunnels_until_the_deadline() {
    let b1 = TestBackend::start("b1").await;
    let mut proxy = ProxyProcess::start(&raw_config(
        &[&b1],
        "[shutdown]\ndrain_deadline = \"3s\"",
        "",
        "",
        "",
    ));
    let (mut tunnel, _) = ws_connect(proxy.addr, "/", None).await.unwrap();
    assert_eq!(echo(&mut tunnel, "x").await, "b1:x");
    let stopped_at = Instant::now();
    proxy.signal("TERM");
    // No new connections...
    eventually("listener closed", || async {
        tokio::net::TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    // A reload or an upgrade asked of a draining process is refused in
    // the log, not dropped without a word (sent as soon as the drain has
    // begun, well before its deadline).
    proxy.signal("HUP");
    proxy.signal("USR2");
    // ...and the open tunnel keeps working until the deadline.
    assert_eq!(echo(&mut tunnel, "still").await, "b1:still");
    eventually("both refusals logged", || async {
        let log = proxy.log_text();
        log.contains("SIGHUP while draining: ignored")
            && log.contains("SIGUSR2 while draining: ignored")
    })
    .await;
    let code = tokio::task::spawn_blocking(move || proxy.proc.wait_exit())
        .await
        .unwrap();
    let took = stopped_at.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_secs(10),
        "exited after {took:?}"
    );
    let next = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut tunnel))
        .await
        .expect("tunnel closed");
    assert!(
        !matches!(
            next,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
        ),
        "{next:?}"
    );
}

/// Open WebSocket tunnels count against `max_connections` for their whole
/// life. Before, hyper let go of the client connection when the upgrade
/// completed, and its slot with it: at `max_connections = 3`, 12 of 12
/// tunnels opened, so tunnels counted against no limit at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_hold_their_connection_slots() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&raw_config(
        &[&b1],
        "[limits]\nmax_connections = 3",
        "",
        "",
        "",
    ));
    let mut tunnels = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = ws_connect(proxy.addr, "/", None).await.unwrap();
        assert_eq!(echo(&mut ws, &format!("t{i}")).await, format!("b1:t{i}"));
        tunnels.push(ws);
    }
    // Every slot is held by a tunnel: a fourth tunnel and a plain request
    // are refused.
    assert!(
        ws_connect(proxy.addr, "/", None).await.is_err(),
        "a fourth tunnel was admitted past max_connections = 3"
    );
    assert_eq!(http(proxy.addr, "GET", "/", &[]).await.status, 503);
    // The tunnels still work, and closing one frees its slot.
    assert_eq!(echo(&mut tunnels[0], "still").await, "b1:still");
    drop(tunnels.pop());
    eventually("a closed tunnel gives its slot back", || async {
        http(proxy.addr, "GET", "/", &[]).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_hold_under_a_burst() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&raw_config(
        &[&b1],
        "[limits]\nmax_connections = 5",
        "",
        "",
        "",
    ));
    // Five idle keep-alive connections take every slot.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // A burst of 30 more: every one refused at once with a 503, none stalled.
    let burst: Vec<_> = (0..30)
        .map(|_| tokio::spawn(http(proxy.addr, "GET", "/", &[])))
        .collect();
    for b in burst {
        let r = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .expect("refused quickly")
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
    }
    assert_eq!(
        proxy
            .metric("limpet_proxy_limit_rejections_total{limit=\"max_connections\"}")
            .await,
        30.0
    );
    drop(held.pop());
    eventually("a slot frees up", || async {
        http(proxy.addr, "GET", "/", &[]).await.status == 200
    })
    .await;

    let per_ip = ProxyProcess::start(&raw_config(
        &[&b1],
        "[limits]\nmax_connections_per_ip = 2",
        "",
        "",
        "",
    ));
    // Two keep-alive connections, each answered (and so counted) before
    // the third arrives: two just-accepted connections are counted in no
    // fixed order, and a third that overtook them would take a place.
    let mut held_by_one = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(per_ip.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held_by_one.push(s);
    }
    eventually("third connection from one address gets 429", || async {
        http(per_ip.addr, "GET", "/", &[]).await.status == 429
    })
    .await;

    let per_backend = ProxyProcess::start(&raw_config(
        &[&b1],
        "",
        "",
        "",
        "max_connections_per_backend = 1\naffinity = \"none\"",
    ));
    let (mut t, _) = ws_connect(per_backend.addr, "/", None).await.unwrap();
    echo(&mut t, "x").await;
    let r = http(per_backend.addr, "GET", "/", &[]).await;
    assert_eq!(
        r.status, 503,
        "the only backend holds its one connection: {}",
        r.body
    );
    assert!(r.body.contains("connection limit"), "{}", r.body);
}

async fn via_proxy_protocol(addr: std::net::SocketAddr, header: &[u8]) -> HttpReply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The proxy may already have hung up on a bad header: writes can fail.
    let _ = s.write_all(header).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap_or_default();
    parse_reply(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_sets_the_client_address() {
    let b1 = TestBackend::start("b1").await;
    let trusted = "trusted_proxies = [\"127.0.0.1/32\"]";
    let proxy = ProxyProcess::start(&raw_config(
        &[&b1],
        trusted,
        "proxy_protocol = true",
        "",
        "affinity = \"ip_hash\"",
    ));
    let v1 = via_proxy_protocol(proxy.addr, b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n").await;
    assert_eq!(v1.status, 200);
    assert!(
        v1.body.contains("x-real-ip: 203.0.113.9\n")
            && v1.body.contains("x-forwarded-for: 203.0.113.9\n"),
        "{}",
        v1.body
    );
    let header = limpet_proxy::proxy_protocol::encode_v2(
        "[2001:db8::42]:40000".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
    );
    let v2 = via_proxy_protocol(proxy.addr, &header).await;
    assert!(v2.body.contains("x-real-ip: 2001:db8::42\n"), "{}", v2.body);
    // No header, or garbage: closed without an answer.
    let none = via_proxy_protocol(proxy.addr, b"").await;
    assert_eq!(none.status, 0);
    let bad = via_proxy_protocol(proxy.addr, b"PROXY TCP4 nonsense\r\n").await;
    assert_eq!(bad.status, 0);
    assert!(
        proxy
            .metric("limpet_proxy_proxy_protocol_errors_total{reason=\"missing\"}")
            .await
            >= 1.0
    );
    assert!(
        proxy
            .metric("limpet_proxy_proxy_protocol_errors_total{reason=\"bad_v1\"}")
            .await
            >= 1.0
    );

    // From a peer not in trusted_proxies, a header is refused.
    let untrusting = ProxyProcess::start(&raw_config(
        &[&b1],
        "trusted_proxies = [\"10.0.0.0/8\"]",
        "proxy_protocol = true",
        "",
        "",
    ));
    let refused = via_proxy_protocol(
        untrusting.addr,
        b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n",
    )
    .await;
    assert_eq!(refused.status, 0);
    assert_eq!(
        untrusting
            .metric("limpet_proxy_proxy_protocol_errors_total{reason=\"untrusted\"}")
            .await,
        1.0
    );
}

/// `/health` on the admin port is what L4 balancers and DNS checks ask: it
/// says 503, with the reason, while no backend of any pool can take a
/// client, and ok again once one can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_fails_while_every_backend_is_down() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1";
    let proxy = ProxyProcess::start(&config(&[&b1, &b2], "", health));
    assert_eq!(admin(&proxy, "GET", "/health", "", None).await.status, 200);
    b1.unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // One backend left: still serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = admin(&proxy, "GET", "/health", "", None).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    b2.unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let p = &proxy;
    eventually("/health says 503", || async move {
        admin(p, "GET", "/health", "", None).await.status == 503
    })
    .await;
    let reply = admin(&proxy, "GET", "/health", "", None).await;
    assert_eq!(
        reply.body,
        "no backend is up in any pool (nodes: b1 down, b2 down)\n"
    );
    b2.unhealthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    eventually("/health says ok again", || async move {
        admin(p, "GET", "/health", "", None).await.status == 200
    })
    .await;
}
