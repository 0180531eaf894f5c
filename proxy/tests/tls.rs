//! limpet-proxy as the TLS edge, end to end with certificates made here.

mod common;
use common::pki::{temp_dir, Pki};
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(DEADLINE, pki.client().connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake")
}

/// The certificate a connection was served, after one request on it as a
/// real client makes. The proxy counts a handshake once it has read the
/// client's Finished and sent its session tickets, which can come after
/// the client's side is done (one run in three, with tickets, saw the
/// count short); the answer to a request comes after both.
async fn served_cert(
    mut stream: tokio_rustls::client::TlsStream<TcpStream>,
) -> CertificateDer<'static> {
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    get(&mut stream).await;
    cert
}

/// `GET /` with `Connection: close` on a TLS connection; the answer.
async fn get(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> HttpReply {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw)).await;
    parse_reply(&raw)
}

fn tls_config(pki: &Pki, backends: &[&TestBackend], extra_tls: &str) -> String {
    let mut text = format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n[listen.tls]\nhsts_max_age = \"1d\"\n{extra_tls}\n[[listen.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"a.test\", \"*.a.test\"]\n[[listen.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"b.test\"]\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\n",
        pki.path("a.pem"), pki.path("a.key"), pki.path("b.pem"), pki.path("b.key")
    );
    text.push_str(&backends_and_route(backends));
    text
}

async fn wss(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = tls_connect(pki, addr, sni).await;
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{sni}/chat"), stream)
        .await
        .expect("wss handshake");
    ws
}

async fn wss_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            tokio_tungstenite::tungstenite::Message::Text(t) => return t.to_string(),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_the_tls_edge_with_sni_and_hot_certificate_swap() {
    let pki = Pki::new(&temp_dir("edge"));
    let cert_a = pki.issue("a", &["a.test", "*.a.test"]);
    let cert_b = pki.issue("b", &["b.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&tls_config(&pki, &[&b1], ""));

    // wss:// echo, and the backend hears X-Forwarded-Proto: https.
    let mut tunnel = wss(&pki, proxy.addr, "a.test").await;
    assert_eq!(wss_echo(&mut tunnel, "over tls").await, "b1:over tls");
    let reply = get(&mut tls_connect(&pki, proxy.addr, "a.test").await).await;
    assert!(
        reply.body.contains("x-forwarded-proto: https\n"),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=86400")
    );

    // Two SNI names, two certificates; wildcard and unknown names too.
    assert_eq!(
        served_cert(tls_connect(&pki, proxy.addr, "a.test").await).await,
        cert_a
    );
    assert_eq!(
        served_cert(tls_connect(&pki, proxy.addr, "b.test").await).await,
        cert_b
    );
    assert_eq!(
        served_cert(tls_connect(&pki, proxy.addr, "x.a.test").await).await,
        cert_a
    );
    assert!(
        proxy
            .metric("limpet_proxy_tls_handshakes_total{outcome=\"ok\",version=\"1.3\"}")
            .await
            >= 5.0
    );
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("limpet_proxy_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:0\",name=\"b.test\"}"), "{metrics}");

    // A new certificate on disk is served to new connections while the
    // open tunnel stays up.
    let cert_a2 = pki.issue("a", &["a.test", "*.a.test"]);
    assert_ne!(cert_a2, cert_a);
    eventually("the swapped certificate is served", || async {
        served_cert(tls_connect(&pki, proxy.addr, "a.test").await).await == cert_a2
    })
    .await;
    assert_eq!(wss_echo(&mut tunnel, "still up").await, "b1:still up");

    // A broken replacement is refused; the last good one stays.
    std::fs::write(
        pki.dir.join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    eventually("the broken certificate is refused", || async {
        proxy
            .log_text()
            .contains("new certificate refused, keeping the current one")
    })
    .await;
    assert_eq!(
        served_cert(tls_connect(&pki, proxy.addr, "a.test").await).await,
        cert_a2
    );
    // A key that does not match its certificate is refused too.
    let other = rcgen::KeyPair::generate().unwrap();
    pki.issue("a", &["a.test"]);
    std::fs::write(pki.dir.join("a.key"), other.serialize_pem()).unwrap();
    eventually("a mismatched key is refused", || async {
        proxy.log_text().contains("does not match")
    })
    .await;
    assert_eq!(
        served_cert(tls_connect(&pki, proxy.addr, "a.test").await).await,
        cert_a2
    );
    assert_eq!(wss_echo(&mut tunnel, "end").await, "b1:end");
}

/// A ClientHello offering only TLS 1.1 (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocols_plain_http_and_stalls_are_dropped_without_harm() {
    let pki = Pki::new(&temp_dir("bad"));
    pki.issue("a", &["a.test"]);
    pki.issue("b", &["b.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&tls_config(&pki, &[&b1], "handshake_timeout = \"1s\""));

    // TLS 1.1: refused with a fatal alert (rustls answers handshake_failure,
    // 40, as no offered version is acceptable; protocol_version is 70).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut reply)).await;
    assert!(
        reply.len() >= 7 && reply[0] == 0x15 && reply[5] == 2 && matches!(reply[6], 40 | 70),
        "expected a fatal alert, got {reply:?}"
    );
    assert!(
        !reply.windows(2).any(|w| w == [0x16, 0x03]),
        "no ServerHello for TLS 1.1"
    );

    // Plain HTTP to the TLS port: no HTTP answer, no crash.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut reply)).await;
    assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");

    // A client that stalls mid-handshake is cut at the handshake timeout.
    let mut stall = TcpStream::connect(proxy.addr).await.unwrap();
    stall.write_all(&tls11_client_hello()[..10]).await.unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stall.read_to_end(&mut sink))
        .await
        .expect("stalled handshake closed");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Everyone else is still served.
    let mut tunnel = wss(&pki, proxy.addr, "a.test").await;
    assert_eq!(wss_echo(&mut tunnel, "fine").await, "b1:fine");
    assert!(
        proxy
            .metric("limpet_proxy_tls_handshakes_total{outcome=\"error\",version=\"\"}")
            .await
            >= 2.0
    );
    assert!(
        proxy
            .metric("limpet_proxy_tls_handshakes_total{outcome=\"timeout\",version=\"\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_redirects_to_https() {
    let b1 = TestBackend::start("b1").await;
    let text = format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\nredirect_https = true\nhttps_port = 8443\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\n[[pool.backend]]\nid = \"b1\"\naddress = \"{}\"\n[[route]]\npool = \"nodes\"\n",
        b1.addr
    );
    let proxy = ProxyProcess::start(&text);
    let r = http(proxy.addr, "GET", "/room/42?x=1", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://test.local:8443/room/42?x=1")
    );
    assert_eq!(
        b1.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the backend"
    );
}

/// Two listeners on port 0 have the same `bind`, and each was matched to
/// its settings by that address: both got the first one's, so the
/// redirect listener proxied plain HTTP instead of redirecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_on_port_zero_keep_their_own_settings() {
    let b1 = TestBackend::start("b1").await;
    let text = format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n[[listen]]\nbind = \"127.0.0.1:0\"\nredirect_https = true\nhttps_port = 8443\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\nbackend_header = true\n[[pool.backend]]\nid = \"b1\"\naddress = \"{}\"\n[[route]]\npool = \"nodes\"\n",
        b1.addr
    );
    let proxy = ProxyProcess::start(&text);
    // Which port is which: the log line of each listener says.
    let addr_of = |marker: &str| -> Option<std::net::SocketAddr> {
        proxy
            .log_text()
            .lines()
            .find(|l| l.contains("listening for HTTP") && l.contains(marker))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    };
    eventually("both listeners are logged", || {
        let both =
            addr_of("redirect_https=false").is_some() && addr_of("redirect_https=true").is_some();
        async move { both }
    })
    .await;
    let (plain, redirect) = (
        addr_of("redirect_https=false").unwrap(),
        addr_of("redirect_https=true").unwrap(),
    );
    assert_ne!(plain, redirect);
    let r = http(plain, "GET", "/room/1", &[]).await;
    assert_eq!((r.status, r.backend()), (200, Some("b1")), "{}", r.body);
    let r = http(redirect, "GET", "/room/1", &[]).await;
    assert_eq!(r.status, 301, "{}", r.body);
    assert_eq!(r.header("location"), Some("https://test.local:8443/room/1"));
    assert_eq!(
        b1.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the plain listener's request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_against_the_configured_ca() {
    let pki = Pki::new(&temp_dir("upstream"));
    pki.issue("backend", &["backend.test"]);
    // A TLS backend: rustls in front of the plain test backend's logic.
    let plain = TestBackend::start("secure").await;
    let chain: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(pki.path("backend.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_file(pki.path("backend.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    let target = plain.addr;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Ok(mut inner) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
                    }
                }
            });
        }
    });
    let pool = |tls: &str| {
        format!(
            "[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\naffinity = \"none\"\n[pool.tls]\nenabled = true\nserver_name = \"backend.test\"\n{tls}\n[[pool.backend]]\nid = \"secure\"\naddress = \"{tls_addr}\"\n[[route]]\npool = \"nodes\"\n"
        )
    };
    let verified = ProxyProcess::start(&pool(&format!("ca_file = \"{}\"", pki.path("ca.pem"))));
    let r = http(verified.addr, "GET", "/", &[]).await;
    assert_eq!((r.status, r.backend()), (200, Some("secure")), "{}", r.body);
    let (mut ws, _) = ws_connect(verified.addr, "/", None).await.unwrap();
    assert_eq!(echo(&mut ws, "wss upstream").await, "secure:wss upstream");

    // System roots do not know the test CA: refused.
    let unverified = ProxyProcess::start(&pool(""));
    assert_eq!(http(unverified.addr, "GET", "/", &[]).await.status, 502);
    // The log line and the 502 leave the proxy on two pipes: wait for the
    // line rather than assume it was read first.
    eventually("the refused backend certificate is logged", || async {
        unverified.log_text().contains("TLS to")
    })
    .await;
    // The escape hatch works, and says so loudly.
    let insecure = ProxyProcess::start(&pool("insecure_skip_verify = true"));
    assert_eq!(http(insecure.addr, "GET", "/", &[]).await.status, 200);
    assert!(insecure.log_text().contains("NOT verified"));
}

/// One returning client, `others` other clients (each with its own
/// session store, 8 at a time) in between: whether the returning client
/// resumed, and the proxy's count of resumed handshakes.
async fn returns_after_others(extra_tls: &str, others: usize) -> (bool, f64) {
    let pki = Pki::new(&temp_dir("tickets"));
    pki.issue("a", &["a.test", "*.a.test"]);
    pki.issue("b", &["b.test"]);
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(&tls_config(&pki, &[&b1], extra_tls));
    let name = || ServerName::try_from("a.test").expect("a valid name");
    // Its own session store, kept across connections.
    let returning = pki.client();
    let visit = |connector: tokio_rustls::TlsConnector| async move {
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut s = tokio::time::timeout(DEADLINE, connector.connect(name(), tcp))
            .await
            .expect("handshake in time")
            .expect("TLS handshake");
        let kind = s.get_ref().1.handshake_kind();
        // Reading the answer also reads the tickets sent after the
        // handshake (TLS 1.3).
        assert_eq!(get(&mut s).await.backend(), Some("b1"));
        kind
    };
    assert_eq!(
        visit(returning.clone()).await,
        Some(rustls::HandshakeKind::Full)
    );
    // Each other client its own session store (a fresh connector each),
    // and a request like the returning one's, 8 clients at a time.
    let clients: Vec<_> = (0..others).map(|_| pki.client()).collect();
    let batches = clients
        .chunks(others.div_ceil(8).max(1))
        .map(|batch| async move {
            for connector in batch {
                assert_eq!(
                    visit(connector.clone()).await,
                    Some(rustls::HandshakeKind::Full)
                );
            }
        });
    futures_util::future::join_all(batches).await;
    let ok = "limpet_proxy_tls_handshakes_total{outcome=\"ok\",version=\"1.3\"}";
    eventually("the proxy counted every handshake", || async {
        proxy.metric(ok).await >= (1 + others) as f64
    })
    .await;
    let kind = visit(returning).await;
    let resumed = proxy
        .metric("limpet_proxy_tls_resumed_handshakes_total")
        .await;
    (kind == Some(rustls::HandshakeKind::Resumed), resumed)
}

/// Issue 13: with no ticketer, sessions lived in rustls's 256-entry cache
/// (two entries per handshake), and a client returning after a few hundred
/// others was never resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_returning_after_hundreds_of_others_resumes_by_ticket() {
    assert_eq!(returns_after_others("", 320).await, (true, 1.0));
    // Switched off: the session cache alone, which resumes a client
    // returning at once, and not one the others pushed out.
    assert_eq!(
        returns_after_others("session_tickets = false", 0).await,
        (true, 1.0)
    );
    assert_eq!(
        returns_after_others("session_tickets = false", 320).await,
        (false, 0.0)
    );
}
