//! Prometheus counters and the `/metrics` HTTP endpoint.
//!
//! The same counters feed `INFO stats`, so the two reports cannot disagree.
//! The endpoint runs on its own port (like redis_exporter's 9121), never on
//! the Redis-protocol port, so scraping needs no Redis client.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Metrics {
    pub registry: Registry,
    pub clients: IntGauge,
    pub connections: IntCounter,
    pub rejected_connections: IntCounter,
    pub commands: IntCounter,
    pub channels: IntGauge,
    pub shard_channels: IntGauge,
    pub patterns: IntGauge,
    pub published: IntCounter,
    pub delivered: IntCounter,
    pub delivered_bytes: IntCounter,
    pub net_input_bytes: IntCounter,
    pub net_output_bytes: IntCounter,
    pub slow_client_disconnects: IntCounterVec,
    /// Clients without subscriptions cut off for unread replies.
    pub reply_limit_disconnects: IntCounterVec,
    /// Times a client's commands stopped running until it read its replies.
    pub output_backpressure: IntCounter,
    pub protocol_errors: IntCounter,
    pub query_buffer_disconnects: IntCounter,
    pub auth_failures: IntCounter,
    pub auth_disconnects: IntCounter,
    /// Clients closed for not authenticating within `auth_timeout`.
    pub auth_timeouts: IntCounter,
    pub auth_tracked_addresses: IntGauge,
    /// Commands refused because an argument or the client's subscriptions
    /// would pass a configured limit; the label is the config key.
    pub limit_rejections: IntCounterVec,
    /// Keys in the keyspace, and their estimated bytes (what `maxmemory`
    /// is compared with); refreshed by every active-expiry run (10 Hz).
    pub keys: IntGauge,
    pub keyspace_bytes: IntGauge,
    /// Clients waiting in a blocking XREAD.
    pub blocked_clients: IntGauge,
    /// Keys deleted because their TTL passed (lazily or actively).
    pub expired_keys: IntCounter,
    /// Write commands refused with -OOM past `maxmemory`.
    pub oom_rejections: IntCounter,
    /// Error replies sent (INFO's `total_error_replies`).
    pub error_replies: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        Metrics {
            clients: gauge("limpet_broker_connected_clients", "Clients connected now"),
            connections: counter("limpet_broker_connections_total", "Connections accepted"),
            rejected_connections: counter(
                "limpet_broker_rejected_connections_total",
                "Connections refused because maxclients was reached",
            ),
            commands: counter("limpet_broker_commands_total", "Commands processed"),
            channels: gauge(
                "limpet_broker_channels",
                "Channels with at least one subscriber",
            ),
            shard_channels: gauge(
                "limpet_broker_shard_channels",
                "Shard channels with at least one subscriber",
            ),
            patterns: gauge(
                "limpet_broker_patterns",
                "Patterns with at least one subscriber",
            ),
            published: counter(
                "limpet_broker_messages_published_total",
                "PUBLISH and SPUBLISH calls",
            ),
            delivered: counter(
                "limpet_broker_messages_delivered_total",
                "Messages queued to subscribers",
            ),
            delivered_bytes: counter(
                "limpet_broker_delivered_bytes_total",
                "Bytes of messages queued to subscribers",
            ),
            net_input_bytes: counter(
                "limpet_broker_net_input_bytes_total",
                "Bytes read from clients",
            ),
            net_output_bytes: counter(
                "limpet_broker_net_output_bytes_total",
                "Bytes written to clients",
            ),
            slow_client_disconnects: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "limpet_broker_slow_client_disconnects_total",
                        "Clients cut off for exceeding their output limit",
                    ),
                    &["limit"],
                )
                .expect("valid metric"),
            ),
            reply_limit_disconnects: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "limpet_broker_reply_limit_disconnects_total",
                        "Clients without subscriptions cut off for exceeding output_limit_normal",
                    ),
                    &["limit"],
                )
                .expect("valid metric"),
            ),
            output_backpressure: counter(
                "limpet_broker_output_backpressure_total",
                "Times a client's commands were paused until it read the replies it owed",
            ),
            protocol_errors: counter("limpet_broker_protocol_errors_total", "Malformed requests"),
            query_buffer_disconnects: counter(
                "limpet_broker_query_buffer_limit_disconnects_total",
                "Clients closed for holding more unparsed input than limits.query_buffer_limit",
            ),
            auth_failures: counter(
                "limpet_broker_auth_failures_total",
                "Failed AUTH and HELLO AUTH attempts",
            ),
            auth_disconnects: counter(
                "limpet_broker_auth_failure_disconnects_total",
                "Connections closed after auth_failures.max_per_connection failures",
            ),
            auth_timeouts: counter(
                "limpet_broker_auth_timeout_disconnects_total",
                "Clients closed for not authenticating within auth_timeout (requirepass set)",
            ),
            auth_tracked_addresses: gauge(
                "limpet_broker_auth_failure_addresses",
                "Addresses whose AUTH failures are remembered (at most auth_failures.max_addresses)",
            ),
            limit_rejections: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "limpet_broker_limit_rejections_total",
                        "Commands refused with an error because they would pass a configured limit",
                    ),
                    &["limit"],
                )
                .expect("valid metric"),
            ),
            keys: gauge("limpet_broker_keys", "Keys in the keyspace"),
            keyspace_bytes: gauge(
                "limpet_broker_keyspace_bytes",
                "Estimated bytes held by keys and values (what maxmemory is compared with)",
            ),
            blocked_clients: gauge(
                "limpet_broker_blocked_clients",
                "Clients waiting in a blocking XREAD",
            ),
            expired_keys: counter(
                "limpet_broker_expired_keys_total",
                "Keys deleted because their TTL passed",
            ),
            oom_rejections: counter(
                "limpet_broker_oom_rejections_total",
                "Write commands refused with -OOM past maxmemory",
            ),
            error_replies: counter(
                "limpet_broker_error_replies_total",
                "Error replies sent to clients",
            ),
            registry,
        }
    }

    /// Every limit rejection, whatever the limit (INFO's `rejected_calls`).
    pub fn limit_rejections_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.limit_rejections
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for text output.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics` on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &*metrics)) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    metrics: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", metrics()),
        (&Method::GET, "/health") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (_, "/metrics" | "/health") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
