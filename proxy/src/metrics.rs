//! Prometheus metrics for the proxy. Counters are bumped on the request
//! path; per-backend gauges (health, open requests, tunnels) are read from
//! the live pool state when `/metrics` is scraped, so they are never stale.
//! The socket.io session tables count for themselves (they outlive
//! reloads) and are read the same way.

use crate::select::Pool;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Holds a gauge up by one while alive, so that a count is given back
/// however its owner ends (a task dropped included).
pub struct GaugeHeld(IntGauge);

impl GaugeHeld {
    pub fn new(gauge: &IntGauge) -> GaugeHeld {
        gauge.inc();
        GaugeHeld(gauge.clone())
    }
}

impl Drop for GaugeHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntCounter,
    pub open_connections: IntGauge,
    pub parked_connections: IntGauge,
    pub requests: IntCounterVec,
    pub upgrades: IntCounterVec,
    pub tunnel_bytes: IntCounterVec,
    pub tunnels_closed: IntCounterVec,
    pub affinity: IntCounterVec,
    pub connect_errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub client_body_errors: IntCounterVec,
    pub bad_requests: IntCounterVec,
    pub upgrades_refused: IntCounter,
    pub admin_errors: IntCounterVec,
    pub response_seconds: HistogramVec,
    pub health_checks: IntCounterVec,
    pub reloads: IntCounterVec,
    pub binary_upgrades: IntCounterVec,
    pub admin_changes: IntCounterVec,
    pub limit_rejections: IntCounterVec,
    pub proxy_protocol_errors: IntCounterVec,
    pub handshakes: IntCounterVec,
    pub resumed_handshakes: IntCounter,
    pub tls_reloads: IntCounterVec,
    pub http2_connections: IntCounter,
    pub http2_open_connections: IntGauge,
    pub http2_streams: IntCounterVec,
    pub http2_connection_errors: IntCounterVec,
    cert_expiry: IntGaugeVec,
    render_lock: std::sync::Mutex<()>,
    backend_up: IntGaugeVec,
    backend_active: IntGaugeVec,
    backend_tunnels: IntGaugeVec,
    sid_sessions: IntGaugeVec,
    sid_lookups: IntCounterVec,
    sid_evictions: IntCounterVec,
    sid_handshakes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &["pool", "backend"])
                    .expect("valid metric"),
            )
        };
        Metrics {
            connections: reg(
                &r,
                IntCounter::new(
                    "limpet_proxy_connections_total",
                    "Client connections accepted",
                )
                .expect("valid"),
            ),
            open_connections: reg(
                &r,
                IntGauge::new(
                    "limpet_proxy_client_connections",
                    "Client connections open now",
                )
                .expect("valid"),
            ),
            parked_connections: reg(
                &r,
                IntGauge::new(
                    "limpet_proxy_parked_connections",
                    "Idle keep-alive client connections waiting without HTTP buffers",
                )
                .expect("valid"),
            ),
            requests: counter_vec(
                "limpet_proxy_requests_total",
                "Requests answered, by status class",
                &["pool", "backend", "class"],
            ),
            upgrades: counter_vec(
                "limpet_proxy_upgrades_total",
                "Connections upgraded (101) and tunnelled",
                &["pool", "backend"],
            ),
            tunnel_bytes: counter_vec(
                "limpet_proxy_tunnel_bytes_total",
                "Bytes copied through tunnels",
                &["direction"],
            ),
            tunnels_closed: counter_vec(
                "limpet_proxy_tunnels_closed_total",
                "Tunnels closed, by why (closed, error, idle_timeout, deadline, backend_marked_down)",
                &["pool", "backend", "end"],
            ),
            affinity: counter_vec(
                "limpet_proxy_affinity_total",
                "Backend choices by affinity outcome (hit, new, invalid, down, hashed, balanced, sid)",
                &["pool", "outcome"],
            ),
            connect_errors: counter_vec(
                "limpet_proxy_upstream_connect_errors_total",
                "Failed connects to a backend",
                &["pool", "backend"],
            ),
            retries: counter_vec(
                "limpet_proxy_upstream_retries_total",
                "Requests sent again after the connection to this backend died before any response byte",
                &["pool", "backend"],
            ),
            client_body_errors: counter_vec(
                "limpet_proxy_client_body_errors_total",
                "Requests whose client broke its own upload (timeout: 408; aborted, invalid: 400); never counted against a backend",
                &["reason"],
            ),
            bad_requests: counter_vec(
                "limpet_proxy_bad_requests_total",
                "Requests refused with 400 before routing (missing_host, duplicate_host)",
                &["reason"],
            ),
            upgrades_refused: reg(
                &r,
                IntCounter::new(
                    "limpet_proxy_upgrades_refused_total",
                    "Upgrade requests for a protocol the route does not tunnel, sent on as plain requests",
                )
                .expect("valid"),
            ),
            admin_errors: counter_vec(
                "limpet_proxy_admin_errors_total",
                "Admin API requests refused (unauthorized, cross_origin, body_timeout, body_too_large)",
                &["reason"],
            ),
            response_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "limpet_proxy_upstream_response_seconds",
                        "Time to the backend's response head",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["pool", "backend"],
                )
                .expect("valid metric"),
            ),
            health_checks: counter_vec(
                "limpet_proxy_health_checks_total",
                "Active health probes by result",
                &["pool", "backend", "result"],
            ),
            reloads: counter_vec("limpet_proxy_reloads_total", "Configuration reloads by outcome (ok, error)", &["outcome"]),
            // Not `upgrades_total`: that one counts WebSocket upgrades.
            binary_upgrades: counter_vec(
                "limpet_proxy_binary_upgrades_total",
                "Binary upgrades (SIGUSR2, POST /api/upgrade) started by this process, by outcome",
                &["outcome"],
            ),
            admin_changes: counter_vec(
                "limpet_proxy_backend_state_changes_total",
                "Admin API state changes (ready, drain, maint)",
                &["state"],
            ),
            limit_rejections: counter_vec(
                "limpet_proxy_limit_rejections_total",
                "Connections refused by a limit (max_connections, max_connections_per_ip, max_connections_per_backend)",
                &["limit"],
            ),
            proxy_protocol_errors: counter_vec(
                "limpet_proxy_proxy_protocol_errors_total",
                "Connections closed for a bad or missing PROXY header",
                &["reason"],
            ),
            handshakes: counter_vec("limpet_proxy_tls_handshakes_total", "TLS handshakes by outcome and version", &["outcome", "version"]),
            resumed_handshakes: reg(
                &r,
                IntCounter::new(
                    "limpet_proxy_tls_resumed_handshakes_total",
                    "Successful TLS handshakes that resumed a session (a ticket or the session cache), of limpet_proxy_tls_handshakes_total{outcome=\"ok\"}",
                )
                .expect("valid"),
            ),
            tls_reloads: counter_vec("limpet_proxy_tls_reloads_total", "Certificate reloads by outcome", &["outcome"]),
            http2_connections: reg(
                &r,
                IntCounter::new(
                    "limpet_proxy_http2_connections_total",
                    "Client connections that chose HTTP/2 (ALPN h2)",
                )
                .expect("valid"),
            ),
            http2_open_connections: reg(
                &r,
                IntGauge::new(
                    "limpet_proxy_http2_client_connections",
                    "HTTP/2 client connections open now",
                )
                .expect("valid"),
            ),
            http2_streams: counter_vec(
                "limpet_proxy_http2_streams_total",
                "HTTP/2 streams by kind (request; websocket: RFC 8441 extended CONNECT; refused: another CONNECT)",
                &["kind"],
            ),
            http2_connection_errors: counter_vec(
                "limpet_proxy_http2_connection_errors_total",
                "HTTP/2 connections that ended in an error (enhance_your_calm: GOAWAY for too many reset streams, the rapid-reset guard; protocol_error, io, timeout, other)",
                &["reason"],
            ),
            cert_expiry: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("limpet_proxy_certificate_expiry_timestamp_seconds", "notAfter of each served certificate, unix time"),
                    &["listener", "name"],
                )
                .expect("valid metric"),
            ),
            render_lock: std::sync::Mutex::new(()),
            backend_up: gauge_vec(
                "limpet_proxy_backend_up",
                "1 when the backend takes new sessions",
            ),
            backend_active: gauge_vec(
                "limpet_proxy_backend_active",
                "Requests in flight plus open tunnels",
            ),
            backend_tunnels: gauge_vec("limpet_proxy_backend_tunnels", "Open upgraded tunnels"),
            sid_sessions: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("limpet_proxy_socketio_sessions", "engine.io sessions in the sid table (affinity = \"socketio\")"),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            sid_lookups: counter_vec(
                "limpet_proxy_socketio_sid_lookups_total",
                "Requests carrying an engine.io sid, by whether the sid table knew it (hit, miss)",
                &["pool", "result"],
            ),
            sid_evictions: counter_vec(
                "limpet_proxy_socketio_sessions_evicted_total",
                "Sessions the sid table forgot (full: pushed out at max_sessions, idle: session_idle)",
                &["pool", "reason"],
            ),
            sid_handshakes: counter_vec(
                "limpet_proxy_socketio_handshakes_total",
                "engine.io handshake answers read for their sid (learned, unreadable)",
                &["pool", "result"],
            ),
            registry: r,
        }
    }

    pub fn record_cert_expiries(&self, listener: &str, expiries: &[(String, i64)]) {
        for (name, at) in expiries {
            self.cert_expiry
                .with_label_values(&[listener, name])
                .set(*at);
        }
    }

    /// Prometheus text, with backend gauges read from the pools now.
    ///
    /// The per-backend gauges are rebuilt from the pools each time, so a
    /// backend that a reload removed leaves no series behind (it would
    /// otherwise report `backend_up 1` forever). A lock keeps two scrapes
    /// from interleaving the reset and the refill.
    pub fn render(&self, pools: &[Arc<Pool>]) -> String {
        let _one_at_a_time = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.backend_up.reset();
        self.backend_active.reset();
        self.backend_tunnels.reset();
        self.render_sid_tables(pools);
        let now = std::time::Instant::now();
        for pool in pools {
            for b in &pool.backends {
                let labels = [pool.name(), b.id.as_str()];
                self.backend_up
                    .with_label_values(&labels)
                    .set(i64::from(b.is_available(now)));
                self.backend_active
                    .with_label_values(&labels)
                    .set(b.active.load(Relaxed) as i64);
                self.backend_tunnels
                    .with_label_values(&labels)
                    .set(b.tunnels.load(Relaxed) as i64);
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Metrics {
    /// The socket.io session tables' own counts, as they are now (the
    /// series of a pool a reload removed go with it).
    fn render_sid_tables(&self, pools: &[Arc<Pool>]) {
        self.sid_sessions.reset();
        self.sid_lookups.reset();
        self.sid_evictions.reset();
        self.sid_handshakes.reset();
        for pool in pools {
            let Some(table) = &pool.sids else { continue };
            let s = table.stats();
            let name = pool.name();
            self.sid_sessions
                .with_label_values(&[name])
                .set(s.sessions as i64);
            for (result, n) in [("hit", s.hits), ("miss", s.misses)] {
                self.sid_lookups
                    .with_label_values(&[name, result])
                    .inc_by(n);
            }
            for (reason, n) in [("full", s.evicted_full), ("idle", s.evicted_idle)] {
                self.sid_evictions
                    .with_label_values(&[name, reason])
                    .inc_by(n);
            }
            for (result, n) in [("learned", s.learned), ("unreadable", s.unreadable)] {
                self.sid_handshakes
                    .with_label_values(&[name, result])
                    .inc_by(n);
            }
        }
    }
}

/// "2xx", "5xx", ...
pub fn class(status: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][class_index(status)]
}

/// Where [`class`] is in a backend's `Series::requests`.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
