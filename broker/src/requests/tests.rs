//! The session's logic without a socket: requests go in as bytes through
//! [`process`], replies come out of the session's output buffer, and the
//! shared state (registry, handle, metrics) is checked directly.

use super::process;
use crate::session::Session;
use crate::state::Broker;
use bytes::BytesMut;
use limpet_config::BrokerConfig;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

fn broker(requirepass: Option<&str>) -> Arc<Broker> {
    let config = BrokerConfig {
        requirepass: requirepass.map(str::to_string),
        ..BrokerConfig::default()
    };
    Arc::new(Broker::new(config, None))
}

fn session(broker: &Arc<Broker>) -> Session {
    let addr = "127.0.0.1:40000".parse().unwrap();
    let handle = broker.admit(addr, addr, -1).expect("a free client slot");
    Session::new(broker.clone(), handle)
}

/// Runs `input` (inline or multibulk) and returns what the client was
/// sent, marking it written as the socket loop would (after any hold-back,
/// which is left set for the test to see).
fn run(s: &mut Session, input: &str) -> String {
    let mut buf = BytesMut::from(input.as_bytes());
    assert!(process(s, &mut buf), "the connection stays open");
    if let Some(until) = s.hold_until.take() {
        s.commit().expect("no socket to fail");
        s.hold_until = Some(until);
    }
    String::from_utf8_lossy(&s.handle.take_unsent()).into_owned()
}

fn confirm(kind: &str, name: &str, count: usize) -> String {
    format!(
        "*3\r\n${}\r\n{kind}\r\n${}\r\n{name}\r\n:{count}\r\n",
        kind.len(),
        name.len()
    )
}

#[test]
fn subscription_counts_follow_subscribe_and_unsubscribe() {
    let b = broker(None);
    let mut s = session(&b);
    let got = run(&mut s, "SUBSCRIBE a b a\r\n");
    let want = [("a", 1), ("b", 2), ("a", 2)]
        .map(|(n, c)| confirm("subscribe", n, c))
        .concat();
    assert_eq!(got, want);
    assert_eq!(
        run(&mut s, "PSUBSCRIBE p*\r\n"),
        confirm("psubscribe", "p*", 3)
    );
    assert_eq!(
        run(&mut s, "SSUBSCRIBE x\r\n"),
        confirm("ssubscribe", "x", 1),
        "shard channels are counted on their own"
    );
    assert_eq!(s.handle.sub_count.load(Relaxed), 2);
    assert_eq!(s.handle.psub_count.load(Relaxed), 1);
    assert_eq!(s.handle.ssub_count.load(Relaxed), 1);
    assert!(s.handle.is_pubsub());
    assert_eq!(b.registry.channel_count(crate::registry::Space::Global), 2);
    assert_eq!(b.metrics.channels.get(), 2);

    assert_eq!(
        run(&mut s, "UNSUBSCRIBE b\r\n"),
        confirm("unsubscribe", "b", 2)
    );
    assert_eq!(
        run(&mut s, "PUNSUBSCRIBE\r\n"),
        confirm("punsubscribe", "p*", 1)
    );
    assert_eq!(
        run(&mut s, "UNSUBSCRIBE\r\n"),
        confirm("unsubscribe", "a", 0)
    );
    assert_eq!(
        run(&mut s, "UNSUBSCRIBE\r\n"),
        "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
        "nothing left: one confirmation with a null channel"
    );
    assert!(s.in_pubsub_mode(), "the shard channel is still held");
    assert_eq!(
        run(&mut s, "SUNSUBSCRIBE x\r\n"),
        confirm("sunsubscribe", "x", 0)
    );
    assert!(!s.in_pubsub_mode());
    assert!(!s.handle.is_pubsub());
    assert_eq!(b.registry.channel_count(crate::registry::Space::Global), 0);
    assert_eq!(b.metrics.channels.get(), 0);
}

#[test]
fn resp2_and_resp3_reply_modes() {
    let b = broker(None);
    let mut s = session(&b);
    assert_eq!(run(&mut s, "CLIENT GETNAME\r\n"), "$-1\r\n");
    let hello = run(&mut s, "HELLO 3\r\n");
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(s.handle.resp3(), "publishers see the dialect");
    assert_eq!(run(&mut s, "CLIENT GETNAME\r\n"), "_\r\n");
    assert_eq!(
        run(&mut s, "SUBSCRIBE a\r\n"),
        ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(
        run(&mut s, "ECHO hi\r\n"),
        "$2\r\nhi\r\n",
        "RESP3 runs any command while subscribed"
    );
    assert_eq!(run(&mut s, "PING\r\n"), "+PONG\r\n");
    assert_eq!(run(&mut s, "RESET\r\n"), "+RESET\r\n");
    assert!(!s.handle.resp3(), "RESET goes back to RESP2");
    assert!(!s.in_pubsub_mode(), "RESET drops the subscriptions");
    assert_eq!(b.registry.channel_count(crate::registry::Space::Global), 0);
}

#[test]
fn subscribed_resp2_client_is_restricted() {
    let b = broker(None);
    let mut s = session(&b);
    run(&mut s, "SUBSCRIBE a\r\n");
    assert_eq!(
        run(&mut s, "ECHO hi\r\n"),
        "-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(
        run(&mut s, "PING\r\n"),
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        "PING answers with an array while subscribed"
    );
    assert_eq!(
        run(&mut s, "UNSUBSCRIBE\r\n"),
        confirm("unsubscribe", "a", 0)
    );
    assert_eq!(run(&mut s, "ECHO hi\r\n"), "$2\r\nhi\r\n");
    assert_eq!(run(&mut s, "PING\r\n"), "+PONG\r\n");
}

#[test]
fn auth_state_gates_commands_and_request_size() {
    let b = broker(Some("secret"));
    let mut s = session(&b);
    assert!(!s.authenticated);
    assert_eq!(
        run(&mut s, "PING\r\n"),
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        run(&mut s, "AUTH wrong\r\n"),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(s.auth_failures, 1);
    assert!(
        s.hold_until.is_some(),
        "a failed AUTH holds the connection back"
    );
    assert_eq!(b.metrics.auth_failures.get(), 1);
    s.hold_until = None;
    assert_eq!(run(&mut s, "AUTH secret\r\n"), "+OK\r\n");
    assert!(s.authenticated);
    assert_eq!(run(&mut s, "PING\r\n"), "+PONG\r\n");
    let eleven = "*11\r\n".to_string() + &"$1\r\nx\r\n".repeat(11);
    let got = run(&mut s, &eleven);
    assert!(got.starts_with("-ERR unknown command 'x'"), "{got}");

    assert_eq!(run(&mut s, "RESET\r\n"), "+RESET\r\n");
    assert!(!s.authenticated, "RESET forgets the password");
    assert_eq!(
        run(&mut s, &eleven),
        "-ERR Protocol error: invalid multibulk length\r\n",
        "a stranger may not send more than 10 arguments"
    );
    assert!(s.close_after_reply);
}

#[test]
fn publish_reaches_another_session_through_its_queue() {
    let b = broker(None);
    let mut sub = session(&b);
    let mut publisher = session(&b);
    run(&mut sub, "SUBSCRIBE news\r\n");
    assert_eq!(run(&mut publisher, "PUBLISH news hello\r\n"), ":1\r\n");
    assert_eq!(run(&mut publisher, "PUBLISH other hello\r\n"), ":0\r\n");
    let message = "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n";
    assert_eq!(
        sub.handle.output_bytes(),
        message.len() as u64,
        "the queued push is owed output"
    );
    assert_eq!(String::from_utf8_lossy(&sub.handle.take_unsent()), message);
    assert_eq!(sub.handle.output_bytes(), 0);
    assert_eq!(b.metrics.published.get(), 2);
    assert_eq!(b.metrics.delivered.get(), 1);
}

#[test]
fn pushes_queued_before_an_unsubscribe_come_before_its_reply() {
    let b = broker(None);
    let mut sub = session(&b);
    let mut publisher = session(&b);
    run(&mut sub, "SUBSCRIBE news\r\n");
    run(&mut publisher, "PUBLISH news first\r\n");
    let got = run(&mut sub, "UNSUBSCRIBE news\r\n");
    assert_eq!(
        got,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nfirst\r\n".to_string()
            + &confirm("unsubscribe", "news", 0)
    );
}

#[test]
fn an_idle_client_holds_no_buffer() {
    let b = broker(None);
    let mut s = session(&b);
    let mut input = BytesMut::from(&b"CLIENT SETNAME idle\r\nSUBSCRIBE news\r\n"[..]);
    let start = input.as_ptr() as usize;
    let read = start..start + input.capacity();
    assert!(process(&mut s, &mut input));
    assert_eq!(s.out.capacity(), 0, "replies queued: the buffer is let go");
    // What outlives the batch is a copy, not a slice pinning the read buffer.
    let channel = s.subs.channels.iter().next().expect("subscribed").as_ptr();
    assert!(!read.contains(&(channel as usize)), "channel name");
    let name = s.handle.info.lock().name.clone().expect("named");
    assert!(!read.contains(&(name.as_ptr() as usize)), "client name");
}
