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
