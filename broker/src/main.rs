//! `limpet-broker` command line: load the config, serve, stop on a signal.

use anyhow::Context;
use clap::Parser;
use limpet_broker::{metrics, server};
use limpet_config::BrokerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// A pub/sub broker that speaks the Redis protocol (RESP2 and RESP3).
#[derive(Parser, Debug)]
#[command(name = "limpet-broker", version, about)]
struct Args {
    /// TOML config file; without one the broker runs on 127.0.0.1:6379 with defaults.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match limpet_config::load_or_default::<BrokerConfig>(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("limpet-broker: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if args.check {
        let name = args
            .config
            .as_ref()
            .map_or("(defaults)".into(), |p| p.display().to_string());
        println!("limpet-broker: configuration {name} is ok");
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
            eprintln!("limpet-broker: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let file = args.config.map(|p| p.display().to_string());
    match runtime.block_on(serve(config, file)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("limpet-broker: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
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
