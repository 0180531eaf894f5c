//! `limpet-proxy` command line: load the config, serve, stop on a signal,
//! hand the listeners to a new binary on `SIGUSR2` (`upgrade`).

use anyhow::Context;
use limpet_config::ProxyConfig;
use limpet_proxy::handover::{self, Inherited, Kind, Socket};
use limpet_proxy::upgrade::{self, Upgrader};
use limpet_proxy::{admin, cores, listen, live, notify};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    // The help of --config: what runs without a file.
    const CONFIG_HELP: &str =
        "TOML config file; without one the proxy listens on 127.0.0.1:8080 with no routes";
    // Taken before anything can replace the file: a binary upgrade runs
    // the file at this path again, with these arguments.
    let args: Vec<OsString> = std::env::args_os().collect();
    let exe = upgrade::own_path()
        .ok()
        .or_else(|| args.first().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("limpet-proxy"));
    let args = args.into_iter().skip(1).collect();
    limpet_startup::program!(config_help: CONFIG_HELP).main(check, move |config, path| {
        serve(config, path, Upgrade { exe, args })
    })
}

/// How to start this binary again, for a binary upgrade.
struct Upgrade {
    exe: PathBuf,
    args: Vec<OsString>,
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

async fn serve(config: ProxyConfig, path: Option<PathBuf>, up: Upgrade) -> anyhow::Result<()> {
    tracing::info!(pid = std::process::id(), "limpet-proxy starting");
    // Started by a binary upgrade: the listening sockets come from the
    // old process, which waits for our answer.
    let mut inherited = match upgrade::inherited_from_env() {
        Some(socket) => Some(Inherited::connect(&socket).await.with_context(|| {
            format!(
                "taking the listeners from the old process ({})",
                socket.display()
            )
        })?),
        None => None,
    };
    let (proxy, listeners, admin_listener) = match start(config, path, inherited.as_mut()).await {
        Ok(started) => started,
        Err(e) => {
            if let Some(inherited) = inherited {
                inherited.fail(&format!("{e:#}")).await;
            }
            return Err(e);
        }
    };
    let mut sockets = listeners
        .sockets()
        .context("copying the listening sockets")?;
    let admin_cfg = proxy.routing().config.admin.clone();
    if let Some(l) = &admin_listener {
        let copy = Socket::of(Kind::Admin, admin_cfg.bind, l.local_addr()?, l.as_fd());
        sockets.push(copy.context("copying the admin socket")?);
    }
    let upgrader = Arc::new(Upgrader::new(up.exe, up.args, sockets));
    let mut handed_over = upgrader.handed_over();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = admin_listener {
        tracing::info!(addr = %listener.local_addr()?, "admin listener: /metrics and /api");
        tokio::spawn(admin::serve(
            listener,
            proxy.clone(),
            upgrader.clone(),
            stop_rx.clone(),
        ));
    }
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?;
    tokio::spawn(proxy.clone().watch_certificates(stop_rx.clone()));
    let cores = cores::Cores::start(cores::Cores::threads_wanted())
        .context("starting the connection threads")?;
    let serving = tokio::spawn(listeners.run(proxy.clone(), cores, stop_rx));
    // The sockets already listen; the accept loops are spawned. Under
    // systemd, a new process of an upgrade becomes the main process
    // before the old one is told to drain, and so before it exits.
    notify::ready(inherited.is_some());
    if let Some(inherited) = inherited {
        match inherited.ready().await {
            Ok(()) => tracing::info!("binary upgrade: serving; the old process drains"),
            Err(e) => {
                tracing::warn!("binary upgrade: could not tell the old process we serve: {e}")
            }
        }
    }
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = proxy.reload();
            }
            _ = sigusr2.recv() => {
                tracing::info!("SIGUSR2: binary upgrade");
                tokio::spawn(upgrader.clone().upgrade(proxy.clone()));
            }
            Ok(()) = handed_over.changed() => {
                if handed_over.borrow().is_some() { break }
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); notify::send("STOPPING=1"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); notify::send("STOPPING=1"); break }
        }
    }
    // Stop accepting; requests in flight finish; tunnels get until the
    // drain deadline. A second signal exits at once.
    upgrader.stop();
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
            // Said, not silently dropped: an operator's reload or upgrade
            // sent to a draining process does nothing.
            _ = sighup.recv() => tracing::warn!("SIGHUP while draining: ignored, this process is shutting down"),
            _ = sigusr2.recv() => tracing::warn!("SIGUSR2 while draining: ignored, this process is shutting down"),
        }
    }
    tracing::info!(
        tunnels = proxy.tunnels.load(Relaxed),
        "drain deadline reached: closing the remaining tunnels"
    );
    proxy.close_tunnels.fire();
    let wait = tokio::time::Instant::now() + Duration::from_secs(2);
    while proxy.tunnels.load(Relaxed) > 0 && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Everything that may fail before serving; a new process of a binary
/// upgrade reports such a failure to the old one, which carries on.
async fn start(
    config: ProxyConfig,
    path: Option<PathBuf>,
    mut inherited: Option<&mut Inherited>,
) -> anyhow::Result<(
    Arc<live::Proxy>,
    listen::Listeners,
    Option<tokio::net::TcpListener>,
)> {
    let listeners = listen::Listeners::bind(&config, inherited.as_deref_mut()).await?;
    let admin = &config.admin;
    let admin_listener = match admin.enabled {
        true => Some(
            handover::take_or_bind(inherited, Kind::Admin, admin.bind)
                .await
                .with_context(|| format!("cannot listen for admin on {}", admin.bind))?,
        ),
        false => None,
    };
    let proxy = live::Proxy::new(config, path).map_err(anyhow::Error::msg)?;
    Ok((proxy, listeners, admin_listener))
}
