//! `limpet-proxy` command line: load the config, serve, stop on a signal.

use anyhow::Context;
use limpet_config::ProxyConfig;
use limpet_proxy::{admin, listen, live};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    // The help of --config: what runs without a file.
    const CONFIG_HELP: &str =
        "TOML config file; without one the proxy listens on 127.0.0.1:8080 with no routes";
    limpet_startup::program!(config_help: CONFIG_HELP).main(check, serve)
}

/// Like `nginx -t`, `--check` loads the certificates too.
fn check(config: &ProxyConfig) -> anyhow::Result<()> {
    for l in &config.listen {
        if let Some(tls) = &l.tls {
            if let Err(e) = limpet_proxy::tls::server(tls, config.http2.enabled) {
                anyhow::bail!("TLS for {}: {e}", l.bind);
            }
        }
    }
    Ok(())
}

async fn serve(config: ProxyConfig, path: Option<PathBuf>) -> anyhow::Result<()> {
    let listeners = listen::Listeners::bind(&config).await?;
    let admin_cfg = config.admin.clone();
    let proxy = live::Proxy::new(config, path).map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if admin_cfg.enabled {
        let listener = tokio::net::TcpListener::bind(admin_cfg.bind)
            .await
            .with_context(|| format!("cannot listen for admin on {}", admin_cfg.bind))?;
        tracing::info!(addr = %listener.local_addr()?, "admin listener: /metrics and /api");
        tokio::spawn(admin::serve(listener, proxy.clone(), stop_rx.clone()));
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(proxy.clone().watch_certificates(stop_rx.clone()));
    let serving = tokio::spawn(listeners.run(proxy.clone(), stop_rx));
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = proxy.reload();
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break }
        }
    }
    // Stop accepting; requests in flight finish; tunnels get until the
    // drain deadline. A second signal exits at once.
    let _ = stop_tx.send(true);
    let deadline = proxy.routing().config.shutdown.drain_deadline.get();
    let until = tokio::time::Instant::now() + deadline;
    tracing::info!(
        tunnels = proxy.tunnels.load(Relaxed),
        "draining for up to {deadline:?}"
    );
    loop {
        if proxy.tunnels.load(Relaxed) == 0 && serving.is_finished() {
            tracing::info!("drained");
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = sigterm.recv() => { tracing::warn!("second signal: exiting now"); return Ok(()) }
            _ = sigint.recv() => { tracing::warn!("second signal: exiting now"); return Ok(()) }
        }
    }
    tracing::info!(
        tunnels = proxy.tunnels.load(Relaxed),
        "drain deadline reached: closing the remaining tunnels"
    );
    let _ = proxy.close_tunnels.send(true);
    let wait = tokio::time::Instant::now() + Duration::from_secs(2);
    while proxy.tunnels.load(Relaxed) > 0 && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
