//! HTTP/2 on the TLS edge, end to end with the real binary: curl's
//! `--http2` for plain requests, and the `h2` crate for WebSocket over
//! HTTP/2 (RFC 8441 extended CONNECT) and for a rapid-reset flood.

mod common;
use bytes::Bytes;
use common::pki::{temp_dir, Pki};
use common::*;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::process::Command;
use tokio::net::TcpStream;

fn h2_config(pki: &Pki, backends: &[&TestBackend], top: &str, pool: &str) -> String {
    let mut text = format!(
        "{top}\n[[listen]]\nbind = \"127.0.0.1:0\"\n[listen.tls]\n[[listen.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"a.test\"]\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\nbackend_header = true\n{pool}\n",
        pki.path("a.pem"),
        pki.path("a.key"),
    );
    text.push_str(&backends_and_route(backends));
    text
}

/// Runs curl against the proxy as `https://a.test:<port>`; returns stdout.
async fn curl(pki: &Pki, proxy: SocketAddr, args: &[&str]) -> String {
    let port = proxy.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .args(args.iter().map(|a| a.replace("PORT", &port.to_string())));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run curl"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl speaks HTTP/2 to the TLS listener, several requests on one
/// connection; the HTTP/1.1 backend gets them with their Host, the
/// forwarding headers and the sticky cookie, as from an HTTP/1.1 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_through_the_tls_edge_with_affinity() {
    let pki = Pki::new(&temp_dir("h2-curl"));
    pki.issue("a", &["a.test"]);
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let proxy = ProxyProcess::start(&h2_config(
        &pki,
        &[&b1, &b2],
        "",
        "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"h2 test secret 0123\"",
    ));
    let jar = pki.path("cookies.txt");
    let url = "https://a.test:PORT/hello";
    // Three requests in one curl run: one connection, three streams; the
    // first sets the cookie, the other two send it.
    let out = curl(
        &pki,
        proxy.addr,
        &[
            "--http2",
            "-c",
            &jar,
            "-b",
            &jar,
            "-w",
            "\nversion=%{http_version}\n",
            url,
            url,
            url,
        ],
    )
    .await;
    assert_eq!(
        out.matches("version=2\n").count(),
        3,
        "three answers over HTTP/2: {out}"
    );
    let backends: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("backend="))
        .collect();
    assert_eq!(backends.len(), 3, "{out}");
    assert!(
        backends.iter().all(|b| *b == backends[0]),
        "the cookie holds the client: {out}"
    );
    let port = proxy.addr.port();
    assert!(out.contains(&format!("host: a.test:{port}\n")), "{out}");
    assert!(out.contains("x-forwarded-proto: https\n"), "{out}");
    assert!(out.contains("cookie: limpet_sticky="), "{out}");
    assert_eq!(
        proxy.metric("limpet_proxy_http2_connections_total").await,
        1.0,
        "one connection for the three requests"
    );
    assert_eq!(
        proxy
            .metric("limpet_proxy_http2_streams_total{kind=\"request\"}")
            .await,
        3.0
    );
    // A header list over http2.max_header_list_size (16 KiB) gets 431, as
    // a head over limits.max_header_bytes does over HTTP/1.1.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let out = curl(
        &pki,
        proxy.addr,
        &[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "-H",
            &big,
            url,
        ],
    )
    .await;
    assert_eq!(out, "2 431");
    // HTTP/1.1 still works on the same listener.
    let out = curl(
        &pki,
        proxy.addr,
        &["--http1.1", "-w", "\nversion=%{http_version}\n", url],
    )
    .await;
    assert!(out.contains("version=1.1\n"), "{out}");
}

/// An h2 connection to the proxy over TLS (ALPN `h2`), its driver spawned.
async fn h2_connect(pki: &Pki, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    h2_connect_watched(pki, addr).await.0
}

/// [`h2_connect`], and the driver's task, which ends when the connection does.
async fn h2_connect_watched(
    pki: &Pki,
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_offering(&[b"h2"])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// A masked client text frame (RFC 6455), short payloads only.
fn ws_text(text: &str) -> Bytes {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

/// Reads one unmasked server text frame from the stream.
async fn ws_read_text(recv: &mut h2::RecvStream, buf: &mut Vec<u8>) -> String {
    loop {
        if buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7f) {
            assert_eq!(buf[0], 0x81, "a text frame");
            let len = usize::from(buf[1] & 0x7f);
            let text = String::from_utf8(buf[2..2 + len].to_vec()).unwrap();
            buf.drain(..2 + len);
            return text;
        }
        let data = tokio::time::timeout(DEADLINE, recv.data())
            .await
            .expect("data in time")
            .expect("stream open")
            .expect("data");
        let _ = recv.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

/// Opens a WebSocket over HTTP/2 to `/chat`: the sending half and the
/// proxy's answer (`200`), whose body is the receiving half.
async fn h2_websocket(
    send: h2::client::SendRequest<Bytes>,
    port: u16,
) -> (h2::SendStream<Bytes>, http::Response<h2::RecvStream>) {
    let mut send = send.ready().await.expect("ready");
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://a.test:{port}/chat"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from("websocket"));
    let (response, up) = send.send_request(req, false).expect("send CONNECT");
    let resp = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(resp.status(), 200, "a bridged WebSocket is answered 200");
    (up, resp)
}

/// Like an idle HTTP/1.1 keep-alive connection, an HTTP/2 connection with
/// nothing to serve is closed after `timeouts.header_read`; one carrying
/// a quiet WebSocket is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_close_but_quiet_tunnels_stay() {
    let pki = Pki::new(&temp_dir("h2-idle"));
    pki.issue("a", &["a.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&h2_config(
        &pki,
        &[&b1],
        "[timeouts]\nheader_read = \"1s\"",
        "",
    ));
    let (idle, idle_driver) = h2_connect_watched(&pki, proxy.addr).await;
    let started = std::time::Instant::now();
    let (busy, busy_driver) = h2_connect_watched(&pki, proxy.addr).await;
    let (mut up, resp) = h2_websocket(busy, proxy.addr.port()).await;
    let mut down = resp.into_body();
    tokio::time::timeout(DEADLINE, idle_driver)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    let waited = started.elapsed();
    // Not at once: after about the limit (bound loose for a loaded machine).
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "{waited:?}"
    );
    drop(idle);
    // Twice the limit without a byte on the tunnel: still open, still works.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !busy_driver.is_finished(),
        "a quiet tunnel keeps its connection"
    );
    let mut buf = Vec::new();
    up.send_data(ws_text("still here"), false).expect("send");
    assert_eq!(ws_read_text(&mut down, &mut buf).await, "b1:still here");
}

/// RFC 8441: the proxy announces extended CONNECT, and a WebSocket opened
/// with it reaches the HTTP/1.1 WebSocket backend as an upgrade; frames
/// go both ways through a tunnel counted like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_is_bridged_to_an_http1_upgrade() {
    let pki = Pki::new(&temp_dir("h2-ws"));
    pki.issue("a", &["a.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&h2_config(&pki, &[&b1], "", ""));
    let mut send = h2_connect(&pki, proxy.addr).await;
    send = send.ready().await.expect("ready");
    let s = &send;
    eventually(
        "the proxy's SETTINGS enable extended CONNECT",
        || async move { s.is_extended_connect_protocol_enabled() },
    )
    .await;

    let (mut up, resp) = h2_websocket(send.clone(), proxy.addr.port()).await;
    assert_eq!(
        resp.headers().get("x-limpet-backend").map(|v| v.as_bytes()),
        Some(&b"b1"[..])
    );
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let mut down = resp.into_body();
    let mut buf = Vec::new();
    for text in ["hello over h2", "and again"] {
        up.send_data(ws_text(text), false).expect("send a frame");
        assert_eq!(
            ws_read_text(&mut down, &mut buf).await,
            format!("b1:{text}")
        );
    }
    let p = &proxy;
    assert_eq!(
        p.metric("limpet_proxy_http2_streams_total{kind=\"websocket\"}")
            .await,
        1.0
    );
    assert_eq!(
        p.metric("limpet_proxy_backend_tunnels{backend=\"b1\",pool=\"nodes\"}")
            .await,
        1.0,
        "counted as an open tunnel"
    );
    // The client ends its stream: the tunnel closes and is counted.
    up.send_data(Bytes::new(), true).expect("end the stream");
    eventually("the tunnel is closed and counted", || async move {
        p.metric("limpet_proxy_tunnels_closed_total{backend=\"b1\",end=\"closed\",pool=\"nodes\"}")
            .await
            == 1.0
    })
    .await;

    // A CONNECT that is no WebSocket is refused: the proxy is no forward proxy.
    let plain = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("a.test:443")
        .body(())
        .unwrap();
    let send = send.ready().await.expect("ready");
    let (response, _up) = send.clone().send_request(plain, false).unwrap();
    let resp = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 501);
}

/// CVE-2023-44487: a client that opens streams and resets them at once
/// gets GOAWAY past `http2.max_pending_reset_streams`, and the proxy
/// counts the connection's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_floods_get_goaway() {
    let pki = Pki::new(&temp_dir("h2-reset"));
    pki.issue("a", &["a.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&h2_config(
        &pki,
        &[&b1],
        "[http2]\nmax_pending_reset_streams = 5",
        "",
    ));
    let send = h2_connect(&pki, proxy.addr).await;
    let port = proxy.addr.port();
    // Each request is opened and reset in one write: HEADERS then
    // RST_STREAM (CANCEL) before the proxy could take it up.
    let flood = |send: h2::client::SendRequest<Bytes>| async move {
        let mut send = send;
        for _ in 0..2000 {
            send = send.ready().await.map_err(|e| format!("{e:?}"))?;
            let req = http::Request::get(format!("https://a.test:{port}/slow"))
                .body(())
                .unwrap();
            drop(send.send_request(req, true).map_err(|e| format!("{e:?}"))?);
        }
        Ok::<_, String>(send)
    };
    let mut outcome = flood(send).await;
    let p = &proxy;
    eventually("the proxy counts its GOAWAY for the flood", || async move {
        p.metric("limpet_proxy_http2_connection_errors_total{reason=\"enhance_your_calm\"}")
            .await
            == 1.0
    })
    .await;
    // The client may not have noticed during its burst; it does now. It
    // sees the GOAWAY, or only the closed socket after it.
    let deadline = std::time::Instant::now() + DEADLINE;
    while let Ok(send) = outcome {
        assert!(
            std::time::Instant::now() < deadline,
            "the flooding connection stays open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        outcome = flood(send).await;
    }
    let why = outcome.err().unwrap_or_default();
    assert!(
        why.contains("ENHANCE_YOUR_CALM") || why.contains("BrokenPipe") || why.contains("closed"),
        "{why}"
    );
}

/// ALPN is part of the listener, set at start: a reload that turns HTTP/2
/// off says so and keeps offering it until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_http2_off_takes_a_restart_and_a_reload_says_so() {
    let pki = Pki::new(&temp_dir("h2-reload"));
    pki.issue("a", &["a.test"]);
    let b1 = TestBackend::start("b1").await;
    let text = h2_config(&pki, &[&b1], "", "");
    let proxy = ProxyProcess::start(&text);
    std::fs::write(
        &proxy.config_path,
        format!("[http2]\nenabled = false\n{text}"),
    )
    .unwrap();
    proxy.signal("HUP");
    let p = &proxy;
    eventually("the reload is applied", || async move {
        p.metric("limpet_proxy_reloads_total{outcome=\"ok\"}").await == 1.0
    })
    .await;
    assert!(
        proxy
            .log_text()
            .contains("http2.enabled changes take effect only after a restart"),
        "{}",
        proxy.log_text()
    );
    let url = "https://a.test:PORT/";
    let out = curl(
        &pki,
        proxy.addr,
        &["--http2", "-w", "\nversion=%{http_version}\n", url],
    )
    .await;
    assert!(out.contains("version=2\n"), "{out}");
}
