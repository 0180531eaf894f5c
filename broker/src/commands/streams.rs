//! Stream commands that write: XADD, XTRIM, XDEL, and XLEN, plus what
//! the reading commands ([`super::stream_reads`]) share with them (the
//! stream lookup and the entry reply shape). No consumer groups (XGROUP,
//! XREADGROUP, XACK ... are unknown commands; `XINFO GROUPS` answers with
//! none): socket.io's Streams adapter reads with plain XREAD.
//!
//! Argument handling is Redis's `t_stream.c` (`streamParseAddOrTrimArgs`),
//! order of checks included. An XADD wakes the clients blocked in XREAD on
//! its key ([`crate::keyspace::Db::wake`]).

use super::common::{arity_error, keys, NOT_INT, SYNTAX, WRONGTYPE};
use super::spec::{cmd, Command};
use crate::codec::{parse_i64, Reply};
use crate::keyspace::stream::{parse_id, Stream, StreamId, Trim};
use crate::keyspace::{notify, now_ms, Db, Value};
use crate::session::Session;
use bytes::Bytes;

pub(super) const GROUP: &str = "stream";
pub(super) const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";

pub const XADD: Command = cmd!(
    GROUP,
    "xadd",
    -5,
    &["write", "denyoom", "fast"],
    &["@write", "@stream", "@fast"],
    "5.0.0",
    "Appends a new message to a stream. Creates the key if it doesn't exist.",
    xadd,
    keys = (1, 1)
);
pub const XLEN: Command = cmd!(
    GROUP,
    "xlen",
    2,
    &["readonly", "fast"],
    &["@read", "@stream", "@fast"],
    "5.0.0",
    "Return the number of messages in a stream.",
    xlen,
    keys = (1, 1)
);
pub const XDEL: Command = cmd!(
    GROUP,
    "xdel",
    -3,
    &["write", "fast"],
    &["@write", "@stream", "@fast"],
    "5.0.0",
    "Returns the number of messages after removing them from a stream.",
    xdel,
    keys = (1, 1)
);
pub const XTRIM: Command = cmd!(
    GROUP,
    "xtrim",
    -4,
    &["write"],
    &["@write", "@stream", "@slow"],
    "5.0.0",
    "Deletes messages from the beginning of a stream.",
    xtrim,
    keys = (1, 1)
);
/// The stream under `key`: `Ok(None)` if missing, `Err` if another type.
pub(super) fn stream_of<'a>(db: &'a mut Db, key: &[u8]) -> Result<Option<&'a mut Stream>, ()> {
    match db.get(key) {
        None => Ok(None),
        Some(Value::Stream(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

pub(super) fn write_entry(r: &mut Reply<'_>, id: StreamId, fields: &[&[u8]]) {
    r.array(2);
    r.bulk(id.text().as_bytes());
    r.array(fields.len());
    for f in fields {
        r.bulk(f);
    }
}

/// Entries from `start` to `end` inclusive, at most `count` (0 = all).
pub(super) fn write_range(
    r: &mut Reply<'_>,
    s: &Stream,
    start: StreamId,
    end: StreamId,
    count: usize,
    rev: bool,
) {
    let picked = s.range(start, end, count, rev);
    r.array(picked.len());
    for (id, fields) in picked {
        write_entry(r, id, &fields);
    }
}

/// XADD / XTRIM options, as Redis's `streamAddTrimArgs`.
#[derive(Default)]
struct AddTrim {
    trim: Option<Trim>,
    approx: bool,
    limit: u64,
    nomkstream: bool,
    /// The id XADD was given (`None` for `*`), and whether it had a sequence.
    id: Option<(StreamId, bool)>,
    /// Index of the first field (XADD) or of the end (XTRIM).
    next: usize,
}

/// Redis's `streamParseAddOrTrimArgsOrReply`.
fn parse_add_trim(args: &[Bytes], xadd: bool) -> Result<AddTrim, String> {
    let mut a = AddTrim::default();
    let mut limit_given = false;
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - 1 - i;
        let opt = args[i].to_ascii_lowercase();
        if xadd && opt == b"*" {
            break;
        } else if (opt == b"maxlen" || opt == b"minid") && more > 0 {
            if a.trim.is_some() {
                return Err(
                    "ERR syntax error, MAXLEN and MINID options at the same time are not compatible"
                        .into(),
                );
            }
            a.approx = false;
            let next = &args[i + 1][..];
            if more >= 2 && (next == b"~" || next == b"=") {
                a.approx = next == b"~";
                i += 1;
            }
            let value = &args[i + 1];
            if opt == b"maxlen" {
                let n = parse_i64(value).ok_or_else(|| NOT_INT.to_string())?;
                if n < 0 {
                    return Err("ERR The MAXLEN argument must be >= 0.".into());
                }
                a.trim = Some(Trim::MaxLen(n as u64));
            } else {
                let (id, _) =
                    parse_id(value, true, 0, false).ok_or_else(|| INVALID_ID.to_string())?;
                a.trim = Some(Trim::MinId(id));
            }
            i += 1;
        } else if opt == b"limit" && more > 0 {
            let n = parse_i64(&args[i + 1]).ok_or_else(|| NOT_INT.to_string())?;
            if n < 0 {
                return Err("ERR The LIMIT argument must be >= 0.".into());
            }
            a.limit = n as u64;
            limit_given = true;
            i += 1;
        } else if xadd && opt == b"nomkstream" {
            a.nomkstream = true;
        } else if xadd {
            let id = parse_id(&args[i], true, 0, true).ok_or_else(|| INVALID_ID.to_string())?;
            a.id = Some(id);
            break;
        } else {
            return Err(SYNTAX.into());
        }
        i += 1;
    }
    // Past `*` or the id.
    a.next = if xadd { i + 1 } else { i };
    if a.limit > 0 && a.trim.is_none() {
        return Err(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy".into(),
        );
    }
    if !xadd && a.trim.is_none() {
        return Err("ERR syntax error, XTRIM must be called with a trimming strategy".into());
    }
    if limit_given {
        if !a.approx {
            return Err(
                "ERR syntax error, LIMIT cannot be used without the special ~ option".into(),
            );
        }
    } else if a.approx {
        // Redis: 100 * stream-node-max-entries.
        a.limit = 100 * crate::keyspace::stream::NODE_MAX_ENTRIES as u64;
    } else {
        a.limit = 0;
    }
    Ok(a)
}

/// The id an XADD appends with, or Redis's error.
fn next_id(s: &Stream, given: Option<(StreamId, bool)>) -> Result<StreamId, &'static str> {
    const SMALLER: &str =
        "ERR The ID specified in XADD is equal or smaller than the target stream top item";
    let last = s.last_id;
    match given {
        None => {
            let ms = now_ms();
            if ms > last.ms {
                Ok(StreamId { ms, seq: 0 })
            } else {
                last.next().ok_or(SMALLER)
            }
        }
        Some((id, false)) => {
            if id.ms == last.ms {
                if last.seq == u64::MAX {
                    return Err(SMALLER);
                }
                Ok(StreamId {
                    ms: id.ms,
                    seq: last.seq + 1,
                })
            } else if id.ms > last.ms {
                Ok(StreamId { ms: id.ms, seq: 0 })
            } else {
                Err(SMALLER)
            }
        }
        Some((id, true)) => {
            if id > last {
                Ok(id)
            } else {
                Err(SMALLER)
            }
        }
    }
}

fn xadd(s: &mut Session, args: &[Bytes]) -> bool {
    let a = match parse_add_trim(args, true) {
        Ok(a) => a,
        Err(e) => {
            s.reply().error(&e);
            return true;
        }
    };
    let fields = args.get(a.next..).unwrap_or(&[]);
    if fields.len() < 2 || !fields.len().is_multiple_of(2) {
        return arity_error(s, "xadd");
    }
    if a.id == Some((StreamId::MIN, true)) {
        s.reply()
            .error("ERR The ID specified in XADD must be greater than 0-0");
        return true;
    }
    let key = &args[1];
    keys(s, |db, r| {
        match stream_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) if a.nomkstream => return r.null(),
            Ok(None) => db.set(key, Value::Stream(Box::default()), false),
            Ok(Some(_)) => {}
        }
        let outcome = db.modify(key, |v| {
            let Value::Stream(st) = v else {
                return Err(WRONGTYPE);
            };
            if st.last_id == StreamId::MAX {
                return Err(
                    "ERR The stream has exhausted the last possible ID, unable to add more items",
                );
            }
            let id = next_id(st, a.id)?;
            st.append(id, fields);
            let trimmed = a.trim.map_or(0, |t| st.trim(t, a.approx, a.limit));
            Ok((id, trimmed))
        });
        match outcome {
            Some(Ok((id, trimmed))) => {
                r.bulk(id.text().as_bytes());
                db.notify(notify::STREAM, "xadd", key);
                if trimmed > 0 {
                    db.notify(notify::STREAM, "xtrim", key);
                }
                db.wake(key);
            }
            Some(Err(e)) => r.error(e),
            None => r.null(),
        }
    });
    true
}

fn xtrim(s: &mut Session, args: &[Bytes]) -> bool {
    let a = match parse_add_trim(args, false) {
        Ok(a) => a,
        Err(e) => {
            s.reply().error(&e);
            return true;
        }
    };
    let key = &args[1];
    keys(s, |db, r| {
        match stream_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => return r.int(0),
            Ok(Some(_)) => {}
        }
        let n = db
            .modify(key, |v| match (v, a.trim) {
                (Value::Stream(st), Some(t)) => st.trim(t, a.approx, a.limit),
                _ => 0,
            })
            .unwrap_or(0);
        if n > 0 {
            db.notify(notify::STREAM, "xtrim", key);
        }
        r.int(n as i64);
    });
    true
}

fn xlen(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match stream_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(st) => r.int(st.map_or(0, |s| s.len()) as i64),
    });
    true
}

fn xdel(s: &mut Session, args: &[Bytes]) -> bool {
    let key = &args[1];
    keys(s, |db, r| {
        match stream_of(db, key) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => return r.int(0),
            Ok(Some(_)) => {}
        }
        let mut ids = Vec::with_capacity(args.len() - 2);
        for a in &args[2..] {
            match parse_id(a, true, 0, false) {
                Some((id, _)) => ids.push(id),
                None => return r.error(INVALID_ID),
            }
        }
        let n = db
            .modify(key, |v| match v {
                Value::Stream(st) => ids.iter().filter(|id| st.delete(**id)).count(),
                _ => 0,
            })
            .unwrap_or(0);
        if n > 0 {
            db.notify(notify::STREAM, "xdel", key);
        }
        r.int(n as i64);
    });
    true
}
