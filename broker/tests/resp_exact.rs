//! Exact reply bytes for every command, in RESP2 and RESP3, over raw TCP.

mod common;
use common::*;
use limpet_config::BrokerConfig;

async fn expect(c: &mut Client, args: &[&str], want: &str) {
    let got = c.call(args).await;
    assert_eq!(got, want, "reply to {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_resp2() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    expect(&mut c, &["PING"], "+PONG\r\n").await;
    expect(&mut c, &["ping", "hi"], "$2\r\nhi\r\n").await;
    expect(
        &mut c,
        &["PING", "a", "b"],
        "-ERR wrong number of arguments for 'ping' command\r\n",
    )
    .await;
    expect(&mut c, &["ECHO", "hello world"], "$11\r\nhello world\r\n").await;
    expect(
        &mut c,
        &["ECHO"],
        "-ERR wrong number of arguments for 'echo' command\r\n",
    )
    .await;
    expect(&mut c, &["SELECT", "0"], "+OK\r\n").await;
    expect(&mut c, &["SELECT", "15"], "+OK\r\n").await;
    expect(
        &mut c,
        &["SELECT", "16"],
        "-ERR DB index is out of range\r\n",
    )
    .await;
    expect(
        &mut c,
        &["SELECT", "x"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    expect(&mut c, &["AUTH", "pw"], "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n").await;
    expect(&mut c, &["AUTH", "default", "anything"], "+OK\r\n").await;
    expect(
        &mut c,
        &["AUTH", "bob", "pw"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    expect(&mut c, &["AUTH", "a", "b", "c"], "-ERR syntax error\r\n").await;
    expect(
        &mut c,
        &["FOO", "a", "b"],
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
    )
    .await;
    expect(
        &mut c,
        &["LPUSH", "k"],
        "-ERR unknown command 'LPUSH', with args beginning with: 'k' \r\n",
    )
    .await;
    expect(&mut c, &["RESET"], "+RESET\r\n").await;
    expect(&mut c, &["QUIT"], "+OK\r\n").await;
    assert!(
        c.read_to_close().await.is_empty(),
        "QUIT closes after its reply"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    let id = c.call(&["CLIENT", "ID"]).await;
    assert!(id.starts_with(':') && id.ends_with("\r\n"), "{id}");
    let id: u64 = id[1..id.len() - 2].parse().unwrap();
    expect(&mut c, &["CLIENT", "GETNAME"], "$-1\r\n").await;
    expect(&mut c, &["CLIENT", "SETNAME", "worker-1"], "+OK\r\n").await;
    expect(&mut c, &["CLIENT", "GETNAME"], "$8\r\nworker-1\r\n").await;
    expect(
        &mut c,
        &["CLIENT", "SETNAME", "a b"],
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    )
    .await;
    expect(
        &mut c,
        &["CLIENT", "SETNAME"],
        "-ERR wrong number of arguments for 'client|setname' command\r\n",
    )
    .await;
    expect(
        &mut c,
        &["CLIENT", "SETINFO", "lib-name", "redis-rs"],
        "+OK\r\n",
    )
    .await;
    expect(&mut c, &["CLIENT", "SETINFO", "lib-ver", "1.0"], "+OK\r\n").await;
    expect(
        &mut c,
        &["CLIENT", "SETINFO", "color", "red"],
        "-ERR Unrecognized option 'color'\r\n",
    )
    .await;
    expect(
        &mut c,
        &["CLIENT", "FOO"],
        "-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n",
    )
    .await;
    expect(
        &mut c,
        &["client"],
        "-ERR wrong number of arguments for 'client' command\r\n",
    )
    .await;

    let info = c.call(&["CLIENT", "INFO"]).await;
    assert!(info.starts_with('$'), "{info}");
    for field in [
        format!("id={id} "),
        "name=worker-1 ".into(),
        "flags=N ".into(),
        "cmd=client|info ".into(),
        "resp=2 ".into(),
        "lib-name=redis-rs ".into(),
        "lib-ver=1.0\n".into(),
    ] {
        assert!(info.contains(&field), "CLIENT INFO lacks {field:?}: {info}");
    }

    let mut sub = b.client().await;
    sub.cmd(&["SUBSCRIBE", "x"]).await;
    sub.frame().await;
    let list = c.call(&["CLIENT", "LIST"]).await;
    assert_eq!(list.matches(" addr=").count(), 2, "two clients: {list}");
    let pubsub_only = c.call(&["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    assert!(
        pubsub_only.contains("flags=P") && pubsub_only.contains("sub=1 "),
        "{pubsub_only}"
    );
    assert!(!pubsub_only.contains("name=worker-1"), "{pubsub_only}");
    let by_id = c.call(&["CLIENT", "LIST", "ID", &id.to_string()]).await;
    assert!(
        by_id.contains(&format!("id={id} ")) && by_id.matches("id=").count() == 1,
        "{by_id}"
    );

    // CLIENT KILL by id cuts the subscriber off and reports one kill.
    let sub_id = {
        let line = pubsub_only.lines().nth(1).unwrap_or_default().to_string();
        line.split(' ')
            .next()
            .unwrap()
            .trim_start_matches("id=")
            .to_string()
    };
    expect(&mut c, &["CLIENT", "KILL", "ID", &sub_id], ":1\r\n").await;
    sub.read_to_close().await;
    expect(&mut c, &["CLIENT", "KILL", "ID", "999999"], ":0\r\n").await;
    expect(
        &mut c,
        &["CLIENT", "KILL", "10.9.9.9:1"],
        "-ERR No such client\r\n",
    )
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_switches_protocol() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    let id = c.call(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end();
    let hello = |proto: &str| {
        format!(
            "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$5\r\nproto\r\n:{proto}\r\n$2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
        )
    };
    // HELLO 2 answers as a flat array.
    let resp2 = hello("2").replacen("%7", "*14", 1);
    expect(&mut c, &["HELLO", "2"], &resp2).await;
    expect(&mut c, &["HELLO", "3"], &hello("3")).await;
    expect(&mut c, &["HELLO"], &hello("3")).await;
    expect(
        &mut c,
        &["HELLO", "4"],
        "-NOPROTO unsupported protocol version\r\n",
    )
    .await;
    expect(
        &mut c,
        &["HELLO", "x"],
        "-ERR Protocol version is not an integer or out of range\r\n",
    )
    .await;
    expect(
        &mut c,
        &["HELLO", "3", "SETNAME"],
        "-ERR Syntax error in HELLO option 'SETNAME'\r\n",
    )
    .await;
    expect(
        &mut c,
        &["HELLO", "3", "SETNAME", "a b"],
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    )
    .await;
    expect(&mut c, &["HELLO", "3", "SETNAME", "svc"], &hello("3")).await;
    expect(&mut c, &["CLIENT", "GETNAME"], "$3\r\nsvc\r\n").await;
    // RESP3 types: null, map.
    expect(&mut c, &["CLIENT", "SETNAME", ""], "+OK\r\n").await;
    expect(&mut c, &["CLIENT", "GETNAME"], "_\r\n").await;
    expect(
        &mut c,
        &["CONFIG", "GET", "maxclients"],
        "%1\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n",
    )
    .await;
    let info = c.call(&["INFO", "server"]).await;
    assert!(
        info.starts_with('=') && info.contains("\r\ntxt:# Server\r\n")
            || info.contains("txt:# Server"),
        "verbatim INFO: {info}"
    );
    // RESET goes back to RESP2.
    expect(&mut c, &["RESET"], "+RESET\r\n").await;
    expect(&mut c, &["CLIENT", "GETNAME"], "$-1\r\n").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resp2_and_resp3() {
    let b = TestBroker::default().await;
    let mut s2 = b.client().await;
    let mut s3 = b.client().await;
    let mut p = b.client().await;
    s3.cmd(&["HELLO", "3"]).await;
    s3.frame().await;

    s2.cmd(&["SUBSCRIBE", "news", "sport"]).await;
    assert_eq!(
        s2.frames(2).await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n"
    );
    s2.cmd(&["PSUBSCRIBE", "n*"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n"
    );
    s3.cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        s3.frame().await,
        b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );

    // One channel match for each client plus one pattern match: 3 receivers.
    expect(&mut p, &["PUBLISH", "news", "hi"], ":3\r\n").await;
    assert_eq!(
        s2.frames(2).await,
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        s3.frame().await,
        b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    expect(&mut p, &["PUBLISH", "nobody", "x"], ":1\r\n").await; // the pattern n*
    s2.frame().await;
    expect(&mut p, &["PUBLISH", "zzz", "x"], ":0\r\n").await;

    // RESP2 subscribed mode: only (P|S)(UN)SUBSCRIBE, PING, QUIT, RESET.
    s2.cmd(&["ECHO", "x"]).await;
    assert_eq!(
        s2.frame().await,
        b"-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    s2.cmd(&["PING"]).await;
    assert_eq!(s2.frame().await, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    s2.cmd(&["PING", "hey"]).await;
    assert_eq!(s2.frame().await, b"*2\r\n$4\r\npong\r\n$3\r\nhey\r\n");
    // RESP3 has no such mode.
    s3.cmd(&["PING"]).await;
    assert_eq!(s3.frame().await, b"+PONG\r\n");
    s3.cmd(&["ECHO", "x"]).await;
    assert_eq!(s3.frame().await, b"$1\r\nx\r\n");

    // Introspection.
    let mut chans = p.call(&["PUBSUB", "CHANNELS"]).await;
    assert!(
        chans == "*2\r\n$4\r\nnews\r\n$5\r\nsport\r\n"
            || chans == "*2\r\n$5\r\nsport\r\n$4\r\nnews\r\n",
        "{chans}"
    );
    chans = p.call(&["PUBSUB", "CHANNELS", "s*"]).await;
    assert_eq!(chans, "*1\r\n$5\r\nsport\r\n");
    expect(
        &mut p,
        &["PUBSUB", "NUMSUB", "news", "sport", "none"],
        "*6\r\n$4\r\nnews\r\n:2\r\n$5\r\nsport\r\n:1\r\n$4\r\nnone\r\n:0\r\n",
    )
    .await;
    expect(&mut p, &["PUBSUB", "NUMSUB"], "*0\r\n").await;
    expect(&mut p, &["PUBSUB", "NUMPAT"], ":1\r\n").await;
    expect(
        &mut p,
        &["PUBSUB", "FOO"],
        "-ERR unknown subcommand 'FOO'. Try PUBSUB HELP.\r\n",
    )
    .await;
    expect(
        &mut p,
        &["PUBLISH", "a"],
        "-ERR wrong number of arguments for 'publish' command\r\n",
    )
    .await;

    // Unsubscribing counts down, patterns separately.
    s2.cmd(&["UNSUBSCRIBE", "news"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:2\r\n"
    );
    s2.cmd(&["PUNSUBSCRIBE"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:1\r\n"
    );
    s2.cmd(&["PUNSUBSCRIBE"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:1\r\n"
    );
    s2.cmd(&["UNSUBSCRIBE"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nsport\r\n:0\r\n"
    );
    // Bare UNSUBSCRIBE with nothing subscribed.
    s2.cmd(&["UNSUBSCRIBE"]).await;
    assert_eq!(
        s2.frame().await,
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    );
    s3.cmd(&["UNSUBSCRIBE"]).await;
    assert_eq!(
        s3.frame().await,
        b">3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n"
    );
    s3.cmd(&["UNSUBSCRIBE"]).await;
    assert_eq!(s3.frame().await, b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
    // Out of subscribed mode: normal replies again.
    s2.cmd(&["PING"]).await;
    assert_eq!(s2.frame().await, b"+PONG\r\n");
    expect(&mut p, &["PUBSUB", "CHANNELS"], "*0\r\n").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub() {
    let b = TestBroker::default().await;
    let mut s = b.client().await;
    let mut p = b.client().await;
    s.cmd(&["SSUBSCRIBE", "room:1", "room:2"]).await;
    assert_eq!(
        s.frames(2).await,
        b"*3\r\n$10\r\nssubscribe\r\n$6\r\nroom:1\r\n:1\r\n*3\r\n$10\r\nssubscribe\r\n$6\r\nroom:2\r\n:2\r\n"
    );
    // Shard count is separate from the classic count.
    s.cmd(&["SUBSCRIBE", "room:1"]).await;
    assert_eq!(
        s.frame().await,
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\nroom:1\r\n:1\r\n"
    );
    expect(&mut p, &["SPUBLISH", "room:1", "x"], ":1\r\n").await;
    assert_eq!(
        s.frame().await,
        b"*3\r\n$8\r\nsmessage\r\n$6\r\nroom:1\r\n$1\r\nx\r\n"
    );
    // PUBLISH and SPUBLISH are separate spaces.
    expect(&mut p, &["PUBLISH", "room:2", "x"], ":0\r\n").await;
    expect(
        &mut p,
        &["PUBSUB", "SHARDCHANNELS", "room:2"],
        "*1\r\n$6\r\nroom:2\r\n",
    )
    .await;
    expect(
        &mut p,
        &["PUBSUB", "SHARDNUMSUB", "room:1", "x"],
        "*4\r\n$6\r\nroom:1\r\n:1\r\n$1\r\nx\r\n:0\r\n",
    )
    .await;
    s.cmd(&["SUNSUBSCRIBE", "room:1"]).await;
    assert_eq!(
        s.frame().await,
        b"*3\r\n$12\r\nsunsubscribe\r\n$6\r\nroom:1\r\n:1\r\n"
    );
    s.cmd(&["SUNSUBSCRIBE"]).await;
    assert_eq!(
        s.frame().await,
        b"*3\r\n$12\r\nsunsubscribe\r\n$6\r\nroom:2\r\n:0\r\n"
    );
    // Still subscribed to the classic channel, so still in subscribed mode.
    s.cmd(&["ECHO", "x"]).await;
    assert!(s.frame().await.starts_with(b"-ERR Can't execute 'echo'"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_delivered_once_per_matching_subscription() {
    let b = TestBroker::default().await;
    let mut s = b.client().await;
    let mut p = b.client().await;
    s.cmd(&["SUBSCRIBE", "a.b", "a.b"]).await; // the duplicate is confirmed, not doubled
    s.frames(2).await;
    s.cmd(&["PSUBSCRIBE", "a.*", "a.?", "*"]).await;
    s.frames(3).await;
    expect(&mut p, &["PUBLISH", "a.b", "m"], ":4\r\n").await;
    let got = s.frames(4).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("$7\r\nmessage\r\n").count(), 1, "{text}");
    assert_eq!(text.matches("$8\r\npmessage\r\n").count(), 3, "{text}");
    for pat in ["$3\r\na.*\r\n", "$3\r\na.?\r\n", "$1\r\n*\r\n"] {
        assert!(text.contains(pat), "pmessage for {pat:?}: {text}");
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_inline_commands_are_answered_in_order() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend(encode(&["ECHO", &i.to_string()]));
    }
    batch.extend(b"PING\r\nECHO \"two words\"\r\n\r\n  ping   inline  \r\n");
    c.send(&batch).await;
    let mut want = String::new();
    for i in 0..200 {
        let s = i.to_string();
        want.push_str(&format!("${}\r\n{s}\r\n", s.len()));
    }
    want.push_str("+PONG\r\n$9\r\ntwo words\r\n$6\r\ninline\r\n");
    let got = c.frames(203).await;
    assert_eq!(String::from_utf8_lossy(&got), want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_commands() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    let info = c.call(&["INFO"]).await;
    for needle in [
        "# Server\r\n",
        "redis_version:7.2.0\r\n",
        "# Clients\r\nconnected_clients:1\r\n",
        "loading:0\r\n",
        "# Stats\r\n",
        "pubsub_channels:0\r\n",
        "role:master\r\n",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
    let stats = c.call(&["INFO", "stats"]).await;
    assert!(
        stats.contains("# Stats") && !stats.contains("# Server"),
        "{stats}"
    );
    expect(&mut c, &["INFO", "nosuchsection"], "$0\r\n\r\n").await;
    let count = limpet_broker::commands::table::COMMANDS.len();
    expect(&mut c, &["COMMAND", "COUNT"], &format!(":{count}\r\n")).await;
    let all = c.call(&["COMMAND"]).await;
    assert!(
        all.starts_with(&format!("*{count}\r\n*10\r\n$7\r\npublish\r\n:3\r\n")),
        "{all}"
    );
    let info = c.call(&["COMMAND", "INFO", "subscribe", "nope"]).await;
    assert!(
        info.starts_with("*2\r\n*10\r\n$9\r\nsubscribe\r\n:-2\r\n") && info.ends_with("$-1\r\n"),
        "{info}"
    );
    let docs = c.call(&["COMMAND", "DOCS", "ping"]).await;
    assert_eq!(docs, "*2\r\n$4\r\nping\r\n*6\r\n$7\r\nsummary\r\n$41\r\nReturns the server's liveliness response.\r\n$5\r\nsince\r\n$5\r\n1.0.0\r\n$5\r\ngroup\r\n$10\r\nconnection\r\n");
    expect(
        &mut c,
        &["CONFIG", "GET", "maxclients"],
        "*2\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n",
    )
    .await;
    expect(&mut c, &["CONFIG", "GET", "nothing-like-this"], "*0\r\n").await;
    expect(
        &mut c,
        &["CONFIG", "GET", "save", "appendonly"],
        "*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
    )
    .await;
    let obl = c
        .call(&["CONFIG", "GET", "client-output-buffer-limit"])
        .await;
    assert!(obl.ends_with("pubsub 33554432 8388608 60\r\n"), "{obl}");
    expect(
        &mut c,
        &["CONFIG", "SET", "x", "y"],
        "-ERR Unknown option or number of arguments for CONFIG SET - 'x'\r\n",
    )
    .await;
    // Settings read at start are refused, not pretended.
    expect(
        &mut c,
        &["CONFIG", "SET", "maxclients", "5"],
        "-ERR CONFIG SET failed (possibly related to argument 'maxclients') - fixed at start in limpet-broker; change it in the config file and restart\r\n",
    )
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_gates_everything_but_auth() {
    let config = BrokerConfig {
        requirepass: Some("s3cret".into()),
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut c = b.client().await;
    expect(&mut c, &["PING"], "-NOAUTH Authentication required.\r\n").await;
    expect(
        &mut c,
        &["SUBSCRIBE", "x"],
        "-NOAUTH Authentication required.\r\n",
    )
    .await;
    // Unknown commands are reported as unknown even before AUTH, as in Redis.
    expect(
        &mut c,
        &["NOPE"],
        "-ERR unknown command 'NOPE', with args beginning with: \r\n",
    )
    .await;
    expect(&mut c, &["HELLO", "3"], "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n").await;
    expect(
        &mut c,
        &["AUTH", "wrong"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    expect(&mut c, &["AUTH", "s3cret"], "+OK\r\n").await;
    expect(&mut c, &["PING"], "+PONG\r\n").await;
    expect(&mut c, &["RESET"], "+RESET\r\n").await;
    expect(&mut c, &["PING"], "-NOAUTH Authentication required.\r\n").await;
    let hello = c.call(&["HELLO", "3", "AUTH", "default", "s3cret"]).await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    expect(&mut c, &["PING"], "+PONG\r\n").await;
    expect(
        &mut c,
        &["CONFIG", "GET", "requirepass"],
        "%1\r\n$11\r\nrequirepass\r\n$6\r\ns3cret\r\n",
    )
    .await;
    b.stop().await;
}

/// INFO commandstats / errorstats / total_error_replies count what was
/// run and refused, in Redis's line format; replication has an offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_counts_commands_and_error_replies() {
    let b = TestBroker::default().await;
    let mut c = b.client().await;
    expect(&mut c, &["SET", "k", "v"], "+OK\r\n").await;
    expect(
        &mut c,
        &["HGET", "k", "f"],
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    )
    .await;
    expect(
        &mut c,
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.call(&["NOSUCH"]).await;
    let cmds = c.call(&["INFO", "commandstats"]).await;
    assert!(cmds.contains("# Commandstats\r\n"), "{cmds}");
    assert!(cmds.contains("cmdstat_set:calls=1,"), "{cmds}");
    assert!(
        cmds.contains(",rejected_calls=0,failed_calls=1\r\n")
            && cmds.contains("cmdstat_hget:calls=1,"),
        "{cmds}"
    );
    assert!(
        cmds.contains(
            "cmdstat_get:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1,failed_calls=0\r\n"
        ),
        "{cmds}"
    );
    let errors = c.call(&["INFO", "errorstats"]).await;
    assert!(
        errors.contains("errorstat_ERR:count=2\r\nerrorstat_WRONGTYPE:count=1\r\n"),
        "{errors}"
    );
    let stats = c.call(&["INFO", "stats"]).await;
    assert!(stats.contains("total_error_replies:3\r\n"), "{stats}");
    let repl = c.call(&["INFO", "replication"]).await;
    assert!(repl.contains("master_repl_offset:0\r\n"), "{repl}");
    let all = c.call(&["INFO", "all"]).await;
    assert!(
        all.contains("# Commandstats") && all.contains("# Errorstats"),
        "{all}"
    );
    let default = c.call(&["INFO"]).await;
    assert!(
        !default.contains("# Commandstats") && default.contains("# Errorstats"),
        "{default}"
    );
    b.stop().await;
}
