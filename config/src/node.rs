//! `limpet-node` settings: where it listens, which broker it uses, the
//! limits each client connection lives under, heartbeats and shutdown.

use crate::{ByteSize, Cidr, Duration, FieldError, Validate};
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique in the cluster; socket ids start with it. Letters, digits, `-`, `_`.
    /// Unset: `node-<port>`.
    pub id: Option<String>,
    /// WebSocket and HTTP (health, metrics, publish API) on one port.
    pub bind: SocketAddr,
    /// Path that accepts WebSocket upgrades.
    pub ws_path: String,
    /// `redis://host:port/` of limpet-broker or Redis. Several URLs of a Redis
    /// Cluster's nodes plus `cluster = true` use sharded pub/sub instead.
    pub broker: Vec<String>,
    pub cluster: bool,
    /// How long one attempt to (re)connect to the broker may take, the TCP
    /// connects and handshakes of both connections (commands and pub/sub)
    /// included, before it is given up and retried (see
    /// `broker_backoff_max`). The Redis client bounds only the command
    /// connection's TCP connect (1 s) by itself; an unbounded step into a
    /// black hole (a firewall dropping packets, a vanished host) would wait
    /// out the kernel's retries, minutes, and keep the node cut off that
    /// long after the network heals. Default 2 s.
    pub broker_connect_timeout: Duration,
    /// How long one broker command may wait for its answer (a whole
    /// publish pipeline, a SUBSCRIBE) before the connection is declared
    /// broken and reopened. With the heartbeat publishing every
    /// `heartbeat.node_interval`, it bounds how long a broker behind a
    /// black hole (no RST) goes unnoticed: this plus one interval.
    /// Default 5 s: well above a pipeline's time on a slow or lossy link.
    pub broker_response_timeout: Duration,
    /// The longest wait between the starts of two attempts to reconnect
    /// to the broker (the back-off starts at 100 ms and doubles up to
    /// this). An attempt that timed out is followed by the next at once.
    /// It bounds how long cross-node delivery stays down after the broker
    /// is back; default 1 s.
    pub broker_backoff_max: Duration,
    /// Run the broker connections, and the handling of what arrives on
    /// them, on a thread of their own instead of as tasks among the
    /// client tasks. Off (the default) costs less: a message then crosses
    /// no thread inside the node, and the bench measured 18-22 % less node
    /// CPU per delivery, with a p99 no worse past saturation (97 against
    /// 154 ms at 128 msgs/s per active client, 2,000 clients). On gives the
    /// broker traffic its own share of CPU from the OS scheduler, for a
    /// node whose runtime threads are kept busy by something else.
    pub broker_link_thread: bool,
    /// Browser `Origin`s allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Bearer token required by `POST /api/publish`; unset: no token needed
    /// (keep the port private then).
    pub api_token: Option<String>,
    /// Shared by every node of the cluster: envelopes on the broker carry
    /// an HMAC-SHA256 tag made with it, and envelopes without a valid tag
    /// are dropped (counted as `limpet_node_backplane_rejected_total{reason="auth"}`).
    /// Unset: envelopes are trusted as they come, so anyone who can publish
    /// on the broker can forge them (give the broker a password then).
    /// At least 16 bytes; every node needs the same value.
    pub cluster_secret: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed (like nginx's
    /// `set_real_ip_from` with `real_ip_recursive on`): from a peer in one
    /// of these networks, the client is the rightmost forwarded address
    /// that is not itself trusted. Empty (the default): the TCP peer is the
    /// client and forwarded headers are ignored. Per-address limits apply
    /// to that client address.
    pub trusted_proxies: Vec<Cidr>,
    /// Serve files from this folder at `/` (the demo page).
    pub static_dir: Option<String>,
    pub limits: NodeLimits,
    pub heartbeat: Heartbeat,
    pub shutdown: Shutdown,
    pub auth: Auth,
    pub history: History,
}

/// JSON Web Tokens on the WebSocket handshake (`?token=...`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Refuse a WebSocket upgrade without a valid token (HTTP 401). Off: a
    /// token is still checked when one is given (a bad one is refused), and
    /// a client without one is anonymous.
    pub required: bool,
    /// HS256 shared secret (at least 32 bytes). Exactly one of
    /// `hmac_secret` and `public_key` when tokens are used.
    pub hmac_secret: Option<String>,
    /// PEM file with the public key of RS256 or ES256 tokens.
    pub public_key: Option<String>,
    /// `HS256`, `RS256` or `ES256`; unset: HS256 with `hmac_secret`, RS256
    /// with `public_key`. Tokens signed with any other algorithm are refused.
    pub algorithm: Option<String>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` (and `nbf`) at the handshake.
    pub leeway: Duration,
    /// Longest token accepted; a longer one is refused with 431 before any
    /// decoding.
    pub max_token_bytes: ByteSize,
}

/// Room history in the broker, for recovery after a reconnect.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    /// Messages kept per room (approximately: `XADD MAXLEN ~`). 0 (the
    /// default): no history, no offsets, no broker writes on the emit path.
    pub size: usize,
    /// A room's history expires this long after its last message; 0: never.
    pub ttl: Duration,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            required: false,
            hmac_secret: None,
            public_key: None,
            algorithm: None,
            issuer: None,
            audience: None,
            leeway: Duration::secs(5),
            max_token_bytes: ByteSize(8 * 1024),
        }
    }
}

impl Default for History {
    fn default() -> Self {
        History {
            size: 0,
            ttl: Duration::secs(600),
        }
    }
}

impl Auth {
    /// Whether tokens are checked at all (a key is configured).
    pub fn enabled(&self) -> bool {
        self.hmac_secret.is_some() || self.public_key.is_some()
    }

    fn validate(&self) -> Result<(), FieldError> {
        match (&self.hmac_secret, &self.public_key) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "auth.public_key",
                    "give hmac_secret or public_key, not both",
                ))
            }
            (None, None) if self.required => {
                return Err(FieldError::new(
                    "auth.required",
                    "tokens are required but no hmac_secret or public_key is set to check them",
                ))
            }
            (Some(s), None) if s.len() < 32 => {
                return Err(FieldError::new("auth.hmac_secret", "use at least 32 bytes"))
            }
            _ => {}
        }
        if let Some(alg) = &self.algorithm {
            let fits = match alg.as_str() {
                "HS256" => self.public_key.is_none(),
                "RS256" | "ES256" => self.hmac_secret.is_none(),
                _ => {
                    return Err(FieldError::new(
                        "auth.algorithm",
                        format!("`{alg}` is not one of HS256, RS256, ES256"),
                    ))
                }
            };
            if !fits {
                return Err(FieldError::new(
                    "auth.algorithm",
                    "HS256 goes with hmac_secret, RS256 and ES256 with public_key",
                ));
            }
        }
        if self.max_token_bytes.bytes() < 64 || self.max_token_bytes.bytes() > 64 * 1024 {
            return Err(FieldError::new(
                "auth.max_token_bytes",
                "must be between 64 bytes and 64kb",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeLimits {
    pub max_connections: usize,
    /// Largest client message; bigger ones get a `message_too_large` error.
    pub max_message_bytes: ByteSize,
    pub max_rooms_per_socket: usize,
    pub max_room_name_bytes: usize,
    /// Messages waiting for one client; a client that lets it fill is closed.
    pub outbound_queue: usize,
    /// Bytes waiting for one client (queued frames plus the one being
    /// written); a client that lets it fill is closed (4002). Frames are
    /// shared between recipients, but each queue counts every frame it
    /// holds in full, so this bounds what one slow reader can pin.
    pub outbound_queue_bytes: ByteSize,
    /// Client messages per second (token bucket) and the burst allowed.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Errors (bad frames, rate limit hits) per minute before the
    /// connection is closed.
    pub max_errors_per_minute: u32,
    /// Remote members (on other nodes) remembered per room; joins past it
    /// are not remembered nor announced, and are counted.
    pub max_remote_members_per_room: usize,
    /// Remote members remembered across all rooms of this node.
    pub max_remote_members: usize,
    /// Peer nodes tracked by heartbeat; heartbeats from more are ignored.
    pub max_peer_nodes: usize,
    /// Bytes of broker messages waiting to be handled; messages past it
    /// are dropped and counted.
    pub inbound_queue_bytes: ByteSize,
    /// Bytes of publishes waiting to go to the broker. A room or direct
    /// message past it is dropped and counted
    /// (`limpet_node_shed_total{path="node_to_broker",reason="queue_full"}`);
    /// joins, leaves and member lists may use as much again before they are
    /// dropped too.
    pub publish_queue_bytes: ByteSize,
    /// How long a room or direct message may wait on its way through the
    /// cluster before it is dropped rather than delivered late, like
    /// socket.io's volatile emits. The way has four places to wait (the
    /// sending node's event loop, its queue to the broker, the receiving
    /// node's queue from the broker, the queue to the client), and each
    /// gets a quarter: a message that waited longer than that in one queue
    /// is dropped (`limpet_node_shed_total{reason="too_old"}`), and while
    /// the node's event loop (or its queue from the broker) runs more than
    /// a quarter late, new room and direct messages are refused with error
    /// `overloaded` (`limpet_node_shed_total{path="client_to_node"}`).
    /// Acks, errors, joins and leaves are never dropped for age. 0: off.
    pub max_queue_delay: Duration,
    /// WebSocket connections from one client address (IPv6: one /64);
    /// more are refused with 429.
    pub max_connections_per_address: usize,
    /// Client messages per second (token bucket) and the burst allowed,
    /// shared by every socket of one client address.
    pub address_rate_per_second: u32,
    pub address_rate_burst: u32,
    /// Client addresses tracked at once (their connection counts and
    /// message buckets); a new address past it is refused with 503.
    pub max_tracked_addresses: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// WebSocket ping to each client; no pong by the next ping closes it.
    pub ping_interval: Duration,
    /// Node-to-node heartbeat over the broker.
    pub node_interval: Duration,
    /// A node silent this long is dead: its members are reported as left.
    pub node_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// After SIGTERM, how long clients get before a 1001 close.
    pub grace: Duration,
    /// Reconnect delay suggested to clients in the `shutdown` message.
    pub reconnect_hint: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 9001)),
            ws_path: "/ws".into(),
            broker: vec!["redis://127.0.0.1:6379/".into()],
            cluster: false,
            broker_connect_timeout: Duration::secs(2),
            broker_response_timeout: Duration::secs(5),
            broker_backoff_max: Duration::secs(1),
            broker_link_thread: false,
            allowed_origins: Vec::new(),
            api_token: None,
            cluster_secret: None,
            trusted_proxies: Vec::new(),
            static_dir: None,
            limits: NodeLimits::default(),
            heartbeat: Heartbeat::default(),
            shutdown: Shutdown::default(),
            auth: Auth::default(),
            history: History::default(),
        }
    }
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_connections: 10_000,
            max_message_bytes: ByteSize(64 * 1024),
            max_rooms_per_socket: 100,
            max_room_name_bytes: 128,
            outbound_queue: 1024,
            outbound_queue_bytes: ByteSize(1024 * 1024),
            rate_per_second: 100,
            rate_burst: 200,
            max_errors_per_minute: 30,
            max_remote_members_per_room: 10_000,
            max_remote_members: 100_000,
            max_peer_nodes: 1_000,
            inbound_queue_bytes: ByteSize(64 * 1024 * 1024),
            publish_queue_bytes: ByteSize(1024 * 1024),
            max_queue_delay: Duration::millis(0),
            max_connections_per_address: 100,
            address_rate_per_second: 300,
            address_rate_burst: 600,
            max_tracked_addresses: 20_000,
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            ping_interval: Duration::secs(25),
            node_interval: Duration::secs(1),
            node_timeout: Duration::secs(5),
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Duration::secs(5),
            reconnect_hint: Duration::secs(1),
        }
    }
}

impl NodeConfig {
    /// The configured id, or `node-<port>`.
    pub fn node_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.bind.port()))
    }
}

impl Validate for NodeConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if let Some(id) = &self.id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(FieldError::new(
                    "id",
                    "use 1 to 64 letters, digits, `-` or `_`",
                ));
            }
        }
        if !self.ws_path.starts_with('/') {
            return Err(FieldError::new("ws_path", "must start with /"));
        }
        if self.broker.is_empty() {
            return Err(FieldError::new(
                "broker",
                "at least one redis:// URL is required",
            ));
        }
        for (i, url) in self.broker.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(FieldError::new(
                    format!("broker.{i}"),
                    format!("`{}` is not a redis:// URL", without_password(url)),
                ));
            }
        }
        if self.broker.len() > 1 && !self.cluster {
            return Err(FieldError::new(
                "broker",
                "several URLs need cluster = true",
            ));
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(FieldError::new(
                "cluster_secret",
                "use at least 16 bytes (the same on every node)",
            ));
        }
        let l = &self.limits;
        if l.max_remote_members_per_room == 0
            || l.max_remote_members < l.max_remote_members_per_room
        {
            return Err(FieldError::new(
                "limits.max_remote_members",
                "max_remote_members_per_room must be at least 1 and at most max_remote_members",
            ));
        }
        if l.max_connections_per_address == 0 || l.max_tracked_addresses == 0 {
            return Err(FieldError::new(
                "limits.max_connections_per_address",
                "max_connections_per_address and max_tracked_addresses must be at least 1",
            ));
        }
        if l.address_rate_per_second == 0 || l.address_rate_burst == 0 {
            return Err(FieldError::new(
                "limits.address_rate_per_second",
                "address_rate_per_second and address_rate_burst must be at least 1",
            ));
        }
        if l.max_peer_nodes == 0 {
            return Err(FieldError::new(
                "limits.max_peer_nodes",
                "must be at least 1",
            ));
        }
        if l.inbound_queue_bytes.bytes() < l.max_message_bytes.bytes() {
            return Err(FieldError::new(
                "limits.inbound_queue_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        if l.publish_queue_bytes.bytes() < l.max_message_bytes.bytes() {
            return Err(FieldError::new(
                "limits.publish_queue_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        if l.max_connections == 0 {
            return Err(FieldError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if l.max_message_bytes.bytes() < 256 || l.max_message_bytes.bytes() > 64 * 1024 * 1024 {
            return Err(FieldError::new(
                "limits.max_message_bytes",
                "must be between 256 bytes and 64mb",
            ));
        }
        if l.max_room_name_bytes == 0 || l.max_room_name_bytes > 4096 {
            return Err(FieldError::new(
                "limits.max_room_name_bytes",
                "must be between 1 and 4096",
            ));
        }
        if l.outbound_queue < 8 {
            return Err(FieldError::new(
                "limits.outbound_queue",
                "must be at least 8",
            ));
        }
        if l.outbound_queue_bytes.bytes() < l.max_message_bytes.bytes() {
            return Err(FieldError::new(
                "limits.outbound_queue_bytes",
                "must be at least limits.max_message_bytes",
            ));
        }
        if l.rate_per_second == 0 || l.rate_burst == 0 {
            return Err(FieldError::new(
                "limits.rate_per_second",
                "rate_per_second and rate_burst must be at least 1",
            ));
        }
        self.auth.validate()?;
        if self.history.size > 1_000_000 {
            return Err(FieldError::new(
                "history.size",
                "at most 1000000 messages per room",
            ));
        }
        for (field, d) in [
            ("broker_connect_timeout", self.broker_connect_timeout),
            ("broker_response_timeout", self.broker_response_timeout),
            ("broker_backoff_max", self.broker_backoff_max),
        ] {
            if d.is_zero() {
                return Err(FieldError::new(field, "must be above 0"));
            }
        }
        let h = &self.heartbeat;
        if h.ping_interval.is_zero() || h.node_interval.is_zero() {
            return Err(FieldError::new(
                "heartbeat.ping_interval",
                "intervals must be above 0",
            ));
        }
        if h.node_timeout.get() < h.node_interval.get() * 2 {
            return Err(FieldError::new(
                "heartbeat.node_timeout",
                "must be at least twice heartbeat.node_interval",
            ));
        }
        Ok(())
    }
}

/// `url` as an error message may show it: whatever precedes its last `@`
/// (a password, perhaps) replaced by `***`.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        (_, None) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;
    use std::path::Path;

    #[test]
    fn defaults_and_example() {
        let cfg: NodeConfig = parse_str("", Path::new("node.toml")).unwrap();
        assert_eq!(cfg.node_id(), "node-9001");
        assert_eq!(cfg.limits.max_message_bytes.bytes(), 64 * 1024);
        assert_eq!(cfg.heartbeat.ping_interval.get().as_secs(), 25);
        assert_eq!(cfg.limits.publish_queue_bytes.bytes(), 1024 * 1024);
        assert_eq!(cfg.limits.max_queue_delay.get().as_millis(), 0);
        assert_eq!(cfg.broker_response_timeout.get().as_secs(), 5);
        assert_eq!(cfg.broker_backoff_max.get().as_secs(), 1);
        assert!(!cfg.broker_link_thread);
        let on: NodeConfig =
            parse_str("broker_link_thread = true", Path::new("node.toml")).unwrap();
        assert!(on.broker_link_thread);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for name in [
            "node.toml",
            "cluster/node-a.toml",
            "cluster/node-b.toml",
            "cluster/node-c.toml",
        ] {
            if let Err(e) = crate::load_file::<NodeConfig>(&dir.join(name)) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn errors() {
        let err = parse_str::<NodeConfig>("id = \"a.b\"\n", Path::new("node.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node.toml:1:6: id: use 1 to 64 letters, digits, `-` or `_`"
        );
        let err = parse_str::<NodeConfig>("broker = [\"http://x\"]\n", Path::new("node.toml"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("broker.0: `http://x` is not a redis:// URL"),
            "{err}"
        );
        let err = parse_str::<NodeConfig>(
            "broker = [\"http://:PASSWORD@x\"]\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("broker.0: `http://***@x` is not a redis:// URL"),
            "{err}"
        );
        let err = parse_str::<NodeConfig>("[auth]\nrequired = true\n", Path::new("node.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("auth.required"), "{err}");
        let err = parse_str::<NodeConfig>(
            "[auth]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nalgorithm = \"none\"\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("auth.algorithm"), "{err}");
        let err =
            parse_str::<NodeConfig>("[auth]\nhmac_secret = \"short\"\n", Path::new("node.toml"))
                .unwrap_err();
        assert!(err.to_string().contains("auth.hmac_secret"), "{err}");
        let err = parse_str::<NodeConfig>("cluster_secret = \"short\"\n", Path::new("node.toml"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cluster_secret: use at least 16 bytes"),
            "{err}"
        );
        let err = parse_str::<NodeConfig>(
            "[limits]\noutbound_queue_bytes = \"1kb\"\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.outbound_queue_bytes"),
            "{err}"
        );
        let err = parse_str::<NodeConfig>("broker_backoff_max = \"0s\"\n", Path::new("node.toml"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("broker_backoff_max: must be above 0"),
            "{err}"
        );
        let err = parse_str::<NodeConfig>(
            "[limits]\npublish_queue_bytes = \"1kb\"\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.publish_queue_bytes"),
            "{err}"
        );
    }
}
