//! `limpet-broker` settings.
//!
//! Names follow `redis.conf` where Redis has the same knob (`requirepass`,
//! `maxclients`, `timeout`, `proto-max-bulk-len`,
//! `client-output-buffer-limit pubsub`) so that a Redis user recognises them.

use crate::{ByteSize, Duration, FieldError, Validate};
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Addresses to accept Redis-protocol clients on (IPv4 or `[::1]:6379`).
    pub bind: Vec<SocketAddr>,
    /// When set, clients must `AUTH` (or `HELLO ... AUTH`) before anything else.
    pub requirepass: Option<String>,
    /// Connections beyond this get `-ERR max number of clients reached`.
    pub maxclients: usize,
    /// Close a client idle for this many seconds (0 = never). Like Redis,
    /// clients with subscriptions are never closed for idling.
    pub timeout: u64,
    /// With `requirepass`, close a client that has not authenticated this
    /// long after connecting (or after `RESET`), whatever `timeout` says:
    /// otherwise silent connections that never AUTH fill `maxclients` and
    /// keep the real nodes out. Redis has no such limit.
    pub auth_timeout: Duration,
    /// `notify-keyspace-events`: Redis's flag letters (`K` keyspace
    /// channel, `E` keyevent channel, `g$lshzxetmdn` event classes, `A`
    /// for all). Empty (the default) sends none. `CONFIG SET` changes it.
    pub notify_keyspace_events: String,
    /// `maxmemory`: estimated bytes of keys and values past which
    /// commands that add data get `-OOM` (Redis's `noeviction`; 0 = no
    /// limit). `CONFIG SET` changes it.
    pub maxmemory: ByteSize,
    pub limits: ProtocolLimits,
    /// `client-output-buffer-limit pubsub`: how far a subscriber may fall behind.
    pub output_limit: OutputLimit,
    /// `client-output-buffer-limit normal`: how many reply bytes a client
    /// without subscriptions may leave unread. Commands stop running while
    /// a client owes more than 1 MiB of replies, so only one huge reply
    /// (`PUBSUB CHANNELS` on a busy broker) can reach these.
    pub output_limit_normal: NormalOutputLimit,
    /// What failed `AUTH` attempts cost the guesser.
    pub auth_failures: AuthFailures,
    pub metrics: MetricsConfig,
}

/// Password guessing: a connection is closed after a few failures, and
/// every failure's reply is held back for a delay that doubles with each
/// earlier failure from the same address (IPv6: the same /64), so opening
/// more connections does not buy more guesses. While an address has recent
/// failures, a right password's reply is held back just as long (at most
/// `max_delay`), so a quick `+OK` cannot tell a guesser it is done
/// waiting. Redis has none of this (it only counts `acl_access_denied_auth`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFailures {
    /// Failed `AUTH` / `HELLO ... AUTH` attempts after which the connection is closed.
    pub max_per_connection: u32,
    /// Hold-back of the first failure from an address; doubles per failure.
    pub delay: Duration,
    /// Longest hold-back.
    pub max_delay: Duration,
    /// An address's failures are forgotten this long after its last one.
    pub forget_after: Duration,
    /// Most addresses remembered at once; past it the stalest is forgotten.
    pub max_addresses: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolLimits {
    /// Largest bulk string a client may send (`proto-max-bulk-len`).
    pub max_bulk_len: ByteSize,
    /// Most arguments in one command.
    pub max_multibulk_len: u64,
    /// Longest inline (telnet-style) command line.
    pub max_inline_len: ByteSize,
    /// Most bytes buffered for one client's unparsed input
    /// (`client-query-buffer-limit`).
    pub query_buffer_limit: ByteSize,
    /// Longest pattern `PSUBSCRIBE` and `PUBSUB CHANNELS` accept. Matching
    /// costs up to pattern × channel length steps, so both are bounded
    /// (Redis bounds neither; it caps the matcher's recursion instead).
    pub max_pattern_len: ByteSize,
    /// Longest channel name `(S)PUBLISH` and `(S)SUBSCRIBE` accept.
    pub max_channel_len: ByteSize,
    /// Most patterns one client may hold. Every publish is matched against
    /// every distinct pattern, so this bounds what one client adds to the
    /// cost of everyone's PUBLISH (Redis has no cap).
    pub max_patterns_per_client: usize,
    /// Most channels plus shard channels one client may hold (Redis has no cap).
    pub max_channels_per_client: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputLimit {
    /// Unsent bytes at which a client is disconnected at once (0 = no limit).
    pub hard: ByteSize,
    /// Unsent bytes a client may hold for at most `soft_seconds` (0 = no limit).
    pub soft: ByteSize,
    pub soft_seconds: u64,
}

/// Same fields as [`OutputLimit`], with the defaults for plain clients.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NormalOutputLimit {
    /// Unsent bytes at which a client is disconnected at once (0 = no limit).
    pub hard: ByteSize,
    /// Unsent bytes a client may hold for at most `soft_seconds` (0 = no limit).
    pub soft: ByteSize,
    pub soft_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// HTTP address serving Prometheus `/metrics`.
    pub bind: SocketAddr,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            bind: vec![SocketAddr::from(([127, 0, 0, 1], 6379))],
            requirepass: None,
            maxclients: 10_000,
            timeout: 0,
            auth_timeout: Duration::secs(10),
            notify_keyspace_events: String::new(),
            maxmemory: ByteSize(0),
            limits: ProtocolLimits::default(),
            output_limit: OutputLimit::default(),
            output_limit_normal: NormalOutputLimit::default(),
            auth_failures: AuthFailures::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        ProtocolLimits {
            max_bulk_len: ByteSize(512 * 1024 * 1024),
            max_multibulk_len: 1024 * 1024,
            max_inline_len: ByteSize(64 * 1024),
            query_buffer_limit: ByteSize(1024 * 1024 * 1024),
            max_pattern_len: ByteSize(256),
            max_channel_len: ByteSize(4 * 1024),
            max_patterns_per_client: 1024,
            max_channels_per_client: 100_000,
        }
    }
}

impl Default for OutputLimit {
    fn default() -> Self {
        OutputLimit {
            hard: ByteSize(32 * 1024 * 1024),
            soft: ByteSize(8 * 1024 * 1024),
            soft_seconds: 60,
        }
    }
}

impl Default for NormalOutputLimit {
    /// Redis sets no limit for normal clients (`normal 0 0 0`); one reply
    /// of 64 MiB is far beyond any pub/sub introspection answer.
    fn default() -> Self {
        NormalOutputLimit {
            hard: ByteSize(64 * 1024 * 1024),
            soft: ByteSize(0),
            soft_seconds: 0,
        }
    }
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures {
            max_per_connection: 3,
            delay: Duration::millis(100),
            max_delay: Duration::secs(10),
            forget_after: Duration::secs(600),
            max_addresses: 10_000,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9121)),
        }
    }
}

impl Validate for BrokerConfig {
    fn validate(&self) -> Result<(), FieldError> {
        if self.bind.is_empty() {
            return Err(FieldError::new(
                "bind",
                "at least one listen address is required",
            ));
        }
        for (i, addr) in self.bind.iter().enumerate() {
            if self.bind[..i].contains(addr) {
                return Err(FieldError::new(
                    format!("bind.{i}"),
                    format!("{addr} is listed twice"),
                ));
            }
            if self.metrics.enabled && *addr == self.metrics.bind && addr.port() != 0 {
                return Err(FieldError::new(
                    "metrics.bind",
                    format!("{addr} is also a Redis-protocol listen address"),
                ));
            }
        }
        if let Some(pass) = &self.requirepass {
            if pass.is_empty() {
                return Err(FieldError::new(
                    "requirepass",
                    "an empty password would lock every client out; remove the line to disable AUTH",
                ));
            }
        }
        if self.auth_timeout.is_zero() {
            return Err(FieldError::new(
                "auth_timeout",
                "must be above 0: a client that never authenticates would keep its slot forever",
            ));
        }
        if self.maxclients == 0 {
            return Err(FieldError::new("maxclients", "must be at least 1"));
        }
        if let Some(bad) = self
            .notify_keyspace_events
            .chars()
            .find(|c| !NOTIFY_FLAG_LETTERS.contains(*c))
        {
            return Err(FieldError::new(
                "notify_keyspace_events",
                format!("'{bad}' is not an event class; use letters of '{NOTIFY_FLAG_LETTERS}'"),
            ));
        }
        let l = &self.limits;
        if l.max_bulk_len.bytes() < 1024 {
            return Err(FieldError::new(
                "limits.max_bulk_len",
                "must be at least 1kb",
            ));
        }
        if l.max_multibulk_len == 0 || l.max_multibulk_len > i32::MAX as u64 {
            return Err(FieldError::new(
                "limits.max_multibulk_len",
                format!("must be between 1 and {}", i32::MAX),
            ));
        }
        if l.max_inline_len.bytes() < 64 {
            return Err(FieldError::new(
                "limits.max_inline_len",
                "must be at least 64 bytes",
            ));
        }
        if l.query_buffer_limit.bytes() < l.max_inline_len.bytes() {
            return Err(FieldError::new(
                "limits.query_buffer_limit",
                "must be at least limits.max_inline_len",
            ));
        }
        if l.max_pattern_len.bytes() == 0 || l.max_pattern_len.bytes() > l.max_bulk_len.bytes() {
            return Err(FieldError::new(
                "limits.max_pattern_len",
                "must be between 1 and limits.max_bulk_len",
            ));
        }
        if l.max_channel_len.bytes() == 0 || l.max_channel_len.bytes() > l.max_bulk_len.bytes() {
            return Err(FieldError::new(
                "limits.max_channel_len",
                "must be between 1 and limits.max_bulk_len",
            ));
        }
        if l.max_patterns_per_client == 0 {
            return Err(FieldError::new(
                "limits.max_patterns_per_client",
                "must be at least 1",
            ));
        }
        if l.max_channels_per_client == 0 {
            return Err(FieldError::new(
                "limits.max_channels_per_client",
                "must be at least 1",
            ));
        }
        let a = &self.auth_failures;
        if a.max_per_connection == 0 {
            return Err(FieldError::new(
                "auth_failures.max_per_connection",
                "must be at least 1",
            ));
        }
        if a.max_delay < a.delay {
            return Err(FieldError::new(
                "auth_failures.max_delay",
                format!("{} is below auth_failures.delay {}", a.max_delay, a.delay),
            ));
        }
        if a.max_addresses == 0 {
            return Err(FieldError::new(
                "auth_failures.max_addresses",
                "must be at least 1",
            ));
        }
        let o = &self.output_limit;
        check_output_limit("output_limit", o.hard, o.soft, o.soft_seconds)?;
        let n = &self.output_limit_normal;
        check_output_limit("output_limit_normal", n.hard, n.soft, n.soft_seconds)
    }
}

/// The letters `notify-keyspace-events` accepts, as Redis lists them.
pub const NOTIFY_FLAG_LETTERS: &str = "Ag$lshzxeKEtmdn";

fn check_output_limit(
    section: &str,
    hard: ByteSize,
    soft: ByteSize,
    soft_seconds: u64,
) -> Result<(), FieldError> {
    if hard.bytes() != 0 && soft.bytes() > hard.bytes() {
        return Err(FieldError::new(
            format!("{section}.soft"),
            format!("{soft} is above the hard limit {hard}"),
        ));
    }
    if soft.bytes() != 0 && soft_seconds == 0 {
        return Err(FieldError::new(
            format!("{section}.soft_seconds"),
            "must be at least 1 when a soft limit is set (use hard for an immediate cut)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_str, ConfigError};
    use std::path::Path;

    fn parse(text: &str) -> Result<BrokerConfig, ConfigError> {
        parse_str(text, Path::new("broker.toml"))
    }

    #[test]
    fn empty_file_gives_loopback_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, BrokerConfig::default());
        assert_eq!(cfg.bind[0].to_string(), "127.0.0.1:6379");
        assert_eq!(cfg.output_limit.hard.bytes(), 32 << 20);
        assert_eq!(cfg.output_limit.soft.bytes(), 8 << 20);
        assert_eq!(cfg.output_limit.soft_seconds, 60);
        assert_eq!(cfg.output_limit_normal.hard.bytes(), 64 << 20);
        assert_eq!(cfg.output_limit_normal.soft.bytes(), 0);
        assert_eq!(cfg.limits.max_pattern_len.bytes(), 256);
        assert_eq!(cfg.limits.max_channel_len.bytes(), 4096);
        assert_eq!(cfg.limits.max_patterns_per_client, 1024);
        assert_eq!(cfg.limits.max_channels_per_client, 100_000);
        assert_eq!(cfg.auth_failures.max_per_connection, 3);
        assert_eq!(cfg.auth_failures.max_addresses, 10_000);
    }

    #[test]
    fn reads_every_section() {
        let cfg = parse(
            r#"
bind = ["127.0.0.1:7000", "[::1]:7000"]
requirepass = "s3cret"
maxclients = 50
timeout = 30
auth_timeout = "3s"
[limits]
max_bulk_len = "1mb"
max_multibulk_len = 100
[output_limit]
hard = "4mb"
soft = 1048576
soft_seconds = 5
[metrics]
bind = "127.0.0.1:9999"
"#,
        )
        .unwrap();
        assert_eq!(cfg.bind.len(), 2);
        assert!(cfg.bind[1].is_ipv6());
        assert_eq!(cfg.requirepass.as_deref(), Some("s3cret"));
        assert_eq!(cfg.auth_timeout.get().as_secs(), 3);
        assert_eq!(cfg.limits.max_bulk_len.bytes(), 1 << 20);
        assert_eq!(cfg.output_limit.soft.bytes(), 1 << 20);
        assert_eq!(cfg.metrics.bind.port(), 9999);
    }

    #[test]
    fn unknown_field_names_file_line_and_column() {
        let err = parse("maxclients = 5\n[limits]\nmax_bulk = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("broker.toml:3:1: "), "{err}");
        assert!(err.contains("unknown field `max_bulk`"), "{err}");
    }

    #[test]
    fn bad_value_names_its_position() {
        let err = parse("bind = [\"127.0.0.1:6379\", \"nonsense\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("broker.toml:1:"), "{err}");
        let err = parse("[output_limit]\nhard = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("broker.toml:2:8: "), "{err}");
        assert!(err.contains("unknown size unit"), "{err}");
    }

    #[test]
    fn validation_error_points_at_the_field() {
        let err = parse("[output_limit]\nhard = \"1mb\"\nsoft = \"2mb\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "broker.toml:3:8: output_limit.soft: 2097152 is above the hard limit 1048576"
        );
        let err = parse("maxclients = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "broker.toml:1:14: maxclients: must be at least 1"
        );
        let err = parse("bind = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n").unwrap_err();
        assert!(
            err.to_string().starts_with("broker.toml:1:24: bind.1: "),
            "{err}"
        );
    }

    #[test]
    fn keyspace_settings_parse_and_bad_flags_are_named() {
        let cfg = parse("notify_keyspace_events = \"Ex\"\nmaxmemory = \"100mb\"\n").unwrap();
        assert_eq!(cfg.notify_keyspace_events, "Ex");
        assert_eq!(cfg.maxmemory.bytes(), 100 << 20);
        let err = parse("notify_keyspace_events = \"KQ\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("broker.toml:1:26: notify_keyspace_events: 'Q' is not an event class"),
            "{err}"
        );
    }

    #[test]
    fn validation_error_on_a_default_names_file_and_field() {
        let err = parse("[output_limit]\nhard = \"1mb\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "broker.toml: output_limit.soft: 8388608 is above the hard limit 1048576"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_is_valid_and_documents_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
        let cfg: BrokerConfig = crate::load_file(&path).unwrap();
        assert_eq!(cfg, BrokerConfig::default());
    }
}
