//! Bad input costs the offender its own connection and nothing else.

mod common;
use common::*;
use limpet_config::{BrokerConfig, ByteSize};
use std::time::Duration;

/// A subscriber that must keep receiving while others misbehave.
async fn bystander(b: &TestBroker) -> Client {
    let mut s = b.client().await;
    s.cmd(&["SUBSCRIBE", "calm"]).await;
    s.frame().await;
    s
}

async fn still_serving(b: &TestBroker, bystander: &mut Client) {
    let mut p = b.client().await;
    assert_eq!(p.call(&["PUBLISH", "calm", "still here"]).await, ":1\r\n");
    assert_eq!(
        bystander.frame().await,
        b"*3\r\n$7\r\nmessage\r\n$4\r\ncalm\r\n$10\r\nstill here\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_redis_errors_and_lose_only_their_connection() {
    let config = BrokerConfig {
        limits: limpet_config::ProtocolLimits {
            max_bulk_len: ByteSize(4096),
            max_multibulk_len: 100,
            ..Default::default()
        },
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut calm = bystander(&b).await;
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*abc\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*-5\r\n*1\r\nx\r\n",
            b"-ERR Protocol error: expected '$', got 'x'\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$99999999999999999999\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$4097\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*101\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*9223372036854775807\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"ECHO \"open\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // A valid command first: it is answered before the error.
        (
            b"PING\r\n*1\r\n:1\r\n",
            b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n",
        ),
    ];
    for (input, want) in cases {
        let mut c = b.client().await;
        c.send(input).await;
        let got = c.read_to_close().await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    still_serving(&b, &mut calm).await;
    let errors = b.broker.metrics.protocol_errors.get();
    assert_eq!(errors, cases.len() as u64);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_and_non_resp_streams() {
    let b = TestBroker::default().await;
    let mut calm = bystander(&b).await;

    // 70 KB with no newline: Redis's inline limit is 64 KB.
    let mut c = b.client().await;
    c.send(&vec![b'x'; 70 * 1024]).await;
    assert_eq!(
        c.read_to_close().await,
        b"-ERR Protocol error: too big inline request\r\n"
    );

    let mut c = b.client().await;
    let mut big_count = b"*".to_vec();
    big_count.extend(vec![b'1'; 70 * 1024]);
    c.send(&big_count).await;
    assert_eq!(
        c.read_to_close().await,
        b"-ERR Protocol error: too big mbulk count string\r\n"
    );

    // Binary noise with line breaks reads as unknown inline commands and the
    // connection survives. (A NUL ends an inline line here; Redis, reading a
    // C string, stalls on it until the 64 KB limit instead.)
    let mut c = b.client().await;
    c.send(b"\x01\xfe\xff\x00zz\r\n\x00ignored\r\nPING\r\n")
        .await;
    let first = c.frame().await;
    assert!(
        first.starts_with(b"-ERR unknown command '"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    assert_eq!(c.frame().await, b"+PONG\r\n");

    // An HTTP request is cut off without a reply (cross-protocol guard).
    let mut c = b.client().await;
    c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(c.read_to_close().await, b"");
    let mut c = b.client().await;
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    // The `Host:` line closes it before GET's error is flushed, as in Redis.
    assert_eq!(c.read_to_close().await, b"");

    still_serving(&b, &mut calm).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_byte_streams_never_take_the_server_down() {
    let b = TestBroker::default().await;
    let mut calm = bystander(&b).await;
    // A fixed-seed xorshift so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"*$:+-\r\n0123456789-PINGSUBSCRIBE \"'\\x";
    for _ in 0..200 {
        let mut c = b.client().await;
        let len = (next() % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 4 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        c.send(&bytes).await;
        c.send(b"\r\n").await;
        drop(c);
    }
    still_serving(&b, &mut calm).await;
    let mut c = b.client().await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_buffer_limit_closes_the_offender() {
    let config = BrokerConfig {
        limits: limpet_config::ProtocolLimits {
            query_buffer_limit: ByteSize(64 * 1024),
            ..Default::default()
        },
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut calm = bystander(&b).await;
    let mut c = b.client().await;
    c.send(b"*2\r\n$4\r\nECHO\r\n$500000\r\n").await;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut c.stream, &vec![b'a'; 200 * 1024]).await;
    assert_eq!(c.read_to_close().await, b"");
    still_serving(&b, &mut calm).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_time_out_but_subscribers_do_not() {
    let config = BrokerConfig {
        timeout: 1,
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut calm = bystander(&b).await;
    let mut silent = b.client().await;
    let started = std::time::Instant::now();
    assert_eq!(silent.read_to_close().await, b"");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    // The subscriber was idle just as long and is still served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    still_serving(&b, &mut calm).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_refuses_with_the_redis_error() {
    let config = BrokerConfig {
        maxclients: 2,
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut one = b.client().await;
    let mut two = b.client().await;
    assert_eq!(one.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(two.call(&["PING"]).await, "+PONG\r\n");
    let mut three = b.client().await;
    assert_eq!(
        three.read_to_close().await,
        b"-ERR max number of clients reached\r\n"
    );
    assert_eq!(b.broker.metrics.rejected_connections.get(), 1);
    // A freed slot is usable again (the broker notices the close asynchronously).
    drop(two);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = b.client().await;
        c.cmd(&["PING"]).await;
        let got = c.read_to_close_or_frame().await;
        if got == b"+PONG\r\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(one.call(&["PING"]).await, "+PONG\r\n");
    b.stop().await;
}
