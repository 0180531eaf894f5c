//! Small pieces several command families share: argument text for error
//! messages, integer arguments, and the `HELP` subcommand replies.

use crate::session::Session;

/// Text of a user-supplied argument for an error message, cut like `%.128s`.
pub(super) fn truncate(arg: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(max)]).into_owned()
}

/// Shared by the `HELP` subcommands: one status line per entry.
pub(super) fn reply_help(s: &mut Session, command: &str, lines: &[&str]) -> bool {
    let mut r = s.reply();
    r.array(lines.len() + 3);
    r.simple(&format!(
        "{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    ));
    for line in lines {
        r.simple(line);
    }
    r.simple("HELP");
    r.simple("    Print this help.");
    true
}

/// An argument parsed as an integer, or Redis's error reply.
pub(super) fn int_arg(s: &mut Session, arg: &[u8]) -> Option<i64> {
    let v = crate::codec::parse_i64(arg);
    if v.is_none() {
        s.reply()
            .error("ERR value is not an integer or out of range");
    }
    v
}

pub(super) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(super) const NOT_INT: &str = "ERR value is not an integer or out of range";
pub(super) const SYNTAX: &str = "ERR syntax error";

/// Runs `f` with the keyspace locked and the reply writer, then publishes
/// the keyspace events it queued (after the lock is let go).
pub(super) fn keys<R>(
    s: &mut Session,
    f: impl FnOnce(&mut crate::keyspace::Db, &mut crate::codec::Reply<'_>) -> R,
) -> R {
    let broker = s.broker.clone();
    let (r, events) = {
        let mut reply = s.reply();
        broker.keyspace.with(|db| f(db, &mut reply))
    };
    if !events.is_empty() {
        broker.publish_events(events, &mut s.fanout);
    }
    r
}

/// Redis's `addReplyErrorArity`, for arity rules the table cannot express
/// (pairs of arguments).
pub(super) fn arity_error(s: &mut Session, name: &str) -> bool {
    s.reply().error(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ));
    true
}
