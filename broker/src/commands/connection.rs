//! Connection commands: PING, ECHO, QUIT, RESET, AUTH, HELLO, SELECT.
//! Password checks and what a failure costs live in [`super::auth`], the
//! CLIENT family in [`super::client`].

use super::auth::{auth, auth_failed, credentials_ok, hold_as_if_failed};
use super::client::{set_name, validate_name};
use super::common::{int_arg, truncate};
use super::spec::{cmd, Command, REDIS_VERSION};
use crate::codec::Proto;
use crate::session::Session;
use bytes::Bytes;

const CONN: &[&str] = &["@fast", "@connection"];

const GROUP: &str = "connection";

pub const PING: Command = cmd!(
    GROUP,
    "ping",
    -1,
    &["fast"],
    CONN,
    "1.0.0",
    "Returns the server's liveliness response.",
    ping
);
pub const ECHO: Command = cmd!(
    GROUP,
    "echo",
    2,
    &["fast"],
    CONN,
    "1.0.0",
    "Returns the given string.",
    echo
);
pub const QUIT: Command = cmd!(
    GROUP,
    "quit",
    -1,
    &[
        "allow_busy",
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth"
    ],
    CONN,
    "1.0.0",
    "Closes the connection.",
    quit
);
pub const RESET: Command = cmd!(
    GROUP,
    "reset",
    1,
    &[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy"
    ],
    CONN,
    "6.2.0",
    "Resets the connection.",
    reset
);
pub const AUTH: Command = cmd!(
    GROUP,
    "auth",
    -2,
    &[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy"
    ],
    CONN,
    "1.0.0",
    "Authenticates the connection.",
    auth
);
pub const HELLO: Command = cmd!(
    GROUP,
    "hello",
    -1,
    &[
        "noscript",
        "loading",
        "stale",
        "fast",
        "no_auth",
        "allow_busy"
    ],
    CONN,
    "6.0.0",
    "Handshakes with the Redis server.",
    hello
);
pub const SELECT: Command = cmd!(
    GROUP,
    "select",
    2,
    &["loading", "stale", "fast"],
    CONN,
    "1.0.0",
    "Changes the selected database.",
    select
);

fn ping(s: &mut Session, args: &[Bytes]) -> bool {
    if args.len() > 2 {
        s.reply()
            .error("ERR wrong number of arguments for 'ping' command");
        return true;
    }
    let subscribed_resp2 = s.proto == Proto::Resp2 && s.in_pubsub_mode();
    let mut r = s.reply();
    if subscribed_resp2 {
        // A subscribed RESP2 connection only carries arrays.
        r.array(2);
        r.bulk(b"pong");
        r.bulk(args.get(1).map_or(&b""[..], |a| &a[..]));
    } else {
        match args.get(1) {
            Some(msg) => r.bulk(msg),
            None => r.simple("PONG"),
        }
    }
    true
}

fn echo(s: &mut Session, args: &[Bytes]) -> bool {
    s.reply().bulk(&args[1]);
    true
}

fn quit(s: &mut Session, _args: &[Bytes]) -> bool {
    s.reply().simple("OK");
    s.close_after_reply = true;
    true
}

fn reset(s: &mut Session, _args: &[Bytes]) -> bool {
    s.multi = None;
    super::multi::unwatch_all(s);
    s.drop_subscriptions();
    s.set_proto(Proto::Resp2);
    {
        let mut info = s.handle.info.lock();
        info.name = None;
        info.db = 0;
    }
    if s.broker.config.requirepass.is_some() {
        s.set_authenticated(false);
    }
    s.reply().simple("RESET");
    true
}

fn hello(s: &mut Session, args: &[Bytes]) -> bool {
    let mut proto = None;
    if args.len() >= 2 {
        match crate::codec::parse_i64(&args[1]) {
            None => {
                s.reply()
                    .error("ERR Protocol version is not an integer or out of range");
                return true;
            }
            Some(2) => proto = Some(Proto::Resp2),
            Some(3) => proto = Some(Proto::Resp3),
            Some(_) => {
                s.reply().error("NOPROTO unsupported protocol version");
                return true;
            }
        }
    }
    let mut creds = None;
    let mut name = None;
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            creds = Some((args[j + 1].clone(), args[j + 2].clone()));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            if let Err(e) = validate_name(&args[j + 1], "Client names") {
                s.reply().error(&e.to_string());
                return true;
            }
            name = Some(args[j + 1].clone());
            j += 2;
        } else {
            s.reply().error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                truncate(opt, 128)
            ));
            return true;
        }
    }
    if let Some((user, pass)) = creds {
        if !credentials_ok(s, &user, &pass) {
            auth_failed(s);
            return true;
        }
        hold_as_if_failed(s);
        s.set_authenticated(true);
    }
    if !s.authenticated {
        s.reply().error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        return true;
    }
    if let Some(name) = name {
        set_name(s, name);
    }
    if let Some(proto) = proto {
        s.set_proto(proto);
    }
    let id = s.handle.id as i64;
    let proto_num = if s.proto == Proto::Resp3 { 3 } else { 2 };
    let mut r = s.reply();
    r.map(7);
    r.bulk(b"server");
    r.bulk(b"redis");
    r.bulk(b"version");
    r.bulk(REDIS_VERSION.as_bytes());
    r.bulk(b"proto");
    r.int(proto_num);
    r.bulk(b"id");
    r.int(id);
    r.bulk(b"mode");
    r.bulk(b"standalone");
    r.bulk(b"role");
    r.bulk(b"master");
    r.bulk(b"modules");
    r.array(0);
    true
}

fn select(s: &mut Session, args: &[Bytes]) -> bool {
    let Some(db) = int_arg(s, &args[1]) else {
        return true;
    };
    // Pub/sub ignores databases; accept Redis's default 16 so that clients
    // configured with a database number still connect.
    if !(0..16).contains(&db) {
        s.reply().error("ERR DB index is out of range");
        return true;
    }
    s.handle.info.lock().db = db;
    s.reply().simple("OK");
    true
}
