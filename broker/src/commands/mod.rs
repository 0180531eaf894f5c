//! The command table and the checks every command goes through.
//!
//! Dispatch follows Redis's `processCommand` order, because clients can
//! observe it: look the command up (unknown command / unknown subcommand),
//! check arity, check authentication, then the RESP2 subscribed-mode
//! restriction, then run. Each handler lives with its family:
//! [`connection`] (PING, AUTH, HELLO, CLIENT ...), [`pubsub`] (SUBSCRIBE,
//! PUBLISH, PUBSUB ...) and [`introspection`] (INFO, COMMAND, CONFIG).

mod auth;
mod connection;
mod introspection;
mod pubsub;

use crate::session::Session;
use bytes::Bytes;

/// Redis version reported to clients (HELLO, INFO). Some clients gate
/// features on it; 7.2 is the release whose pub/sub and `CLIENT SETINFO`
/// behaviour the command table follows.
pub const REDIS_VERSION: &str = "7.2.0";

/// Runs a command. Returning false closes the connection at once, with no
/// further reply (Redis does this when an HTTP request hits its port).
pub type Handler = fn(&mut Session, &[Bytes]) -> bool;

pub struct Command {
    /// Full lowercase name; `parent|sub` for subcommands, as Redis names them.
    pub name: &'static str,
    /// Redis's convention: n = exactly n arguments (name included), -n = at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub acl: &'static [&'static str],
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
    /// Position of the first channel argument for the shard commands, 0 otherwise.
    pub first_key: i64,
    pub last_key: i64,
    pub run: Handler,
    pub subcommands: &'static [Command],
}

impl Command {
    /// The name a user types: `setname` for `client|setname`.
    pub fn short_name(&self) -> &'static str {
        self.name.rsplit('|').next().unwrap_or(self.name)
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}

/// Every command the broker knows, in `COMMAND` order.
pub static COMMANDS: &[Command] = &[
    pubsub::PUBLISH,
    pubsub::SUBSCRIBE,
    pubsub::UNSUBSCRIBE,
    pubsub::PSUBSCRIBE,
    pubsub::PUNSUBSCRIBE,
    pubsub::SPUBLISH,
    pubsub::SSUBSCRIBE,
    pubsub::SUNSUBSCRIBE,
    pubsub::PUBSUB,
    connection::PING,
    connection::ECHO,
    connection::QUIT,
    connection::RESET,
    connection::AUTH,
    connection::HELLO,
    connection::SELECT,
    connection::CLIENT,
    introspection::INFO,
    introspection::COMMAND,
    introspection::CONFIG,
];

pub fn lookup(table: &'static [Command], name: &[u8]) -> Option<&'static Command> {
    table
        .iter()
        .find(|c| c.short_name().as_bytes().eq_ignore_ascii_case(name))
}

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
        return true;
    };
    if !cmd.subcommands.is_empty() && args.len() >= 2 {
        match lookup(cmd.subcommands, &args[1]) {
            Some(sub) => cmd = sub,
            None => {
                s.reply().error(&format!(
                    "ERR unknown subcommand '{}'. Try {} HELP.",
                    truncate(&args[1], 128),
                    cmd.name.to_ascii_uppercase()
                ));
                return true;
            }
        }
    }
    s.last_cmd = cmd.name;
    let argc = args.len() as i32;
    if (cmd.arity > 0 && argc != cmd.arity) || argc < -cmd.arity {
        s.reply().error(&format!(
            "ERR wrong number of arguments for '{}' command",
            cmd.name
        ));
        return true;
    }
    if !s.authenticated && !cmd.has_flag("no_auth") {
        s.reply().error("NOAUTH Authentication required.");
        return true;
    }
    if s.proto == crate::codec::Proto::Resp2
        && s.in_pubsub_mode()
        && !ALLOWED_IN_SUBSCRIBED_MODE.contains(&cmd.name)
    {
        s.reply().error(&format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            cmd.name
        ));
        return true;
    }
    (cmd.run)(s, args)
}

/// Text of a user-supplied argument for an error message, cut like `%.128s`.
fn truncate(arg: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(max)]).into_owned()
}

/// Shared by the `HELP` subcommands: one status line per entry.
fn reply_help(s: &mut Session, command: &str, lines: &[&str]) -> bool {
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
fn int_arg(s: &mut Session, arg: &[u8]) -> Option<i64> {
    let v = crate::codec::parse_i64(arg);
    if v.is_none() {
        s.reply()
            .error("ERR value is not an integer or out of range");
    }
    v
}
