//! TLS with rustls: the server side of TLS listeners (certificates chosen
//! by SNI, hot reload) and the client side toward `https`/`wss` backends.
//!
//! Certificates live in a [`CertStore`] behind an `ArcSwap`, read by the
//! SNI resolver on every handshake. Reloading builds a complete new store
//! first and swaps it in only when every file loaded and every key matched
//! its certificate, so a broken replacement never takes the old one out of
//! service, and connections already open are never touched.

use arc_swap::ArcSwap;
use limpet_config::{TlsListenConfig, TlsVersion, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Why certificates, keys or a TLS configuration could not be loaded;
/// the text names the file, as `--check` and the reload API show it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: {source}")]
    Cert {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(String),
    #[error("{path}: unsupported key: {source}")]
    UnsupportedKey {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{key} does not match {cert}: {source}")]
    KeyMismatch {
        key: String,
        cert: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}: cannot read the certificate's validity")]
    NoValidity(String),
    #[error("no default certificate")]
    NoDefault,
    #[error("{0}")]
    Config(#[from] rustls::Error),
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
}

fn pem(path: &str) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.to_string(),
        source,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loaded certificates of one listener.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// (first name or file, notAfter as unix seconds), for the expiry metric.
    pub expiries: Vec<(String, i64)>,
}

impl CertStore {
    pub fn load(cfg: &TlsListenConfig) -> Result<CertStore, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut expiries = Vec::new();
        for (i, c) in cfg.certs.iter().enumerate() {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
                .map_err(pem(&c.cert))?
                .collect::<Result<_, _>>()
                .map_err(pem(&c.cert))?;
            if chain.is_empty() {
                return Err(TlsError::NoCertificate(c.cert.clone()));
            }
            let key = PrivateKeyDer::from_pem_file(&c.key).map_err(pem(&c.key))?;
            let signer =
                rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
                    TlsError::UnsupportedKey {
                        path: c.key.clone(),
                        source,
                    }
                })?;
            let certified = CertifiedKey::new(chain, signer);
            certified
                .keys_match()
                .map_err(|source| TlsError::KeyMismatch {
                    key: c.key.clone(),
                    cert: c.cert.clone(),
                    source,
                })?;
            let not_after = not_after(certified.cert[0].as_ref())
                .ok_or_else(|| TlsError::NoValidity(c.cert.clone()))?;
            let label = c.names.first().cloned().unwrap_or_else(|| c.cert.clone());
            expiries.push((label, not_after));
            let certified = Arc::new(certified);
            for name in &c.names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_string(), certified.clone()),
                    None => exact.insert(name, certified.clone()),
                };
            }
            if c.default || (i == 0 && !cfg.certs.iter().any(|c| c.default)) {
                default = Some(certified);
            }
        }
        Ok(CertStore {
            exact,
            wildcard,
            default: default.ok_or(TlsError::NoDefault)?,
            expiries,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return c.clone();
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return c.clone();
                }
            }
        }
        self.default.clone()
    }
}

/// SNI-based certificate choice over a swappable store.
#[derive(Debug)]
pub struct Resolver {
    pub store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().pick(hello.server_name()))
    }
}

/// A TLS listener's acceptor and its live certificate store.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub resolver: Arc<Resolver>,
}

/// A TLS listener; with `http2`, ALPN offers `h2` before `http/1.1`.
pub fn server(cfg: &TlsListenConfig, http2: bool) -> Result<ServerTls, TlsError> {
    let store = CertStore::load(cfg)?;
    let resolver = Arc::new(Resolver {
        store: ArcSwap::from_pointee(store),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    if cfg.session_tickets {
        // Stateless tickets, keys rotated by rustls (every 6 hours, each
        // valid for 12), in memory: without them TLS 1.3 resumption rests
        // on the 256-entry session cache, which a busy edge overwrites
        // long before a client returns (issue 13).
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if http2 {
        config
            .alpn_protocols
            .insert(0, crate::http2::ALPN_H2.to_vec());
    }
    Ok(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        resolver,
    })
}

/// Newest modification time of a listener's certificate and key files.
pub fn newest_mtime(cfg: &TlsListenConfig) -> Option<SystemTime> {
    cfg.certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .max()
}

/// The notAfter of an X.509 certificate, as unix seconds: a small DER walk
/// (Certificate → TBSCertificate → Validity), enough for the expiry metric.
pub fn not_after(der: &[u8]) -> Option<i64> {
    fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *data.first()?;
        let first = *data.get(1)?;
        let (len, head) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for b in data.get(2..2 + n)? {
                len = (len << 8) | usize::from(*b);
            }
            (len, 2 + n)
        };
        let body = data.get(head..head + len)?;
        Some((tag, body, &data[head + len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    let (_, _, after) = tlv(rest)?; // serial
    let (_, _, after) = tlv(after)?; // signature algorithm
    let (_, _, after) = tlv(after)?; // issuer
    let (_, validity, _) = tlv(after)?;
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(after)?;
    let text = std::str::from_utf8(time).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (month, day, hour, min, sec) =
        (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

/// How the proxy connects to a pool's backends over TLS.
pub struct UpstreamConnector {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<String>,
}

impl UpstreamConnector {
    pub fn new(pool: &str, cfg: &UpstreamTls) -> Result<UpstreamConnector, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let mut config = if cfg.insecure_skip_verify {
            tracing::warn!(%pool, "pool.tls.insecure_skip_verify is ON: backend certificates are NOT verified; anyone on the path can impersonate the backends. Use it only for testing.");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &cfg.ca_file {
                Some(file) => {
                    for cert in CertificateDer::pem_file_iter(file).map_err(pem(file))? {
                        let cert = cert.map_err(pem(file))?;
                        roots.add(cert).map_err(|source| TlsError::Cert {
                            path: file.clone(),
                            source,
                        })?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    for cert in found.certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: cfg.server_name.clone(),
        })
    }

    pub fn name_for(&self, address: &str) -> Result<ServerName<'static>, TlsError> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))
    }
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_from_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-15T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_941_840_000));
        assert_eq!(not_after(b"\x30\x03junk"), None);
    }
}
