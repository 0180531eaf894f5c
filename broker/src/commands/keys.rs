//! Generic key commands: DEL, UNLINK, EXISTS, TYPE, the EXPIRE family,
//! TTL/PTTL, PERSIST, KEYS, SCAN, DBSIZE, FLUSHDB, FLUSHALL.
//!
//! Replies and errors follow Redis 7's `db.c` and `expire.c` step by step
//! (option checks before the key lookup, the same error texts), because
//! the differential test compares them byte for byte.

use super::common::{keys, NOT_INT, SYNTAX};
use super::spec::{cmd, Command};
use crate::codec::parse_i64;
use crate::glob::glob_match;
use crate::keyspace::{notify, now_ms};
use crate::session::Session;
use bytes::Bytes;

const GROUP: &str = "generic";
const WRITE_FAST: &[&str] = &["write", "fast"];
const READ_FAST: &[&str] = &["readonly", "fast"];
const KW_FAST: &[&str] = &["@keyspace", "@write", "@fast"];
const KR_FAST: &[&str] = &["@keyspace", "@read", "@fast"];

pub const DEL: Command = cmd!(
    GROUP,
    "del",
    -2,
    &["write"],
    &["@keyspace", "@write", "@slow"],
    "1.0.0",
    "Deletes one or more keys.",
    del,
    keys = (1, -1)
);
pub const UNLINK: Command = cmd!(
    GROUP,
    "unlink",
    -2,
    WRITE_FAST,
    KW_FAST,
    "4.0.0",
    "Asynchronously deletes one or more keys.",
    del,
    keys = (1, -1)
);
pub const EXISTS: Command = cmd!(
    GROUP,
    "exists",
    -2,
    READ_FAST,
    KR_FAST,
    "1.0.0",
    "Determines whether one or more keys exist.",
    exists,
    keys = (1, -1)
);
pub const TYPE: Command = cmd!(
    GROUP,
    "type",
    2,
    READ_FAST,
    KR_FAST,
    "1.0.0",
    "Determines the type of value stored at a key.",
    type_of,
    keys = (1, 1)
);
pub const EXPIRE: Command = cmd!(
    GROUP,
    "expire",
    -3,
    WRITE_FAST,
    KW_FAST,
    "1.0.0",
    "Sets the expiration time of a key in seconds.",
    expire,
    keys = (1, 1)
);
pub const PEXPIRE: Command = cmd!(
    GROUP,
    "pexpire",
    -3,
    WRITE_FAST,
    KW_FAST,
    "2.6.0",
    "Sets the expiration time of a key in milliseconds.",
    pexpire,
    keys = (1, 1)
);
pub const EXPIREAT: Command = cmd!(
    GROUP,
    "expireat",
    -3,
    WRITE_FAST,
    KW_FAST,
    "1.2.0",
    "Sets the expiration time of a key to a Unix timestamp.",
    expireat,
    keys = (1, 1)
);
pub const PEXPIREAT: Command = cmd!(
    GROUP,
    "pexpireat",
    -3,
    WRITE_FAST,
    KW_FAST,
    "2.6.0",
    "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    pexpireat,
    keys = (1, 1)
);
pub const TTL: Command = cmd!(
    GROUP,
    "ttl",
    2,
    READ_FAST,
    KR_FAST,
    "1.0.0",
    "Returns the expiration time in seconds of a key.",
    ttl,
    keys = (1, 1)
);
pub const PTTL: Command = cmd!(
    GROUP,
    "pttl",
    2,
    READ_FAST,
    KR_FAST,
    "2.6.0",
    "Returns the expiration time in milliseconds of a key.",
    pttl,
    keys = (1, 1)
);
pub const PERSIST: Command = cmd!(
    GROUP,
    "persist",
    2,
    WRITE_FAST,
    KW_FAST,
    "2.2.0",
    "Removes the expiration time of a key.",
    persist,
    keys = (1, 1)
);
pub const KEYS: Command = cmd!(
    GROUP,
    "keys",
    2,
    &["readonly"],
    &["@keyspace", "@read", "@slow", "@dangerous"],
    "1.0.0",
    "Returns all key names that match a pattern.",
    keys_cmd
);
pub const SCAN: Command = cmd!(
    GROUP,
    "scan",
    -2,
    &["readonly"],
    &["@keyspace", "@read", "@slow"],
    "2.8.0",
    "Iterates over the key names in the database.",
    scan
);
pub const DBSIZE: Command = cmd!(
    "server",
    "dbsize",
    1,
    READ_FAST,
    KR_FAST,
    "1.0.0",
    "Returns the number of keys in the database.",
    dbsize
);
pub const FLUSHDB: Command = cmd!(
    "server",
    "flushdb",
    -1,
    &["write"],
    &["@keyspace", "@write", "@slow", "@dangerous"],
    "1.0.0",
    "Removes all keys from the current database.",
    flush
);
pub const FLUSHALL: Command = cmd!(
    "server",
    "flushall",
    -1,
    &["write"],
    &["@keyspace", "@write", "@slow", "@dangerous"],
    "1.0.0",
    "Removes all keys from all databases.",
    flush
);

fn del(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        let mut n = 0;
        for k in &args[1..] {
            if db.delete(k) {
                db.notify(notify::GENERIC, "del", k);
                n += 1;
            }
        }
        r.int(n);
    });
    true
}

fn exists(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        let n = args[1..].iter().filter(|k| db.exists(k)).count();
        r.int(n as i64);
    });
    true
}

fn type_of(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        r.simple(db.get(&args[1]).map_or("none", |v| v.type_name()));
    });
    true
}

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Seconds,
    Millis,
}

fn expire(s: &mut Session, args: &[Bytes]) -> bool {
    expire_generic(s, args, false, Unit::Seconds, "expire")
}
fn pexpire(s: &mut Session, args: &[Bytes]) -> bool {
    expire_generic(s, args, false, Unit::Millis, "pexpire")
}
fn expireat(s: &mut Session, args: &[Bytes]) -> bool {
    expire_generic(s, args, true, Unit::Seconds, "expireat")
}
fn pexpireat(s: &mut Session, args: &[Bytes]) -> bool {
    expire_generic(s, args, true, Unit::Millis, "pexpireat")
}

/// Redis's `expireGenericCommand`.
fn expire_generic(s: &mut Session, args: &[Bytes], absolute: bool, unit: Unit, name: &str) -> bool {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                s.reply().error(&format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                ));
                return true;
            }
        }
    }
    if nx && (xx || gt || lt) {
        s.reply()
            .error("ERR NX and XX, GT or LT options at the same time are not compatible");
        return true;
    }
    if gt && lt {
        s.reply()
            .error("ERR GT and LT options at the same time are not compatible");
        return true;
    }
    let Some(mut when) = parse_i64(&args[2]) else {
        s.reply().error(NOT_INT);
        return true;
    };
    let bad_time = format!("ERR invalid expire time in '{name}' command");
    if unit == Unit::Seconds {
        match when.checked_mul(1000) {
            Some(w) => when = w,
            None => {
                s.reply().error(&bad_time);
                return true;
            }
        }
    }
    let now = now_ms() as i64;
    let base = if absolute { 0 } else { now };
    match when.checked_add(base) {
        Some(w) => when = w,
        None => {
            s.reply().error(&bad_time);
            return true;
        }
    }
    let key = &args[1];
    keys(s, |db, r| {
        let Some(entry) = db.entry(key) else {
            r.int(0);
            return;
        };
        let current = entry.expire_at().map(|t| t as i64);
        let refused = (nx && current.is_some())
            || (xx && current.is_none())
            || (gt && current.is_none_or(|c| when <= c))
            || (lt && current.is_some_and(|c| when >= c));
        if refused {
            r.int(0);
            return;
        }
        if when <= now {
            db.remove_entry(key);
            db.notify(notify::GENERIC, "del", key);
        } else {
            db.set_expire(key, Some(when as u64));
            db.touch(key);
            db.notify(notify::GENERIC, "expire", key);
        }
        r.int(1);
    });
    true
}

fn ttl_generic(s: &mut Session, args: &[Bytes], ms: bool) -> bool {
    keys(s, |db, r| match db.entry(&args[1]) {
        None => r.int(-2),
        Some(e) => match e.expire_at() {
            None => r.int(-1),
            Some(t) => {
                let left = t.saturating_sub(now_ms()) as i64;
                r.int(if ms { left } else { (left + 500) / 1000 });
            }
        },
    });
    true
}

fn ttl(s: &mut Session, args: &[Bytes]) -> bool {
    ttl_generic(s, args, false)
}

fn pttl(s: &mut Session, args: &[Bytes]) -> bool {
    ttl_generic(s, args, true)
}

fn persist(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        let had = db.entry(key).is_some_and(|e| e.expire_at().is_some());
        if had {
            db.set_expire(key, None);
            db.touch(key);
            db.notify(notify::GENERIC, "persist", key);
        }
        r.int(i64::from(had));
    });
    true
}

/// KEYS and SCAN MATCH patterns are bounded by `limits.max_pattern_len`
/// like PSUBSCRIBE's: matching costs up to pattern × key length steps per
/// key (Redis bounds neither).
fn keys_cmd(s: &mut Session, args: &[Bytes]) -> bool {
    if super::pubsub::refuse_long_pattern(s, &args[1..2]) {
        return true;
    }
    let pattern = &args[1];
    let all = &pattern[..] == b"*";
    keys(s, |db, r| {
        let now = now_ms();
        let found: Vec<Bytes> = (0..db.slots())
            .filter_map(|i| db.key_at(i, now).map(|(k, _)| Bytes::copy_from_slice(k)))
            .filter(|k| all || glob_match(pattern, k))
            .collect();
        r.array(found.len());
        for k in &found {
            r.bulk(k);
        }
    });
    true
}

/// SCAN's cursor counts down over the key table's slots: keys are added
/// at the end and a deletion moves the last key into the hole, so a key
/// present for the whole iteration is at or below the cursor until it is
/// returned (Redis's guarantee), and may only be returned twice.
/// Most key slots one SCAN call visits, whatever its COUNT.
const SCAN_MAX_SLOTS: u64 = 100_000;

fn scan(s: &mut Session, args: &[Bytes]) -> bool {
    let cursor_text = String::from_utf8_lossy(&args[1]);
    let cursor = match parse_cursor(&cursor_text) {
        Some(c) => c,
        None => {
            s.reply().error("ERR invalid cursor");
            return true;
        }
    };
    let mut count: i64 = 10;
    let mut pattern: Option<&[u8]> = None;
    let mut type_name: Option<Vec<u8>> = None;
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - i;
        let opt = args[i].to_ascii_lowercase();
        if opt == b"count" && more >= 2 {
            match parse_i64(&args[i + 1]) {
                None => {
                    s.reply().error(NOT_INT);
                    return true;
                }
                Some(c) if c < 1 => {
                    s.reply().error(SYNTAX);
                    return true;
                }
                Some(c) => count = c,
            }
        } else if opt == b"match" && more >= 2 {
            if super::pubsub::refuse_long_pattern(s, &args[i + 1..i + 2]) {
                return true;
            }
            pattern = (&args[i + 1][..] != b"*").then_some(&args[i + 1][..]);
        } else if opt == b"type" && more >= 2 {
            type_name = Some(args[i + 1].to_ascii_lowercase());
        } else {
            s.reply().error(SYNTAX);
            return true;
        }
        i += 2;
    }
    keys(s, |db, r| {
        let now = now_ms();
        let slots = db.slots() as u64;
        let mut at = if cursor == 0 {
            slots
        } else {
            cursor.min(slots)
        };
        // Visit `count` slots, like Redis visits `count` buckets. COUNT
        // is a hint: one call visits at most SCAN_MAX_SLOTS, since it
        // holds the keyspace lock, and the cursor says where to go on.
        let mut visited = 0u64;
        let mut found = Vec::new();
        let count = (count as u64).min(SCAN_MAX_SLOTS);
        while at > 0 && visited < count {
            at -= 1;
            visited += 1;
            if let Some((k, e)) = db.key_at(at as usize, now) {
                if pattern.is_some_and(|p| !glob_match(p, k)) {
                    continue;
                }
                if type_name
                    .as_ref()
                    .is_some_and(|t| t.as_slice() != e.value.type_name().as_bytes())
                {
                    continue;
                }
                found.push(Bytes::copy_from_slice(k));
            }
        }
        r.array(2);
        r.bulk(at.to_string().as_bytes());
        r.array(found.len());
        for k in &found {
            r.bulk(k);
        }
    });
    true
}

/// Redis's `parseScanCursorOrReply`: `strtoul`, no leading space, no
/// trailing bytes, no overflow.
fn parse_cursor(text: &str) -> Option<u64> {
    if text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = digits.parse().ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

fn dbsize(s: &mut Session, _args: &[Bytes]) -> bool {
    keys(s, |db, r| r.int(db.len() as i64));
    true
}

fn flush(s: &mut Session, args: &[Bytes]) -> bool {
    if args.len() > 2
        || (args.len() == 2
            && !args[1].eq_ignore_ascii_case(b"sync")
            && !args[1].eq_ignore_ascii_case(b"async"))
    {
        s.reply().error(SYNTAX);
        return true;
    }
    keys(s, |db, r| {
        db.flush();
        r.simple("OK");
    });
    true
}
