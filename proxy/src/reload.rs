//! Reloading: the config file again on `SIGHUP` or `POST /api/reload`,
//! and certificates whenever their files change.
//!
//! A reload builds a whole new routing generation next to the running one
//! and installs it only when everything in it is valid, so a bad edit
//! leaves the proxy as it was (nginx does the same with `-s reload`).
//! Certificates are swapped per listener: one that fails to load keeps
//! serving the previous one. Listeners themselves never change without a
//! restart.

use crate::live::{Proxy, Routing, SetupError};
use crate::tls::{self, TlsError};
use limpet_config::{ConfigError, ProxyConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why a reload was refused (or, for certificates, half done); the text
/// is what `POST /api/reload` answers and the log says.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("started without --config: nothing to reload")]
    NoConfigFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The new routes are in force; some listeners kept their certificates.
    #[error("routes reloaded, but {0}")]
    Certificates(#[source] CertificatesRefused),
}

/// The certificates of every listener that kept its current ones.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct CertificatesRefused(pub Vec<TlsError>);

impl Proxy {
    /// Re-reads the config file; on any error the running config stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.reloads.with_label_values(&[outcome]).inc();
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let config: ProxyConfig = limpet_config::load_file(path)?;
        if config.listen != self.listen {
            tracing::warn!("[[listen]] changes take effect only after a restart or a binary upgrade (SIGUSR2); keeping the current listeners");
        }
        if config.http2.enabled != self.http2 {
            // ALPN is part of each listener's TLS setup, made at start.
            tracing::warn!("http2.enabled changes take effect only after a restart; the other [http2] limits apply to new connections now");
        }
        let old = self.routing();
        let new = Routing::build(config, Some(&old), &self.metrics)?;
        // Certificates reload with the config; a bad one is refused on its own.
        let certs = self.reload_certificates(&new.config);
        self.install(new);
        certs.map_err(ReloadError::Certificates)
    }

    /// Loads certificates again for every TLS listener from `config`; a
    /// listener whose files fail keeps its current certificates.
    pub fn reload_certificates(&self, config: &ProxyConfig) -> Result<(), CertificatesRefused> {
        let mut errors = Vec::new();
        for (i, server) in self.tls.iter().enumerate() {
            let (Some(server), Some(listen)) = (server, config.listen.get(i)) else {
                continue;
            };
            let Some(cfg) = &listen.tls else { continue };
            match tls::CertStore::load(cfg) {
                Ok(store) => {
                    self.metrics
                        .record_cert_expiries(&listen.bind.to_string(), &store.expiries);
                    server.resolver.store.store(Arc::new(store));
                    self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(listener = %listen.bind, "certificates reloaded");
                }
                Err(e) => {
                    self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(listener = %listen.bind, "new certificate refused, keeping the current one: {e}");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CertificatesRefused(errors))
        }
    }

    /// Polls certificate files and reloads them when they change.
    pub async fn watch_certificates(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut seen: Vec<Option<std::time::SystemTime>> = self
            .listen
            .iter()
            .map(|l| l.tls.as_ref().and_then(tls::newest_mtime))
            .collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let config = self.routing().config.clone();
            for (i, listen) in config.listen.iter().enumerate() {
                let Some(cfg) = listen.tls.as_ref().filter(|t| t.watch) else {
                    continue;
                };
                let now = tls::newest_mtime(cfg);
                if now != seen.get(i).copied().flatten() {
                    if let Some(slot) = seen.get_mut(i) {
                        *slot = now;
                    }
                    tracing::info!(listener = %listen.bind, "certificate files changed on disk");
                    let single = ProxyConfig {
                        listen: config
                            .listen
                            .iter()
                            .enumerate()
                            .map(|(j, l)| {
                                let mut l = l.clone();
                                if j != i {
                                    l.tls = None;
                                }
                                l
                            })
                            .collect(),
                        ..config.clone()
                    };
                    let _ = self.reload_certificates(&single);
                }
            }
        }
    }
}
