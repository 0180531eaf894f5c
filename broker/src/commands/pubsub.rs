//! Pub/sub commands: (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, (S)PUBLISH, PUBSUB.
//!
//! Reply shapes follow Redis 7: one confirmation per channel, as a push
//! under RESP3 and an array under RESP2, carrying the client's subscription
//! count (channels + patterns for the classic commands, shard channels
//! alone for the sharded ones).

use super::common::reply_help;
use super::spec::{cmd, Command};
use crate::registry::Space;
use crate::session::Session;
use bytes::Bytes;

const PUBSUB_ACL: &[&str] = &["@pubsub", "@slow"];
/// What Redis 7's COMMAND INFO says of PUBLISH and SPUBLISH.
const PUBLISH_ACL: &[&str] = &["@pubsub", "@fast"];
const SUB_FLAGS: &[&str] = &["pubsub", "noscript", "loading", "stale"];

const GROUP: &str = "pubsub";

pub const PUBLISH: Command = cmd!(
    GROUP,
    "publish",
    3,
    &["pubsub", "loading", "stale", "fast"],
    PUBLISH_ACL,
    "2.0.0",
    "Posts a message to a channel.",
    publish
);
pub const SUBSCRIBE: Command = cmd!(
    GROUP,
    "subscribe",
    -2,
    SUB_FLAGS,
    PUBSUB_ACL,
    "2.0.0",
    "Listens for messages published to channels.",
    subscribe
);
pub const UNSUBSCRIBE: Command = cmd!(
    GROUP,
    "unsubscribe",
    -1,
    SUB_FLAGS,
    PUBSUB_ACL,
    "2.0.0",
    "Stops listening to messages posted to channels.",
    unsubscribe
);
pub const PSUBSCRIBE: Command = cmd!(
    GROUP,
    "psubscribe",
    -2,
    SUB_FLAGS,
    PUBSUB_ACL,
    "2.0.0",
    "Listens for messages published to channels that match one or more patterns.",
    psubscribe
);
pub const PUNSUBSCRIBE: Command = cmd!(
    GROUP,
    "punsubscribe",
    -1,
    SUB_FLAGS,
    PUBSUB_ACL,
    "2.0.0",
    "Stops listening to messages published to channels that match one or more patterns.",
    punsubscribe
);
pub const SPUBLISH: Command = cmd!(
    GROUP,
    "spublish",
    3,
    &["pubsub", "loading", "stale", "fast"],
    PUBLISH_ACL,
    "7.0.0",
    "Post a message to a shard channel",
    spublish,
    keys = (1, 1)
);
pub const SSUBSCRIBE: Command = cmd!(
    GROUP,
    "ssubscribe",
    -2,
    SUB_FLAGS,
    PUBSUB_ACL,
    "7.0.0",
    "Listens for messages published to shard channels.",
    ssubscribe,
    keys = (1, -1)
);
pub const SUNSUBSCRIBE: Command = cmd!(
    GROUP,
    "sunsubscribe",
    -1,
    SUB_FLAGS,
    PUBSUB_ACL,
    "7.0.0",
    "Stops listening to messages posted to shard channels.",
    sunsubscribe,
    keys = (1, -1)
);
pub const PUBSUB: Command = Command {
    subcommands: &[
        cmd!(
            GROUP,
            "pubsub|channels",
            -2,
            &["pubsub", "loading", "stale"],
            PUBSUB_ACL,
            "2.8.0",
            "Returns the active channels.",
            pubsub_channels
        ),
        cmd!(
            GROUP,
            "pubsub|numsub",
            -2,
            &["pubsub", "loading", "stale"],
            PUBSUB_ACL,
            "2.8.0",
            "Returns a count of subscribers to channels.",
            pubsub_numsub
        ),
        cmd!(
            GROUP,
            "pubsub|numpat",
            2,
            &["pubsub", "loading", "stale"],
            PUBSUB_ACL,
            "2.8.0",
            "Returns a count of unique pattern subscriptions.",
            pubsub_numpat
        ),
        cmd!(
            GROUP,
            "pubsub|shardchannels",
            -2,
            &["pubsub", "loading", "stale"],
            PUBSUB_ACL,
            "7.0.0",
            "Returns the active shard channels.",
            pubsub_shardchannels
        ),
        cmd!(
            GROUP,
            "pubsub|shardnumsub",
            -2,
            &["pubsub", "loading", "stale"],
            PUBSUB_ACL,
            "7.0.0",
            "Returns the count of subscribers of shard channels.",
            pubsub_shardnumsub
        ),
        cmd!(
            GROUP,
            "pubsub|help",
            2,
            &["loading", "stale"],
            PUBSUB_ACL,
            "6.2.0",
            "Returns helpful text about the different subcommands.",
            pubsub_help
        ),
    ],
    ..cmd!(
        GROUP,
        "pubsub",
        -2,
        &[],
        PUBSUB_ACL,
        "2.8.0",
        "A container for Pub/Sub commands.",
        pubsub_help
    )
};

/// Which subscription set a (un)subscribe command works on.
#[derive(Clone, Copy)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    fn set(self, s: &mut Session) -> &mut ahash::AHashSet<Bytes> {
        match self {
            Kind::Channel => &mut s.subs.channels,
            Kind::Pattern => &mut s.subs.patterns,
            Kind::Shard => &mut s.subs.shards,
        }
    }

    fn count(self, s: &Session) -> usize {
        match self {
            Kind::Shard => s.subs.shards.len(),
            _ => s.subscription_count(),
        }
    }

    fn add(self, s: &Session, name: &Bytes) {
        let reg = &s.broker.registry;
        match self {
            Kind::Channel => reg.subscribe(Space::Global, name, &s.handle),
            Kind::Pattern => reg.psubscribe(name, &s.handle),
            Kind::Shard => reg.subscribe(Space::Shard, name, &s.handle),
        };
    }

    fn remove(self, s: &Session, name: &[u8]) {
        let reg = &s.broker.registry;
        let id = s.handle.id;
        match self {
            Kind::Channel => reg.unsubscribe(Space::Global, name, id),
            Kind::Pattern => reg.punsubscribe(name, id),
            Kind::Shard => reg.unsubscribe(Space::Shard, name, id),
        };
    }
}

/// Refuses the command when one of `names` is longer than `max` bytes, with
/// an error shaped like Redis's own size errors ("string exceeds maximum
/// allowed size (proto-max-bulk-len)"). Checked before anything changes,
/// so a refused command has no effect.
fn refuse_long(s: &mut Session, names: &[Bytes], what: &str, key: &str, max: u64) -> bool {
    if names.iter().all(|n| n.len() as u64 <= max) {
        return false;
    }
    s.broker.note_limit(key);
    s.reply().error(&format!(
        "ERR {what} exceeds maximum allowed size (limits.{key} = {max})"
    ));
    true
}

fn refuse_long_channels(s: &mut Session, names: &[Bytes]) -> bool {
    let max = s.broker.config.limits.max_channel_len.bytes();
    refuse_long(s, names, "channel name", "max_channel_len", max)
}

pub(super) fn refuse_long_pattern(s: &mut Session, names: &[Bytes]) -> bool {
    let max = s.broker.config.limits.max_pattern_len.bytes();
    refuse_long(s, names, "pattern", "max_pattern_len", max)
}

/// Refuses a subscribe that would take the client past its cap on
/// patterns (or on channels and shard channels together). All or nothing,
/// so the client knows exactly what it holds.
fn refuse_over_cap(s: &mut Session, names: &[Bytes], kind: Kind) -> bool {
    let limits = &s.broker.config.limits;
    let (held, cap, what, key) = match kind {
        Kind::Pattern => (
            s.subs.patterns.len(),
            limits.max_patterns_per_client,
            "patterns",
            "max_patterns_per_client",
        ),
        Kind::Channel | Kind::Shard => (
            s.subs.channels.len() + s.subs.shards.len(),
            limits.max_channels_per_client,
            "channels",
            "max_channels_per_client",
        ),
    };
    let set = kind.set(s);
    let fresh: ahash::AHashSet<&Bytes> = names.iter().filter(|n| !set.contains(*n)).collect();
    if held + fresh.len() <= cap {
        return false;
    }
    s.broker.note_limit(key);
    s.reply().error(&format!(
        "ERR too many {what} for this client (limits.{key} = {cap})"
    ));
    true
}

fn confirm(s: &mut Session, what: &[u8], name: Option<&[u8]>, count: usize) {
    let mut r = s.reply();
    r.push(3);
    r.bulk(what);
    match name {
        Some(name) => r.bulk(name),
        None => r.null(),
    }
    r.int(count as i64);
}

fn add_all(s: &mut Session, args: &[Bytes], kind: Kind, what: &[u8]) -> bool {
    let refused = match kind {
        Kind::Pattern => refuse_long_pattern(s, &args[1..]),
        Kind::Channel | Kind::Shard => refuse_long_channels(s, &args[1..]),
    };
    if refused || refuse_over_cap(s, &args[1..], kind) {
        return true;
    }
    for name in &args[1..] {
        if !kind.set(s).contains(name) {
            let name = crate::codec::keep(name);
            kind.set(s).insert(name.clone());
            kind.add(s, &name);
        }
        let count = kind.count(s);
        confirm(s, what, Some(name), count);
    }
    s.sync_sub_counts();
    s.broker.update_channel_gauges();
    true
}

fn remove_all(s: &mut Session, args: &[Bytes], kind: Kind, what: &[u8]) -> bool {
    let names: Vec<Bytes> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        kind.set(s).iter().cloned().collect()
    };
    if names.is_empty() {
        let count = kind.count(s);
        confirm(s, what, None, count);
    }
    for name in &names {
        if kind.set(s).remove(name) {
            kind.remove(s, name);
            // Messages queued before the removal go out before its confirmation.
            s.drain_pushes();
        }
        let count = kind.count(s);
        confirm(s, what, Some(name), count);
    }
    s.sync_sub_counts();
    s.broker.update_channel_gauges();
    true
}

fn subscribe(s: &mut Session, args: &[Bytes]) -> bool {
    add_all(s, args, Kind::Channel, b"subscribe")
}

fn psubscribe(s: &mut Session, args: &[Bytes]) -> bool {
    add_all(s, args, Kind::Pattern, b"psubscribe")
}

fn ssubscribe(s: &mut Session, args: &[Bytes]) -> bool {
    add_all(s, args, Kind::Shard, b"ssubscribe")
}

fn unsubscribe(s: &mut Session, args: &[Bytes]) -> bool {
    remove_all(s, args, Kind::Channel, b"unsubscribe")
}

fn punsubscribe(s: &mut Session, args: &[Bytes]) -> bool {
    remove_all(s, args, Kind::Pattern, b"punsubscribe")
}

fn sunsubscribe(s: &mut Session, args: &[Bytes]) -> bool {
    remove_all(s, args, Kind::Shard, b"sunsubscribe")
}

fn publish_in(s: &mut Session, args: &[Bytes], space: Space) -> bool {
    if refuse_long_channels(s, &args[1..2]) {
        return true;
    }
    let broker = &s.broker;
    let done = broker.registry.publish(
        space,
        &args[1],
        &args[2],
        &broker.output_policy,
        &mut s.fanout,
    );
    s.stats.published += 1;
    s.stats.delivered += done.receivers as u64;
    s.stats.delivered_bytes += done.bytes as u64;
    s.reply().int(done.receivers as i64);
    true
}

fn publish(s: &mut Session, args: &[Bytes]) -> bool {
    publish_in(s, args, Space::Global)
}

fn spublish(s: &mut Session, args: &[Bytes]) -> bool {
    publish_in(s, args, Space::Shard)
}

fn channel_list(s: &mut Session, args: &[Bytes], space: Space) -> bool {
    // One pattern at most; Redis answers more with a subcommand error
    // (naming the subcommand as the client spelled it).
    if args.len() > 3 {
        s.reply().error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1][..args[1].len().min(128)])
        ));
        return true;
    }
    if refuse_long_pattern(s, &args[2..args.len().min(3)]) {
        return true;
    }
    let names = s
        .broker
        .registry
        .channel_names(space, args.get(2).map(|p| &p[..]));
    let mut r = s.reply();
    r.array(names.len());
    for name in &names {
        r.bulk(name);
    }
    true
}

fn numsub(s: &mut Session, args: &[Bytes], space: Space) -> bool {
    let counts: Vec<usize> = args[2..]
        .iter()
        .map(|ch| s.broker.registry.subscriber_count(space, ch))
        .collect();
    let mut r = s.reply();
    r.array(counts.len() * 2);
    for (ch, n) in args[2..].iter().zip(counts) {
        r.bulk(ch);
        r.int(n as i64);
    }
    true
}

fn pubsub_channels(s: &mut Session, args: &[Bytes]) -> bool {
    channel_list(s, args, Space::Global)
}

fn pubsub_shardchannels(s: &mut Session, args: &[Bytes]) -> bool {
    channel_list(s, args, Space::Shard)
}

fn pubsub_numsub(s: &mut Session, args: &[Bytes]) -> bool {
    numsub(s, args, Space::Global)
}

fn pubsub_shardnumsub(s: &mut Session, args: &[Bytes]) -> bool {
    numsub(s, args, Space::Shard)
}

fn pubsub_numpat(s: &mut Session, _args: &[Bytes]) -> bool {
    let n = s.broker.registry.pattern_count();
    s.reply().int(n as i64);
    true
}

fn pubsub_help(s: &mut Session, _args: &[Bytes]) -> bool {
    reply_help(
        s,
        "PUBSUB",
        &[
            "CHANNELS [<pattern>]",
            "    Return the currently active channels matching a <pattern> (default: '*').",
            "NUMPAT",
            "    Return number of subscriptions to patterns.",
            "NUMSUB [<channel> ...]",
            "    Return the number of subscribers for the specified channels, excluding",
            "    pattern subscriptions(default: no channels).",
            "SHARDCHANNELS [<pattern>]",
            "    Return the currently active shard level channels matching a <pattern> (default: '*').",
            "SHARDNUMSUB [<shardchannel> ...]",
            "    Return the number of subscribers for the specified shard level channel(s)",
        ],
    )
}
