//! `limpet-node` command line: load the config, serve, drain on SIGTERM.

use anyhow::Context;
use clap::Parser;
use limpet_config::NodeConfig;
use limpet_node::{http, protocol, rooms};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// WebSocket room server; rooms span every node through the broker.
#[derive(Parser, Debug)]
#[command(name = "limpet-node", version, about)]
struct Args {
    /// TOML config file; without one the node listens on 127.0.0.1:9001
    /// and uses the broker at redis://127.0.0.1:6379/.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match limpet_config::load_or_default::<NodeConfig>(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("limpet-node: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if args.check {
        let name = args
            .config
            .as_ref()
            .map_or("(defaults)".into(), |p| p.display().to_string());
        println!("limpet-node: configuration {name} is ok");
        return std::process::ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limpet-node: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limpet-node: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let (node, inbound) = rooms::Node::new(config);
    tracing::info!(node = %node.id, addr = %listener.local_addr()?, ws_path = %node.config.ws_path, "listening for WebSocket clients");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(node.clone().run_inbound(inbound));
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
