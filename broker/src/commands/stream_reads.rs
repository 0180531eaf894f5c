//! Stream commands that read: XRANGE, XREVRANGE (exclusive `(` bounds,
//! COUNT), XREAD (COUNT, BLOCK, `$`, many streams) and XINFO STREAM /
//! GROUPS. Replies and checks follow Redis's `t_stream.c`
//! (`xrangeGenericCommand`, `xreadCommand`, `xinfoReplyWithStreamInfo`).
//!
//! A blocking XREAD that finds nothing registers the client on its keys
//! under the keyspace lock (so no XADD slips in between) and hands the
//! wait to [`crate::blocking`]; inside EXEC it answers at once instead.

use super::common::{keys, NOT_INT, SYNTAX, WRONGTYPE};
use super::spec::{cmd, Command};
use super::streams::{stream_of, write_entry, write_range, GROUP, INVALID_ID};
use crate::blocking::Blocked;
use crate::codec::{parse_i64, Reply};
use crate::keyspace::stream::{parse_id, StreamId};
use crate::keyspace::{now_ms, Db};
use crate::session::Session;
use bytes::Bytes;
use std::sync::Arc;

pub const XREAD: Command = cmd!(
    GROUP,
    "xread",
    -4,
    &["readonly", "blocking"],
    &["@read", "@stream", "@slow", "@blocking"],
    "5.0.0",
    "Returns messages from multiple streams with IDs greater than the ones requested. Blocks until a message is available otherwise.",
    xread
);
pub const XRANGE: Command = cmd!(
    GROUP,
    "xrange",
    -4,
    &["readonly"],
    &["@read", "@stream", "@slow"],
    "5.0.0",
    "Returns the messages from a stream within a range of IDs.",
    xrange,
    keys = (1, 1)
);
pub const XREVRANGE: Command = cmd!(
    GROUP,
    "xrevrange",
    -4,
    &["readonly"],
    &["@read", "@stream", "@slow"],
    "5.0.0",
    "Returns the messages from a stream within a range of IDs in reverse order.",
    xrevrange,
    keys = (1, 1)
);
pub const XINFO: Command = Command {
    subcommands: &[
        cmd!(
            GROUP,
            "xinfo|stream",
            -3,
            &["readonly"],
            &["@read", "@stream", "@slow"],
            "5.0.0",
            "Returns information about a stream.",
            xinfo_stream,
            keys = (2, 2)
        ),
        cmd!(
            GROUP,
            "xinfo|groups",
            3,
            &["readonly"],
            &["@read", "@stream", "@slow"],
            "5.0.0",
            "Returns a list of the consumer groups of a stream.",
            xinfo_groups,
            keys = (2, 2)
        ),
        cmd!(
            GROUP,
            "xinfo|help",
            2,
            &["loading", "stale"],
            &["@stream", "@slow"],
            "5.0.0",
            "Returns helpful text about the different subcommands.",
            xinfo_help
        ),
    ],
    ..cmd!(
        GROUP,
        "xinfo",
        -2,
        &[],
        &[],
        "5.0.0",
        "A container for stream introspection commands.",
        xinfo_help
    )
};

/// An XRANGE bound: `(` makes it exclusive (Redis's `streamParseIntervalIDOrReply`).
fn range_bound(arg: &[u8], missing_seq: u64) -> Option<(StreamId, bool)> {
    if arg.len() > 1 && arg[0] == b'(' {
        parse_id(&arg[1..], true, missing_seq, false).map(|(id, _)| (id, true))
    } else {
        parse_id(arg, false, missing_seq, false).map(|(id, _)| (id, false))
    }
}

fn range_generic(s: &mut Session, args: &[Bytes], rev: bool) -> bool {
    let (start_arg, end_arg) = if rev {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    let Some((mut start, start_ex)) = range_bound(start_arg, 0) else {
        s.reply().error(INVALID_ID);
        return true;
    };
    if start_ex {
        match start.next() {
            Some(n) => start = n,
            None => {
                s.reply().error("ERR invalid start ID for the interval");
                return true;
            }
        }
    }
    let Some((mut end, end_ex)) = range_bound(end_arg, u64::MAX) else {
        s.reply().error(INVALID_ID);
        return true;
    };
    if end_ex {
        match end.prev() {
            Some(p) => end = p,
            None => {
                s.reply().error("ERR invalid end ID for the interval");
                return true;
            }
        }
    }
    let mut count: i64 = -1;
    let mut j = 4;
    while j < args.len() {
        if args[j].eq_ignore_ascii_case(b"COUNT") && j + 1 < args.len() {
            match parse_i64(&args[j + 1]) {
                Some(c) => count = c.max(0),
                None => {
                    s.reply().error(NOT_INT);
                    return true;
                }
            }
            j += 2;
        } else {
            s.reply().error(SYNTAX);
            return true;
        }
    }
    keys(s, |db, r| match stream_of(db, &args[1]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(None) => r.array(0),
        Ok(Some(_)) if count == 0 => r.null_array(),
        Ok(Some(st)) => {
            let count = if count < 0 { 0 } else { count as usize };
            write_range(r, st, start, end, count, rev);
        }
    });
    true
}

fn xrange(s: &mut Session, args: &[Bytes]) -> bool {
    range_generic(s, args, false)
}

fn xrevrange(s: &mut Session, args: &[Bytes]) -> bool {
    range_generic(s, args, true)
}

/// A parsed XREAD: the keys, the ids to read after (`$` resolved later),
/// COUNT and BLOCK.
struct ReadArgs {
    keys: Vec<Bytes>,
    ids: Vec<Option<StreamId>>,
    count: usize,
    /// Milliseconds; `Some(0)` blocks forever.
    block: Option<u64>,
}

fn parse_xread(args: &[Bytes]) -> Result<ReadArgs, String> {
    let mut block = None;
    let mut count = 0usize;
    let mut streams_at = 0;
    let mut i = 1;
    while i < args.len() {
        let more = args.len() - i - 1;
        let opt = args[i].to_ascii_uppercase();
        if opt == b"BLOCK" && more > 0 {
            i += 1;
            let t = parse_i64(&args[i])
                .ok_or_else(|| "ERR timeout is not an integer or out of range".to_string())?;
            if t < 0 {
                return Err("ERR timeout is negative".into());
            }
            if t > 0 && t.checked_add(now_ms() as i64).is_none() {
                return Err("ERR timeout is out of range".into());
            }
            block = Some(t as u64);
        } else if opt == b"COUNT" && more > 0 {
            i += 1;
            count = parse_i64(&args[i])
                .ok_or_else(|| NOT_INT.to_string())?
                .max(0) as usize;
        } else if opt == b"STREAMS" && more > 0 {
            streams_at = i + 1;
            if !(args.len() - streams_at).is_multiple_of(2) {
                return Err("ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.".into());
            }
            break;
        } else if opt == b"GROUP" && more >= 2 {
            return Err(
                "ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead."
                    .into(),
            );
        } else if opt == b"NOACK" {
            return Err(
                "ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead."
                    .into(),
            );
        } else {
            return Err(SYNTAX.into());
        }
        i += 1;
    }
    if streams_at == 0 {
        return Err(SYNTAX.into());
    }
    let n = (args.len() - streams_at) / 2;
    let keys = args[streams_at..streams_at + n].to_vec();
    Ok(ReadArgs {
        keys,
        ids: Vec::with_capacity(n),
        count,
        block,
    })
}

/// Writes the streams among `keys` that have entries after their id, as
/// XREAD replies; `only_first` serves one stream (a woken XREAD, like
/// Redis serving the key that was signalled). False if none had any.
pub(crate) fn serve_read(
    db: &mut Db,
    r: &mut Reply<'_>,
    keys: &[Bytes],
    ids: &[StreamId],
    count: usize,
    only_first: bool,
) -> bool {
    let mut ready = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if let Ok(Some(st)) = stream_of(db, key) {
            if st.last_live_id().is_some_and(|last| last > ids[i]) {
                ready.push(i);
                if only_first {
                    break;
                }
            }
        }
    }
    if ready.is_empty() {
        return false;
    }
    if r.proto == crate::codec::Proto::Resp2 {
        r.array(ready.len());
    } else {
        r.map(ready.len());
    }
    for i in ready {
        if r.proto == crate::codec::Proto::Resp2 {
            r.array(2);
        }
        r.bulk(&keys[i]);
        if let Ok(Some(st)) = stream_of(db, &keys[i]) {
            match ids[i].next() {
                Some(start) => write_range(r, st, start, StreamId::MAX, count, false),
                None => r.array(0),
            }
        }
    }
    true
}

fn xread(s: &mut Session, args: &[Bytes]) -> bool {
    let mut a = match parse_xread(args) {
        Ok(a) => a,
        Err(e) => {
            s.reply().error(&e);
            return true;
        }
    };
    let id_args = &args[args.len() - a.keys.len()..];
    let may_block = !s.in_exec();
    let client = s.handle.id;
    let blocked = keys(s, |db, r| {
        // Check types and ids in argument order, as Redis does.
        for (key, id_arg) in a.keys.iter().zip(id_args) {
            let last = match stream_of(db, key) {
                Err(()) => {
                    r.error(WRONGTYPE);
                    return None;
                }
                Ok(st) => st.map_or(StreamId::MIN, |s| s.last_id),
            };
            if &id_arg[..] == b"$" {
                a.ids.push(Some(last));
            } else if &id_arg[..] == b">" {
                r.error("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.");
                return None;
            } else {
                match parse_id(id_arg, true, 0, false) {
                    Some((id, _)) => a.ids.push(Some(id)),
                    None => {
                        r.error(INVALID_ID);
                        return None;
                    }
                }
            }
        }
        let ids: Vec<StreamId> = a.ids.iter().map(|i| i.unwrap_or_default()).collect();
        if serve_read(db, r, &a.keys, &ids, a.count, false) {
            return None;
        }
        match a.block {
            Some(ms) if may_block => {
                let notify = Arc::new(tokio::sync::Notify::new());
                for key in &a.keys {
                    db.add_waiter(key, client, &notify);
                }
                Some(Blocked::new(notify, a.keys.clone(), ids, a.count, ms))
            }
            _ => {
                r.null_array();
                None
            }
        }
    });
    if let Some(b) = blocked {
        s.block(b);
    }
    true
}

fn xinfo_stream(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| {
        let st = match stream_of(db, &args[2]) {
            Err(()) => return r.error(WRONGTYPE),
            Ok(None) => return r.error("ERR no such key"),
            Ok(Some(st)) => st,
        };
        // XINFO STREAM <key> [FULL [COUNT <count>]]
        let opts = &args[3..];
        let syntax = || {
            format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try XINFO HELP.",
                super::common::truncate(&args[1], 128)
            )
        };
        let full = !opts.is_empty();
        let mut count: usize = 10;
        if full {
            if (opts.len() != 1 && opts.len() != 3) || !opts[0].eq_ignore_ascii_case(b"FULL") {
                return r.error(&syntax());
            }
            if opts.len() == 3 {
                if !opts[1].eq_ignore_ascii_case(b"COUNT") {
                    return r.error(&syntax());
                }
                match parse_i64(&opts[2]) {
                    None => return r.error(NOT_INT),
                    Some(c) if c < 0 => count = 10,
                    Some(c) => count = c as usize,
                }
            }
        }
        r.map(if full { 9 } else { 10 });
        r.bulk(b"length");
        r.int(st.len() as i64);
        r.bulk(b"radix-tree-keys");
        r.int(st.node_count() as i64);
        r.bulk(b"radix-tree-nodes");
        r.int(st.node_count() as i64 + 1);
        r.bulk(b"last-generated-id");
        r.bulk(st.last_id.text().as_bytes());
        r.bulk(b"max-deleted-entry-id");
        r.bulk(st.max_deleted.text().as_bytes());
        r.bulk(b"entries-added");
        r.int(st.entries_added as i64);
        r.bulk(b"recorded-first-entry-id");
        let first = st.first().map(|(id, _)| id).unwrap_or_default();
        r.bulk(first.text().as_bytes());
        if full {
            r.bulk(b"entries");
            write_range(r, st, StreamId::MIN, StreamId::MAX, count, false);
            r.bulk(b"groups");
            r.array(0);
            return;
        }
        r.bulk(b"groups");
        r.int(0);
        r.bulk(b"first-entry");
        match st.first() {
            Some((id, f)) => write_entry(r, id, &f),
            None => r.null(),
        }
        r.bulk(b"last-entry");
        match st.last() {
            Some((id, f)) => write_entry(r, id, &f),
            None => r.null(),
        }
    });
    true
}

fn xinfo_groups(s: &mut Session, args: &[Bytes]) -> bool {
    keys(s, |db, r| match stream_of(db, &args[2]) {
        Err(()) => r.error(WRONGTYPE),
        Ok(None) => r.error("ERR no such key"),
        Ok(Some(_)) => r.array(0),
    });
    true
}

fn xinfo_help(s: &mut Session, _args: &[Bytes]) -> bool {
    super::common::reply_help(
        s,
        "XINFO",
        &[
            "GROUPS <key>",
            "    Show the stream consumer groups (there are none: consumer groups are not offered).",
            "STREAM <key>",
            "    Show information about the stream.",
        ],
    )
}
