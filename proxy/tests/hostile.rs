//! Hostile and broken clients against the real `limpet-proxy`: each test
//! makes one attack, then checks the process is alive and an honest client
//! still gets correct answers in bounded time.

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `raw`, optionally half-closes, and reads the reply until the
/// proxy closes. A reset counts as an empty reply (status 0).
async fn raw_request(addr: std::net::SocketAddr, raw: &[u8], close_write: bool) -> HttpReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write request");
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut reply))
        .await
        .expect("the proxy answers or closes in time");
    if read.is_err() && reply.is_empty() {
        return parse_reply(b"");
    }
    parse_reply(&reply)
}

/// Every backend of pool `nodes` as the admin API reports it: (id, health).
async fn backend_health(proxy: &ProxyProcess) -> Vec<(String, String)> {
    let reply = http(proxy.admin, "GET", "/api/pools/nodes", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&reply.body).expect("admin JSON");
    v["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap_or_default().to_string(),
                b["health"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Defect: passive health blamed the backend for the client's faults, so a
/// handful of bad uploads took every backend out and honest clients got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_never_mark_a_backend_down() {
    let (b1, b2, b3) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    );
    // Default passive settings (max_fails = 1 within 10 s): one blamed
    // failure is enough to take a backend out.
    let mut proxy = ProxyProcess::start(&config(
        &[&b1, &b2, &b3],
        "[timeouts]\nresponse = \"1s\"\nclient_body = \"2s\"",
        "affinity = \"none\"\nbalancer = \"round_robin\"",
    ));
    for round in 0..4 {
        // A malformed chunked body.
        raw_request(
            proxy.addr,
            b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false,
        )
        .await;
        // An upload aborted mid-body.
        raw_request(
            proxy.addr,
            b"POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1000\r\n\r\n0123456789",
            true,
        )
        .await;
        // An upload that stops sending: the client's fault, 408.
        let idle = raw_request(
            proxy.addr,
            b"POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n01234",
            false,
        )
        .await;
        assert_eq!(
            idle.status, 408,
            "round {round}: idle upload: {}",
            idle.body
        );
    }
    // An upload that keeps trickling for longer than `timeouts.response`
    // (upload time belongs to the client) is served.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    for byte in b"abcdefgh" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(&[*byte]).await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read reply");
    let trickled = parse_reply(&raw);
    assert_eq!(trickled.status, 200, "trickled upload: {}", trickled.body);
    assert!(trickled.body.contains("bytes=8"), "{}", trickled.body);

    proxy.proc.assert_alive();
    for (id, health) in backend_health(&proxy).await {
        assert_eq!(health, "up", "backend {id} was blamed for client faults");
    }
    for b in ["b1", "b2", "b3"] {
        let up = proxy
            .metric(&format!(
                "limpet_proxy_backend_up{{backend=\"{b}\",pool=\"nodes\"}}"
            ))
            .await;
        assert_eq!(up, 1.0, "limpet_proxy_backend_up for {b}");
    }
    for i in 0..9 {
        let r = tokio::time::timeout(DEADLINE, http(proxy.addr, "GET", "/", &[]))
            .await
            .expect("honest request answered in time");
        assert_eq!(r.status, 200, "honest request {i}: {}", r.body);
    }
    assert!(
        proxy
            .metric("limpet_proxy_client_body_errors_total{reason=\"timeout\"}")
            .await
            >= 4.0
    );
}

/// A keep-alive HTTP/1.1 backend that can die the way a killed process
/// does from the proxy's point of view: its port refuses, and a pooled
/// connection takes the next request and closes without an answer (the
/// proxy cannot see that coming, so this is not a timing race).
struct DyingBackend {
    addr: std::net::SocketAddr,
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl DyingBackend {
    async fn start(id: &'static str) -> DyingBackend {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dead2 = dead.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let dead = dead2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = tcp.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if dead.load(Relaxed) {
                                return; // closes with the request read, unanswered
                            }
                            let body = format!("backend={id}\n");
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if tcp.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        DyingBackend { addr, dead, accept }
    }

    /// The listener closes; open connections die on their next request.
    async fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        self.accept.abort();
        let addr = self.addr;
        eventually("the killed backend's port refuses", || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
}

/// Defect: a GET that met a pooled connection to a just-killed backend got
/// 502 instead of going to another backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_request_on_a_pooled_connection() {
    let a = DyingBackend::start("a").await;
    let b = DyingBackend::start("b").await;
    let mut proxy = ProxyProcess::start(&format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"nodes\"\naffinity = \"cookie\"\n\
         [pool.cookie]\nsecret = \"hostile-test-secret-01\"\n\
         [[pool.backend]]\nid = \"a\"\naddress = \"{}\"\n\
         [[pool.backend]]\nid = \"b\"\naddress = \"{}\"\n\
         [[route]]\npool = \"nodes\"\n",
        a.addr, b.addr
    ));
    // A session pinned to a, with keep-alive connections to a pooled.
    let mut pinned = None;
    for _ in 0..20 {
        let r = http(proxy.addr, "GET", "/", &[]).await;
        if r.backend() == Some("a") {
            pinned = Some(cookie_pair(
                r.header("set-cookie").expect("new session cookie"),
            ));
            break;
        }
    }
    let cookie = pinned.expect("a session landed on a");
    for _ in 0..3 {
        let r = http(proxy.addr, "GET", "/", &[("cookie", &cookie)]).await;
        assert_eq!(r.backend(), Some("a"), "{}", r.body);
    }

    a.kill().await;
    let r = tokio::time::timeout(
        DEADLINE,
        http(proxy.addr, "GET", "/", &[("cookie", &cookie)]),
    )
    .await
    .expect("answered in time");
    assert_eq!(r.status, 200, "the GET after the kill: {}", r.body);
    assert_eq!(r.backend(), Some("b"));
    let repinned = cookie_pair(r.header("set-cookie").expect("re-pinned with a new cookie"));
    assert_ne!(repinned, cookie);
    let r = http(proxy.addr, "GET", "/", &[("cookie", &repinned)]).await;
    assert_eq!((r.status, r.backend()), (200, Some("b")));
    assert!(r.header("set-cookie").is_none(), "the new cookie holds");
    proxy.proc.assert_alive();
    assert!(
        proxy
            .metric("limpet_proxy_upstream_retries_total{backend=\"a\",pool=\"nodes\"}")
            .await
            >= 1.0
    );
}

/// Defect: header tricks passed through. Two `Host` headers were both
/// forwarded (routing used the first), HTTP/1.1 without `Host` was served,
/// `Connection: host` stripped `Host` toward the backend, any `Upgrade`
/// (h2c) was passed on, and a client's `Forwarded` reached the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tricks_are_refused_or_neutralised() {
    let b1 = TestBackend::start("b1").await;
    let mut proxy = ProxyProcess::start(&config(&[&b1], "", ""));
    let get = |extra: &str| format!("GET / HTTP/1.1\r\n{extra}Connection: close\r\n\r\n");

    let before = b1.requests.load(std::sync::atomic::Ordering::Relaxed);
    let two_hosts = raw_request(
        proxy.addr,
        get("Host: test.local\r\nHost: evil.example\r\n").as_bytes(),
        false,
    )
    .await;
    assert_eq!(
        two_hosts.status, 400,
        "two Host headers: {}",
        two_hosts.body
    );
    let no_host = raw_request(proxy.addr, get("").as_bytes(), false).await;
    assert_eq!(
        no_host.status, 400,
        "HTTP/1.1 without Host: {}",
        no_host.body
    );
    assert_eq!(
        b1.requests.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "refused requests never reach the backend"
    );
    let http10 = raw_request(proxy.addr, b"GET / HTTP/1.0\r\n\r\n", false).await;
    assert_eq!(
        http10.status, 200,
        "HTTP/1.0 needs no Host: {}",
        http10.body
    );

    // Naming Host in Connection does not strip it toward the backend.
    let r = raw_request(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close, host\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\nhost: test.local\n"), "{}", r.body);

    // h2c is not tunnelled: its upgrade headers go, the request is served.
    let r = raw_request(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for gone in ["upgrade:", "http2-settings:", "connection: upgrade"] {
        assert!(!r.body.contains(gone), "backend got `{gone}`: {}", r.body);
    }
    assert!(proxy.metric("limpet_proxy_upgrades_refused_total").await >= 1.0);
    // WebSocket, the default allowed protocol, still is.
    let (mut ws, _) = ws_connect(proxy.addr, "/", None).await.expect("websocket");
    assert_eq!(echo(&mut ws, "hi").await, "b1:hi");

    // A client's own Forwarded is replaced by what the proxy saw.
    let r = http(
        proxy.addr,
        "GET",
        "/",
        &[("Forwarded", "for=6.6.6.6;proto=https")],
    )
    .await;
    assert!(
        r.body
            .contains("\nforwarded: for=127.0.0.1;proto=http;host=\"test.local\"\n"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("6.6.6.6"), "{}", r.body);
    // From a trusted proxy, the chain is extended.
    let mut trusting =
        ProxyProcess::start(&config(&[&b1], "trusted_proxies = [\"127.0.0.0/8\"]", ""));
    let r = http(
        trusting.addr,
        "GET",
        "/",
        &[("Forwarded", "for=198.51.100.7")],
    )
    .await;
    assert!(
        r.body.contains(
            "\nforwarded: for=198.51.100.7, for=127.0.0.1;proto=http;host=\"test.local\"\n"
        ),
        "{}",
        r.body
    );

    proxy.proc.assert_alive();
    trusting.proc.assert_alive();
    let honest = tokio::time::timeout(DEADLINE, http(proxy.addr, "GET", "/", &[]))
        .await
        .expect("honest request answered in time");
    assert_eq!((honest.status, honest.backend()), (200, Some("b1")));
    assert!(
        proxy
            .metric("limpet_proxy_bad_requests_total{reason=\"duplicate_host\"}")
            .await
            >= 1.0
    );
}

/// Defect: an admin request whose declared body never arrives held its
/// connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_admin_body_is_cut_off() {
    let b1 = TestBackend::start("b1").await;
    let mut proxy = ProxyProcess::start(&format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\nrequest_timeout = \"1s\"\n\
         [[pool]]\nname = \"nodes\"\nbackend_header = true\n\
         [[pool.backend]]\nid = \"b1\"\naddress = \"{}\"\n\
         [[route]]\npool = \"nodes\"\n",
        b1.addr
    ));
    // Twenty admin requests declare a body and send only its start.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.admin).await.unwrap();
        s.write_all(
            b"PUT /api/pools/nodes/backends/b1 HTTP/1.1\r\nHost: admin\r\nContent-Length: 20\r\n\r\n{\"st",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    // Meanwhile the admin API and the proxy answer honest clients.
    let pools = tokio::time::timeout(DEADLINE, http(proxy.admin, "GET", "/api/pools", &[]))
        .await
        .expect("admin answers in time");
    assert_eq!(pools.status, 200, "{}", pools.body);
    let r = http(proxy.addr, "GET", "/", &[]).await;
    assert_eq!((r.status, r.backend()), (200, Some("b1")));

    // Each stalled request gets 408 and its connection is closed.
    for mut s in stalled {
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
            .await
            .expect("a stalled admin request is closed in time")
            .expect("read");
        assert_eq!(parse_reply(&raw).status, 408);
    }
    proxy.proc.assert_alive();
    let health = backend_health(&proxy).await;
    assert_eq!(health, vec![("b1".to_string(), "up".to_string())]);
    assert!(
        !http(proxy.admin, "GET", "/api/pools", &[])
            .await
            .body
            .contains("\"drain\""),
        "no half-sent state change was applied"
    );
    assert_eq!(
        proxy
            .metric("limpet_proxy_admin_errors_total{reason=\"body_timeout\"}")
            .await,
        20.0
    );
}

/// Defect: a connection refused for its address's cap kept its place in
/// `max_connections` while the refusal lingered (up to 2 s for a client
/// that does not close), so one address could fill the global table and
/// everyone else got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_fill_the_global_connection_table_with_refusals() {
    let b1 = TestBackend::start("b1").await;
    let mut proxy = ProxyProcess::start(&config(
        &[&b1],
        "[limits]\nmax_connections = 4\nmax_connections_per_ip = 1",
        "",
    ));
    // The attacker (127.0.0.1) holds its one allowed connection, then opens
    // more that are refused and never closed.
    // A keep-alive request on it, answered, so the proxy has counted it
    // before the next ones arrive.
    let mut held = TcpStream::connect(proxy.addr).await.expect("connect");
    held.write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(DEADLINE, held.read_exact(&mut head))
        .await
        .expect("the held connection is answered in time")
        .expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut lingering = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        // Read the refusal (the proxy half-closes after it) but keep the
        // socket open, so the proxy's side lingers.
        let mut reply = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut reply))
            .await
            .expect("the refusal comes in time")
            .expect("read the refusal");
        assert_eq!(parse_reply(&reply).status, 429, "refused for its address");
        lingering.push(s);
    }
    // An honest client from another address is still served.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("address"))
        .expect("bind 127.0.0.2");
    let mut honest = socket.connect(proxy.addr).await.expect("connect");
    honest
        .write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, honest.read_to_end(&mut reply))
        .await
        .expect("the honest answer comes in time")
        .expect("read");
    let reply = parse_reply(&reply);
    assert_eq!(
        reply.status, 200,
        "honest client from another address: {}",
        reply.body
    );
    proxy.proc.assert_alive();
}
