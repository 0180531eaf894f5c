//! `limpet-proxy` command line: load the config, serve, stop on a signal.

use anyhow::Context;
use clap::Parser;
use limpet_config::ProxyConfig;
use limpet_proxy::{admin, health, server};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Sticky HTTP/WebSocket reverse proxy.
#[derive(Parser, Debug)]
#[command(name = "limpet-proxy", version, about)]
struct Args {
    /// TOML config file; without one the proxy listens on 127.0.0.1:8080 with no routes.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match limpet_config::load_file::<ProxyConfig>(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("limpet-proxy: {e}");
                return std::process::ExitCode::from(1);
            }
        },
        None => ProxyConfig::default(),
    };
    if args.check {
        let name = args
            .config
            .as_ref()
            .map_or("(defaults)".into(), |p| p.display().to_string());
        println!("limpet-proxy: configuration {name} is ok");
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
            eprintln!("limpet-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limpet-proxy: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(config: ProxyConfig) -> anyhow::Result<()> {
    let listeners = server::Listeners::bind(&config).await?;
    let admin_cfg = config.admin.clone();
    let proxy = Arc::new(server::Proxy::new(config));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if admin_cfg.enabled {
        let listener = tokio::net::TcpListener::bind(admin_cfg.bind)
            .await
            .with_context(|| format!("cannot listen for admin on {}", admin_cfg.bind))?;
        tracing::info!(addr = %listener.local_addr()?, "admin listener: /metrics");
        tokio::spawn(admin::serve(listener, proxy.clone(), stop_rx.clone()));
    }
    for pool in &proxy.pools {
        health::spawn(pool.clone(), proxy.metrics.clone(), stop_rx.clone());
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let serving = tokio::spawn(listeners.run(proxy.clone(), stop_rx));
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = serving => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("requests still running after 10 s; exiting"),
        _ = sigterm.recv() => tracing::warn!("second signal: exiting now"),
        _ = sigint.recv() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}
