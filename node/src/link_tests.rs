//! Tests of [`crate::link`]'s single-broker connection against a scripted
//! broker on loopback: HELLO, answers in order with messages between
//! them, a refused SUBSCRIBE that keeps the connection, and the protocol
//! faults that end it.

use super::*;
use crate::broker::Publish;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const DEADLINES: Deadlines = Deadlines {
    connect: Duration::from_secs(5),
    response: Duration::from_secs(5),
};

/// One command as the scripted broker reads it.
async fn command(conn: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let n: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
    let mut args = Vec::new();
    for _ in 0..n {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let len: usize = line.trim_end().trim_start_matches('$').parse().unwrap();
        let mut arg = vec![0; len + 2];
        conn.read_exact(&mut arg).await.unwrap();
        arg.truncate(len);
        args.push(String::from_utf8(arg).unwrap());
    }
    args
}

/// A broker that answers HELLO, then runs `script` on the connection.
async fn broker<F, Fut>(script: F) -> String
where
    F: FnOnce(BufReader<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://:pw@{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        let mut conn = BufReader::new(conn);
        assert_eq!(
            command(&mut conn).await,
            ["HELLO", "3", "AUTH", "default", "pw"]
        );
        conn.get_mut()
            .write_all(b"%1\r\n$5\r\nproto\r\n:3\r\n")
            .await
            .unwrap();
        script(conn).await;
    });
    url
}

fn publish(channel: &str, payload: &'static [u8]) -> Publish {
    Publish::new(channel.into(), Bytes::from_static(payload))
}

fn message(channel: &str, payload: &str) -> Vec<u8> {
    format!(
        ">3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn one_connection_carries_commands_answers_and_messages() {
    let url = broker(|mut conn| async move {
        assert_eq!(command(&mut conn).await, ["SUBSCRIBE", "a"]);
        let w = conn.get_mut();
        w.write_all(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
            .await
            .unwrap();
        w.write_all(&message("a", "first")).await.unwrap();
        // Two publishes in one pipeline; a message between their answers.
        assert_eq!(command(&mut conn).await, ["PUBLISH", "a", "x"]);
        assert_eq!(command(&mut conn).await, ["PUBLISH", "b", "y"]);
        let w = conn.get_mut();
        w.write_all(b":1\r\n").await.unwrap();
        w.write_all(&message("a", "second")).await.unwrap();
        w.write_all(b":0\r\n").await.unwrap();
        // A refused SUBSCRIBE is an error reply; the connection goes on.
        assert_eq!(command(&mut conn).await, ["SUBSCRIBE", "c"]);
        conn.get_mut()
            .write_all(b"-ERR too many channels for this client\r\n")
            .await
            .unwrap();
        assert_eq!(command(&mut conn).await, ["UNSUBSCRIBE", "a"]);
        conn.get_mut()
            .write_all(b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n")
            .await
            .unwrap();
        // Held open until the test ends.
        let _ = command(&mut conn).await;
    })
    .await;
    let (mut link, mut incoming) = open(&[url], false, DEADLINES, 1 << 20).await.unwrap();
    // The reader keeps reading (answers reach the link through it).
    let (tx, mut got) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = incoming.next().await {
            let _ = tx.send(message);
        }
    });
    link.subscribe("a").await.unwrap();
    link.publish(&[publish("a", b"x"), publish("b", b"y")])
        .await
        .unwrap();
    let err = link.subscribe("c").await.unwrap_err();
    assert!(refused(&err), "an error reply is a refusal: {err}");
    assert!(err.to_string().contains("too many channels"));
    link.unsubscribe("a").await.unwrap();
    for expected in ["first", "second"] {
        let message = got.recv().await.unwrap();
        assert_eq!(
            message,
            Pushed::Message("a".into(), Bytes::from(expected.as_bytes()))
        );
    }
}

/// What the scripted broker sends right after HELLO, and whether the
/// node's reader gives up the connection on it.
async fn reader_ends_on(bytes: impl AsRef<[u8]> + Send + 'static) -> bool {
    let url = broker(move |mut conn| async move {
        // The reader may give up before all of it is written.
        let _ = conn.get_mut().write_all(bytes.as_ref()).await;
        let _ = command(&mut conn).await;
    })
    .await;
    let (_link, mut incoming) = open(&[url], false, DEADLINES, 1024).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("the reader decides within 10 s")
        .is_none()
}

#[tokio::test]
async fn a_broker_that_breaks_the_protocol_loses_the_connection() {
    // An answer while no command waits for one.
    assert!(reader_ends_on(b":1\r\n").await);
    // A message's channel longer than any the node subscribes to.
    assert!(reader_ends_on(b">3\r\n$7\r\nmessage\r\n$4096\r\n").await);
    // Empty attribute maps, without end.
    assert!(reader_ends_on(b"|0\r\n".repeat(10_000)).await);
    // An aggregate that never ends, in small pieces.
    let mut endless = b">100000000\r\n".to_vec();
    endless.extend(b":1\r\n".repeat(100_000));
    assert!(reader_ends_on(endless).await);
    // Each string within the limit, the whole far over what the node
    // buffers for one frame.
    let mut large = b"*4000\r\n".to_vec();
    for _ in 0..400 {
        large.extend(b"$1000\r\n");
        large.extend([b'x'; 1000]);
        large.extend(b"\r\n");
    }
    assert!(reader_ends_on(large).await);
    // Not RESP at all.
    assert!(reader_ends_on(b"HTTP/1.1 200 OK\r\n\r\n").await);
}

/// Why opening fails when the scripted broker answers HELLO with `answer`.
async fn hello_answered_with(answer: &'static [u8]) -> LinkError {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        let mut conn = BufReader::new(conn);
        assert_eq!(command(&mut conn).await, ["HELLO", "3"]);
        conn.get_mut().write_all(answer).await.unwrap();
        let _ = command(&mut conn).await;
    });
    match open(&[url], false, DEADLINES, 1024).await {
        Ok(_) => panic!("opening succeeded on HELLO answered with {answer:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_refused_hello_fails_the_attempt() {
    let err = hello_answered_with(b"-ERR unknown command 'HELLO'\r\n").await;
    assert!(
        !refused(&err),
        "a failed handshake is not a refusal to retry on the link"
    );
    assert!(err.to_string().contains("HELLO 3"), "{err}");
}

/// A message over the limit is dropped unread, in however many reads it
/// comes, and reported with its channel and size (for the node to count);
/// the connection goes on and the next message arrives. Before, any
/// string over the limit ended the connection.
#[tokio::test]
async fn a_message_over_the_limit_is_dropped_and_the_link_kept() {
    let url = broker(|mut conn| async move {
        let w = conn.get_mut();
        let mut big = b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5000\r\n".to_vec();
        big.extend([b'x'; 5000]);
        big.extend(b"\r\n");
        for piece in big.chunks(700) {
            w.write_all(piece).await.unwrap();
            w.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        w.write_all(&message("a", "after")).await.unwrap();
        let _ = command(&mut conn).await;
    })
    .await;
    let (_link, mut incoming) = open(&[url], false, DEADLINES, 1024).await.unwrap();
    for expected in [
        Pushed::TooLarge {
            channel: "a".into(),
            bytes: 5000,
        },
        Pushed::Message("a".into(), Bytes::from_static(b"after")),
    ] {
        let next = tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .expect("the next message within 10 s");
        assert_eq!(next, Some(expected));
    }
}

/// A server that takes HELLO 3 but answers as RESP2 (an array, not a
/// map) would send messages the reader takes for answers: refused.
#[tokio::test]
async fn a_hello_answered_without_resp3_fails_the_attempt() {
    let err = hello_answered_with(b"*2\r\n$5\r\nproto\r\n:2\r\n").await;
    assert!(
        err.to_string().contains("without switching to RESP3"),
        "{err}"
    );
}
