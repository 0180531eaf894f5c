//! `limpet-node` command line: load the config, serve, drain on SIGTERM.

use anyhow::Context;
use limpet_config::NodeConfig;
use limpet_node::{http, protocol, rooms};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    // The help of --config: what runs without a file.
    const CONFIG_HELP: &str = "TOML config file; without one the node listens on 127.0.0.1:9001 and uses the broker at redis://127.0.0.1:6379/";
    limpet_startup::program!(config_help: CONFIG_HELP).main(check, |config, _| serve(config))
}

/// What `--check` verifies beyond the config itself: the JWT key loads.
fn check(config: &NodeConfig) -> anyhow::Result<()> {
    limpet_node::auth::Verifier::from_config(config)?;
    Ok(())
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    // A key that does not load is a start-up error, not a node that
    // refuses every client.
    check(&config)?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let (node, inbound) = rooms::Node::new(config);
    tracing::info!(node = %node.id, addr = %listener.local_addr()?, ws_path = %node.config.ws_path, "listening for WebSocket clients");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    node.clone()
        .run_inbound(inbound)
        .context("starting the inbound thread")?;
    tokio::spawn(node.clone().run_heartbeats(stop_rx.clone()));
    let serving = tokio::spawn(http::serve(listener, node.clone(), stop_rx.clone()));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    // Drain: health turns 503 so the proxy sends new sessions elsewhere,
    // clients are told to reconnect, then closed after the grace period.
    let grace = node.config.shutdown.grace.get();
    let hint = node.config.shutdown.reconnect_hint.get();
    tracing::info!(node = %node.id, clients = node.socket_count(), "draining: telling clients to reconnect within {grace:?}");
    node.draining.store(true, Relaxed);
    node.broadcast_local(&protocol::shutdown(hint.as_millis() as u64));
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        if node.socket_count() == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = sigterm.recv() => { tracing::warn!("second signal: closing now"); break }
            _ = sigint.recv() => { tracing::warn!("second signal: closing now"); break }
        }
    }
    node.metrics
        .closes
        .with_label_values(&["shutdown"])
        .inc_by(node.socket_count() as u64);
    node.close_all(rooms::close::GOING_AWAY);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while node.socket_count() > 0 && tokio::time::Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.say_bye();
    // Give the backplane a moment to flush the last announcements.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), serving).await;
    tracing::info!(node = %node.id, "stopped");
    Ok(())
}
