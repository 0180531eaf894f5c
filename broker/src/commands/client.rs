//! The CLIENT command family: names and library info, `CLIENT LIST` /
//! `INFO` lines in Redis's format, `CLIENT KILL` and `CLIENT REPLY`.
//!
//! Other connections are reached only through their shared
//! [`ClientHandle`]: a kill sets the target's flag and its own task closes.

use super::common::{reply_help, truncate};
use super::spec::{cmd, Command};
use crate::handle::{ClientHandle, KillReason};
use crate::session::Session;
use ahash::AHashSet;
use bytes::Bytes;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

const GROUP: &str = "connection";
const CONN: &[&str] = &["@fast", "@connection"];

pub const CLIENT: Command = Command {
    subcommands: &[
        cmd!(
            GROUP,
            "client|id",
            2,
            &["noscript", "loading", "stale"],
            CONN,
            "5.0.0",
            "Returns the unique client ID of the connection.",
            client_id
        ),
        cmd!(
            GROUP,
            "client|getname",
            2,
            &["noscript", "loading", "stale"],
            CONN,
            "2.6.9",
            "Returns the name of the connection.",
            client_getname
        ),
        cmd!(
            GROUP,
            "client|setname",
            3,
            &["noscript", "loading", "stale"],
            CONN,
            "2.6.9",
            "Sets the connection name.",
            client_setname
        ),
        cmd!(
            GROUP,
            "client|setinfo",
            4,
            &["noscript", "loading", "stale"],
            CONN,
            "7.2.0",
            "Sets information specific to the client or connection.",
            client_setinfo
        ),
        cmd!(
            GROUP,
            "client|list",
            -2,
            &["admin", "noscript", "loading", "stale"],
            &["@admin", "@slow", "@dangerous", "@connection"],
            "2.4.0",
            "Lists open connections.",
            client_list
        ),
        cmd!(
            GROUP,
            "client|info",
            2,
            &["noscript", "loading", "stale"],
            CONN,
            "6.2.0",
            "Returns information about the connection.",
            client_info
        ),
        cmd!(
            GROUP,
            "client|kill",
            -3,
            &["admin", "noscript", "loading", "stale"],
            &["@admin", "@slow", "@dangerous", "@connection"],
            "2.4.0",
            "Terminates open connections.",
            client_kill
        ),
        cmd!(
            GROUP,
            "client|reply",
            3,
            &["noscript", "loading", "stale"],
            CONN,
            "3.2.0",
            "Instructs the server whether to reply to commands.",
            client_reply
        ),
        cmd!(
            GROUP,
            "client|help",
            2,
            &["loading", "stale"],
            CONN,
            "5.0.0",
            "Returns helpful text about the different subcommands.",
            client_help
        ),
    ],
    ..cmd!(
        GROUP,
        "client",
        -2,
        &[],
        &[],
        "2.4.0",
        "A container for client connection commands.",
        client_help
    )
};

/// A name or library attribute that `CLIENT LIST` could not show
/// parseably; the text is Redis's error reply.
#[derive(Debug, thiserror::Error)]
#[error("ERR {what} cannot contain spaces, newlines or special characters.")]
pub(super) struct BadName {
    what: String,
}

/// Names and library attributes must be printable ASCII without spaces,
/// so that `CLIENT LIST` stays parseable.
pub(super) fn validate_name(name: &[u8], what: &str) -> Result<(), BadName> {
    if name.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
        Ok(())
    } else {
        Err(BadName {
            what: what.to_string(),
        })
    }
}

pub(super) fn set_name(s: &mut Session, name: Bytes) {
    s.handle.info.lock().name = (!name.is_empty()).then(|| crate::codec::keep(&name));
}

fn client_id(s: &mut Session, _args: &[Bytes]) -> bool {
    let id = s.handle.id as i64;
    s.reply().int(id);
    true
}

fn client_getname(s: &mut Session, _args: &[Bytes]) -> bool {
    let name = s.handle.info.lock().name.clone();
    match name {
        Some(name) => s.reply().bulk(&name),
        None => s.reply().null(),
    }
    true
}

fn client_setname(s: &mut Session, args: &[Bytes]) -> bool {
    match validate_name(&args[2], "Client names") {
        Ok(()) => {
            set_name(s, args[2].clone());
            s.reply().simple("OK");
        }
        Err(e) => s.reply().error(&e.to_string()),
    }
    true
}

fn client_setinfo(s: &mut Session, args: &[Bytes]) -> bool {
    let attr = &args[2];
    let value = args[3].clone();
    let lib_name = attr.eq_ignore_ascii_case(b"lib-name");
    if !lib_name && !attr.eq_ignore_ascii_case(b"lib-ver") {
        s.reply().error(&format!(
            "ERR Unrecognized option '{}'",
            truncate(attr, 128)
        ));
        return true;
    }
    if let Err(e) = validate_name(&value, &truncate(attr, 128)) {
        s.reply().error(&e.to_string());
        return true;
    }
    {
        let mut info = s.handle.info.lock();
        let slot = if lib_name {
            &mut info.lib_name
        } else {
            &mut info.lib_ver
        };
        *slot = (!value.is_empty()).then(|| crate::codec::keep(&value));
    }
    s.reply().simple("OK");
    true
}

/// One `CLIENT LIST` line in Redis's field order. Fields that describe
/// Redis internals this broker does not have (multi, rbs ...) keep the
/// values Redis shows for an idle connection so that parsers find them.
pub fn client_line(c: &ClientHandle, now_ms: u64) -> String {
    let info = c.info.lock().clone();
    let age = c.connected.elapsed().as_secs();
    let idle = now_ms.saturating_sub(c.last_active_ms.load(Relaxed)) / 1000;
    let pubsub = c.is_pubsub();
    let omem = c.output_bytes();
    let mut line = String::with_capacity(320);
    let show = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let _ = writeln!(
        line,
        "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events={} cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
        c.id,
        c.peer,
        c.local,
        c.fd,
        show(&info.name),
        age,
        idle,
        if pubsub { "P" } else { "N" },
        info.db,
        c.sub_count.load(Relaxed),
        c.psub_count.load(Relaxed),
        c.ssub_count.load(Relaxed),
        omem,
        omem,
        if omem > 0 { "rw" } else { "r" },
        info.last_cmd,
        if c.resp3() { 3 } else { 2 },
        show(&info.lib_name),
        show(&info.lib_ver),
    );
    line
}

fn now_ms(c: &ClientHandle) -> u64 {
    c.connected.elapsed().as_millis() as u64
}

fn client_list(s: &mut Session, args: &[Bytes]) -> bool {
    let mut only_type: Option<bool> = None; // Some(true) = pubsub only
    let mut ids: Option<AHashSet<u64>> = None;
    let mut i = 2;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"TYPE") && i + 1 < args.len() {
            let t = &args[i + 1];
            only_type = if t.eq_ignore_ascii_case(b"pubsub") {
                Some(true)
            } else if t.eq_ignore_ascii_case(b"normal") {
                Some(false)
            } else if t.eq_ignore_ascii_case(b"master")
                || t.eq_ignore_ascii_case(b"replica")
                || t.eq_ignore_ascii_case(b"slave")
            {
                // No replication here: such clients never exist.
                ids = Some(AHashSet::new());
                None
            } else {
                s.reply()
                    .error(&format!("ERR Unknown client type '{}'", truncate(t, 128)));
                return true;
            };
            i += 2;
        } else if args[i].eq_ignore_ascii_case(b"ID") && i + 1 < args.len() {
            // A set: every client is looked up in it, and a list of a
            // million ids against thousands of clients was quadratic.
            let mut list = AHashSet::with_capacity(args.len() - i - 1);
            for arg in &args[i + 1..] {
                match crate::codec::parse_i64(arg).filter(|v| *v > 0) {
                    Some(v) => {
                        list.insert(v as u64);
                    }
                    None => {
                        s.reply().error("ERR Invalid client ID");
                        return true;
                    }
                }
            }
            ids = Some(list);
            i = args.len();
        } else {
            s.reply().error("ERR syntax error");
            return true;
        }
    }
    let mut text = String::new();
    for c in s.broker.clients() {
        if only_type.is_some_and(|pubsub| pubsub != c.is_pubsub()) {
            continue;
        }
        if ids.as_ref().is_some_and(|ids| !ids.contains(&c.id)) {
            continue;
        }
        // The caller's own line shows this command, as in Redis.
        if c.id == s.handle.id {
            s.handle.info.lock().last_cmd = s.last_cmd;
        }
        text.push_str(&client_line(&c, now_ms(&c)));
    }
    s.reply().verbatim(text.as_bytes());
    true
}

fn client_info(s: &mut Session, _args: &[Bytes]) -> bool {
    s.handle.info.lock().last_cmd = s.last_cmd;
    let line = client_line(&s.handle, now_ms(&s.handle));
    s.reply().verbatim(line.as_bytes());
    true
}

fn client_kill(s: &mut Session, args: &[Bytes]) -> bool {
    let clients = s.broker.clients();
    if args.len() == 3 {
        // Old form: CLIENT KILL addr:port
        let addr = String::from_utf8_lossy(&args[2]);
        let Some(target) = clients.iter().find(|c| c.peer.to_string() == addr) else {
            s.reply().error("ERR No such client");
            return true;
        };
        kill(s, target);
        s.reply().simple("OK");
        return true;
    }
    let mut id = None;
    let mut addr = None;
    let mut laddr = None;
    let mut skipme = true;
    // TYPE: Some(true) pubsub clients, Some(false) normal ones; `none`
    // matches nobody (masters and replicas: the broker has neither).
    let mut pubsub_type: Option<Option<bool>> = None;
    let mut i = 2;
    while i + 1 < args.len() {
        let (opt, val) = (&args[i], &args[i + 1]);
        if opt.eq_ignore_ascii_case(b"ID") {
            match crate::codec::parse_i64(val).filter(|v| *v > 0) {
                Some(v) => id = Some(v as u64),
                None => {
                    s.reply().error("ERR client-id should be greater than 0");
                    return true;
                }
            }
        } else if opt.eq_ignore_ascii_case(b"ADDR") {
            addr = Some(String::from_utf8_lossy(val).into_owned());
        } else if opt.eq_ignore_ascii_case(b"TYPE") {
            pubsub_type = Some(match val.to_ascii_lowercase().as_slice() {
                b"normal" => Some(false),
                b"pubsub" => Some(true),
                b"master" | b"replica" | b"slave" => None,
                _ => {
                    s.reply()
                        .error(&format!("ERR Unknown client type '{}'", truncate(val, 128)));
                    return true;
                }
            });
        } else if opt.eq_ignore_ascii_case(b"USER") {
            // No ACL users: every client is `default`.
            if &val[..] != b"default" {
                s.reply()
                    .error(&format!("ERR No such user '{}'", truncate(val, 128)));
                return true;
            }
        } else if opt.eq_ignore_ascii_case(b"LADDR") {
            laddr = Some(String::from_utf8_lossy(val).into_owned());
        } else if opt.eq_ignore_ascii_case(b"SKIPME") {
            if val.eq_ignore_ascii_case(b"yes") {
                skipme = true;
            } else if val.eq_ignore_ascii_case(b"no") {
                skipme = false;
            } else {
                s.reply().error("ERR syntax error");
                return true;
            }
        } else {
            s.reply().error("ERR syntax error");
            return true;
        }
        i += 2;
    }
    if i != args.len() {
        s.reply().error("ERR syntax error");
        return true;
    }
    let mut killed = 0;
    for c in &clients {
        let matches = id.is_none_or(|id| c.id == id)
            && addr.as_ref().is_none_or(|a| c.peer.to_string() == *a)
            && laddr.as_ref().is_none_or(|a| c.local.to_string() == *a)
            && pubsub_type.is_none_or(|t| t == Some(c.is_pubsub()))
            && !(skipme && c.id == s.handle.id);
        if matches {
            kill(s, c);
            killed += 1;
        }
    }
    s.reply().int(killed);
    true
}

/// CLIENT REPLY ON|OFF|SKIP: the session drops the replies of the
/// commands it covers (see [`crate::requests`]).
fn client_reply(s: &mut Session, args: &[Bytes]) -> bool {
    let mode = args[2].to_ascii_lowercase();
    match mode.as_slice() {
        b"on" => {
            s.reply_off = false;
            s.skip_next = false;
            s.reply().simple("OK");
        }
        b"off" => s.reply_off = true,
        b"skip" => s.skip_next = !s.reply_off,
        _ => s.reply().error("ERR syntax error"),
    }
    true
}

fn kill(s: &mut Session, target: &ClientHandle) {
    tracing::info!(by = s.handle.id, target = target.id, peer = %target.peer, "CLIENT KILL");
    if target.id == s.handle.id {
        // Redis answers the killer before closing it.
        s.close_after_reply = true;
    } else {
        target.kill(KillReason::Killed);
    }
}

fn client_help(s: &mut Session, _args: &[Bytes]) -> bool {
    reply_help(
        s,
        "CLIENT",
        &[
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "KILL <ip:port>",
            "    Kill connection made from <ip:port>.",
            "KILL <option> <value> [<option> <value> [...]]",
            "    Kill connections. Options are: ID <client-id>, TYPE (NORMAL|PUBSUB|MASTER|REPLICA), USER <username>, ADDR <ip:port>, LADDR <ip:port>, SKIPME (YES|NO).",
            "LIST [TYPE (NORMAL|PUBSUB)] [ID <client-id> [...]]",
            "    Return information about client connections.",
            "REPLY (ON|OFF|SKIP)",
            "    Control the replies sent to the current connection.",
            "SETINFO <option> <value>",
            "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
        ],
    )
}
