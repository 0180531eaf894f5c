//! Running a command: the checks every command goes through, in order.
//!
//! Dispatch follows Redis's `processCommand` order, because clients can
//! observe it: look the command up (unknown command / unknown subcommand),
//! check arity, check authentication, then the RESP2 subscribed-mode
//! restriction, then run. The table is [`table`], an entry's shape and the
//! `cmd!` macro are [`spec`]; each handler lives with its family:
//! [`connection`] (PING, AUTH, HELLO ...), [`client`] (CLIENT ...),
//! [`pubsub`] (SUBSCRIBE, PUBLISH, PUBSUB ...), [`introspection`]
//! (INFO, CONFIG), and the keyspace families: [`keys`] (DEL, EXPIRE,
//! SCAN ...), [`strings`], [`hashes`], [`sets`], [`streams`]
//! (XADD, XTRIM ...), [`stream_reads`] (XRANGE, XREAD, XINFO), and
//! [`multi`] (MULTI/EXEC/WATCH). Imports go one way: this file →
//! table → families → common / spec.
//!
//! Inside MULTI, a command that passes every check is queued instead of
//! run; one refused by a check (unknown, arity, auth, OOM) flags the
//! transaction, so that EXEC aborts it, as Redis does.
//!
//! Commands flagged `denyoom` are refused with `-OOM` while the keyspace
//! is past `maxmemory`, after the arity and auth checks, as in Redis.

mod auth;
mod client;
mod common;
mod config_set;
mod connection;
mod hashes;
mod introspection;
mod keys;
mod multi;
mod pubsub;
mod sets;
pub mod spec;
mod stream_reads;
mod streams;
mod strings;
pub mod table;

use crate::session::Session;
use bytes::Bytes;
use common::truncate;
pub use multi::{unwatch_all, Multi};
use spec::lookup;
pub use spec::{Command, Handler, REDIS_VERSION};
pub(crate) use stream_reads::serve_read;
use table::COMMANDS;

/// Commands a RESP2 client may still send while it has subscriptions.
const ALLOWED_IN_SUBSCRIBED_MODE: &[&str] = &[
    "ping",
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
    "quit",
    "reset",
];

pub fn dispatch(s: &mut Session, args: &[Bytes]) -> bool {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"host:") || name.eq_ignore_ascii_case(b"post") {
        // Redis's guard against cross-protocol scripting: a browser or an
        // HTTP client talking to the broker port is cut off without a reply.
        tracing::warn!(client = s.handle.id, peer = %s.handle.peer, "possible cross-protocol attack (HTTP sent to the Redis port); connection closed");
        return false;
    }
    let Some(mut cmd) = lookup(COMMANDS, name) else {
        // Redis lists the arguments until 128 bytes of them are shown.
        let mut listed = Vec::new();
        for arg in &args[1..] {
            if listed.len() >= 128 {
                break;
            }
            let room = 128 - listed.len();
            listed.push(b'\'');
            listed.extend_from_slice(&arg[..arg.len().min(room)]);
            listed.extend_from_slice(b"' ");
        }
        let listed = String::from_utf8_lossy(&listed);
        let name = truncate(name, 128);
        s.reply().error(&format!(
            "ERR unknown command '{name}', with args beginning with: {listed}"
        ));
        multi::flag_error(s);
        return true;
    };
    s.dispatched = Some(cmd.name);
    if !cmd.subcommands.is_empty() && args.len() >= 2 {
        match lookup(cmd.subcommands, &args[1]) {
            Some(sub) => {
                cmd = sub;
                s.dispatched = Some(cmd.name);
            }
            None => {
                s.rejected = true;
                s.reply().error(&format!(
                    "ERR unknown subcommand '{}'. Try {} HELP.",
                    truncate(&args[1], 128),
                    cmd.name.to_ascii_uppercase()
                ));
                multi::flag_error(s);
                return true;
            }
        }
    }
    s.last_cmd = cmd.name;
    let argc = args.len() as i32;
    if (cmd.arity > 0 && argc != cmd.arity) || argc < -cmd.arity {
        let text = format!("wrong number of arguments for '{}' command", cmd.name);
        reject(s, cmd, "ERR", &text);
        return true;
    }
    if !s.authenticated && !cmd.has_flag("no_auth") {
        reject(s, cmd, "NOAUTH", "Authentication required.");
        return true;
    }
    if s.proto == crate::codec::Proto::Resp2
        && s.in_pubsub_mode()
        && !ALLOWED_IN_SUBSCRIBED_MODE.contains(&cmd.name)
    {
        let text = format!(
            "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            cmd.name
        );
        reject(s, cmd, "ERR", &text);
        return true;
    }
    if cmd.has_flag("denyoom") && s.broker.over_maxmemory() {
        s.broker.metrics.oom_rejections.inc();
        reject(
            s,
            cmd,
            "OOM",
            "command not allowed when used memory > 'maxmemory'.",
        );
        return true;
    }
    if s.multi.is_some() && !multi::runs_inside_multi(cmd.name) {
        multi::queue(s, cmd, args);
        // Counted when EXEC runs it, not when it is queued.
        s.dispatched = None;
        return true;
    }
    (cmd.run)(s, args)
}

/// Refuses a found command before it runs (Redis's `rejectCommand`): the
/// error is counted as a rejection and flags an open transaction; a
/// refused EXEC (in MULTI or not) discards any transaction and says why
/// in an EXECABORT, naming the code only when it is not the generic ERR,
/// as Redis does.
fn reject(s: &mut Session, cmd: &Command, code: &str, text: &str) {
    s.rejected = true;
    if cmd.name == "exec" {
        s.multi = None;
        multi::unwatch_all(s);
        let why = if code == "ERR" {
            text.to_string()
        } else {
            format!("{code} {text}")
        };
        s.reply().error(&format!(
            "EXECABORT Transaction discarded because of: {why}"
        ));
        return;
    }
    s.reply().error(&format!("{code} {text}"));
    multi::flag_error(s);
}
