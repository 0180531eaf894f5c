//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH.
//!
//! **Atomicity.** EXEC holds the keyspace lock ([`crate::keyspace::Keyspace::hold`])
//! from its WATCH check to its last queued command, so no other client's
//! command runs on the keyspace in between, on any thread. The lock is
//! reentrant: the queued commands take it again on the same thread as
//! they do outside a transaction. Pub/sub commands inside a transaction
//! publish as they run (the registry has its own locks), as in Redis.
//!
//! **WATCH.** Each connection has one flag; WATCH hangs it on the keys,
//! and any change to one of them (including expiry, deletion and FLUSHALL)
//! raises it ([`crate::keyspace::Db::touch`]); EXEC then replies with a
//! null array and runs nothing.
//!
//! **Bounds.** The queue holds at most `limits.query_buffer_limit` bytes
//! of arguments (plus 32 per command): past it the command is refused
//! with an error and the transaction is flagged, so EXEC answers
//! EXECABORT and nothing of it runs. Watched keys are bounded by the
//! request limits per WATCH and are dropped on EXEC, DISCARD, UNWATCH,
//! RESET and disconnect.

use super::spec::{cmd, Command};
use crate::session::Session;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

const GROUP: &str = "transactions";
const TX_FLAGS: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const TX_ACL: &[&str] = &["@fast", "@transaction"];

pub const MULTI: Command = cmd!(
    GROUP,
    "multi",
    1,
    TX_FLAGS,
    TX_ACL,
    "1.2.0",
    "Starts a transaction.",
    multi
);
pub const EXEC: Command = cmd!(
    GROUP,
    "exec",
    1,
    &["noscript", "loading", "stale", "skip_slowlog"],
    &["@slow", "@transaction"],
    "1.2.0",
    "Executes all commands in a transaction.",
    exec
);
pub const DISCARD: Command = cmd!(
    GROUP,
    "discard",
    1,
    TX_FLAGS,
    TX_ACL,
    "2.0.0",
    "Discards a transaction.",
    discard
);
pub const WATCH: Command = cmd!(
    GROUP,
    "watch",
    -2,
    TX_FLAGS,
    TX_ACL,
    "2.2.0",
    "Monitors changes to keys to determine the execution of a transaction.",
    watch,
    keys = (1, -1)
);
pub const UNWATCH: Command = cmd!(
    GROUP,
    "unwatch",
    1,
    TX_FLAGS,
    TX_ACL,
    "2.2.0",
    "Forgets about watched keys of a transaction.",
    unwatch
);

/// Commands that run at once inside MULTI instead of being queued.
pub fn runs_inside_multi(name: &str) -> bool {
    matches!(
        name,
        "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
    )
}

/// Most commands one transaction may queue: EXEC runs them all under the
/// keyspace lock, so their number bounds how long everyone else waits.
const MAX_QUEUED: usize = 100_000;

/// Most keys one connection may WATCH at once.
const MAX_WATCHED: usize = 100_000;

/// A transaction being queued.
#[derive(Default)]
pub struct Multi {
    pub queued: Vec<(&'static Command, Vec<Bytes>)>,
    pub bytes: u64,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    pub failed: bool,
}

/// Queues a command (called by dispatch for a client inside MULTI).
pub fn queue(s: &mut Session, cmd: &'static Command, args: &[Bytes]) {
    // What the queued copy really holds: each argument is a handle plus
    // its own allocation, so a million empty arguments are not free.
    let size = 32 + args.iter().map(|a| a.len() as u64 + 48).sum::<u64>();
    let max = s.broker.config.limits.query_buffer_limit.bytes();
    let Some(m) = s.multi.as_mut() else {
        return;
    };
    if m.queued.len() >= MAX_QUEUED {
        m.failed = true;
        s.broker.note_limit("multi_commands");
        s.reply().error(&format!(
            "ERR MULTI queue holds at most {MAX_QUEUED} commands; the transaction is discarded at EXEC"
        ));
        return;
    }
    if m.bytes + size > max {
        m.failed = true;
        s.broker.note_limit("query_buffer_limit");
        s.reply()
            .error("ERR MULTI queue exceeds limits.query_buffer_limit; the transaction is discarded at EXEC");
        return;
    }
    m.bytes += size;
    m.queued.push((
        cmd,
        args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
    ));
    s.reply().simple("QUEUED");
}

/// Flags the transaction (if any) after a command was refused.
pub fn flag_error(s: &mut Session) {
    if let Some(m) = s.multi.as_mut() {
        m.failed = true;
    }
}

fn multi(s: &mut Session, _args: &[Bytes]) -> bool {
    if s.multi.is_some() {
        s.reply().error("ERR MULTI calls can not be nested");
        return true;
    }
    s.multi = Some(Multi::default());
    s.reply().simple("OK");
    true
}

fn discard(s: &mut Session, _args: &[Bytes]) -> bool {
    if s.multi.take().is_none() {
        s.reply().error("ERR DISCARD without MULTI");
        return true;
    }
    unwatch_all(s);
    s.reply().simple("OK");
    true
}

fn exec(s: &mut Session, _args: &[Bytes]) -> bool {
    let Some(m) = s.multi.take() else {
        s.reply().error("ERR EXEC without MULTI");
        return true;
    };
    if m.failed {
        unwatch_all(s);
        s.reply()
            .error("EXECABORT Transaction discarded because of previous errors.");
        return true;
    }
    if s.broker.over_maxmemory() && m.queued.iter().any(|(cmd, _)| cmd.has_flag("denyoom")) {
        unwatch_all(s);
        s.broker.metrics.oom_rejections.inc();
        s.reply().error(
            "EXECABORT Transaction discarded because of: OOM command not allowed when used memory > 'maxmemory'.",
        );
        return true;
    }
    let broker = s.broker.clone();
    let _held = broker.keyspace.hold();
    if s.watch_flag.load(Relaxed) {
        unwatch_all(s);
        s.reply().null_array();
        return true;
    }
    unwatch_all(s);
    s.reply().array(m.queued.len());
    s.in_exec = true;
    let mut keep = true;
    for (cmd, args) in &m.queued {
        s.last_cmd = cmd.name;
        keep &= (cmd.run)(s, args);
    }
    s.in_exec = false;
    keep
}

fn watch(s: &mut Session, args: &[Bytes]) -> bool {
    if s.multi.is_some() {
        s.reply().error("ERR WATCH inside MULTI is not allowed");
        return true;
    }
    let flag = s.watch_flag.clone();
    let mut seen: ahash::AHashSet<&[u8]> = s.watched.iter().map(|k| &k[..]).collect();
    let mut new = Vec::new();
    for k in &args[1..] {
        if seen.insert(&k[..]) {
            new.push(Bytes::copy_from_slice(k));
        }
    }
    if s.watched.len() + new.len() > MAX_WATCHED {
        s.broker.note_limit("watched_keys");
        s.reply().error(&format!(
            "ERR a connection may WATCH at most {MAX_WATCHED} keys"
        ));
        return true;
    }
    s.broker.keyspace.with(|db| {
        for k in &new {
            db.watch(k, &flag);
        }
    });
    s.watched.extend(new);
    s.reply().simple("OK");
    true
}

fn unwatch(s: &mut Session, _args: &[Bytes]) -> bool {
    unwatch_all(s);
    s.reply().simple("OK");
    true
}

/// Drops every WATCH of the connection and lowers its flag.
pub fn unwatch_all(s: &mut Session) {
    if !s.watched.is_empty() {
        let keys = std::mem::take(&mut s.watched);
        let flag = s.watch_flag.clone();
        s.broker.keyspace.with(|db| {
            for k in &keys {
                db.unwatch(k, &flag);
            }
        });
    }
    s.watch_flag.store(false, Relaxed);
}
