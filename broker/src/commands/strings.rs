//! String commands: SET (EX PX EXAT PXAT NX XX GET KEEPTTL), GET, GETDEL,
//! GETEX, MGET, MSET, INCR, INCRBY, DECR, DECRBY, APPEND, STRLEN.
//!
//! Option parsing is Redis's `parseExtendedStringArgumentsOrReply`, with
//! the same exclusions between options (a repeated `EX` is allowed, `EX`
//! with `PX` is a syntax error), so every refusal matches Redis's.

use super::common::{keys, NOT_INT, SYNTAX, WRONGTYPE};
use super::spec::{cmd, Command};
use crate::codec::{parse_i64, Reply};
use crate::keyspace::{notify, now_ms, Db, Str, Value};
use crate::session::Session;
use bytes::Bytes;

const GROUP: &str = "string";
const R_FAST: &[&str] = &["@read", "@string", "@fast"];
const W_FAST: &[&str] = &["@write", "@string", "@fast"];

pub const SET: Command = cmd!(
    GROUP,
    "set",
    -3,
    &["write", "denyoom"],
    &["@write", "@string", "@slow"],
    "1.0.0",
    "Sets the string value of a key, ignoring its type.",
    set,
    keys = (1, 1)
);
pub const GET: Command = cmd!(
    GROUP,
    "get",
    2,
    &["readonly", "fast"],
    R_FAST,
    "1.0.0",
    "Returns the string value of a key.",
    get,
    keys = (1, 1)
);
pub const GETDEL: Command = cmd!(
    GROUP,
    "getdel",
    2,
    &["write", "fast"],
    W_FAST,
    "6.2.0",
    "Returns the string value of a key after deleting the key.",
    getdel,
    keys = (1, 1)
);
pub const GETEX: Command = cmd!(
    GROUP,
    "getex",
    -2,
    &["write", "fast"],
    W_FAST,
    "6.2.0",
    "Returns the string value of a key after setting its expiration time.",
    getex,
    keys = (1, 1)
);
pub const MGET: Command = cmd!(
    GROUP,
    "mget",
    -2,
    &["readonly", "fast"],
    R_FAST,
    "1.0.0",
    "Atomically returns the string values of one or more keys.",
    mget,
    keys = (1, -1)
);
pub const MSET: Command = cmd!(
    GROUP,
    "mset",
    -3,
    &["write", "denyoom"],
    &["@write", "@string", "@slow"],
    "1.0.1",
    "Atomically creates or modifies the string values of one or more keys.",
    mset,
    keys = (1, -1)
);
pub const INCR: Command = cmd!(
    GROUP,
    "incr",
    2,
    &["write", "denyoom", "fast"],
    W_FAST,
    "1.0.0",
    "Increments the integer value of a key by one.",
    incr,
    keys = (1, 1)
);
pub const INCRBY: Command = cmd!(
    GROUP,
    "incrby",
    3,
    &["write", "denyoom", "fast"],
    W_FAST,
    "1.0.0",
    "Increments the integer value of a key by a number.",
    incrby,
    keys = (1, 1)
);
pub const DECR: Command = cmd!(
    GROUP,
    "decr",
    2,
    &["write", "denyoom", "fast"],
    W_FAST,
    "1.0.0",
    "Decrements the integer value of a key by one.",
    decr,
    keys = (1, 1)
);
pub const DECRBY: Command = cmd!(
    GROUP,
    "decrby",
    3,
    &["write", "denyoom", "fast"],
    W_FAST,
    "1.0.0",
    "Decrements a number from the integer value of a key.",
    decrby,
    keys = (1, 1)
);
pub const APPEND: Command = cmd!(
    GROUP,
    "append",
    3,
    &["write", "denyoom", "fast"],
    W_FAST,
    "2.0.0",
    "Appends a string to the value of a key. Creates the key if it doesn't exist.",
    append,
    keys = (1, 1)
);
pub const STRLEN: Command = cmd!(
    GROUP,
    "strlen",
    2,
    &["readonly", "fast"],
    R_FAST,
    "2.2.0",
    "Returns the length of a string value.",
    strlen,
    keys = (1, 1)
);

/// The expiry options SET and GETEX share.
#[derive(Default, Clone, Copy)]
struct Opts {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    /// Which of EX PX EXAT PXAT was given, and its argument index.
    expire: Option<(ExpireKind, usize)>,
}

#[derive(Clone, Copy, PartialEq)]
enum ExpireKind {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// Redis's `parseExtendedStringArgumentsOrReply`; `set` is false for GETEX.
fn parse_opts(args: &[Bytes], set: bool) -> Option<Opts> {
    let mut o = Opts::default();
    let mut j = if set { 3 } else { 2 };
    while j < args.len() {
        let opt = args[j].to_ascii_uppercase();
        let has_next = j + 1 < args.len();
        let kind = o.expire.map(|(k, _)| k);
        let other_expire = |me: ExpireKind| kind.is_some_and(|k| k != me);
        match opt.as_slice() {
            b"NX" if set && !o.xx => o.nx = true,
            b"XX" if set && !o.nx => o.xx = true,
            b"GET" if set => o.get = true,
            b"KEEPTTL" if set && !o.persist && kind.is_none() => o.keepttl = true,
            b"PERSIST" if !set && kind.is_none() && !o.keepttl => o.persist = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let me = match opt.as_slice() {
                    b"EX" => ExpireKind::Ex,
                    b"PX" => ExpireKind::Px,
                    b"EXAT" => ExpireKind::ExAt,
                    _ => ExpireKind::PxAt,
                };
                if o.keepttl || o.persist || other_expire(me) || !has_next {
                    return None;
                }
                o.expire = Some((me, j + 1));
                j += 1;
            }
            _ => return None,
        }
        j += 1;
    }
    Some(o)
}

/// Redis's `getExpireMillisecondsOrReply`: the absolute expiry in ms.
fn expire_ms(args: &[Bytes], o: &Opts, name: &str) -> Result<Option<u64>, String> {
    let Some((kind, at)) = o.expire else {
        return Ok(None);
    };
    let v = parse_i64(&args[at]).ok_or_else(|| NOT_INT.to_string())?;
    let bad = || format!("ERR invalid expire time in '{name}' command");
    let seconds = matches!(kind, ExpireKind::Ex | ExpireKind::ExAt);
    if v <= 0 || (seconds && v > i64::MAX / 1000) {
        return Err(bad());
    }
    let mut ms = if seconds { v * 1000 } else { v };
    if matches!(kind, ExpireKind::Ex | ExpireKind::Px) {
        ms = ms.checked_add(now_ms() as i64).ok_or_else(bad)?;
    }
    Ok(Some(ms as u64))
}

/// The string under `key`: `Ok(None)` if missing, `Err` if another type.
fn string_of<'a>(db: &'a mut Db, key: &[u8]) -> Result<Option<&'a mut Str>, ()> {
    match db.get(key) {
        None => Ok(None),
        Some(Value::Str(v)) => Ok(Some(v)),
        Some(_) => Err(()),
    }
}

fn reply_string(db: &mut Db, key: &[u8], r: &mut Reply<'_>) -> bool {
    match string_of(db, key) {
        Ok(Some(v)) => r.bulk(v),
        Ok(None) => r.null(),
        Err(()) => {
            r.error(WRONGTYPE);
            return false;
        }
    }
    true
}

fn set(s: &mut Session, args: &[Bytes]) -> bool {
    let Some(o) = parse_opts(args, true) else {
        s.reply().error(SYNTAX);
        return true;
    };
    let when = match expire_ms(args, &o, "set") {
        Ok(w) => w,
        Err(e) => {
            s.reply().error(&e);
            return true;
        }
    };
    let (key, value) = (&args[1], &args[2]);
    keys(s, |db, r| {
        if o.get && !reply_string(db, key, r) {
            return;
        }
        let found = db.exists(key);
        if (o.nx && found) || (o.xx && !found) {
            if !o.get {
                r.null();
            }
            return;
        }
        db.set(key, Value::Str(Str::from_slice(value)), o.keepttl);
        db.notify(notify::STRING, "set", key);
        if let Some(t) = when {
            db.set_expire(key, Some(t));
            db.notify(notify::GENERIC, "expire", key);
        }
        if !o.get {
            r.simple("OK");
        }
    });
    true
}

fn get(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        reply_string(db, &args[1], r);
    });
    true
}

fn getdel(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        if reply_string(db, key, r) && db.delete(key) {
            db.notify(notify::GENERIC, "del", key);
        }
    });
    true
}

fn getex(s: &mut Session, args: &[Bytes]) -> bool {
    let Some(o) = parse_opts(args, false) else {
        s.reply().error(SYNTAX);
        return true;
    };
    let key = &args[1];
    keys(s, |db, r| {
        match string_of(db, key) {
            Ok(Some(_)) => {}
            Ok(None) => return r.null(),
            Err(()) => return r.error(WRONGTYPE),
        }
        let when = match expire_ms(args, &o, "getex") {
            Ok(w) => w,
            Err(e) => return r.error(&e),
        };
        reply_string(db, key, r);
        let absolute = matches!(o.expire, Some((ExpireKind::ExAt | ExpireKind::PxAt, _)));
        match when {
            Some(t) if absolute && t <= now_ms() => {
                db.remove_entry(key);
                db.notify(notify::GENERIC, "del", key);
            }
            Some(t) => {
                db.set_expire(key, Some(t));
                db.touch(key);
                db.notify(notify::GENERIC, "expire", key);
            }
            None if o.persist && db.entry(key).is_some_and(|e| e.expire_at().is_some()) => {
                db.set_expire(key, None);
                db.touch(key);
                db.notify(notify::GENERIC, "persist", key);
            }
            None => {}
        }
    });
    true
}

fn mget(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        r.array(args.len() - 1);
        for k in &args[1..] {
            match db.get(k) {
                Some(Value::Str(v)) => r.bulk(v),
                _ => r.null(),
            }
        }
    });
    true
}

fn mset(s: &mut Session, args: &[Bytes]) -> bool {
    if args.len().is_multiple_of(2) {
        return super::common::arity_error(s, "mset");
    }
    keys(s, |db, r| {
        for pair in args[1..].chunks(2) {
            db.set(&pair[0], Value::Str(Str::from_slice(&pair[1])), false);
            db.notify(notify::STRING, "set", &pair[0]);
        }
        r.simple("OK");
    });
    true
}

/// Redis's `incrDecrCommand`; the key keeps its TTL.
fn incr_by(s: &mut Session, key: &[u8], by: i64) -> bool {
    keys(s, |db, r| {
        let old = match string_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => 0,
            Ok(Some(v)) => match parse_i64(v) {
                Some(n) => n,
                None => return r.error(NOT_INT),
            },
        };
        let Some(new) = old.checked_add(by) else {
            return r.error("ERR increment or decrement would overflow");
        };
        let text = Str::from_slice(itoa::Buffer::new().format(new).as_bytes());
        if db.modify(key, |v| *v = Value::Str(text.clone())).is_none() {
            db.set(key, Value::Str(text), false);
        }
        db.notify(notify::STRING, "incrby", key);
        r.int(new);
    });
    true
}

fn incr(s: &mut Session, args: &[Bytes]) -> bool {
    incr_by(s, &args[1], 1)
}

fn decr(s: &mut Session, args: &[Bytes]) -> bool {
    incr_by(s, &args[1], -1)
}

fn incrby(s: &mut Session, args: &[Bytes]) -> bool {
    match parse_i64(&args[2]) {
        Some(by) => incr_by(s, &args[1], by),
        None => {
            s.reply().error(NOT_INT);
            true
        }
    }
}

fn decrby(s: &mut Session, args: &[Bytes]) -> bool {
    match parse_i64(&args[2]) {
        Some(i64::MIN) => {
            s.reply().error("ERR decrement would overflow");
            true
        }
        Some(by) => incr_by(s, &args[1], -by),
        None => {
            s.reply().error(NOT_INT);
            true
        }
    }
}

fn append(s: &mut Session, args: &[Bytes]) -> bool {
    let (key, tail) = (&args[1], &args[2]);
    let max = s.broker.config.limits.max_bulk_len.bytes();
    keys(s, |db, r| {
        let len = match string_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => {
                db.set(key, Value::Str(Str::from_slice(tail)), false);
                tail.len()
            }
            Ok(Some(v)) => {
                if (v.len() + tail.len()) as u64 > max {
                    return r.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
                }
                db.modify(key, |v| match v {
                    Value::Str(v) => {
                        v.extend_from_slice(tail);
                        v.len()
                    }
                    _ => 0,
                })
                .unwrap_or(0)
            }
        };
        db.notify(notify::STRING, "append", key);
        r.int(len as i64);
    });
    true
}

fn strlen(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match string_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(v) => r.int(v.map_or(0, |v| v.len()) as i64),
    });
    true
}
