//! Upstream pools and their backends: live state and health verdicts.
//!
//! A backend is available when its active health check says up and
//! passive checks have not taken it out (nginx's `max_fails` within
//! `fail_timeout`, then out for `fail_timeout`). The counters here feed
//! least-connections balancing and the metrics. A pool also keeps the
//! state its selection needs across requests and reloads: the cookie
//! key, the round-robin position and the smooth weighted counters.

use super::cookie::Sealer;
use super::socketio::SidTable;
use crate::signal::Signal;
use crate::upstream::IdleConns;
use limpet_config::{BackendConfig, PoolConfig};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Why a pool cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool `{pool}` TLS: {source}")]
    Tls {
        pool: String,
        #[source]
        source: Box<crate::tls::TlsError>,
    },
}

#[derive(Debug, Default)]
struct Passive {
    fails: u32,
    window_start: Option<Instant>,
    down_until: Option<Instant>,
}

/// What an operator set through the admin API (HAProxy's server states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new sessions.
    Ready = 0,
    /// No new sessions; clients pinned to it (cookie) still reach it.
    Drain = 1,
    /// Nothing new at all; pinned clients are moved elsewhere.
    Maint = 2,
}

impl AdminState {
    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// A backend's series of the metrics every answered request counts,
/// looked up on first use: `with_label_values` hashes its labels and
/// takes a lock on each call. Its labels (pool name, backend id) stay the
/// same for the backend's life, reloads included.
#[derive(Default)]
pub struct Series {
    pub response_seconds: OnceLock<prometheus::Histogram>,
    /// By status class, `1xx` to `5xx`.
    pub requests: [OnceLock<prometheus::IntCounter>; 5],
}

pub struct Backend {
    pub id: String,
    pub address: String,
    pub weight: u32,
    /// Requests in flight plus open tunnels.
    pub active: AtomicUsize,
    pub tunnels: AtomicUsize,
    /// Requests answered, for the admin API.
    pub requests: std::sync::atomic::AtomicU64,
    /// Bytes passed on for it, for the admin API and the status page:
    /// response bodies as they pass, tunnel bytes (both ways) when the
    /// tunnel closes.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Its own failures (connects refused or timed out, no answer in time,
    /// 5xx with `fail_on_5xx`), counted even when passive checks are off.
    pub failures: std::sync::atomic::AtomicU64,
    healthy: AtomicBool,
    state: AtomicU8,
    passive: Mutex<Passive>,
    /// No failure counted and not taken out: every request reads the
    /// passive state and most record a success, and a lock on a line both
    /// connection threads write costs more than the rest of the choice.
    /// Cleared under the lock before any failure is recorded.
    passive_clean: AtomicBool,
    pub idle: IdleConns,
    /// Its series of the per-request metrics (see [`Series`]).
    pub series: Series,
    /// Fired each time health checks mark the backend down with
    /// `on_marked_down = "shutdown-tunnels"`; every open tunnel to it, and
    /// every request waiting for its answer, watches this and lets go
    /// (see [`Backend::shutdown_sessions`]).
    marked_down: Signal,
}

impl Backend {
    pub fn new(cfg: &BackendConfig) -> Backend {
        Backend {
            id: cfg.id.clone(),
            address: cfg.address.clone(),
            weight: cfg.weight,
            active: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            requests: std::sync::atomic::AtomicU64::new(0),
            bytes: std::sync::atomic::AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            state: AtomicU8::new(AdminState::Ready as u8),
            passive: Mutex::new(Passive::default()),
            passive_clean: AtomicBool::new(true),
            series: Series::default(),
            idle: IdleConns::default(),
            marked_down: Signal::default(),
        }
    }

    /// Tells every tunnel open to this backend to close now, and every
    /// request waiting for its answer to give up on it.
    pub fn shutdown_sessions(&self) {
        self.marked_down.fire();
    }

    /// Resolves at the next [`Backend::shutdown_sessions`] (only those
    /// after this call: a tunnel opened later is not closed by an earlier
    /// one).
    pub fn sessions_shut_down(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.marked_down.wait(self.marked_down.next())
    }

    /// What [`Backend::sessions_shut_down`] waits on, for a tunnel that
    /// holds its own [`crate::signal::Waiter`].
    pub fn marked_down(&self) -> &Signal {
        &self.marked_down
    }

    /// Healthy by active and passive checks.
    pub fn is_available(&self, now: Instant) -> bool {
        self.healthy.load(Relaxed)
            && (self.passive_clean.load(Relaxed)
                || self.passive.lock().down_until.is_none_or(|t| now >= t))
    }

    pub fn admin_state(&self) -> AdminState {
        match self.state.load(Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    pub fn set_admin_state(&self, state: AdminState) -> AdminState {
        match self.state.swap(state as u8, Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    fn has_room(&self, max: usize) -> bool {
        max == 0 || self.active.load(Relaxed) < max
    }

    /// May take a new session (balancer, hashing).
    pub fn takes_new(&self, now: Instant, max_conns: usize) -> bool {
        self.admin_state() == AdminState::Ready
            && self.has_room(max_conns)
            && self.is_available(now)
    }

    /// May take a client already pinned to it (drain still does).
    pub fn takes_pinned(&self, now: Instant, max_conns: usize) -> bool {
        self.admin_state() != AdminState::Maint
            && self.has_room(max_conns)
            && self.is_available(now)
    }

    /// Same backend in a reloaded config: same id, address and weight.
    pub fn same_as(&self, cfg: &BackendConfig) -> bool {
        self.id == cfg.id && self.address == cfg.address && self.weight == cfg.weight
    }

    /// Active health check verdict; returns true when it changed.
    pub fn set_healthy(&self, up: bool) -> bool {
        let was = self.healthy.swap(up, Relaxed);
        if up && !was {
            // A backend that passes its checks again starts with a clean slate.
            let mut p = self.passive.lock();
            *p = Passive::default();
            self.passive_clean.store(true, Relaxed);
        }
        was != up
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Records a connect failure or 5xx. Returns true when this takes the
    /// backend out.
    pub fn record_failure(&self, cfg: &PoolConfig, now: Instant) -> bool {
        self.failures.fetch_add(1, Relaxed);
        let max = cfg.passive.max_fails;
        if max == 0 {
            return false;
        }
        let window = cfg.passive.fail_timeout.get();
        let mut p = self.passive.lock();
        self.passive_clean.store(false, Relaxed);
        if p.window_start
            .is_none_or(|s| now.duration_since(s) > window)
        {
            p.window_start = Some(now);
            p.fails = 0;
        }
        p.fails += 1;
        if p.fails >= max && p.down_until.is_none_or(|t| now >= t) {
            p.down_until = Some(now + window);
            p.fails = 0;
            p.window_start = None;
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        if self.passive_clean.load(Relaxed) {
            return;
        }
        let mut p = self.passive.lock();
        if p.fails > 0 {
            p.fails = 0;
            p.window_start = None;
        }
        if p.down_until.is_none_or(|t| Instant::now() >= t) {
            p.down_until = None;
            self.passive_clean.store(true, Relaxed);
        }
    }
}

/// Counts one request or tunnel against a backend until dropped.
pub struct ActiveGuard {
    backend: Arc<Backend>,
    tunnel: bool,
}

impl ActiveGuard {
    pub fn new(backend: Arc<Backend>) -> ActiveGuard {
        backend.active.fetch_add(1, Relaxed);
        ActiveGuard {
            backend,
            tunnel: false,
        }
    }

    /// Counts bytes passed on for its backend.
    pub fn count_bytes(&self, n: u64) {
        self.backend.bytes.fetch_add(n, Relaxed);
    }

    pub fn into_tunnel(mut self) -> ActiveGuard {
        self.backend.tunnels.fetch_add(1, Relaxed);
        self.tunnel = true;
        self
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Relaxed);
        if self.tunnel {
            self.backend.tunnels.fetch_sub(1, Relaxed);
        }
    }
}

pub struct Pool {
    pub config: PoolConfig,
    pub backends: Vec<Arc<Backend>>,
    pub sealer: Arc<Sealer>,
    /// engine.io sessions, for `affinity = "socketio"`; kept across reloads.
    pub sids: Option<Arc<SidTable>>,
    /// TLS toward the backends, when `[pool.tls] enabled = true`.
    pub upstream_tls: Option<Arc<crate::tls::UpstreamConnector>>,
    /// Round-robin position.
    pub(crate) next: AtomicUsize,
    /// Smooth weighted round-robin current weights, one per backend.
    pub(crate) current_weights: Mutex<Vec<i64>>,
    /// Its series of `limpet_proxy_affinity_total`, by [`super::Outcome`],
    /// looked up on first use (as [`Series`]).
    pub affinity: [OnceLock<prometheus::IntCounter>; super::Outcome::COUNT],
}

impl Pool {
    /// Builds a pool; with `previous` (a reload), backends that did not
    /// change keep their live state (health, counters, admin state, idle
    /// connections) and an unchanged cookie key keeps cookies valid.
    pub fn new(config: PoolConfig, previous: Option<&Pool>) -> Result<Pool, PoolError> {
        let upstream_tls = if config.tls.enabled {
            let connector = crate::tls::UpstreamConnector::new(&config.name, &config.tls).map_err(
                |source| PoolError::Tls {
                    pool: config.name.clone(),
                    source: Box::new(source),
                },
            )?;
            Some(Arc::new(connector))
        } else {
            None
        };
        let same_secret = previous.filter(|p| p.config.cookie.secret == config.cookie.secret);
        let sealer = match (same_secret, &config.cookie.secret) {
            (Some(prev), _) => prev.sealer.clone(),
            (None, Some(secret)) => Arc::new(Sealer::new(secret.as_bytes())),
            (None, None) => {
                if matches!(
                    config.affinity,
                    limpet_config::Affinity::Cookie | limpet_config::Affinity::Socketio
                ) {
                    tracing::warn!(pool = %config.name, "no cookie.secret configured: using a random one, so cookies do not survive a restart and other proxy instances cannot read them");
                }
                Arc::new(Sealer::random())
            }
        };
        let sids = (config.affinity == limpet_config::Affinity::Socketio).then(|| {
            let (max, idle) = (
                config.socketio.max_sessions,
                config.socketio.session_idle.get(),
            );
            match previous.and_then(|p| p.sids.clone()) {
                Some(table) => {
                    table.configure(max, idle);
                    table
                }
                None => Arc::new(SidTable::new(max, idle)),
            }
        });
        let backends: Vec<_> = config
            .backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.backends.iter().find(|old| old.same_as(b)).cloned())
                    .unwrap_or_else(|| Arc::new(Backend::new(b)))
            })
            .collect();
        let n = backends.len();
        Ok(Pool {
            config,
            backends,
            sealer,
            sids,
            upstream_tls,
            next: AtomicUsize::new(0),
            current_weights: Mutex::new(vec![0; n]),
            affinity: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }
}

#[cfg(test)]
impl Pool {
    /// A pool of backends `b0`, `b1`, ... with these weights, for tests.
    pub(crate) fn for_test(extra: &str, weights: &[u32]) -> Pool {
        let text = format!(
            "[[pool]]\nname = \"p\"\n{extra}\n{}",
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| format!(
                    "[[pool.backend]]\nid = \"b{i}\"\naddress = \"127.0.0.1:{}\"\nweight = {w}\n",
                    1000 + i
                ))
                .collect::<String>()
        );
        let cfg: limpet_config::ProxyConfig =
            limpet_config::parse_str(&text, std::path::Path::new("t.toml"))
                .expect("a valid test pool");
        Pool::new(cfg.pools[0].clone(), None).expect("a test pool builds")
    }
}
