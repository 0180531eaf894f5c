//! Hash commands: HSET HSETNX HGET HMGET HGETALL HDEL HLEN HEXISTS HKEYS
//! HVALS HINCRBY, as Redis's `t_hash.c`: look the key up (WRONGTYPE if it
//! holds something else), create it on write, delete it when its last
//! field goes (with a `del` event after the command's own).

use super::common::{arity_error, keys, NOT_INT, WRONGTYPE};
use super::spec::{key_cmd, Command};
use crate::codec::{parse_i64, Reply};
use crate::keyspace::{notify, Db, HashVal, Value};
use crate::session::Session;
use bytes::Bytes;

const HR: &[&str] = &["@read", "@hash", "@fast"];
const HW: &[&str] = &["@write", "@hash", "@fast"];
pub(super) const RO_FAST: &[&str] = &["readonly", "fast"];
pub(super) const W_OOM_FAST: &[&str] = &["write", "denyoom", "fast"];

pub const HSET: Command = key_cmd!(
    "hash",
    "hset",
    -4,
    W_OOM_FAST,
    HW,
    "2.0.0",
    "Creates or modifies the value of a field in a hash.",
    hset
);
pub const HSETNX: Command = key_cmd!(
    "hash",
    "hsetnx",
    4,
    W_OOM_FAST,
    HW,
    "2.0.0",
    "Sets the value of a field in a hash only when the field doesn't exist.",
    hsetnx
);
pub const HGET: Command = key_cmd!(
    "hash",
    "hget",
    3,
    RO_FAST,
    HR,
    "2.0.0",
    "Returns the value of a field in a hash.",
    hget
);
pub const HMGET: Command = key_cmd!(
    "hash",
    "hmget",
    -3,
    RO_FAST,
    HR,
    "2.0.0",
    "Returns the values of all fields in a hash.",
    hmget
);
pub const HGETALL: Command = key_cmd!(
    "hash",
    "hgetall",
    2,
    &["readonly"],
    &["@read", "@hash", "@slow"],
    "2.0.0",
    "Returns all fields and values in a hash.",
    hgetall
);
pub const HDEL: Command = key_cmd!("hash", "hdel", -3, &["write", "fast"], HW, "2.0.0", "Deletes one or more fields and their values from a hash. Deletes the hash if no fields remain.", hdel);
pub const HLEN: Command = key_cmd!(
    "hash",
    "hlen",
    2,
    RO_FAST,
    HR,
    "2.0.0",
    "Returns the number of fields in a hash.",
    hlen
);
pub const HEXISTS: Command = key_cmd!(
    "hash",
    "hexists",
    3,
    RO_FAST,
    HR,
    "2.0.0",
    "Determines whether a field exists in a hash.",
    hexists
);
pub const HKEYS: Command = key_cmd!(
    "hash",
    "hkeys",
    2,
    &["readonly"],
    &["@read", "@hash", "@slow"],
    "2.0.0",
    "Returns all fields in a hash.",
    hkeys
);
pub const HVALS: Command = key_cmd!(
    "hash",
    "hvals",
    2,
    &["readonly"],
    &["@read", "@hash", "@slow"],
    "2.0.0",
    "Returns all values in a hash.",
    hvals
);
pub const HINCRBY: Command = key_cmd!("hash", "hincrby", 4, W_OOM_FAST, HW, "2.0.0", "Increments the integer value of a field in a hash by a number. Uses 0 as initial value if the field doesn't exist.", hincrby);

/// The hash under `key`: `Ok(None)` if missing, `Err` if another type.
fn hash_of<'a>(db: &'a mut Db, key: &[u8]) -> Result<Option<&'a mut HashVal>, ()> {
    match db.get(key) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(&mut **h)),
        Some(_) => Err(()),
    }
}

/// Runs `f` on the hash under `key`, creating it first; false (and a
/// WRONGTYPE reply) if the key holds another type.
fn write_hash<R>(
    db: &mut Db,
    key: &[u8],
    r: &mut Reply<'_>,
    f: impl FnOnce(&mut HashVal) -> R,
) -> Option<R> {
    match hash_of(db, key) {
        Err(()) => {
            r.error(WRONGTYPE);
            return None;
        }
        Ok(None) => db.set(key, Value::Hash(Box::default()), false),
        Ok(Some(_)) => {}
    }
    db.modify(key, |v| match v {
        Value::Hash(h) => Some(f(h)),
        _ => None,
    })
    .flatten()
}

fn hset(s: &mut Session, args: &[Bytes]) -> bool {
    if !args.len().is_multiple_of(2) {
        return arity_error(s, "hset");
    }
    let key = &args[1];
    keys(s, |db, r| {
        let created = write_hash(db, key, r, |h| {
            args[2..]
                .chunks(2)
                .filter(|p| h.insert(&p[0], &p[1]))
                .count()
        });
        if let Some(n) = created {
            db.notify(notify::HASH, "hset", key);
            r.int(n as i64);
        }
    });
    true
}

fn hsetnx(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        match hash_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(Some(h)) if h.map.contains_key(&args[2][..]) => return r.int(0),
            _ => {}
        }
        if write_hash(db, key, r, |h| h.insert(&args[2], &args[3])).is_some() {
            db.notify(notify::HASH, "hset", key);
            r.int(1);
        }
    });
    true
}

fn hget(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match hash_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(h) => match h.and_then(|h| h.map.get(&args[2][..])) {
            Some(v) => r.bulk(v),
            None => r.null(),
        },
    });
    true
}

fn hmget(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match hash_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(h) => {
            r.array(args.len() - 2);
            for f in &args[2..] {
                match h.as_ref().and_then(|h| h.map.get(&f[..])) {
                    Some(v) => r.bulk(v),
                    None => r.null(),
                }
            }
        }
    });
    true
}

#[derive(Clone, Copy)]
enum Part {
    All,
    Keys,
    Vals,
}

fn hash_dump(s: &mut Session, key: &[u8], part: Part) -> bool {
    keys(s, |db, r| match hash_of(db, key) {
        Err(()) => r.error(WRONGTYPE),
        Ok(None) => match part {
            Part::All => r.map(0),
            _ => r.array(0),
        },
        Ok(Some(h)) => {
            match part {
                Part::All => r.map(h.map.len()),
                _ => r.array(h.map.len()),
            }
            for (f, v) in &h.map {
                if !matches!(part, Part::Vals) {
                    r.bulk(f);
                }
                if !matches!(part, Part::Keys) {
                    r.bulk(v);
                }
            }
        }
    });
    true
}

fn hgetall(s: &mut Session, args: &[Bytes]) -> bool {
    hash_dump(s, &args[1], Part::All)
}

fn hkeys(s: &mut Session, args: &[Bytes]) -> bool {
    hash_dump(s, &args[1], Part::Keys)
}

fn hvals(s: &mut Session, args: &[Bytes]) -> bool {
    hash_dump(s, &args[1], Part::Vals)
}

fn hdel(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        match hash_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => return r.int(0),
            Ok(Some(_)) => {}
        }
        let n = db
            .modify(key, |v| match v {
                Value::Hash(h) => args[2..].iter().filter(|f| h.remove(f)).count(),
                _ => 0,
            })
            .unwrap_or(0);
        if n > 0 {
            db.notify(notify::HASH, "hdel", key);
            if !db.exists(key) {
                db.notify(notify::GENERIC, "del", key);
            }
        }
        r.int(n as i64);
    });
    true
}

fn hlen(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match hash_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(h) => r.int(h.map_or(0, |h| h.map.len()) as i64),
    });
    true
}

fn hexists(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match hash_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(h) => r.int(i64::from(
            h.is_some_and(|h| h.map.contains_key(&args[2][..])),
        )),
    });
    true
}

fn hincrby(s: &mut Session, args: &[Bytes]) -> bool {
    let Some(by) = parse_i64(&args[3]) else {
        s.reply().error(NOT_INT);
        return true;
    };
    let (key, field) = (&args[1], &args[2]);
    keys(s, |db, r| {
        let old = match hash_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(h) => match h.and_then(|h| h.map.get(&field[..])) {
                None => 0,
                Some(v) => match parse_i64(v) {
                    Some(n) => n,
                    None => return r.error("ERR hash value is not an integer"),
                },
            },
        };
        let Some(new) = old.checked_add(by) else {
            return r.error("ERR increment or decrement would overflow");
        };
        if write_hash(db, key, r, |h| h.insert(field, new.to_string().as_bytes())).is_some() {
            db.notify(notify::HASH, "hincrby", key);
            r.int(new);
        }
    });
    true
}
