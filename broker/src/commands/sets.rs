//! Set commands: SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD, as
//! Redis's `t_set.c`: create the key on write, delete it when its last
//! member goes (with a `del` event after the command's own). SMEMBERS
//! answers in Redis's order where clients can see it (see
//! [`crate::keyspace::SetVal::members`]).

use super::common::{keys, WRONGTYPE};
use super::hashes::{RO_FAST, W_OOM_FAST};
use super::spec::{key_cmd, Command};
use crate::keyspace::{notify, Db, SetVal, Value};
use crate::session::Session;
use bytes::Bytes;

const SR: &[&str] = &["@read", "@set", "@fast"];
const SW: &[&str] = &["@write", "@set", "@fast"];

pub const SADD: Command = key_cmd!(
    "set",
    "sadd",
    -3,
    W_OOM_FAST,
    SW,
    "1.0.0",
    "Adds one or more members to a set. Creates the key if it doesn't exist.",
    sadd
);
pub const SREM: Command = key_cmd!(
    "set",
    "srem",
    -3,
    &["write", "fast"],
    SW,
    "1.0.0",
    "Removes one or more members from a set. Deletes the set if the last member was removed.",
    srem
);
pub const SMEMBERS: Command = key_cmd!(
    "set",
    "smembers",
    2,
    &["readonly"],
    &["@read", "@set", "@slow"],
    "1.0.0",
    "Returns all members of a set.",
    smembers
);
pub const SISMEMBER: Command = key_cmd!(
    "set",
    "sismember",
    3,
    RO_FAST,
    SR,
    "1.0.0",
    "Determines whether a member belongs to a set.",
    sismember
);
pub const SMISMEMBER: Command = key_cmd!(
    "set",
    "smismember",
    -3,
    RO_FAST,
    SR,
    "6.2.0",
    "Determines whether multiple members belong to a set.",
    smismember
);
pub const SCARD: Command = key_cmd!(
    "set",
    "scard",
    2,
    RO_FAST,
    SR,
    "1.0.0",
    "Returns the number of members in a set.",
    scard
);

/// The set under `key`: `Ok(None)` if missing, `Err` if another type.
fn set_of<'a>(db: &'a mut Db, key: &[u8]) -> Result<Option<&'a mut SetVal>, ()> {
    match db.get(key) {
        None => Ok(None),
        Some(Value::Set(v)) => Ok(Some(&mut **v)),
        Some(_) => Err(()),
    }
}

fn sadd(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        match set_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => db.set(key, Value::Set(Box::default()), false),
            Ok(Some(_)) => {}
        }
        let n = db
            .modify(key, |v| match v {
                Value::Set(set) => args[2..].iter().filter(|m| set.insert(m)).count(),
                _ => 0,
            })
            .unwrap_or(0);
        if n > 0 {
            db.notify(notify::SET, "sadd", key);
        }
        r.int(n as i64);
    });
    true
}

fn srem(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        match set_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => return r.int(0),
            Ok(Some(_)) => {}
        }
        let n = db
            .modify(key, |v| match v {
                Value::Set(set) => args[2..].iter().filter(|m| set.remove(m)).count(),
                _ => 0,
            })
            .unwrap_or(0);
        if n > 0 {
            db.notify(notify::SET, "srem", key);
            if !db.exists(key) {
                db.notify(notify::GENERIC, "del", key);
            }
        }
        r.int(n as i64);
    });
    true
}

fn smembers(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match set_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(None) => r.set(0),
        Ok(Some(set)) => {
            let members = set.members();
            r.set(members.len());
            for m in members {
                r.bulk(m);
            }
        }
    });
    true
}

fn sismember(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match set_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(set) => r.int(i64::from(set.is_some_and(|v| v.set.contains(&args[2][..])))),
    });
    true
}

fn smismember(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match set_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(set) => {
            r.array(args.len() - 2);
            for m in &args[2..] {
                r.int(i64::from(
                    set.as_ref().is_some_and(|v| v.set.contains(&m[..])),
                ));
            }
        }
    });
    true
}

fn scard(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match set_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(set) => r.int(set.map_or(0, |v| v.set.len()) as i64),
    });
    true
}
