//! Publishers write messages straight into subscribers' sockets (issue 14);
//! these tests hold that path to the ordering Redis gives and to its
//! bounds: replies and pushes on one connection never interleave inside a
//! frame and keep their order, a message never arrives before the
//! confirmation of the SUBSCRIBE that let it in nor after that of the
//! UNSUBSCRIBE that ended it, and a subscriber whose socket fills up gets
//! the rest from its own task, in order. (The output limits on that path
//! are held by `slow_subscriber.rs`.)

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The number at the front of `text` (up to its first `:`).
fn seq(text: &str) -> usize {
    text.split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a numbered payload: {text:.60}"))
}

/// The last bulk string of a frame (a push's payload, an ECHO's reply).
fn last_bulk(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(frame);
    let body = text.trim_end_matches("\r\n");
    body.rsplit("\r\n").next().unwrap_or_default().to_string()
}

fn numbered(i: usize, len: usize) -> String {
    let mut s = format!("{i}:");
    s.extend(std::iter::repeat_n('x', len - s.len()));
    s
}

/// A RESP3 subscriber pipelines large ECHOs while another client publishes
/// large messages to it, and reads slowly so both sides find its socket
/// full. Every frame it reads must parse (`frame_len` panics on bytes that
/// are not RESP, which is what a push written into the middle of a reply
/// looks like), and replies and messages each arrive complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_replies_and_pushes_interleave_only_between_whole_frames() {
    const N: usize = 300;
    const LEN: usize = 20_000;
    let b = TestBroker::default().await;
    let mut sub = b.client().await;
    sub.cmd(&["HELLO", "3"]).await;
    sub.frame().await;
    sub.cmd(&["SUBSCRIBE", "feed"]).await;
    assert!(sub.frame().await.starts_with(b">3\r\n$9\r\nsubscribe"));
    let (mut rd, mut wr) = sub.stream.into_split();

    let mut p = b.client().await;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(
                p.call(&["PUBLISH", "feed", &numbered(i, LEN)]).await,
                ":1\r\n"
            );
        }
    });
    let echoes = tokio::spawn(async move {
        for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
            let mut batch = Vec::new();
            for &i in chunk {
                batch.extend(encode(&["ECHO", &numbered(i, LEN)]));
            }
            wr.write_all(&batch).await.expect("send ECHOs");
        }
        wr
    });

    let (mut pushes, mut replies) = (0usize, 0usize);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8 * 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while pushes < N || replies < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pushes} pushes, {replies} replies"
        );
        while let Some(len) = frame_len(&buf, 0) {
            let frame: Vec<u8> = buf.drain(..len).collect();
            match frame[0] {
                b'>' => {
                    assert!(frame.starts_with(b">3\r\n$7\r\nmessage\r\n$4\r\nfeed\r\n"));
                    assert_eq!(seq(&last_bulk(&frame)), pushes, "messages in order");
                    pushes += 1;
                }
                b'$' => {
                    assert_eq!(seq(&last_bulk(&frame)), replies, "replies in order");
                    replies += 1;
                }
                _ => panic!("unexpected frame {:.80}", String::from_utf8_lossy(&frame)),
            }
        }
        if pushes == N && replies == N {
            break;
        }
        let n = tokio::time::timeout(DEADLINE, rd.read(&mut chunk))
            .await
            .expect("data within the deadline")
            .expect("read");
        assert!(n > 0, "broker closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        // A slow reader: the socket fills, writes are partial.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert!(buf.is_empty(), "nothing more than asked for");
    publisher.await.unwrap();
    echoes.await.unwrap();
    b.stop().await;
}

/// What a RESP2 subscriber reads between a SUBSCRIBE and an UNSUBSCRIBE
/// of a channel someone publishes to without pause: the confirmation
/// first, then messages, then the unsubscribe confirmation, and nothing
/// after it. Both pipelined in one write (one batch of requests, while
/// publishers only queue) and one at a time (publishers write directly
/// while the subscriber's task is idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_before_its_subscribe_confirmation_or_after_its_unsubscribe() {
    let b = TestBroker::default().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut p = b.client().await;
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                p.call(&["PUBLISH", "ch", "m"]).await;
                n += 1;
            }
            n
        }));
    }
    let mut sub = b.client().await;
    let mut messages = 0usize;
    for round in 0..200 {
        if round % 2 == 0 {
            let mut both = encode(&["SUBSCRIBE", "ch"]);
            both.extend(encode(&["UNSUBSCRIBE", "ch"]));
            sub.send(&both).await;
        } else {
            sub.cmd(&["SUBSCRIBE", "ch"]).await;
        }
        let first = sub.frame().await;
        assert!(
            first.starts_with(b"*3\r\n$9\r\nsubscribe\r\n"),
            "round {round}: {:?} before the subscribe confirmation",
            String::from_utf8_lossy(&first)
        );
        if round % 2 == 1 {
            // Let some messages be written straight to the socket.
            tokio::time::sleep(Duration::from_millis(1)).await;
            sub.cmd(&["UNSUBSCRIBE", "ch"]).await;
        }
        loop {
            let frame = sub.frame().await;
            if frame.starts_with(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n") {
                messages += 1;
                continue;
            }
            assert_eq!(
                frame, b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
                "round {round}"
            );
            break;
        }
        // Nothing after the unsubscribe confirmation but this reply.
        assert_eq!(sub.call(&["PING"]).await, "+PONG\r\n", "round {round}");
    }
    stop.store(true, Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    assert!(
        published > 0 && messages > 0,
        "{published} published, {messages} received"
    );
    b.stop().await;
}

/// A subscriber that reads slower than it is published to: the publisher
/// writes what the socket takes, the rest waits in the subscriber's queue
/// and its own task writes it when the socket drains, while publishers go
/// on queuing behind it. Every message arrives, once, in order. (The
/// reader starts only once the broker had to queue, so the path is taken
/// however fast the machine is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_message_in_order_from_its_own_task() {
    const N: usize = 5000;
    const LEN: usize = 4000;
    let b = TestBroker::default().await;
    let mut sub = b.client().await;
    sub.cmd(&["SUBSCRIBE", "feed"]).await;
    sub.frame().await;
    let (go, start) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _ = start.await;
        for i in 0..N {
            let frame = sub.frame().await;
            assert_eq!(seq(&last_bulk(&frame)), i, "in order, none lost");
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sub
    });
    let mut p = b.client().await;
    let mut go = Some(go);
    for i in 0..N {
        p.cmd(&["PUBLISH", "feed", &numbered(i, LEN)]).await;
        assert_eq!(String::from_utf8_lossy(&p.frame().await), ":1\r\n");
        if go.is_some() && b.broker.clients().iter().any(|c| c.unsent_bytes() > 0) {
            let _ = go.take().map(|go| go.send(()));
        }
    }
    assert!(
        go.is_none(),
        "{N} messages of {LEN} bytes never filled the socket: the test proved nothing"
    );
    let mut sub = reader.await.unwrap();
    assert_eq!(sub.call(&["PING"]).await, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    b.stop().await;
}

/// A subscriber that half-closes its connection gets what was published to
/// it before, then the broker closes: its task writes what is still queued
/// itself instead of waiting for a publisher to say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_subscriber_gets_what_was_queued_then_eof() {
    const N: usize = 200;
    let b = TestBroker::default().await;
    let mut sub = b.client().await;
    sub.cmd(&["SUBSCRIBE", "feed"]).await;
    sub.frame().await;
    let mut p = b.client().await;
    for i in 0..N {
        p.cmd(&["PUBLISH", "feed", &numbered(i, 1000)]).await;
    }
    sub.stream.shutdown().await.expect("half-close");
    let rest = sub.read_to_close().await;
    let mut at = 0;
    let mut got = 0;
    while let Some(len) = frame_len(&rest, at) {
        assert_eq!(seq(&last_bulk(&rest[at..at + len])), got, "in order");
        got += 1;
        at += len;
    }
    assert_eq!(at, rest.len(), "only whole frames");
    p.frames(N).await;
    assert!(got <= N);
    b.stop().await;
}
