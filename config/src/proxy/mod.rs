//! `limpet-proxy` settings: listeners, upstream pools, routes, timeouts.
//!
//! The shape mirrors an nginx config: `[[pool]]` is an `upstream` block
//! (with its affinity, balancer and health checks), `[[route]]` is a
//! `location` (path prefix, optionally a Host) pointing at a pool.

use crate::{ByteSize, Cidr, Duration};
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: Vec<ListenConfig>,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub limits: ProxyLimits,
    pub shutdown: ProxyShutdown,
    /// TCP keepalive on every socket to a backend.
    pub upstream_keepalive: UpstreamKeepalive,
    /// HTTP/2 on the TLS listeners.
    pub http2: Http2Config,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front),
    /// and the only peers allowed to send a PROXY protocol header.
    pub trusted_proxies: Vec<Cidr>,
    #[serde(rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub bind: SocketAddr,
    /// Expect a PROXY protocol v1 or v2 header (behind an L4 balancer such
    /// as an AWS NLB); connections without a valid one are closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<TlsListenConfig>,
    /// Answer every request with a 301 to `https://` (a plain-HTTP listener
    /// in front of a TLS one).
    #[serde(default)]
    pub redirect_https: bool,
    /// Port put in redirect Locations; unset leaves it out (443).
    #[serde(default)]
    pub https_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListenConfig {
    /// Certificates; chosen by SNI, the first (or the one marked default)
    /// serves clients that name no known host.
    #[serde(rename = "cert")]
    pub certs: Vec<CertConfig>,
    #[serde(default = "tls12")]
    pub min_version: TlsVersion,
    #[serde(default = "handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Send `Strict-Transport-Security: max-age=<seconds>` when set.
    #[serde(default)]
    pub hsts_max_age: Option<Duration>,
    /// Reload certificates when their files change on disk.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Stateless session tickets (RFC 5077, RFC 8446 §4.6.1): returning
    /// clients resume without a full handshake, however many clients came
    /// between. The ticket key lives in memory only; `false` leaves the
    /// server-side session cache (256 sessions) alone.
    #[serde(default = "yes")]
    pub session_tickets: bool,
}

fn tls12() -> TlsVersion {
    TlsVersion::Tls12
}

fn handshake_timeout() -> Duration {
    Duration::secs(10)
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
    pub key: String,
    /// Host names served with it: exact (`app.example.com`) or wildcard
    /// (`*.example.com`).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub default: bool,
}

/// TLS toward the backends of a pool (`https`/`wss` backends).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    pub enabled: bool,
    /// PEM CA bundle to verify backends with; unset: the system roots.
    pub ca_file: Option<String>,
    /// SNI and verified name; unset: the host part of each backend address.
    pub server_name: Option<String>,
    /// Accept any certificate. For testing only: logged loudly.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Serves `/metrics` and the admin API; keep it on loopback or a
    /// private network.
    pub bind: SocketAddr,
    /// When set, the admin API (not `/metrics`) requires
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// A request's head, and then its whole body, must arrive within this
    /// each; past it the connection gets 408 and is closed.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// Whole request head from a client (slowloris guard).
    pub header_read: Duration,
    /// From the end of the request body (sent upstream) to the backend's
    /// response head. Upload time is not counted: it belongs to the client.
    pub response: Duration,
    /// Longest wait for the next piece of a client's request body; past it
    /// the client gets 408 (nginx `client_body_timeout`).
    pub client_body: Duration,
    /// Close an upgraded (WebSocket) tunnel after this long without a byte
    /// in either direction; 0 = never. nginx's 60 s default cuts quiet
    /// sockets, so the default here is one hour.
    pub tunnel_idle: Duration,
    /// Keep idle pooled upstream connections this long.
    pub upstream_idle: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyLimits {
    /// Request head larger than this gets 431.
    pub max_header_bytes: ByteSize,
    /// Client connections open at once; past it new ones get a 503 and
    /// are closed (0 = no limit).
    pub max_connections: usize,
    /// Client connections from one address (0 = no limit); past it, 429.
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyShutdown {
    /// After SIGTERM/SIGINT, how long open tunnels may keep running before
    /// they are closed.
    pub drain_deadline: Duration,
    /// Binary upgrade (`SIGUSR2`, `POST /api/upgrade`): how long the new
    /// process has to take the listeners and report that it serves;
    /// past it, it is killed and this process carries on.
    pub upgrade_timeout: Duration,
}

/// `[http2]`: HTTP/2 on every TLS listener, offered by ALPN next to
/// HTTP/1.1 (cleartext h2c is never spoken). Requests go on to the
/// backends as HTTP/1.1, and a WebSocket over HTTP/2 (RFC 8441 extended
/// CONNECT) becomes an HTTP/1.1 upgrade. A client chooses how many
/// streams it opens and how fast it resets them, so these bound it
/// (CVE-2023-44487, "rapid reset", is a flood of opened-then-reset streams).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Offer `h2` by ALPN. Takes effect at start (listeners do not reload).
    pub enabled: bool,
    /// Streams one connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); past it the client waits.
    pub max_concurrent_streams: u32,
    /// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE);
    /// a larger one gets 431.
    pub max_header_list_size: ByteSize,
    /// Streams a client may open and reset before the proxy took them up;
    /// one more and the connection gets GOAWAY (ENHANCE_YOUR_CALM). The
    /// rapid-reset guard.
    pub max_pending_reset_streams: usize,
    /// Streams the proxy may reset for the client's protocol errors before
    /// it closes the connection.
    pub max_error_reset_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            max_concurrent_streams: 100,
            max_header_list_size: ByteSize(16 * 1024),
            max_pending_reset_streams: 20,
            max_error_reset_streams: 1024,
        }
    }
}

/// TCP keepalive on sockets to backends (`SO_KEEPALIVE` with
/// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`). The second net under
/// `health.on_marked_down`: a backend host that vanished without a RST
/// leaves a quiet tunnel or pooled connection open forever otherwise
/// (nothing is sent, so nothing times out). With it the kernel gives up
/// after `idle + interval × count` of silence from the backend (60 s by
/// default), also in pools without active health checks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamKeepalive {
    /// Quiet time before the first probe; 0 turns keepalive off.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is dropped.
    pub count: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Every request is balanced on its own.
    None,
    /// The proxy issues a sealed cookie naming the backend.
    Cookie,
    /// Consistent hash of the client address.
    IpHash,
    /// Consistent hash of a request header (`affinity_key` names it).
    Header,
    /// Consistent hash of a query parameter (`affinity_key` names it).
    Query,
    /// engine.io (socket.io) sessions: the proxy learns each session's
    /// `sid` from the backend's handshake answer and sends every request
    /// carrying `?sid=` to the backend that issued it, so clients that keep
    /// no cookies (Node's `socket.io-client` without `withCredentials`)
    /// stay on their backend. The sealed cookie is issued and honoured too.
    Socketio,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Fewest open requests and tunnels relative to weight.
    LeastConn,
    RoundRobin,
    /// Smooth weighted round robin, as nginx does it.
    Weighted,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default = "default_affinity")]
    pub affinity: Affinity,
    /// Header or query parameter name for `header` / `query` affinity.
    #[serde(default)]
    pub affinity_key: Option<String>,
    #[serde(default = "default_balancer")]
    pub balancer: Balancer,
    /// Seed of the consistent hash; every proxy instance must use the same.
    #[serde(default = "default_hash_seed")]
    pub hash_seed: u64,
    #[serde(default)]
    pub cookie: CookieConfig,
    /// The session table of `affinity = "socketio"`.
    #[serde(default)]
    pub socketio: SocketioConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub passive: PassiveConfig,
    /// Add `X-Limpet-Backend: <id>` to responses, to check stickiness.
    #[serde(default)]
    pub backend_header: bool,
    /// Requests plus tunnels one backend may hold (nginx `max_conns`); a
    /// full backend is skipped, 503 when all are (0 = no limit).
    #[serde(default)]
    pub max_connections_per_backend: usize,
    /// Speak TLS to the backends.
    #[serde(default)]
    pub tls: UpstreamTls,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

fn default_affinity() -> Affinity {
    Affinity::Cookie
}

fn default_balancer() -> Balancer {
    Balancer::LeastConn
}

fn default_hash_seed() -> u64 {
    0x6c69_6d70_6574_2121
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Stable name; cookies carry it (sealed), so keep it across restarts.
    pub id: String,
    /// `host:port` of the backend.
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    /// Unset: a session cookie.
    pub max_age: Option<Duration>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// Key that seals cookie values. Proxies sharing it read each other's
    /// cookies. Unset: a random key per process (cookies die with it).
    pub secret: Option<String>,
}

/// `[pool.socketio]`: the engine.io session table (sid → backend) that
/// `affinity = "socketio"` keeps, one per pool and per proxy instance.
/// Clients choose how many sessions they open, so the table is bounded:
/// past `max_sessions` the least recently used session is forgotten (its
/// client then follows its cookie, or is balanced and told by the backend
/// that its session is unknown, and reconnects).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketioConfig {
    /// Most sessions remembered; about 100 bytes each.
    pub max_sessions: usize,
    /// A session not seen for this long is forgotten. A polling client
    /// asks at least every `pingInterval` (25 s by default); after the
    /// upgrade to a WebSocket the tunnel no longer needs the entry.
    pub session_idle: Duration,
}

impl Default for SocketioConfig {
    fn default() -> Self {
        SocketioConfig {
            max_sessions: 100_000,
            session_idle: Duration::secs(120),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// HTTP path to probe; unset disables active checks.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark a down backend up.
    pub rise: u32,
    /// Consecutive failures to mark an up backend down.
    pub fall: u32,
    /// What happens to the open tunnels of a backend these checks mark
    /// down (HAProxy's `on-marked-down shutdown-sessions`). An admin
    /// `drain` or `maint` never closes tunnels; this is only for checks.
    pub on_marked_down: OnMarkedDown,
}

impl HealthConfig {
    /// True when a backend these checks mark down has its tunnels closed.
    pub fn shuts_down_tunnels(&self) -> bool {
        self.on_marked_down == OnMarkedDown::ShutdownTunnels
    }
}

/// `health.on_marked_down`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OnMarkedDown {
    /// Close them at once, so their clients reconnect to a live backend
    /// (a tunnel to a host that vanished would otherwise wait for
    /// `tunnel_idle` or TCP keepalive).
    #[serde(rename = "shutdown-tunnels")]
    ShutdownTunnels,
    /// Leave them open until they end by themselves (the checks may be
    /// failing for a reason that does not touch open sockets).
    #[serde(rename = "keep")]
    Keep,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// Backend failures within `fail_timeout` that take a backend out
    /// (nginx `max_fails`); 0 disables passive checks. Only the backend's
    /// own failures count: connect refused or timed out, the connection
    /// lost after the whole request was sent, no response head in time.
    /// A client's bad or slow upload never does.
    pub max_fails: u32,
    /// Count 5xx answers as failures too. Off by default, as in nginx
    /// (`proxy_next_upstream error timeout`).
    pub fail_on_5xx: bool,
    /// The window for counting failures, and how long the backend then
    /// stays out (nginx `fail_timeout`).
    pub fail_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default = "root")]
    pub path_prefix: String,
    /// Match only this Host (without port); unset matches any.
    #[serde(default)]
    pub host: Option<String>,
    pub pool: String,
    /// `Upgrade` protocols tunnelled on this route (case-insensitive);
    /// others (h2c, ...) have their upgrade headers removed and go through
    /// as plain requests. Empty: no upgrades at all.
    #[serde(default = "websocket_only")]
    pub upgrade_protocols: Vec<String>,
}

fn root() -> String {
    "/".into()
}

fn websocket_only() -> Vec<String> {
    vec!["websocket".into()]
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![ListenConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
                proxy_protocol: false,
                tls: None,
                redirect_https: false,
                https_port: None,
            }],
            admin: AdminConfig::default(),
            timeouts: Timeouts::default(),
            limits: ProxyLimits::default(),
            shutdown: ProxyShutdown::default(),
            upstream_keepalive: UpstreamKeepalive::default(),
            http2: Http2Config::default(),
            trusted_proxies: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9180)),
            token: None,
            request_timeout: Duration::secs(10),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::secs(5),
            header_read: Duration::secs(10),
            response: Duration::secs(60),
            client_body: Duration::secs(60),
            tunnel_idle: Duration::secs(3600),
            upstream_idle: Duration::secs(60),
        }
    }
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_header_bytes: ByteSize(16 * 1024),
            max_connections: 20_000,
            max_connections_per_ip: 0,
        }
    }
}

impl Default for ProxyShutdown {
    fn default() -> Self {
        ProxyShutdown {
            drain_deadline: Duration::secs(30),
            upgrade_timeout: Duration::secs(30),
        }
    }
}

impl Default for UpstreamKeepalive {
    fn default() -> Self {
        UpstreamKeepalive {
            idle: Duration::secs(30),
            interval: Duration::secs(10),
            count: 3,
        }
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "limpet_sticky".into(),
            path: "/".into(),
            domain: None,
            max_age: None,
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
            secret: None,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: Duration::secs(2),
            timeout: Duration::secs(1),
            rise: 2,
            fall: 3,
            on_marked_down: OnMarkedDown::ShutdownTunnels,
        }
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            max_fails: 1,
            fail_timeout: Duration::secs(10),
            fail_on_5xx: false,
        }
    }
}

mod validate;

#[cfg(test)]
mod tests;
