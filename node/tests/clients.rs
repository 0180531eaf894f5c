//! One node's treatment of clients: errors, limits, slow consumers,
//! heartbeats, the HTTP side, and a graceful drain on SIGTERM.

mod common;
use common::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn error_code(c: &mut Client, req: serde_json::Value) -> String {
    let reply = c.request(req.clone()).await;
    assert_eq!(reply["type"], "error", "{req} should fail: {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    reply["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_frame_and_the_connection_stays_open() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("n1", &broker, "[limits]\nmax_rooms_per_socket = 2\nmax_room_name_bytes = 8\nmax_message_bytes = 1024\nmax_errors_per_minute = 100");
    node.wait_ready().await;
    let mut c = Client::connect(&node).await;
    assert_eq!(
        error_code(&mut c, json!({"op": "dance"})).await,
        "unknown_op"
    );
    assert_eq!(
        error_code(&mut c, json!({"room": "r"})).await,
        "bad_request"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "join"})).await,
        "bad_request"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "join", "room": ""})).await,
        "invalid_room"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "join", "room": "123456789"})).await,
        "room_name_too_long"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "emit", "room": "r", "event": "x"})).await,
        "not_member"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "leave", "room": "r"})).await,
        "not_member"
    );
    c.join("a").await;
    c.join("b").await;
    assert_eq!(
        error_code(&mut c, json!({"op": "join", "room": "c"})).await,
        "too_many_rooms"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "emit", "room": "a"})).await,
        "bad_request"
    );
    assert_eq!(
        error_code(
            &mut c,
            json!({"op": "send", "to": "n1.nothing.1", "event": "x"})
        )
        .await,
        "no_such_socket"
    );
    assert_eq!(
        error_code(&mut c, json!({"op": "send", "to": "garbage", "event": "x"})).await,
        "no_such_socket"
    );
    // A message over max_message_bytes, with an id so the error names it.
    let big = json!({"op": "emit", "room": "a", "event": "x", "data": "y".repeat(2000), "id": 1});
    c.send_raw(Message::text(big.to_string())).await;
    let e = c.next_of("error").await;
    assert_eq!(e["code"], "message_too_large");
    // Bad JSON has no id to answer to.
    c.send_raw(Message::text("{not json")).await;
    assert_eq!(c.next_of("error").await["code"], "bad_json");
    c.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(c.next_of("error").await["code"], "bad_request");
    // Still open and working.
    assert_eq!(c.ok(json!({"op": "ping"})).await, json!({"pong": true}));
    // Far over the limit (the WebSocket layer refuses frames over 1 MiB
    // here): closed with 1009.
    let mut huge = Client::connect(&node).await;
    let _ = huge.ws.send(Message::text("z".repeat(2 << 20))).await;
    assert_eq!(huge.closed_with().await, 1009);
    assert!(
        node.metric("limpet_node_errors_total{code=\"not_member\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_then_misbehaving_clients_are_closed() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start(
        "n1",
        &broker,
        "[limits]\nrate_per_second = 5\nrate_burst = 5\nmax_errors_per_minute = 10",
    );
    node.wait_ready().await;
    let mut c = Client::connect(&node).await;
    // A burst over the limit, each request with its id last (as limpet.js
    // writes them), the last one binary: every request is answered by id,
    // refused ones too, so a client waiting for an ack never waits forever.
    // (Before, a request refused by the rate limit got an error without
    // an id.)
    for i in 0..8 {
        let req = format!(r#"{{"op":"ping","data":{{"id":"not this"}},"id":{i}}}"#);
        c.send_raw(Message::text(req)).await;
    }
    let binary = br#"{"op":"emit","room":"r","id":8}"#
        .iter()
        .chain(b"\n\x00\"id\":9");
    c.send_raw(Message::binary(binary.copied().collect::<Vec<u8>>()))
        .await;
    let mut limited = 0;
    for want in 0..9 {
        let reply = c.next_reply().await;
        assert_eq!(reply["id"], want, "every reply names its request: {reply}");
        if reply["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 1, "a burst of 9 over a burst of 5 is limited");
    // Past the error budget the connection is closed with 4003.
    for _ in 0..30 {
        if c.ws.send(Message::text("nope")).await.is_err() {
            break;
        }
    }
    assert_eq!(c.closed_with().await, 4003);
    assert_eq!(
        node.metric("limpet_node_closes_total{reason=\"misbehaving\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_while_the_room_keeps_flowing() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start(
        "n1",
        &broker,
        "[limits]\noutbound_queue = 16\nrate_per_second = 100000\nrate_burst = 100000",
    );
    node.wait_ready().await;
    let mut sender = Client::connect(&node).await;
    let mut reader = Client::connect(&node).await;
    let mut stuck = Client::connect(&node).await;
    for c in [&mut sender, &mut reader, &mut stuck] {
        c.join("feed").await;
    }
    // `stuck` never reads again; its socket buffers fill, then its queue.
    let payload = "z".repeat(16 * 1024);
    let total = 600;
    let reading = tokio::spawn(async move {
        for i in 0..total {
            let e = reader.event_named("m").await;
            assert_eq!(e["data"]["i"], i, "in order, none lost");
        }
        reader
    });
    for i in 0..total {
        sender
            .ok(json!({"op": "emit", "room": "feed", "event": "m", "data": {"i": i, "p": payload}}))
            .await;
    }
    let _reader = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("reader got everything")
        .unwrap();
    eventually("the stuck client is closed", || async {
        node.metric("limpet_node_closes_total{reason=\"slow_consumer\"}")
            .await
            == 1.0
    })
    .await;
    // The log arrives on its own pipe: wait for the line, do not race it.
    eventually("the close is logged", || async {
        node.log_text().contains("closing slow consumer")
    })
    .await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("n1", &broker, "[heartbeat]\nping_interval = \"300ms\"");
    node.wait_ready().await;
    // A raw handshake, then silence: no pongs from this client.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    // The close frame carries 4001 (0x0FA1) after its 0x88 opcode byte.
    let close = seen
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x0f && w[3] == 0xa1);
    assert!(close, "expected a 4001 close frame in {seen:?}");
    assert_eq!(
        node.metric("limpet_node_closes_total{reason=\"heartbeat\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_side_health_publish_api_origin_and_limits() {
    let broker = Broker::start(Kind::Limpet).await;
    let extra = "api_token = \"t0ken\"\nallowed_origins = [\"https://app.example\"]\n[limits]\nmax_connections = 2";
    let n1 = NodeProcess::start("n1", &broker, extra);
    let n2 = NodeProcess::start("n2", &broker, extra);
    n1.wait_ready().await;
    n2.wait_ready().await;
    let (status, body) = http(n1.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            health["node"].as_str(),
            health["status"].as_str(),
            health["broker"].as_str()
        ),
        (Some("n1"), Some("serving"), Some("connected"))
    );

    let mut a = Client::connect(&n1).await;
    let mut b = Client::connect(&n2).await;
    a.join("news").await;
    b.join("news").await;
    let publish = r#"{"room":"news","event":"headline","data":{"t":"hi"}}"#;
    assert_eq!(
        http(n1.addr, "POST", "/api/publish", &[], publish).await.0,
        401
    );
    for wrong in ["Bearer t0keN", "Bearer t0ke", "Bearer t0ken2", "Bearer "] {
        let auth = [("authorization", wrong)];
        assert_eq!(
            http(n1.addr, "POST", "/api/publish", &auth, publish)
                .await
                .0,
            401,
            "{wrong}"
        );
    }
    let (status, body) = http(
        n1.addr,
        "POST",
        "/api/publish",
        &[("authorization", "Bearer t0ken")],
        publish,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for c in [&mut a, &mut b] {
        let e = c.event_named("headline").await;
        assert_eq!(
            (e["from"].as_str(), e["data"]["t"].as_str()),
            (Some("server"), Some("hi"))
        );
    }
    let to_b = format!(r#"{{"socket":"{}","event":"ping","data":1}}"#, b.socket);
    assert_eq!(
        http(
            n1.addr,
            "POST",
            "/api/publish",
            &[("authorization", "Bearer t0ken")],
            &to_b
        )
        .await
        .0,
        200
    );
    assert_eq!(b.next_of("direct").await["from"], "server");
    let (status, body) = http(
        n1.addr,
        "POST",
        "/api/publish",
        &[("authorization", "Bearer t0ken")],
        "{",
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Origin allowlist and max connections.
    let upgrade = UPGRADE;
    let mut foreign = upgrade.to_vec();
    foreign.push(("origin", "https://evil.example"));
    assert_eq!(http(n1.addr, "GET", "/ws", &foreign, "").await.0, 403);
    let _second = Client::connect(&n1).await;
    assert_eq!(
        http(n1.addr, "GET", "/ws", &upgrade, "").await.0,
        503,
        "max_connections = 2"
    );
    assert!(
        n1.metric("limpet_node_rejected_connections_total{reason=\"origin\"}")
            .await
            == 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_with_1001() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start(
        "n1",
        &broker,
        "[shutdown]\ngrace = \"1s\"\nreconnect_hint = \"250ms\"",
    );
    node.wait_ready().await;
    let mut c = Client::connect(&node).await;
    c.join("r").await;
    node.signal("TERM");
    let notice = c.next_of("shutdown").await;
    assert_eq!(notice["reconnect_ms"], 250);
    let (status, body) = http(node.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"draining\""));
    assert_eq!(c.closed_with().await, 1001);
    let mut node = node;
    let deadline = std::time::Instant::now() + DEADLINE;
    let code = loop {
        if let Some(status) = node.proc.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "node did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flag() {
    let bad = limpet_testkit::write_temp(
        "limpet-node-check",
        "bad.toml",
        "id = \"x\"\n[limits]\nmax_connections = 0\n",
    );
    let out = limpet_testkit::run_check(env!("CARGO_BIN_EXE_limpet-node"), &bad);
    assert_eq!(out.code, Some(1));
    let want = format!(
        "{}:3:19: limits.max_connections: must be at least 1",
        bad.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}
