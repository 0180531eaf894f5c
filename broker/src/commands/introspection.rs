//! Server introspection: INFO and CONFIG GET (`COMMAND` lives with the
//! table it describes, in [`super::table`]; CONFIG SET, which changes
//! things, in [`super::config_set`]).
//!
//! Client libraries probe these on connect (ioredis reads `loading:0` from
//! INFO, redis-cli asks for COMMAND DOCS, redis-benchmark for CONFIG GET
//! save), so each answers truthfully about this broker: the commands it
//! really has, the settings that really apply, empty answers otherwise.

use super::common::reply_help;
use super::spec::{cmd, Command, REDIS_VERSION};
use crate::glob::glob_match;
use crate::keyspace::notify;
use crate::registry::Space;
use crate::session::Session;
use bytes::Bytes;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

const ADMIN: &[&str] = &["@admin", "@slow", "@dangerous"];

const GROUP: &str = "server";

pub const INFO: Command = cmd!(
    GROUP,
    "info",
    -1,
    &["loading", "stale"],
    &["@slow", "@dangerous"],
    "1.0.0",
    "Returns information and statistics about the server.",
    info
);
pub const CONFIG: Command = Command {
    subcommands: &[
        cmd!(
            GROUP,
            "config|get",
            -3,
            &["admin", "noscript", "loading", "stale"],
            ADMIN,
            "2.0.0",
            "Returns the effective values of configuration parameters.",
            config_get
        ),
        cmd!(
            GROUP,
            "config|set",
            -4,
            &["admin", "noscript", "loading", "stale"],
            ADMIN,
            "2.0.0",
            "Sets configuration parameters in-flight.",
            super::config_set::config_set
        ),
        cmd!(
            GROUP,
            "config|help",
            2,
            &["loading", "stale"],
            &["@slow"],
            "5.0.0",
            "Returns helpful text about the different subcommands.",
            config_help
        ),
    ],
    ..cmd!(
        GROUP,
        "config",
        -2,
        &[],
        &[],
        "2.0.0",
        "A container for server configuration commands.",
        config_help
    )
};

const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "errorstats",
    "keyspace",
];

/// `INFO all`: the default sections plus commandstats, in Redis's order.
const ALL_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "commandstats",
    "errorstats",
    "keyspace",
];

fn info(s: &mut Session, args: &[Bytes]) -> bool {
    let mut wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    if wanted
        .iter()
        .any(|w| matches!(w.as_str(), "all" | "everything"))
    {
        wanted = ALL_SECTIONS.iter().map(|s| s.to_string()).collect();
    } else if wanted.is_empty() || wanted.iter().any(|w| w == "default") {
        wanted = DEFAULT_SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    let text = info_text(s, &wanted);
    s.reply().verbatim(text.as_bytes());
    true
}

fn info_text(s: &Session, wanted: &[String]) -> String {
    let b = &s.broker;
    let m = &b.metrics;
    let mut out = String::new();
    let uptime = b.started.elapsed().as_secs();
    let ports: Vec<String> = b.config.bind.iter().map(|a| a.port().to_string()).collect();
    for section in ALL_SECTIONS
        .iter()
        .filter(|sec| wanted.iter().any(|w| w == *sec))
    {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let mut w = |k: &str, v: &dyn std::fmt::Display| {
            let _ = write!(out, "{k}:{v}\r\n");
        };
        match *section {
            "server" => {
                w("# Server", &"");
                w("redis_version", &REDIS_VERSION);
                w("limpet_broker_version", &env!("CARGO_PKG_VERSION"));
                w("redis_mode", &"standalone");
                w("os", &std::env::consts::OS);
                w("arch_bits", &(usize::BITS));
                w("multiplexing_api", &"tokio");
                w("process_id", &std::process::id());
                w("run_id", &b.run_id);
                w(
                    "tcp_port",
                    &ports.first().map(String::as_str).unwrap_or("0"),
                );
                w(
                    "server_time_usec",
                    &std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros()),
                );
                w("uptime_in_seconds", &uptime);
                w("uptime_in_days", &(uptime / 86400));
                w("config_file", &b.config_file.as_deref().unwrap_or(""));
            }
            "clients" => {
                let clients = b.clients();
                let pubsub = clients.iter().filter(|c| c.is_pubsub()).count();
                w("# Clients", &"");
                w("connected_clients", &clients.len());
                w("maxclients", &b.config.maxclients);
                w("blocked_clients", &m.blocked_clients.get());
                w("pubsub_clients", &pubsub);
                let max_out = clients.iter().map(|c| c.output_bytes()).max();
                w("client_recent_max_output_buffer", &max_out.unwrap_or(0));
            }
            "memory" => {
                let rss = resident_bytes();
                let (dataset, keys) = b.keyspace.with(|db| (db.used_bytes(), db.len())).0;
                let max = b.maxmemory.load(Relaxed);
                w("# Memory", &"");
                w("used_memory", &rss);
                w("used_memory_human", &human(rss));
                w("used_memory_rss", &rss);
                // The keyspace's estimated size: what maxmemory is compared with.
                w("used_memory_dataset", &dataset);
                w("used_memory_dataset_human", &human(dataset as u64));
                w("keyspace_keys", &keys);
                w("maxmemory", &max);
                w("maxmemory_human", &human(max));
                w("maxmemory_policy", &"noeviction");
            }
            "persistence" => {
                w("# Persistence", &"");
                w("loading", &0);
                w("async_loading", &0);
                w("rdb_bgsave_in_progress", &0);
                w("aof_enabled", &0);
            }
            "stats" => {
                w("# Stats", &"");
                w("total_connections_received", &m.connections.get());
                w("total_commands_processed", &m.commands.get());
                w("total_net_input_bytes", &m.net_input_bytes.get());
                w("total_net_output_bytes", &m.net_output_bytes.get());
                w("rejected_connections", &m.rejected_connections.get());
                w("pubsub_channels", &b.registry.channel_count(Space::Global));
                w("pubsub_patterns", &b.registry.pattern_count());
                w(
                    "pubsubshard_channels",
                    &b.registry.channel_count(Space::Shard),
                );
                w("pubsub_messages_published", &m.published.get());
                w("pubsub_messages_delivered", &m.delivered.get());
                let cut: u64 = [&m.slow_client_disconnects, &m.reply_limit_disconnects]
                    .iter()
                    .flat_map(|v| ["hard", "soft"].map(|l| v.with_label_values(&[l]).get()))
                    .sum();
                w(
                    "client_query_buffer_limit_disconnections",
                    &m.query_buffer_disconnects.get(),
                );
                w("client_output_buffer_limit_disconnections", &cut);
                w(
                    "total_error_replies",
                    &b.command_stats.total_error_replies(),
                );
                w("rejected_calls", &m.limit_rejections_total());
                w("acl_access_denied_auth", &m.auth_failures.get());
                w("protocol_errors", &m.protocol_errors.get());
            }
            "replication" => {
                w("# Replication", &"");
                w("role", &"master");
                w("connected_slaves", &0);
                // No replication: a fixed id, an offset that never moves.
                w("master_replid", &b.run_id);
                w("master_repl_offset", &0);
            }
            "cpu" => {
                let (user, sys) = cpu_seconds();
                w("# CPU", &"");
                w("used_cpu_sys", &format!("{sys:.6}"));
                w("used_cpu_user", &format!("{user:.6}"));
            }
            "commandstats" => {
                w("# Commandstats", &"");
                out.push_str(&b.command_stats.commandstats());
            }
            "errorstats" => {
                w("# Errorstats", &"");
                out.push_str(&b.command_stats.errorstats());
            }
            _ => {
                let (keys, expires) = b.keyspace.with(|db| (db.len(), db.volatile_count())).0;
                w("# Keyspace", &"");
                if keys > 0 {
                    w("db0", &format!("keys={keys},expires={expires},avg_ttl=0"));
                }
            }
        }
    }
    // `w("# Section", "")` wrote "# Section:"; headers have no colon.
    out.replace(":\r\n", "\r\n")
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn cpu_seconds() -> (f64, f64) {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (tick(11), tick(12))
}

fn human(bytes: u64) -> String {
    let units = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in units {
        if bytes >= size {
            return format!("{:.2}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// The settings CONFIG GET reports, in redis.conf names and format.
fn config_params(s: &Session) -> Vec<(&'static str, String)> {
    let c = &s.broker.config;
    let o = &c.output_limit;
    let n = &c.output_limit_normal;
    let hosts: Vec<String> = c.bind.iter().map(|a| a.ip().to_string()).collect();
    vec![
        ("bind", hosts.join(" ")),
        ("port", c.bind.first().map_or(0, |a| a.port()).to_string()),
        ("requirepass", c.requirepass.clone().unwrap_or_default()),
        ("maxclients", c.maxclients.to_string()),
        ("timeout", c.timeout.to_string()),
        ("databases", "16".to_string()),
        // The broker keeps nothing on disk; benchmark tools ask for these.
        ("save", String::new()),
        ("appendonly", "no".to_string()),
        (
            "notify-keyspace-events",
            notify::format(s.broker.keyspace.with(|db| db.notify_flags).0),
        ),
        ("maxmemory", s.broker.maxmemory.load(Relaxed).to_string()),
        ("maxmemory-policy", "noeviction".to_string()),
        ("proto-max-bulk-len", c.limits.max_bulk_len.to_string()),
        (
            "client-query-buffer-limit",
            c.limits.query_buffer_limit.to_string(),
        ),
        (
            "client-output-buffer-limit",
            format!(
                "normal {} {} {} slave 0 0 0 pubsub {} {} {}",
                n.hard, n.soft, n.soft_seconds, o.hard, o.soft, o.soft_seconds
            ),
        ),
    ]
}

fn config_get(s: &mut Session, args: &[Bytes]) -> bool {
    let params = config_params(s);
    let matched: Vec<&(&str, String)> = params
        .iter()
        .filter(|(name, _)| {
            args[2..]
                .iter()
                .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .collect();
    let mut r = s.reply();
    r.map(matched.len());
    for (name, value) in matched {
        r.bulk(name.as_bytes());
        r.bulk(value.as_bytes());
    }
    true
}

fn config_help(s: &mut Session, _args: &[Bytes]) -> bool {
    reply_help(
        s,
        "CONFIG",
        &[
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET <directive> <value>",
            "    Set the configuration <directive> to <value> (notify-keyspace-events, maxmemory).",
        ],
    )
}
