//! Hostile clients and peers against the real limpet-node: each test makes
//! one attack and asserts that the node is alive, that its memory stays
//! bounded where memory is what the attack costs, and that an honest
//! client still gets correct answers in time.

mod common;
use common::*;
use serde_json::json;

/// Resident memory of the node in MiB.
fn rss_mib(node: &NodeProcess) -> u64 {
    node.proc.rss_kib() / 1024
}

/// Ten sockets that never read sit in a room with one sender of 60 KB
/// messages. Before: every recipient held its own copy of each frame and
/// its queue was bounded in messages (1,024), so the node grew by hundreds
/// of MiB. Now frames are shared and each queue is bounded in bytes: the
/// stuck sockets are closed (4002) and the node stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_cost_bounded_bytes_not_copies() {
    let broker = Broker::start(Kind::Limpet).await;
    let mut node = NodeProcess::start(
        "n1",
        &broker,
        // No age limit: this reader must get every message, however
        // loaded the test machine is.
        "[limits]\nrate_per_second = 100000\nrate_burst = 100000\nmax_queue_delay = \"0s\"",
    );
    node.wait_ready().await;
    let mut sender = Client::connect(&node).await;
    let mut reader = Client::connect(&node).await;
    sender.join("feed").await;
    reader.join("feed").await;
    let mut stuck = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&node).await;
        c.join("feed").await;
        stuck.push(c);
    }
    let before = rss_mib(&node);

    let payload = "z".repeat(60_000);
    let total = 1000;
    let reading = tokio::spawn(async move {
        for i in 0..total {
            let e = reader.event_named("m").await;
            assert_eq!(e["data"]["i"], i, "in order, none lost");
        }
        reader
    });
    let mut peak = before;
    for i in 0..total {
        sender
            .ok(json!({"op": "emit", "room": "feed", "event": "m", "data": {"i": i, "p": payload}}))
            .await;
        if i % 50 == 0 {
            peak = peak.max(rss_mib(&node));
        }
    }
    let mut reader = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the honest reader got all 1000 messages in time")
        .expect("reader task");
    peak = peak.max(rss_mib(&node));
    node.proc.assert_alive();
    eprintln!("slow consumers: RSS {before} MiB before, {peak} MiB peak");
    // Before the fix this grew by about 600 MiB (10 × 1000 × 60 KB).
    assert!(
        peak < before + 40,
        "node grew from {before} MiB to {peak} MiB with 10 stuck readers"
    );
    eventually(
        "the ten stuck sockets are closed as slow consumers",
        || async {
            node.metric("limpet_node_closes_total{reason=\"slow_consumer\"}")
                .await
                == 10.0
        },
    )
    .await;
    drop(stuck);
    eventually("the stuck sockets are gone", || async {
        node.metric("limpet_node_connections").await == 2.0
    })
    .await;
    assert_eq!(node.metric("limpet_node_outbound_queued_bytes").await, 0.0);
    let after = rss_mib(&node);
    eprintln!("slow consumers: RSS {after} MiB after they left");
    assert!(
        after < before + 40,
        "node kept {after} MiB after the stuck sockets left (started at {before} MiB)"
    );
    // The honest client is still served.
    let fresh = tokio::time::timeout(DEADLINE, async {
        let mut c = Client::connect(&node).await;
        c.join("feed").await
    })
    .await
    .expect("a new client joins in time");
    assert_eq!(fresh["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(reader.ok(json!({"op": "ping"})).await["pong"], true);
    node.proc.assert_alive();
}

/// Reads a raw connection until the server closes it; returns the bytes.
async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("the server closes in time")
            .unwrap_or(0);
        if n == 0 {
            return seen;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Handshakes that are not WebSocket upgrades, a foreign `Origin` in
/// non-ASCII bytes, a framing violation, and a client closed for errors
/// while acks are still queued for it. Before: the first three got
/// `101 Switching Protocols`, the violation was closed with 1001, and the
/// queued acks were dropped at the 4003 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_and_close_codes_follow_rfc_6455() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    let broker = Broker::start(Kind::Limpet).await;
    let mut node = NodeProcess::start(
        "n1",
        &broker,
        "allowed_origins = [\"https://app.example\"]\n[limits]\nrate_per_second = 100000\nrate_burst = 100000\nmax_errors_per_minute = 5\noutbound_queue_bytes = \"64mb\"",
    );
    node.wait_ready().await;
    let upgrade = UPGRADE;
    assert_eq!(http(node.addr, "POST", "/ws", &upgrade, "").await.0, 405);
    let mut no_upgrade = upgrade.to_vec();
    no_upgrade[0] = ("upgrade", "h2c");
    assert_eq!(http(node.addr, "GET", "/ws", &no_upgrade, "").await.0, 400);
    let mut no_connection = upgrade.to_vec();
    no_connection[1] = ("connection", "keep-alive");
    assert_eq!(
        http(node.addr, "GET", "/ws", &no_connection, "").await.0,
        400
    );
    let mut foreign = upgrade.to_vec();
    foreign.push(("origin", "https://app.example\u{e9}"));
    assert_eq!(http(node.addr, "GET", "/ws", &foreign, "").await.0, 403);
    let mut allowed =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            node.addr
        ))
        .unwrap();
    allowed.headers_mut().insert(
        "origin",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("https://app.example"),
    );
    let (_browser, resp) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(allowed))
            .await
            .expect("handshake in time")
            .expect("the allowed origin still upgrades");
    assert_eq!(resp.status(), 101);

    // A frame with a reserved bit set (masked, empty): a protocol error.
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    tcp.write_all(&[0xC1, 0x80, 1, 2, 3, 4]).await.unwrap();
    let seen = read_to_close(&mut tcp).await;
    // A close frame (0x88) whose code is 1002 (0x03EA).
    let close = seen
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xea);
    assert!(close, "expected a 1002 close frame in {seen:?}");

    // Acks queued before a 4003 close still reach the client: 100 large
    // self-addressed emits fill the socket buffers, then 6 bad requests
    // spend the error budget (5).
    let mut c = Client::connect(&node).await;
    c.join("r").await;
    let data = "d".repeat(60_000);
    let emits = 100;
    for i in 0..emits {
        let req =
            json!({"op": "emit", "room": "r", "event": "e", "self": true, "data": data, "id": i});
        c.ws.send(Message::text(req.to_string())).await.unwrap();
    }
    for i in 0..6 {
        let req = json!({"op": "dance", "id": 1000 + i});
        c.ws.send(Message::text(req.to_string())).await.unwrap();
    }
    let (mut events, mut acks, mut errors, mut code) = (0, 0, 0, 0);
    while let Ok(Some(msg)) = tokio::time::timeout(DEADLINE, c.ws.next()).await {
        match msg {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("event") => events += 1,
                    Some("ack") => acks += 1,
                    Some("error") => errors += 1,
                    _ => {}
                }
            }
            Ok(Message::Close(f)) => {
                code = f.map_or(0, |f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        (events, acks, errors, code),
        (emits, emits, 6, 4003),
        "(events, acks, errors, close code) before the connection ended"
    );
    node.proc.assert_alive();
    let mut honest = Client::connect(&node).await;
    assert_eq!(honest.ok(json!({"op": "ping"})).await["pong"], true);
    assert_eq!(
        node.metric("limpet_node_rejected_connections_total{reason=\"method\"}")
            .await,
        1.0
    );
}

/// A forged `join` envelope for `room`, as anyone with access to the
/// broker can publish it.
fn forged_join(room: &str, node: &str, n: usize) -> String {
    let socket = format!("{node}.x.{n}");
    format!(
        "{{\"k\":\"join\",\"o\":\"{node}\",\"r\":\"{room}\",\"s\":\"{socket}\"}}\n{}",
        json!({"type": "joined", "room": room, "socket": socket, "node": node})
    )
}

/// Publishes `payloads` on `channel` in pipelines of 1,000.
async fn flood(broker: &Broker, channel: &str, payloads: impl Iterator<Item = Vec<u8>>) {
    let client = redis::Client::open(broker.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    let mut n = 0;
    for p in payloads {
        pipe.cmd("PUBLISH").arg(channel).arg(p).ignore();
        n += 1;
        if n % 1000 == 0 {
            pipe.query_async::<()>(&mut conn).await.unwrap();
            pipe = redis::pipe();
        }
    }
    if n % 1000 != 0 {
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
}

/// Anyone who can publish on the broker forges 100,000 joins into a room,
/// a member list of 50,000 and heartbeats of 5,000 nodes. Before: every
/// one was remembered and announced (the node grew without bound, the room's
/// client was flooded with `joined` frames and a join ack listed them all).
/// Now remote members per room and per node, and peer nodes, are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_backplane_members_are_bounded() {
    let broker = Broker::start(Kind::Limpet).await;
    // No age limit: `after` below must arrive however long the flood
    // takes to handle on a loaded machine (it is what tells us the flood
    // was handled).
    let limits = "[limits]\nmax_remote_members_per_room = 1000\nmax_remote_members = 1500\nmax_peer_nodes = 100\noutbound_queue = 4096\nmax_queue_delay = \"0s\"";
    let (mut n1, n2) = two_nodes(&broker, ["n1", "n2"], limits).await;
    let mut a = Client::connect(&n1).await;
    let mut b = Client::connect(&n2).await;
    a.join("lobby").await;
    a.join("side").await;
    b.join("lobby").await;
    b.join("side").await;
    a.about("joined", &b.socket).await;
    let before = rss_mib(&n1);

    flood(
        &broker,
        "limpet:room:lobby",
        (0..100_000).map(|n| forged_join("lobby", &format!("evil{}", n % 50), n).into_bytes()),
    )
    .await;
    let members: Vec<String> = (0..50_000).map(|n| format!("evilm.x.{n}")).collect();
    let list = json!({"k": "members", "o": "evilm", "r": "side", "m": members}).to_string() + "\n";
    flood(
        &broker,
        "limpet:room:side",
        std::iter::once(list.into_bytes()),
    )
    .await;
    flood(
        &broker,
        "limpet:nodes",
        (0..5_000).map(|n| format!("{{\"k\":\"hb\",\"o\":\"evil-hb{n}\"}}\n").into_bytes()),
    )
    .await;

    // The broker keeps order on one subscription: once `after` arrives,
    // the flood before it has been handled (or dropped).
    b.emit("lobby", "after", json!(1)).await;
    let e = a.event_named("after").await;
    assert_eq!(e["from"].as_str(), Some(b.socket.as_str()));
    n1.proc.assert_alive();
    let peak = rss_mib(&n1);
    eprintln!("forged members: RSS {before} MiB before, {peak} MiB after");
    let mut c = Client::connect(&n1).await;
    let listed = c.join("lobby").await["members"]
        .as_array()
        .map_or(0, Vec::len);
    // a and c here; b and forged members up to the room's bound.
    assert!(
        (3..=1002).contains(&listed),
        "a join ack listed {listed} members"
    );
    let remote = n1.metric("limpet_node_remote_members").await;
    assert!(remote <= 1500.0, "{remote} remote members remembered");
    assert!(
        n1.metric("limpet_node_backplane_rejected_total{reason=\"room_members\"}")
            .await
            > 0.0
    );
    let (_, health) = http(n1.addr, "GET", "/health", &[], "").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let peers = health["peers"].as_u64().unwrap_or(u64::MAX);
    assert!(peers <= 100, "{peers} peer nodes tracked");
    assert!(
        peak < before + 40,
        "node grew from {before} MiB to {peak} MiB under forged joins"
    );
    // Honest traffic still flows both ways.
    a.emit("side", "back", json!(2)).await;
    assert_eq!(b.event_named("back").await["data"], 2);
}

/// With `cluster_secret`, envelopes without a valid HMAC tag (unsigned, or
/// signed with another key) are refused and counted, while the nodes that
/// share the secret keep talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_without_the_cluster_secret_are_refused() {
    let broker = Broker::start(Kind::Limpet).await;
    let secret = "cluster_secret = \"0123456789abcdef-test\"";
    let (mut n1, n2) = two_nodes(&broker, ["n1", "n2"], secret).await;
    let mut a = Client::connect(&n1).await;
    let mut b = Client::connect(&n2).await;
    a.join("lobby").await;
    b.join("lobby").await;
    a.about("joined", &b.socket).await;

    let unsigned = (0..1000).map(|n| forged_join("lobby", "evil", n).into_bytes());
    let wrong_key = (1000..2000).map(|n| {
        let mut p = vec![7u8; 32];
        p.extend_from_slice(forged_join("lobby", "evil", n).as_bytes());
        p
    });
    let fake_emit = std::iter::once(
        format!(
            "{{\"k\":\"emit\",\"o\":\"evil\",\"r\":\"lobby\"}}\n{}",
            json!({"type": "event", "room": "lobby", "event": "fake", "from": b.socket, "data": 0})
        )
        .into_bytes(),
    );
    flood(
        &broker,
        "limpet:room:lobby",
        unsigned.chain(wrong_key).chain(fake_emit),
    )
    .await;
    b.emit("lobby", "real", json!(1)).await;
    let first = a.next_of("event").await;
    assert_eq!(first["event"], "real", "a forged emit got through: {first}");
    let joined = a.drain_of("joined").await;
    assert!(joined.is_empty(), "forged joins announced: {joined:?}");
    n1.proc.assert_alive();
    let presence = a.ok(json!({"op": "presence", "room": "lobby"})).await;
    assert_eq!(presence["members"].as_array().map(Vec::len), Some(2));
    eventually("the forged envelopes are counted", || async {
        n1.metric("limpet_node_backplane_rejected_total{reason=\"auth\"}")
            .await
            >= 2001.0
    })
    .await;
}

/// Fifty sockets from one client address (forwarded by a trusted proxy)
/// each send a full per-socket burst. Before: limits were per socket only,
/// so 50 sockets got 10,000 acks through. Now the address shares one
/// bucket and may hold at most 50 sockets, while another address behind
/// the same proxy is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_per_client_address_behind_a_trusted_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let broker = Broker::start(Kind::Limpet).await;
    let mut node = NodeProcess::start(
        "n1",
        &broker,
        "trusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_address = 50\naddress_rate_per_second = 50\naddress_rate_burst = 100\nmax_errors_per_minute = 100000",
    );
    node.wait_ready().await;
    let attacker = [("x-forwarded-for", "203.0.113.7")];
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(
            Client::connect_with(&node, &attacker)
                .await
                .expect("admitted"),
        );
    }
    // The proxy's own hop is appended to the attacker's claim: still the attacker.
    let refused =
        Client::connect_with(&node, &[("x-forwarded-for", "203.0.113.7, 127.0.0.1")]).await;
    assert_eq!(refused.err(), Some(429), "a 51st socket from one address");

    let started = std::time::Instant::now();
    let per_socket = 200; // the per-socket burst
    let mut tasks = Vec::new();
    for mut c in sockets {
        tasks.push(tokio::spawn(async move {
            for i in 0..per_socket {
                let req = json!({"op": "ping", "id": i}).to_string();
                c.ws.feed(Message::text(req)).await.unwrap();
            }
            c.ws.flush().await.unwrap();
            let (mut acks, mut replies) = (0, 0);
            while replies < per_socket {
                let msg = tokio::time::timeout(DEADLINE, c.ws.next())
                    .await
                    .expect("replies in time")
                    .expect("open")
                    .expect("frame");
                let Message::Text(t) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("ack") => {
                        acks += 1;
                        replies += 1;
                    }
                    Some("error") => {
                        assert_eq!(v["code"], "rate_limited");
                        replies += 1;
                    }
                    _ => {}
                }
            }
            (acks, c)
        }));
    }
    let mut acks = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (n, c) = t.await.unwrap();
        acks += n;
        keep.push(c);
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("per address: {acks} acks of 10000 in {elapsed:.1} s");
    // The burst, plus the rate for the time it took (and a second of slack).
    let allowed = 100 + (50.0 * (elapsed + 1.0)) as usize;
    assert!(
        acks <= allowed,
        "{acks} acks for one address in {elapsed:.1} s (allowed {allowed})"
    );
    node.proc.assert_alive();
    // Another client behind the same proxy is not limited by the attacker.
    let mut honest = Client::connect_with(&node, &[("x-forwarded-for", "198.51.100.1")])
        .await
        .expect("another address is admitted");
    for _ in 0..20 {
        assert_eq!(honest.ok(json!({"op": "ping"})).await["pong"], true);
    }
    assert!(node.metric("limpet_node_address_rate_limited_total").await > 0.0);
    assert_eq!(
        node.metric("limpet_node_rejected_connections_total{reason=\"address_connections\"}")
            .await,
        1.0
    );
}

/// Publish requests whose headers promise a 1,000-byte body that never
/// comes. Before: each held a task and a socket forever (no token by
/// default, no connection cap). Now each is answered 408 and closed once
/// the body read times out, counted in
/// `limpet_node_publish_body_timeouts_total`, while an honest publish
/// sent during the stall is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_publish_bodies_time_out() {
    use tokio::io::AsyncWriteExt;
    let broker = Broker::start(Kind::Limpet).await;
    let mut node = NodeProcess::start("n1", &broker, "");
    node.wait_ready().await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        tcp.write_all(
            b"POST /api/publish HTTP/1.1\r\nHost: node\r\nContent-Length: 1000\r\n\r\n{\"room\":",
        )
        .await
        .unwrap();
        stalled.push(tcp);
    }
    let mut honest = Client::connect(&node).await;
    honest.join("news").await;
    let publish = r#"{"room":"news","event":"headline","data":1}"#;
    assert_eq!(
        http(node.addr, "POST", "/api/publish", &[], publish)
            .await
            .0,
        200
    );
    assert_eq!(honest.event_named("headline").await["data"], 1);
    for tcp in &mut stalled {
        let seen = String::from_utf8_lossy(&read_to_close(tcp).await).into_owned();
        assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    }
    assert_eq!(
        node.metric("limpet_node_publish_body_timeouts_total").await,
        3.0
    );
    node.proc.assert_alive();
}

/// 1,001 upgrades from a foreign `Origin`, then 1,001 over the
/// per-address connection limit. Before: one WARN line each (2,002 lines,
/// as fast as anyone can connect). Now the first and then one per
/// thousand of each kind are logged, and all are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_do_not_flood_the_log() {
    let broker = Broker::start(Kind::Limpet).await;
    let mut node = NodeProcess::start(
        "n1",
        &broker,
        "allowed_origins = [\"https://app.example\"]\n[limits]\nmax_connections_per_address = 1",
    );
    node.wait_ready().await;
    let upgrade = UPGRADE;
    let mut foreign = upgrade.to_vec();
    foreign.push(("origin", "https://evil.example"));
    for _ in 0..1001 {
        assert_eq!(http(node.addr, "GET", "/ws", &foreign, "").await.0, 403);
    }
    let _holder = Client::connect(&node).await;
    for _ in 0..1001 {
        assert_eq!(http(node.addr, "GET", "/ws", &upgrade, "").await.0, 429);
    }
    let lines = |text: &str, what: &str| text.matches(what).count();
    // The 1,001st address refusal is logged last: once it is in, every
    // earlier line is too.
    eventually("the last logged refusal", || async {
        lines(&node.log_text(), "refused WebSocket: ") >= 2
    })
    .await;
    let log = node.log_text();
    assert_eq!(
        (
            lines(&log, "from a foreign origin"),
            lines(&log, "refused WebSocket: ")
        ),
        (2, 2)
    );
    for reason in ["origin", "address_connections"] {
        let name = format!("limpet_node_rejected_connections_total{{reason=\"{reason}\"}}");
        assert_eq!(node.metric(&name).await, 1001.0, "{reason}");
    }
    node.proc.assert_alive();
}
