//! The shape of a command-table entry ([`Command`]), the one `cmd!` macro
//! every command family writes its entries with, and the Redis version the
//! table follows. Every family module and the table itself import this;
//! it imports only the session type its handlers take.

use crate::session::Session;
use bytes::Bytes;

/// Redis version reported to clients (HELLO, INFO). Some clients gate
/// features on it; 7.2 is the release whose pub/sub and `CLIENT SETINFO`
/// behaviour the command table follows.
pub const REDIS_VERSION: &str = "7.2.0";

/// One table entry, written the way Redis's command JSON reads:
/// `cmd!(group, name, arity, flags, acl, since, summary, handler)`, with
/// `, keys = (first, last)` appended for commands whose arguments are keys
/// (the shard channel commands). A container command sets its
/// `subcommands` with `Command { subcommands: &[...], ..cmd!(...) }`.
macro_rules! cmd {
    ($group:expr, $name:literal, $arity:expr, $flags:expr, $acl:expr, $since:literal, $summary:literal, $run:expr, keys = ($first:expr, $last:expr)) => {
        $crate::commands::spec::Command {
            name: $name,
            arity: $arity,
            flags: $flags,
            acl: $acl,
            group: $group,
            since: $since,
            summary: $summary,
            first_key: $first,
            last_key: $last,
            run: $run,
            subcommands: &[],
        }
    };
    ($group:expr, $name:literal, $arity:expr, $flags:expr, $acl:expr, $since:literal, $summary:literal, $run:expr) => {
        cmd!(
            $group,
            $name,
            $arity,
            $flags,
            $acl,
            $since,
            $summary,
            $run,
            keys = (0, 0)
        )
    };
}
pub(crate) use cmd;

/// `cmd!` for a command whose only key is its first argument.
macro_rules! key_cmd {
    ($group:literal, $name:literal, $arity:expr, $flags:expr, $acl:expr, $since:literal, $summary:literal, $run:expr) => {
        $crate::commands::spec::cmd!(
            $group,
            $name,
            $arity,
            $flags,
            $acl,
            $since,
            $summary,
            $run,
            keys = (1, 1)
        )
    };
}
pub(crate) use key_cmd;

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

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}

/// Finds a command (or subcommand) of `table` by the name a user typed,
/// in any case. The top-level table is searched through a map built on
/// first use: with the keyspace commands it has over 60 entries, and a
/// linear scan of them was a third of the CPU of a pipelined GET.
pub fn lookup(table: &'static [Command], name: &[u8]) -> Option<&'static Command> {
    if std::ptr::eq(table, crate::commands::table::COMMANDS) {
        return top_level(name);
    }
    table
        .iter()
        .find(|c| c.short_name().as_bytes().eq_ignore_ascii_case(name))
}

fn top_level(name: &[u8]) -> Option<&'static Command> {
    static INDEX: std::sync::OnceLock<ahash::AHashMap<&'static [u8], &'static Command>> =
        std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        crate::commands::table::COMMANDS
            .iter()
            .map(|c| (c.name.as_bytes(), c))
            .collect()
    });
    // Command names are short: lowercase into a stack buffer.
    let mut buf = [0u8; 32];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    index.get(&*lower).copied()
}
