//! The command table ([`COMMANDS`]) and the `COMMAND` command, which
//! describes that table to clients (redis-cli asks for `COMMAND DOCS`,
//! cluster-aware clients read key positions from `COMMAND INFO`). They
//! share a file because `COMMAND` is itself in the table.

use super::client;
use super::common::reply_help;
use super::connection;
use super::hashes;
use super::introspection;
use super::keys;
use super::multi;
use super::pubsub;
use super::sets;
use super::spec::{cmd, lookup, Command};
use super::stream_reads;
use super::streams;
use super::strings;
use crate::codec::Reply;
use crate::session::Session;
use bytes::Bytes;

const GROUP: &str = "server";

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
    client::CLIENT,
    introspection::INFO,
    COMMAND,
    introspection::CONFIG,
    keys::DEL,
    keys::UNLINK,
    keys::EXISTS,
    keys::TYPE,
    keys::EXPIRE,
    keys::PEXPIRE,
    keys::EXPIREAT,
    keys::PEXPIREAT,
    keys::TTL,
    keys::PTTL,
    keys::PERSIST,
    keys::KEYS,
    keys::SCAN,
    keys::DBSIZE,
    keys::FLUSHDB,
    keys::FLUSHALL,
    strings::SET,
    strings::GET,
    strings::GETDEL,
    strings::GETEX,
    strings::MGET,
    strings::MSET,
    strings::INCR,
    strings::INCRBY,
    strings::DECR,
    strings::DECRBY,
    strings::APPEND,
    strings::STRLEN,
    hashes::HSET,
    hashes::HSETNX,
    hashes::HGET,
    hashes::HMGET,
    hashes::HGETALL,
    hashes::HDEL,
    hashes::HLEN,
    hashes::HEXISTS,
    hashes::HKEYS,
    hashes::HVALS,
    hashes::HINCRBY,
    sets::SADD,
    sets::SREM,
    sets::SMEMBERS,
    sets::SISMEMBER,
    sets::SMISMEMBER,
    sets::SCARD,
    streams::XADD,
    stream_reads::XREAD,
    stream_reads::XRANGE,
    stream_reads::XREVRANGE,
    streams::XLEN,
    streams::XDEL,
    streams::XTRIM,
    stream_reads::XINFO,
    multi::MULTI,
    multi::EXEC,
    multi::DISCARD,
    multi::WATCH,
    multi::UNWATCH,
];

pub const COMMAND: Command = Command {
    subcommands: &[
        cmd!(
            GROUP,
            "command|count",
            2,
            &["loading", "stale"],
            &["@slow", "@connection"],
            "2.8.13",
            "Returns a count of commands.",
            command_count
        ),
        cmd!(
            GROUP,
            "command|docs",
            -2,
            &["loading", "stale"],
            &["@slow", "@connection"],
            "7.0.0",
            "Returns documentary information about one, multiple or all commands.",
            command_docs
        ),
        cmd!(
            GROUP,
            "command|info",
            -2,
            &["loading", "stale"],
            &["@slow", "@connection"],
            "2.8.13",
            "Returns information about one, multiple or all commands.",
            command_info
        ),
        cmd!(
            GROUP,
            "command|list",
            -2,
            &["loading", "stale"],
            &["@slow", "@connection"],
            "7.0.0",
            "Returns a list of command names.",
            command_list
        ),
        cmd!(
            GROUP,
            "command|help",
            2,
            &["loading", "stale"],
            &["@slow", "@connection"],
            "5.0.0",
            "Returns helpful text about the different subcommands.",
            command_help
        ),
    ],
    ..cmd!(
        GROUP,
        "command",
        -1,
        &["loading", "stale"],
        &["@slow", "@connection"],
        "2.8.13",
        "Returns detailed information about all commands.",
        command_all
    )
};

/// Every command and subcommand, for COMMAND and COMMAND LIST.
fn all_commands() -> impl Iterator<Item = &'static Command> {
    COMMANDS.iter()
}

fn write_command_info(r: &mut Reply<'_>, c: &Command) {
    r.array(10);
    r.bulk(c.name.as_bytes());
    r.int(i64::from(c.arity));
    r.set(c.flags.len());
    for f in c.flags {
        r.simple(f);
    }
    r.int(c.first_key);
    r.int(c.last_key);
    r.int(i64::from(c.first_key != 0));
    r.set(c.acl.len());
    for a in c.acl {
        r.simple(a);
    }
    r.array(0); // tips
    r.array(0); // key specs
    r.array(c.subcommands.len());
    for sub in c.subcommands {
        write_command_info(r, sub);
    }
}

fn write_command_docs(r: &mut Reply<'_>, c: &Command) {
    let has_subs = !c.subcommands.is_empty();
    r.map(3 + usize::from(has_subs));
    r.bulk(b"summary");
    r.bulk(c.summary.as_bytes());
    r.bulk(b"since");
    r.bulk(c.since.as_bytes());
    r.bulk(b"group");
    r.bulk(c.group.as_bytes());
    if has_subs {
        r.bulk(b"subcommands");
        r.map(c.subcommands.len());
        for sub in c.subcommands {
            r.bulk(sub.name.as_bytes());
            write_command_docs(r, sub);
        }
    }
}

fn command_all(s: &mut Session, _args: &[Bytes]) -> bool {
    let mut r = s.reply();
    r.array(COMMANDS.len());
    for c in all_commands() {
        write_command_info(&mut r, c);
    }
    true
}

fn command_count(s: &mut Session, _args: &[Bytes]) -> bool {
    s.reply().int(COMMANDS.len() as i64);
    true
}

/// Finds `client|list`-style or plain names.
fn find(name: &[u8]) -> Option<&'static Command> {
    let text = String::from_utf8_lossy(name).to_ascii_lowercase();
    match text.split_once('|') {
        Some((parent, sub)) => {
            lookup(COMMANDS, parent.as_bytes()).and_then(|p| lookup(p.subcommands, sub.as_bytes()))
        }
        None => lookup(COMMANDS, name),
    }
}

fn command_info(s: &mut Session, args: &[Bytes]) -> bool {
    let mut r = s.reply();
    if args.len() == 2 {
        r.array(COMMANDS.len());
        for c in all_commands() {
            write_command_info(&mut r, c);
        }
        return true;
    }
    r.array(args.len() - 2);
    for name in &args[2..] {
        match find(name) {
            Some(c) => write_command_info(&mut r, c),
            None => r.null(),
        }
    }
    true
}

fn command_docs(s: &mut Session, args: &[Bytes]) -> bool {
    let found: Vec<&Command> = if args.len() == 2 {
        all_commands().collect()
    } else {
        args[2..].iter().filter_map(|n| find(n)).collect()
    };
    let mut r = s.reply();
    r.map(found.len());
    for c in found {
        r.bulk(c.name.as_bytes());
        write_command_docs(&mut r, c);
    }
    true
}

/// COMMAND LIST [FILTERBY MODULE <name> | ACLCAT <category> | PATTERN <glob>]:
/// every command and subcommand (Redis's full names, `config|get`), the
/// filter applied to each. No modules: a MODULE filter matches nothing.
fn command_list(s: &mut Session, args: &[Bytes]) -> bool {
    enum Filter<'a> {
        All,
        Module,
        AclCat(String),
        Pattern(&'a [u8]),
    }
    let filter = match &args[2..] {
        [] => Filter::All,
        [by, kind, arg] if by.eq_ignore_ascii_case(b"FILTERBY") => {
            match kind.to_ascii_lowercase().as_slice() {
                b"module" => Filter::Module,
                b"aclcat" => Filter::AclCat(format!(
                    "@{}",
                    String::from_utf8_lossy(arg).to_ascii_lowercase()
                )),
                b"pattern" => Filter::Pattern(arg),
                _ => {
                    s.reply().error("ERR syntax error");
                    return true;
                }
            }
        }
        _ => {
            s.reply().error("ERR syntax error");
            return true;
        }
    };
    let keep = |c: &Command| match &filter {
        Filter::All => true,
        Filter::Module => false,
        Filter::AclCat(cat) => c.acl.iter().any(|a| a.eq_ignore_ascii_case(cat)),
        Filter::Pattern(p) => crate::glob::glob_match(&p.to_ascii_lowercase(), c.name.as_bytes()),
    };
    let names: Vec<&str> = all_commands()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
        .filter(|c| keep(c))
        .map(|c| c.name)
        .collect();
    let mut r = s.reply();
    r.array(names.len());
    for name in names {
        r.bulk(name.as_bytes());
    }
    true
}

fn command_help(s: &mut Session, _args: &[Bytes]) -> bool {
    reply_help(
        s,
        "COMMAND",
        &[
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple commands.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple commands.",
        ],
    )
}
