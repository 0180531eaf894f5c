//! `limpet-broker` command line: load the config, serve, stop on a signal.

use anyhow::Context;
use limpet_broker::{metrics, server};
use limpet_config::BrokerConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    // The help of --config: what runs without a file.
    const CONFIG_HELP: &str =
        "TOML config file; without one the broker runs on 127.0.0.1:6379 with defaults";
    limpet_startup::program!(config_help: CONFIG_HELP).main(
        |_| Ok(()),
        |config, path| async move {
            let file = path.map(|p| p.display().to_string());
            // The broker also logs why it stops, for those who read only its log.
            serve(config, file)
                .await
                .inspect_err(|e| tracing::error!("{e:#}"))
        },
    )
}

async fn serve(config: BrokerConfig, file: Option<String>) -> anyhow::Result<()> {
    let metrics_cfg = config.metrics.clone();
    let broker = Arc::new(server::Broker::new(config, file));
    let server = server::Server::bind(broker.clone()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    if metrics_cfg.enabled {
        let listener = tokio::net::TcpListener::bind(metrics_cfg.bind)
            .await
            .with_context(|| format!("cannot listen for metrics on {}", metrics_cfg.bind))?;
        tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
        let b = broker.clone();
        tokio::spawn(metrics::serve(
            listener,
            Arc::new(move || b.metrics.render()),
            stop_rx.clone(),
        ));
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let serving = tokio::spawn(server.run(stop_rx));
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    // Clients are told to close; a second signal or a stuck peer does not hold us up.
    tokio::select! {
        _ = serving => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("clients did not close within 5 s; exiting anyway"),
        _ = sigterm.recv() => tracing::warn!("second signal: exiting now"),
        _ = sigint.recv() => tracing::warn!("second signal: exiting now"),
    }
    tracing::info!("bye");
    Ok(())
}
