//! limpet-proxy end to end: the real binary between real clients and
//! backends on loopback.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const COOKIE: &str = "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"test-secret-0123456789\"";

async fn three() -> (TestBackend, TestBackend, TestBackend) {
    (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_cookie_stickiness() {
    let (b1, b2, b3) = three().await;
    let proxy = ProxyProcess::start(&config(&[&b1, &b2, &b3], "", COOKIE));

    let (mut ws, headers) = ws_connect(proxy.addr, "/chat", None)
        .await
        .expect("upgrade through the proxy");
    let set = headers
        .get("set-cookie")
        .expect("the 101 carries the affinity cookie")[0]
        .clone();
    assert!(
        set.starts_with("limpet_sticky=")
            && set.contains("HttpOnly")
            && set.contains("SameSite=Lax"),
        "{set}"
    );
    let first = echo(&mut ws, "hello").await;
    let (backend, text) = first.split_once(':').unwrap();
    assert_eq!(text, "hello");
    assert_eq!(headers["x-limpet-backend"][0], backend);
    ws.close(None).await.ok();

    // 100 reconnects with the cookie all reach the same backend, and no new cookie is issued.
    let cookie = cookie_pair(&set);
    for i in 0..100 {
        let (mut ws, headers) = ws_connect(proxy.addr, "/chat", Some(&cookie))
            .await
            .unwrap();
        assert!(
            !headers.contains_key("set-cookie"),
            "reconnect {i} got a new cookie"
        );
        assert_eq!(
            echo(&mut ws, "x").await,
            format!("{backend}:x"),
            "reconnect {i}"
        );
        ws.close(None).await.ok();
    }
    // Plain HTTP with the same cookie goes there too (polling transports).
    let reply = http(proxy.addr, "GET", "/poll", &[("cookie", &cookie)]).await;
    assert_eq!(reply.backend(), Some(backend));
    assert!(
        proxy
            .metric("limpet_proxy_affinity_total{outcome=\"hit\",pool=\"nodes\"}")
            .await
            >= 101.0
    );
    let upgrades = proxy
        .metric(&format!(
            "limpet_proxy_upgrades_total{{backend=\"{backend}\",pool=\"nodes\"}}"
        ))
        .await;
    assert_eq!(upgrades, 101.0);
    let log = proxy.log_text();
    assert!(
        log.contains("tunnel open") && log.contains("tunnel closed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_spread_and_forged_cookies_are_replaced() {
    let (b1, b2, b3) = three().await;
    let proxy = ProxyProcess::start(&config(&[&b1, &b2, &b3], "", COOKIE));
    let mut seen = HashMap::new();
    for _ in 0..9 {
        let reply = http(proxy.addr, "GET", "/", &[]).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.header("set-cookie").is_some(),
            "a new session gets a cookie"
        );
        *seen
            .entry(reply.backend().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "least_conn spreads new sessions over idle backends: {seen:?}"
    );

    for forged in [
        "limpet_sticky=b1",
        "limpet_sticky=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "limpet_sticky=",
    ] {
        let reply = http(proxy.addr, "GET", "/", &[("cookie", forged)]).await;
        assert_eq!(reply.status, 200);
        let set = reply
            .header("set-cookie")
            .expect("a forged cookie is replaced");
        assert_ne!(cookie_pair(set), forged);
    }
    assert_eq!(
        proxy
            .metric("limpet_proxy_affinity_total{outcome=\"invalid\",pool=\"nodes\"}")
            .await,
        3.0
    );

    // A cookie sealed by another proxy with the same secret is honoured.
    let twin = ProxyProcess::start(&config(&[&b1, &b2, &b3], "", COOKIE));
    let reply = http(twin.addr, "GET", "/", &[]).await;
    let cookie = cookie_pair(reply.header("set-cookie").unwrap());
    let again = http(proxy.addr, "GET", "/", &[("cookie", &cookie)]).await;
    assert!(again.header("set-cookie").is_none());
    assert_eq!(again.backend(), reply.backend());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_repins_cookie_holders_and_comes_back_after_rise() {
    let (b1, b2, b3) = three().await;
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2";
    let proxy = ProxyProcess::start(&config(
        &[&b1, &b2, &b3],
        "",
        &format!("{COOKIE}\n{health}"),
    ));
    // Find a cookie for b2.
    let mut cookie = None;
    for _ in 0..30 {
        let reply = http(proxy.addr, "GET", "/", &[]).await;
        if reply.backend() == Some("b2") {
            cookie = Some(cookie_pair(reply.header("set-cookie").unwrap()));
            break;
        }
    }
    let cookie = cookie.expect("some new session lands on b2");
    let b2_addr = b2.addr;
    b2.kill().await;
    drop(b2);

    // The pinned backend refuses: the request still succeeds elsewhere, with a new cookie.
    let (mut ws, headers) = ws_connect(proxy.addr, "/", Some(&cookie))
        .await
        .expect("failover before any byte reached the client");
    let reply_backend = echo(&mut ws, "x").await;
    assert!(!reply_backend.starts_with("b2"), "{reply_backend}");
    let new_cookie = cookie_pair(
        &headers
            .get("set-cookie")
            .expect("re-pinned with a fresh cookie")[0],
    );
    assert_ne!(new_cookie, cookie);
    let follow = http(proxy.addr, "GET", "/", &[("cookie", &new_cookie)]).await;
    assert_eq!(Some(&reply_backend[..2]), follow.backend());

    eventually("health checks mark b2 down", || async {
        proxy.log_text().contains("backend is down")
    })
    .await;
    assert_eq!(
        proxy
            .metric("limpet_proxy_backend_up{backend=\"b2\",pool=\"nodes\"}")
            .await,
        0.0
    );
    assert!(
        proxy
            .metric("limpet_proxy_upstream_connect_errors_total{backend=\"b2\",pool=\"nodes\"}")
            .await
            >= 1.0
    );

    // b2 comes back on the same port; after `rise` passed checks it takes sessions again.
    let _b2 = TestBackend::start_on("b2", b2_addr).await;
    eventually("b2 is up again", || async {
        proxy
            .metric("limpet_proxy_backend_up{backend=\"b2\",pool=\"nodes\"}")
            .await
            == 1.0
    })
    .await;
    let back = http(proxy.addr, "GET", "/", &[("cookie", &cookie)]).await;
    assert_eq!(back.backend(), Some("b2"), "the old cookie works again");
    // The log arrives on its own pipe: wait for the line, do not race it.
    eventually("the recovery is logged", || async {
        proxy.log_text().contains("backend is up")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_backend_is_skipped_without_failing_requests() {
    let (b1, b2, b3) = three().await;
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1";
    let proxy = ProxyProcess::start(&config(
        &[&b1, &b2, &b3],
        "",
        &format!("affinity = \"none\"\nbalancer = \"round_robin\"\n{health}"),
    ));
    b3.unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    eventually("b3 marked down", || async {
        proxy
            .metric("limpet_proxy_backend_up{backend=\"b3\",pool=\"nodes\"}")
            .await
            == 0.0
    })
    .await;
    for _ in 0..12 {
        let reply = http(proxy.addr, "GET", "/", &[]).await;
        assert_eq!(reply.status, 200);
        assert_ne!(reply.backend(), Some("b3"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_is_stable_and_a_fourth_backend_moves_about_a_quarter() {
    let (b1, b2, b3) = three().await;
    let b4 = TestBackend::start("b4").await;
    let top = "trusted_proxies = [\"127.0.0.1/32\"]";
    let ip_hash = "affinity = \"ip_hash\"";
    let three_proxy = ProxyProcess::start(&config(&[&b1, &b2, &b3], top, ip_hash));
    let four_proxy = ProxyProcess::start(&config(&[&b1, &b2, &b3, &b4], top, ip_hash));
    let client = |i: usize| {
        if i.is_multiple_of(2) {
            format!("198.18.{}.{}", i / 256, i % 256)
        } else {
            format!("2001:db8::{:x}", i)
        }
    };
    let mut moved = 0;
    for i in 0..1000 {
        let xff = client(i);
        let a = http(three_proxy.addr, "GET", "/", &[("x-forwarded-for", &xff)]).await;
        let b = http(four_proxy.addr, "GET", "/", &[("x-forwarded-for", &xff)]).await;
        let (a, b) = (
            a.backend().unwrap().to_string(),
            b.backend().unwrap().to_string(),
        );
        if a != b {
            assert_eq!(b, "b4", "keys only move to the new backend");
            moved += 1;
        }
        if i % 100 == 0 {
            let again = http(three_proxy.addr, "GET", "/", &[("x-forwarded-for", &xff)]).await;
            assert_eq!(again.backend(), Some(a.as_str()), "stable per client");
        }
    }
    assert!(
        (170..=330).contains(&moved),
        "adding 1 of 4 backends moved {moved} of 1000 clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_affinity_puts_a_room_on_one_backend() {
    let (b1, b2, b3) = three().await;
    let proxy = ProxyProcess::start(&config(
        &[&b1, &b2, &b3],
        "",
        "affinity = \"query\"\naffinity_key = \"room\"",
    ));
    let mut owners = std::collections::HashSet::new();
    for _ in 0..10 {
        let (mut ws, _) = ws_connect(proxy.addr, "/ws?room=lobby", None)
            .await
            .unwrap();
        owners.insert(echo(&mut ws, "x").await);
    }
    assert_eq!(owners.len(), 1, "{owners:?}");
    let mut rooms = std::collections::HashSet::new();
    for r in 0..30 {
        rooms.insert(
            http(proxy.addr, "GET", &format!("/?room=r{r}"), &[])
                .await
                .backend()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(rooms.len(), 3, "different rooms spread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_with_and_without_a_trusted_peer() {
    let b1 = TestBackend::start("b1").await;
    let untrusting = ProxyProcess::start(&config(&[&b1], "", ""));
    let reply = http(
        untrusting.addr,
        "GET",
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "close, x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert!(
        reply.body.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-real-ip: 127.0.0.1\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-forwarded-proto: http\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-forwarded-host: test.local\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("host: test.local\n"),
        "Host preserved: {}",
        reply.body
    );
    assert!(
        !reply.body.contains("x-hop"),
        "headers named in Connection are hop-by-hop: {}",
        reply.body
    );

    let trusting = ProxyProcess::start(&config(&[&b1], "trusted_proxies = [\"127.0.0.0/8\"]", ""));
    let reply = http(
        trusting.addr,
        "GET",
        "/",
        &[("x-forwarded-for", "1.1.1.1, 203.0.113.5")],
    )
    .await;
    assert!(
        reply
            .body
            .contains("x-forwarded-for: 1.1.1.1, 203.0.113.5, 127.0.0.1\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("x-real-ip: 203.0.113.5\n"),
        "the rightmost untrusted hop: {}",
        reply.body
    );
}

/// Bodies far larger than the buffers hyper is given (a plain answer is
/// copied behind its head; a backend connection's buffers are bounded,
/// see `upstream::UPSTREAM_BUF`) pass whole both ways, and the backend
/// connections that carried them serve the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_whole_both_ways() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let upload = "u".repeat(3 * 1024 * 1024 + 7);
    for _ in 0..2 {
        let reply = request(proxy.addr, "POST", "/upload", &[], &upload).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            reply.body.contains(&format!("bytes={}\n", upload.len())),
            "{}",
            reply.body
        );
        let reply = http(proxy.addr, "GET", "/big", &[]).await;
        assert_eq!(reply.status, 200);
        let big = big_body();
        assert!(
            reply.body == big,
            "{} bytes back of {}",
            reply.body.len(),
            big.len()
        );
    }
    assert_eq!(http(proxy.addr, "GET", "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_oversized_headers_and_no_backend() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(
        &[&b1],
        "[timeouts]\nheader_read = \"1s\"\ntunnel_idle = \"1s\"\nresponse = \"1s\"",
        "[pool.passive]\nmax_fails = 2",
    ));

    // A client that dribbles its headers is cut off; others are served meanwhile.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(http(proxy.addr, "GET", "/", &[]).await.status, 200);
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut buf))
        .await
        .expect("slow client closed in time");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Oversized request head: 431.
    let big = "x".repeat(20 * 1024);
    let reply = http(proxy.addr, "GET", "/", &[("x-big", &big)]).await;
    assert_eq!(reply.status, 431);

    // Idle tunnel closed after tunnel_idle.
    let (mut ws, _) = ws_connect(proxy.addr, "/", None).await.unwrap();
    echo(&mut ws, "x").await;
    let quiet_from = std::time::Instant::now();
    let next = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut ws))
        .await
        .expect("idle tunnel closed");
    use tokio_tungstenite::tungstenite::Message;
    match next {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(other)) => panic!("expected the tunnel to close, got {other:?}"),
    }
    assert!(
        quiet_from.elapsed() >= Duration::from_millis(900),
        "closed before tunnel_idle"
    );
    eventually("the tunnel close is logged", || async {
        proxy.log_text().contains("IdleTimeout")
    })
    .await;

    // Upgrade refused by the backend: its answer is relayed as is.
    let err = ws_connect(proxy.addr, "/refuse-upgrade", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    // A backend slower than the response timeout: 504 with a short text.
    let reply = http(proxy.addr, "GET", "/slow", &[]).await;
    assert_eq!(reply.status, 504);
    assert!(
        reply.body.starts_with("504 gateway timeout"),
        "{}",
        reply.body
    );

    // Nothing up at all: 502 when the connects failed.
    b1.kill().await;
    let reply = http(proxy.addr, "GET", "/", &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    let reply = http(proxy.addr, "GET", "/", &[]).await;
    assert_eq!(reply.status, 503, "passively marked down: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flag_reports_broken_configs() {
    const BIN: &str = env!("CARGO_BIN_EXE_limpet-proxy");
    let bad = write_temp(
        "bad-proxy.toml",
        "[[pool]]\nname = \"p\"\n[[pool.backend]]\nid = \"a\"\naddress = \"nowhere\"\n",
    );
    let out = limpet_testkit::run_check(BIN, &bad);
    assert_eq!(out.code, Some(1));
    let want = format!(
        "{}:5:11: pool.0.backend.0.address: `nowhere` is not host:port",
        bad.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    let good = write_temp("good-proxy.toml", "");
    assert_eq!(limpet_testkit::run_check(BIN, &good).code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_affinity_hashes_the_named_header() {
    let (b1, b2, b3) = three().await;
    let proxy = ProxyProcess::start(&config(
        &[&b1, &b2, &b3],
        "",
        "affinity = \"header\"\naffinity_key = \"x-room\"",
    ));
    let first = http(proxy.addr, "GET", "/", &[("x-room", "lobby")]).await;
    let owner = first.backend().unwrap().to_string();
    for _ in 0..10 {
        let r = http(proxy.addr, "GET", "/", &[("x-room", "lobby")]).await;
        assert_eq!(r.backend(), Some(owner.as_str()));
        assert!(
            r.header("set-cookie").is_none(),
            "hash affinity issues no cookie"
        );
    }
    let mut spread = std::collections::HashSet::new();
    for r in 0..30 {
        let room = format!("room-{r}");
        spread.insert(
            http(proxy.addr, "GET", "/", &[("x-room", &room)])
                .await
                .backend()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(spread.len(), 3, "different header values spread");
    assert!(
        proxy
            .metric("limpet_proxy_affinity_total{outcome=\"hashed\",pool=\"nodes\"}")
            .await
            >= 41.0
    );
}

/// A client that sends its first WebSocket frame in the same write as the
/// upgrade request: the proxy's HTTP layer reads both, and the frame must
/// still reach the backend, before anything sent later, and be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_delivered_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    // A masked text frame (clients must mask).
    let frame = |text: &str| {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut first = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        proxy.addr
    )
    .into_bytes();
    first.extend(frame("early"));
    tcp.write_all(&first).await.unwrap();
    tcp.write_all(&frame("later")).await.unwrap();

    // The 101, then the two echoes in order: "b1:early", "b1:later".
    let want = b"\x81\x08b1:early\x81\x08b1:later";
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = |got: &[u8]| {
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| got.len() >= end + 4 + want.len())
    };
    tokio::time::timeout(DEADLINE, async {
        while !complete(&got) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("both echoes in time");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&got[head_end..], want);

    // Bytes past the head count as tunnel bytes once the tunnel closes.
    drop(tcp);
    let sent = (2 * frame("early").len()) as f64;
    eventually("the tunnel's bytes are counted", || async {
        proxy
            .metric("limpet_proxy_tunnel_bytes_total{direction=\"to_backend\"}")
            .await
            >= sent
    })
    .await;
}

/// One keep-alive GET on `tcp`; the reply's head and body as text.
async fn keep_alive_get(tcp: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .expect("send the request");
    keep_alive_get_rest(tcp).await
}

/// Ends a request head begun on `tcp` and reads its keep-alive reply.
async fn keep_alive_get_rest(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"\r\n").await.expect("end the request head");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = tcp.read(&mut buf).await.expect("read the reply");
            assert!(n > 0, "closed before the reply ended: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .expect("a Content-Length");
                if raw.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the reply in time")
}

/// An idle keep-alive connection gives hyper's buffers back (it is
/// parked: `limpet_proxy_parked_connections`), and the same socket then
/// carries a plain request and, parked again, a WebSocket upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_serves_again() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let parked = || async { proxy.metric("limpet_proxy_parked_connections").await };
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let first = keep_alive_get(&mut tcp, "/first").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    eventually("the idle connection is parked", || async {
        parked().await == 1.0
    })
    .await;

    let second = keep_alive_get(&mut tcp, "/second").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert_eq!(parked().await, 0.0, "served, so no longer parked");
    eventually("parked again", || async { parked().await == 1.0 }).await;

    let req = format!("ws://{}/chat", proxy.addr)
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")
        .expect("an upgrade on the parked connection");
    assert_eq!(echo(&mut ws, "hi").await, "b1:hi");
    assert_eq!(parked().await, 0.0);
}

/// Part of a request head, a pause long enough to park, then the rest:
/// on a connection's first request (hyper counts it busy, so it is not
/// parked) and on a later one (parked with the partial head put back).
/// Either way the answer comes, keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_paused_midway_is_answered_keep_alive() {
    use tokio::io::AsyncWriteExt;
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for (i, path) in ["/first", "/second"].into_iter().enumerate() {
        tcp.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            proxy.metric("limpet_proxy_parked_connections").await,
            0.0,
            "request {i}: waits parked with a head begun"
        );
        tcp.write_all(b"Host: test.local\r\n").await.unwrap();
        let reply = keep_alive_get_rest(&mut tcp).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "request {i}: {reply}");
        assert!(
            !reply.to_ascii_lowercase().contains("connection: close"),
            "request {i}: {reply}"
        );
    }
}

/// One keep-alive GET of `path` answered 200, then the connection left
/// until it is parked; when the answer came.
async fn answered_then_parked(
    proxy: &ProxyProcess,
    tcp: &mut tokio::net::TcpStream,
    path: &str,
) -> std::time::Instant {
    let reply = keep_alive_get(tcp, path).await;
    let answered = std::time::Instant::now();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    eventually("the idle connection is parked", || async {
        proxy.metric("limpet_proxy_parked_connections").await == 1.0
    })
    .await;
    answered
}

/// Waits until the proxy closes `tcp`, having sent nothing more; how long
/// after `since` that was.
async fn closed_after(tcp: &mut tokio::net::TcpStream, since: std::time::Instant) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    since.elapsed()
}

/// A parked connection still ends `timeouts.header_read` after its last
/// request ended, as hyper ends an idle keep-alive connection, even when
/// it wakes with part of a request head (a new hyper connection must not
/// start a new head-read time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_ends_at_the_idle_limit() {
    use tokio::io::AsyncWriteExt;
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "[timeouts]\nheader_read = \"6s\"", ""));
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let answered = answered_then_parked(&proxy, &mut tcp, "/").await;
    // Just before the limit: part of a head wakes it.
    tokio::time::sleep(Duration::from_millis(5_500).saturating_sub(answered.elapsed())).await;
    tcp.write_all(b"GET /never-finished HTTP/1.1\r\n")
        .await
        .unwrap();
    // 6 s after the answer (plus this box's scheduling); a new head-read
    // time would make it 11.5.
    let took = closed_after(&mut tcp, answered).await;
    assert!(
        took > Duration::from_millis(5_800) && took < Duration::from_millis(8_500),
        "closed after {took:?}"
    );
}

/// A request in flight across a look (a long poll; `/slow` answers after
/// 3 s) does not push the idle limit back: the connection is parked soon
/// after the answer and ends `header_read` (10 s) after it, not after a
/// later look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_keeps_the_idle_limit_from_its_answer() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let answered = answered_then_parked(&proxy, &mut tcp, "/slow").await;
    let took = closed_after(&mut tcp, answered).await;
    assert!(
        took > Duration::from_millis(9_800) && took < Duration::from_millis(13_000),
        "closed after {took:?}"
    );
}
