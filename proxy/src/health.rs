//! Active health checks: each backend of a pool with `health.path` is
//! probed every `interval` with `GET path`; 2xx and 3xx count as success.
//! `fall` consecutive failures take an up backend out, `rise` consecutive
//! successes bring a down one back (HAProxy's `rise`/`fall`).
//!
//! Marking a backend down also lets go of what is already connected to
//! it: its idle keep-alive connections are dropped (to a host that
//! vanished they look open, and a request on one would wait for
//! `timeouts.response`), and with `on_marked_down = "shutdown-tunnels"`
//! (the default) its open tunnels are closed so their clients reconnect
//! to a live backend, and requests still waiting for its answer are sent
//! elsewhere (replayable ones) or answered 502 instead of waiting for
//! `timeouts.response`, like HAProxy's `on-marked-down shutdown-sessions`.
//! Only checks do this: an admin drain keeps tunnels by design, and a
//! single passive failure is too little evidence to cut every client.

use crate::metrics::Metrics;
use crate::select::{Backend, Pool};
use crate::upstream;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use tokio::sync::watch;

pub fn spawn(
    pool: Arc<Pool>,
    keepalive: Option<upstream::Keepalive>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(path) = pool.config.health.path.clone() else {
        return;
    };
    for backend in pool.backends.clone() {
        tokio::spawn(check_loop(
            pool.clone(),
            backend,
            path.clone(),
            keepalive,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
}

async fn check_loop(
    pool: Arc<Pool>,
    backend: Arc<Backend>,
    path: String,
    keepalive: Option<upstream::Keepalive>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let h = pool.config.health.clone();
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(h.interval.get());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let target = upstream::Target {
            address: &backend.address,
            tls: pool.upstream_tls.as_deref(),
            connect_timeout: h.timeout.get(),
            keepalive,
        };
        let result = probe(target, &path, h.timeout.get()).await;
        let label = if result.is_ok() { "success" } else { "failure" };
        metrics
            .health_checks
            .with_label_values(&[pool.name(), &backend.id, label])
            .inc();
        match result {
            Ok(()) => {
                ok_run += 1;
                fail_run = 0;
                if !backend.healthy() && ok_run >= h.rise && backend.set_healthy(true) {
                    tracing::info!(pool = %pool.name(), backend = %backend.id, address = %backend.address, "backend is up ({} passed checks)", ok_run);
                }
            }
            Err(reason) => {
                fail_run += 1;
                ok_run = 0;
                if backend.healthy() && fail_run >= h.fall && backend.set_healthy(false) {
                    tracing::warn!(pool = %pool.name(), backend = %backend.id, address = %backend.address, "backend is down after {} failed checks: {reason}", fail_run);
                    marked_down(&pool, &backend);
                }
            }
        }
    }
}

/// Lets go of what is connected to a backend the checks just took out.
fn marked_down(pool: &Pool, backend: &Backend) {
    let idle = backend.idle.clear();
    let tunnels = backend.tunnels.load(std::sync::atomic::Ordering::Relaxed);
    if pool.config.health.shuts_down_tunnels() {
        backend.shutdown_sessions();
        tracing::warn!(pool = %pool.name(), backend = %backend.id, "closing {tunnels} tunnels, waiting requests and {idle} idle connections to the backend marked down (on_marked_down = \"shutdown-tunnels\")");
    } else {
        tracing::info!(pool = %pool.name(), backend = %backend.id, "dropped {idle} idle connections; {tunnels} tunnels stay open (on_marked_down = \"keep\")");
    }
}

/// Why one health check failed; logged when it takes a backend down.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Connect(#[from] upstream::ConnectError),
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error(transparent)]
    Send(#[from] hyper::Error),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

async fn probe(
    target: upstream::Target<'_>,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(), ProbeError> {
    let address = target.address;
    let attempt = async {
        let mut sender = upstream::connect(target).await?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, address)
            .header(hyper::header::USER_AGENT, "limpet-proxy health check")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}
