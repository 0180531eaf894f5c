//! The `redis` crate, used as an application would, against limpet-broker.

mod common;
use common::*;
use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, PushKind, Value};

async fn publish(
    con: &mut redis::aio::MultiplexedConnection,
    cmd: &str,
    ch: &str,
    msg: &str,
) -> i64 {
    redis::cmd(cmd)
        .arg(ch)
        .arg(msg)
        .query_async(con)
        .await
        .expect("publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_pubsub_with_the_redis_crate() {
    let b = TestBroker::default().await;
    let url = format!("redis://{}/", b.addr);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
    pubsub.subscribe("news").await.unwrap();
    pubsub.psubscribe("n*").await.unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(publish(&mut con, "PUBLISH", "news", "hello").await, 2);
    assert_eq!(publish(&mut con, "PUBLISH", "nothing", "x").await, 1);

    let mut stream = pubsub.on_message();
    let mut got = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap()
            .unwrap();
        let pattern: Option<String> = msg.get_pattern().ok();
        got.push((
            msg.get_channel_name().to_string(),
            msg.get_payload::<String>().unwrap(),
            pattern,
        ));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("news".into(), "hello".into(), None),
            ("news".into(), "hello".into(), Some("n*".into())),
            ("nothing".into(), "x".into(), Some("n*".into())),
        ]
    );
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(info.contains("pubsub_patterns:1"), "{info}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_push_messages_with_the_redis_crate() {
    let b = TestBroker::default().await;
    let url = format!("redis://{}/?protocol=resp3", b.addr);
    let client = redis::Client::open(url.as_str()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new().set_push_sender(tx);
    let mut sub = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("RESP3 connection (HELLO 3)");
    sub.subscribe("room:1").await.unwrap();
    // No ssubscribe helper on this connection type: send the command itself.
    let _: () = redis::cmd("SSUBSCRIBE")
        .arg("shard:1")
        .query_async(&mut sub)
        .await
        .unwrap();
    // The same connection keeps answering ordinary commands while subscribed.
    let echo: String = redis::cmd("ECHO")
        .arg("still usable")
        .query_async(&mut sub)
        .await
        .unwrap();
    assert_eq!(echo, "still usable");

    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(publish(&mut con, "PUBLISH", "room:1", "offer").await, 1);
    assert_eq!(publish(&mut con, "SPUBLISH", "shard:1", "answer").await, 1);

    let mut messages = Vec::new();
    while messages.len() < 2 {
        let push = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        match push.kind {
            PushKind::Subscribe | PushKind::SSubscribe => continue,
            kind => messages.push((kind, push.data)),
        }
    }
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    assert_eq!(
        messages[0],
        (PushKind::Message, vec![bulk("room:1"), bulk("offer")])
    );
    assert_eq!(
        messages[1],
        (PushKind::SMessage, vec![bulk("shard:1"), bulk("answer")])
    );
    b.stop().await;
}
