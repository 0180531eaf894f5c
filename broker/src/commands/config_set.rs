//! `CONFIG SET` for the settings that are safe to change while clients
//! are connected: `notify-keyspace-events` and `maxmemory` (both live in
//! shared state, not in the parsed config file), `maxmemory-policy`
//! (only `noeviction`, the one policy offered) and the persistence
//! switches benchmark tools set (`save ""`, `appendonly no`: already so).
//! Everything else is read from the config file at start; setting it is
//! refused with a message saying so, instead of pretending.
//!
//! As in Redis, every pair is checked before any is applied, so a refused
//! CONFIG SET changes nothing.

use super::common::SYNTAX;
use crate::keyspace::notify;
use crate::session::Session;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

/// One checked change, applied once every pair passed.
enum Change {
    Notify(u32),
    MaxMemory(u64),
    Nothing,
}

/// Settings CONFIG GET reports that are fixed at start.
const FIXED: &[&str] = &[
    "bind",
    "port",
    "requirepass",
    "maxclients",
    "timeout",
    "databases",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "client-output-buffer-limit",
];

fn failed(name: &str, why: &str) -> String {
    format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}")
}

/// Redis's `memtoull`: digits with an optional b, k, kb, m, mb, g, gb.
fn parse_memory(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(mul)
}

fn check(name: &str, value: &[u8]) -> Result<Change, String> {
    let text = String::from_utf8_lossy(value);
    match name {
        "notify-keyspace-events" => notify::parse(&text).map(Change::Notify).ok_or_else(|| {
            failed(
                name,
                "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.",
            )
        }),
        "maxmemory" => parse_memory(&text)
            .map(Change::MaxMemory)
            .ok_or_else(|| failed(name, "argument must be a memory value")),
        "maxmemory-policy" => match text.to_ascii_lowercase().as_str() {
            "noeviction" => Ok(Change::Nothing),
            "volatile-lru" | "volatile-lfu" | "volatile-random" | "volatile-ttl"
            | "allkeys-lru" | "allkeys-lfu" | "allkeys-random" => Err(failed(
                name,
                "limpet-broker offers only noeviction (writes past maxmemory get -OOM)",
            )),
            _ => Err(failed(name, "argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction")),
        },
        "save" if text.is_empty() => Ok(Change::Nothing),
        "appendonly" if text.eq_ignore_ascii_case("no") => Ok(Change::Nothing),
        "save" | "appendonly" => Err(failed(
            name,
            "limpet-broker keeps nothing on disk (no persistence)",
        )),
        _ if FIXED.contains(&name) => Err(failed(
            name,
            "fixed at start in limpet-broker; change it in the config file and restart",
        )),
        _ => Err(format!(
            "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
        )),
    }
}

pub(super) fn config_set(s: &mut Session, args: &[Bytes]) -> bool {
    if !args.len().is_multiple_of(2) {
        s.reply().error(SYNTAX);
        return true;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut changes = Vec::new();
    for pair in args[2..].chunks(2) {
        let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
        if seen.contains(&name) {
            s.reply().error(&failed(&name, "duplicate parameter"));
            return true;
        }
        match check(&name, &pair[1]) {
            Ok(c) => changes.push(c),
            Err(e) => {
                s.reply().error(&e);
                return true;
            }
        }
        seen.push(name);
    }
    for c in changes {
        match c {
            Change::Notify(flags) => {
                s.broker.keyspace.with(|db| db.notify_flags = flags);
            }
            Change::MaxMemory(bytes) => s.broker.maxmemory.store(bytes, Relaxed),
            Change::Nothing => {}
        }
    }
    s.reply().simple("OK");
    true
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_values_parse_like_redis() {
        assert_eq!(parse_memory("100"), Some(100));
        assert_eq!(parse_memory("1mb"), Some(1 << 20));
        assert_eq!(parse_memory("1M"), Some(1_000_000));
        assert_eq!(parse_memory("2gb"), Some(2 << 30));
        assert_eq!(parse_memory("x"), None);
        assert_eq!(parse_memory("-1"), None);
        assert_eq!(parse_memory("1tb"), None);
    }
}
