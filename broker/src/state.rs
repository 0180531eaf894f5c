//! [`Broker`]: the state every connection shares — configuration, limits,
//! the subscription registry, the keyspace, metrics, the AUTH guard and
//! the list of connected clients.
//!
//! It sits apart from [`crate::server`] (which listens and accepts) so that
//! the commands, which need this state, do not depend on the accept loop.

use crate::auth_guard::AuthGuard;
use crate::codec::Limits;
use crate::handle::{ClientHandle, Fanout, OutputPolicy};
use crate::keyspace::{notify, Event, Keyspace};
use crate::metrics::Metrics;
use crate::registry::{Registry, Space};
use ahash::AHashMap;
use limpet_config::BrokerConfig;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// State shared by all connections.
pub struct Broker {
    pub config: BrokerConfig,
    pub config_file: Option<String>,
    pub limits: Limits,
    pub registry: Registry,
    pub keyspace: Keyspace,
    /// `maxmemory` in bytes (0 = none); CONFIG SET changes it at run time.
    pub maxmemory: AtomicU64,
    pub metrics: Metrics,
    /// INFO commandstats / errorstats.
    pub command_stats: crate::stats::CommandStats,
    /// `output_limit` applies to clients with subscriptions,
    /// `output_limit_normal` to the others.
    pub output_policy: OutputPolicy,
    pub normal_output_policy: OutputPolicy,
    pub auth_guard: AuthGuard,
    pub started: Instant,
    pub run_id: String,
    clients: Mutex<AHashMap<u64, Arc<ClientHandle>>>,
    next_id: AtomicU64,
}

impl Broker {
    pub fn new(config: BrokerConfig, config_file: Option<String>) -> Broker {
        let limits = Limits {
            max_bulk_len: config.limits.max_bulk_len.bytes(),
            max_multibulk_len: config.limits.max_multibulk_len,
            max_inline_len: config.limits.max_inline_len.bytes() as usize,
        };
        let output_policy = OutputPolicy {
            hard: config.output_limit.hard.bytes(),
            soft: config.output_limit.soft.bytes(),
            soft_for: Duration::from_secs(config.output_limit.soft_seconds),
            clock: Instant::now(),
        };
        let n = &config.output_limit_normal;
        let normal_output_policy = OutputPolicy {
            hard: n.hard.bytes(),
            soft: n.soft.bytes(),
            soft_for: Duration::from_secs(n.soft_seconds),
            clock: output_policy.clock,
        };
        // Validated by the config crate; a bad value cannot get here.
        let flags = notify::parse(&config.notify_keyspace_events).unwrap_or(0);
        Broker {
            keyspace: Keyspace::new(flags),
            maxmemory: AtomicU64::new(config.maxmemory.bytes()),
            normal_output_policy,
            auth_guard: AuthGuard::new(&config),
            config,
            config_file,
            limits,
            registry: Registry::default(),
            metrics: Metrics::new(),
            command_stats: Default::default(),
            output_policy,
            started: Instant::now(),
            run_id: make_run_id(),
            clients: Mutex::new(AHashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut list: Vec<_> = self.clients.lock().values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn client_count(&self) -> usize {
        self.clients.lock().len()
    }

    /// Takes a slot for a new client and returns its handle, or `None`
    /// when `maxclients` is reached. Refused clients still use up an id,
    /// as in Redis.
    pub fn admit(&self, peer: SocketAddr, local: SocketAddr, fd: i32) -> Option<Arc<ClientHandle>> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let handle = ClientHandle::new(id, peer, local, fd);
        let mut clients = self.clients.lock();
        if clients.len() >= self.config.maxclients {
            return None;
        }
        clients.insert(id, handle.clone());
        Some(handle)
    }

    pub fn unregister(&self, id: u64) {
        if self.clients.lock().remove(&id).is_some() {
            self.metrics.clients.dec();
        }
    }

    pub fn update_channel_gauges(&self) {
        let m = &self.metrics;
        m.channels
            .set(self.registry.channel_count(Space::Global) as i64);
        m.shard_channels
            .set(self.registry.channel_count(Space::Shard) as i64);
        m.patterns.set(self.registry.pattern_count() as i64);
    }

    /// Publishes keyspace events on `__keyspace@0__:<key>` (payload: the
    /// event) and `__keyevent@0__:<event>` (payload: the key), as the
    /// `K` and `E` flags ask, like any PUBLISH.
    ///
    /// A key name longer than `limits.max_channel_len` (a PUBLISH to such
    /// a channel is refused) has its keyspace-channel event skipped and
    /// counted: matching it against every pattern would cost what
    /// `max_channel_len` exists to bound.
    ///
    /// The messages are queued; `fanout` writes them ([`Fanout::flush`]).
    pub fn publish_events(&self, events: Vec<Event>, fanout: &mut Fanout) {
        if events.is_empty() {
            return;
        }
        let flags = self.keyspace.with(|db| db.notify_flags).0;
        let max_channel =
            usize::try_from(self.config.limits.max_channel_len.bytes()).unwrap_or(usize::MAX);
        for e in events {
            if flags & notify::KEYSPACE != 0 && e.key.len() + 15 > max_channel {
                self.note_limit("max_channel_len");
            } else if flags & notify::KEYSPACE != 0 {
                let mut ch = b"__keyspace@0__:".to_vec();
                ch.extend_from_slice(&e.key);
                self.registry.publish(
                    Space::Global,
                    &ch,
                    e.event.as_bytes(),
                    &self.output_policy,
                    fanout,
                );
            }
            if flags & notify::KEYEVENT != 0 {
                let ch = format!("__keyevent@0__:{}", e.event);
                self.registry.publish(
                    Space::Global,
                    ch.as_bytes(),
                    &e.key,
                    &self.output_policy,
                    fanout,
                );
            }
        }
    }

    /// Whether the keyspace is past `maxmemory` (commands flagged
    /// `denyoom` are then refused).
    pub fn over_maxmemory(&self) -> bool {
        let max = self.maxmemory.load(Relaxed);
        max > 0 && self.keyspace.with(|db| db.used_bytes()).0 as u64 > max
    }

    /// One run of active expiry; returns how many keys it deleted.
    pub fn expire_cycle(&self) -> usize {
        let (n, events) = self
            .keyspace
            .with(|db| db.expire_cycle(crate::keyspace::now_ms(), crate::keyspace::EXPIRE_BATCH));
        if !events.is_empty() {
            let mut fanout = Fanout::default();
            self.publish_events(events, &mut fanout);
            fanout.flush(&self.metrics.net_output_bytes);
        }
        self.update_keyspace_gauges();
        n
    }

    pub fn update_keyspace_gauges(&self) {
        let (keys, bytes, expired) = self
            .keyspace
            .with(|db| (db.len(), db.used_bytes(), db.expired_keys))
            .0;
        let counted = self.metrics.expired_keys.get();
        if expired > counted {
            self.metrics.expired_keys.inc_by(expired - counted);
        }
        self.metrics.keys.set(keys as i64);
        self.metrics.keyspace_bytes.set(bytes as i64);
    }

    /// Counts a command refused by the limit named by its config key.
    pub fn note_limit(&self, key: &str) {
        self.metrics
            .limit_rejections
            .with_label_values(&[key])
            .inc();
    }
}

fn make_run_id() -> String {
    let state = ahash::RandomState::new();
    (0..5)
        .map(|i| {
            format!(
                "{:08x}",
                state.hash_one((i, std::process::id(), Instant::now())) as u32
            )
        })
        .collect()
}
