//! The TLS side of the load generator (scenario 6, the TLS edge): the
//! rustls client every contender is measured with, and closed-loop
//! handshakes.
//!
//! The client is the same for every contender: TLS 1.3 only, one cipher
//! suite (`TLS13_AES_128_GCM_SHA256`, what browsers pick first on x86),
//! X25519, ALPN `http/1.1`. It trusts exactly the bench's one self-signed
//! certificate (the server's leaf must be those bytes; its handshake
//! signature is verified as a browser would), so no root store is loaded.
//!
//! A handshake is: TCP connect, TLS handshake, one small `GET /` with
//! `Connection: close` (proxied to the echo backend, as a page's first
//! request would be) and its response read to the end. Reading the
//! response is what makes the client take in the server's session
//! tickets, which TLS 1.3 servers send after the handshake.

use crate::load::{connect_from, histogram, merged, summarize, Latency};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The name every client asks for (SNI) and the certificate is made for.
pub const SERVER_NAME: &str = "localhost";

/// The bench's certificate: self-signed ECDSA P-256 for [`SERVER_NAME`],
/// as PEM (for the contenders) and DER (the client pins it).
pub struct BenchCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// A fresh [`BenchCert`].
pub fn bench_cert() -> anyhow::Result<BenchCert> {
    let key = rcgen::KeyPair::generate()?; // ECDSA P-256
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&key)?;
    Ok(BenchCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    })
}

/// A client configuration trusting only `cert`. `resume`: keep session
/// tickets and offer them (a returning client); otherwise every
/// handshake is a full one.
pub fn client_config(cert: &[u8], resume: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let mut crypto = provider::default_provider();
    crypto.cipher_suites = vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256];
    crypto.kx_groups = vec![provider::kx_group::X25519];
    let crypto = Arc::new(crypto);
    let verifier = Arc::new(Pinned {
        cert: cert.to_vec(),
        crypto: crypto.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(crypto)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(4)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Accepts exactly one leaf certificate (the bench's own), and checks
/// the handshake signature with it.
#[derive(Debug)]
struct Pinned {
    cert: Vec<u8>,
    crypto: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the bench certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.crypto
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TCP from 127.0.0.(1 + i % 8), then a TLS handshake with `config`.
pub async fn connect(
    i: usize,
    target: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(i, target).await?;
    let name = ServerName::try_from(SERVER_NAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// What a handshake run measured: the rate and latency of whole
/// connections (handshake, request, response) and how many of them the
/// server resumed.
#[derive(Debug, Clone, Default)]
pub struct Handshakes {
    pub latency: Latency,
    pub resumed: u64,
}

/// `workers` closed-loop clients making new TLS connections for
/// `duration`. Handshake number n of worker w uses
/// `clients[(w + n * workers) % clients.len()]`: one client with
/// resumption off gives full handshakes; one client per worker gives
/// returning clients that come back at once; more clients than workers
/// give returning clients that come back after `clients.len()` other
/// handshakes (what a server's session cache must hold). Each worker
/// stops after `max_each` handshakes if that comes first (a warm-up pass
/// that gives every client one ticket). `probe` is called at the start and
/// at the end (the contender's CPU time).
pub async fn handshakes<T, P: Fn() -> T>(
    target: SocketAddr,
    workers: usize,
    (duration, max_each): (Duration, usize),
    clients: &[Arc<ClientConfig>],
    probe: P,
) -> (Handshakes, [T; 2]) {
    let all = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let first = probe();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (all, errors, resumed) = (all.clone(), errors.clone(), resumed.clone());
        let clients = clients.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut n = 0usize;
            while Instant::now() < deadline && n < max_each && !clients.is_empty() {
                let config = clients[(w + n * workers) % clients.len()].clone();
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), one(w + n, target, config))
                    .await
                {
                    Ok(Ok(kind)) => {
                        let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                        if kind == Some(HandshakeKind::Resumed) {
                            resumed.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                n += 1;
            }
            if let Ok(mut h) = all.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let last = probe();
    let h = merged(&all);
    let run = Handshakes {
        latency: summarize(&h, elapsed, errors.load(Relaxed)),
        resumed: resumed.load(Relaxed),
    };
    (run, [first, last])
}

/// One connection: handshake, `GET /`, the whole response. Returns how
/// the handshake went (full or resumed).
async fn one(
    i: usize,
    target: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<Option<HandshakeKind>> {
    let mut tls = connect(i, target, config).await?;
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut got = Vec::with_capacity(512);
    // Until the server closes: a close_notify (Ok(0)) or, from some
    // servers, a bare TCP close after the response (UnexpectedEof).
    match tls.read_to_end(&mut got).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !got.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !got.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200 response"));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    //! The TLS client must keep working: handshakes against an in-process
    //! rustls server are counted, and a returning client is resumed.
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;

    /// Answers every connection with one `200` and closes it.
    async fn server(cert: &BenchCert) -> SocketAddr {
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(cert.der.clone())],
                    PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("PEM key"),
                )
                .expect("the bench certificate loads");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handshakes_are_counted_and_returning_clients_resumed() {
        let cert = bench_cert().expect("certificate");
        let addr = server(&cert).await;
        let full = vec![client_config(&cert.der, false).expect("client")];
        let run = (Duration::from_millis(300), usize::MAX);
        let (r, _) = handshakes(addr, 2, run, &full, || ()).await;
        assert_eq!(r.latency.errors, 0, "{r:?}");
        assert!(r.latency.count > 0, "{r:?}");
        assert_eq!(r.resumed, 0, "resumption off: every handshake is full");

        let returning = vec![client_config(&cert.der, true).expect("client")];
        let (r, _) = handshakes(addr, 1, run, &returning, || ()).await;
        assert_eq!(r.latency.errors, 0, "{r:?}");
        assert!(r.latency.count >= 2, "{r:?}");
        assert_eq!(r.resumed, r.latency.count - 1, "all but the first resumed");
    }
}
