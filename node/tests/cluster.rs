//! Rooms across nodes, end to end: real limpet-node processes over
//! limpet-broker and over a real redis-server (every test runs on both),
//! and the room test once more over a Redis Cluster (sharded pub/sub).

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Events received by `c` up to and including `marker` from the same sender.
async fn events_until(c: &mut Client, marker: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let e = c.next_of("event").await;
        let done = e["event"] == marker;
        got.push(e);
        if done {
            return got;
        }
    }
}

/// The names of a process's threads.
fn thread_names(node: &NodeProcess) -> Vec<String> {
    let dir = format!("/proc/{}/task", node.proc.child.id());
    let tasks = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Three nodes; the third runs its broker link on a thread of its own
/// (`broker_link_thread`), so every cross-node test covers both ways.
async fn three_nodes(broker: &Broker) -> (NodeProcess, NodeProcess, NodeProcess) {
    let nodes = (
        NodeProcess::start("na", broker, ""),
        NodeProcess::start("nb", broker, ""),
        NodeProcess::start("nc", broker, "broker_link_thread = true"),
    );
    for n in [&nodes.0, &nodes.1, &nodes.2] {
        n.wait_ready().await;
        n.wait_peers(2).await;
    }
    nodes
}

async fn room_delivery_exactly_once(kind: Kind) {
    let broker = Broker::start(kind).await;
    let (na, nb, nc) = three_nodes(&broker).await;
    // The link thread's name is cut to 15 bytes by the kernel.
    let link_thread = |n: &NodeProcess| {
        thread_names(n)
            .iter()
            .any(|t| t.starts_with("limpet-broker"))
    };
    assert!(!link_thread(&na), "{:?}", thread_names(&na));
    assert!(link_thread(&nc), "{:?}", thread_names(&nc));
    let mut a1 = Client::connect(&na).await;
    let mut a2 = Client::connect(&na).await;
    let mut b1 = Client::connect(&nb).await;
    let mut c1 = Client::connect(&nc).await;
    assert_eq!(
        (a1.node.as_str(), b1.node.as_str(), c1.node.as_str()),
        ("na", "nb", "nc")
    );
    assert!(
        b1.socket.starts_with("nb."),
        "socket ids name their node: {}",
        b1.socket
    );
    for c in [&mut a1, &mut a2, &mut b1, &mut c1] {
        c.join("lobby").await;
    }
    // Presence sees all four across three nodes.
    let p = a1.ok(json!({"op": "presence", "room": "lobby"})).await;
    assert_eq!(p["complete"], true, "{p}");
    let mut members: Vec<(String, String)> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["socket"].as_str().unwrap().to_string(),
                m["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    members.sort();
    let mut want: Vec<(String, String)> = [&a1, &a2, &b1, &c1]
        .iter()
        .map(|c| (c.socket.clone(), c.node.clone()))
        .collect();
    want.sort();
    assert_eq!(members, want);

    a1.emit("lobby", "chat", json!({"text": "hello", "n": 1}))
        .await;
    a1.emit("lobby", "marker", json!(null)).await;
    for c in [&mut a2, &mut b1, &mut c1] {
        let got = events_until(c, "marker").await;
        assert_eq!(
            got.len(),
            2,
            "exactly once, in order, on {}: {got:?}",
            c.node
        );
        assert_eq!(got[0]["data"], json!({"text": "hello", "n": 1}));
        assert_eq!(got[0]["from"], json!(a1.socket));
        assert_eq!(got[0]["room"], "lobby");
    }
    // Never back to the sender, unless asked.
    assert!(a1.drain_of("event").await.is_empty());
    a1.ok(json!({"op": "emit", "room": "lobby", "event": "echo", "data": 1, "self": true}))
        .await;
    assert_eq!(a1.next_of("event").await["event"], "echo");

    // A direct message to a socket on another node.
    a1.ok(json!({"op": "send", "to": c1.socket, "event": "offer", "data": {"sdp": "v=0"}}))
        .await;
    let d = c1.next_of("direct").await;
    assert_eq!(
        (
            d["event"].as_str(),
            d["from"].as_str(),
            d["data"]["sdp"].as_str()
        ),
        (Some("offer"), Some(a1.socket.as_str()), Some("v=0"))
    );
    // And a binary payload to the room.
    let mut frame = br#"{"op":"emit","room":"lobby","event":"blob","id":99}"#.to_vec();
    frame.push(b'\n');
    frame.extend_from_slice(&[0, 1, 2, 255]);
    a1.send_raw(tokio_tungstenite::tungstenite::Message::binary(frame))
        .await;
    let blob = b1.event_named("blob").await;
    assert_eq!(blob["event"], "blob");
    assert_eq!(blob["binary"], json!([0, 1, 2, 255]));

    // Joined and left events cross nodes.
    let mut b2 = Client::connect(&nb).await;
    b2.join("lobby").await;
    let j = c1.about("joined", &b2.socket).await;
    assert_eq!(
        (j["socket"].as_str(), j["node"].as_str()),
        (Some(b2.socket.as_str()), Some("nb"))
    );
    b2.ok(json!({"op": "leave", "room": "lobby"})).await;
    let l = a1.about("left", &b2.socket).await;
    assert_eq!(
        (l["socket"].as_str(), l["reason"].as_str()),
        (Some(b2.socket.as_str()), Some("leave"))
    );
    drop(b2);

    // A node killed outright: its members are reported as left within
    // node_timeout (2 s here) + one heartbeat interval.
    let killed_at = Instant::now();
    let mut nc = nc;
    let _ = nc.proc.child.kill();
    let _ = nc.proc.child.wait();
    let l = a1.about("left", &c1.socket).await;
    assert_eq!(l["reason"], "node_down", "{l}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed_at.elapsed()
    );
    let p = b1.ok(json!({"op": "presence", "room": "lobby"})).await;
    assert_eq!(p["members"].as_array().unwrap().len(), 3, "{p}");
    drop(nb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivery_exactly_once_over_limpet_broker() {
    room_delivery_exactly_once(Kind::Limpet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivery_exactly_once_over_redis() {
    room_delivery_exactly_once(Kind::Redis).await;
}

/// The same over a three-master Redis Cluster with sharded pub/sub: only
/// the node config changes (`cluster = true` and the members' URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivery_exactly_once_over_redis_cluster() {
    room_delivery_exactly_once(Kind::RedisCluster).await;
}

async fn broker_restart(kind: Kind) {
    let mut broker = Broker::start(kind).await;
    let (na, nb) = two_nodes(&broker, ["na", "nb"], "").await;
    let mut a1 = Client::connect(&na).await;
    let mut a2 = Client::connect(&na).await;
    let mut b1 = Client::connect(&nb).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        c.join("r").await;
    }
    a1.emit("r", "before", json!(1)).await;
    assert_eq!(b1.next_of("event").await["event"], "before");

    broker.stop().await;
    // Clients stay connected and local delivery keeps working.
    a1.emit("r", "local-only", json!(2)).await;
    assert_eq!(a2.event_named("local-only").await["data"], 2);
    let health = http(na.addr, "GET", "/health", &[], "").await;
    eventually("node notices the broker is gone", || async {
        http(na.addr, "GET", "/health", &[], "")
            .await
            .1
            .contains("\"broker\":\"disconnected\"")
    })
    .await;
    assert_eq!(health.0, 200, "still serving without a broker");

    broker.restart().await;
    na.wait_ready().await;
    nb.wait_ready().await;
    nb.wait_peers(1).await;
    // Cross-node delivery resumes.
    let mut n = 0;
    loop {
        n += 1;
        a1.emit("r", &format!("probe-{n}"), json!(n)).await;
        let got = tokio::time::timeout(Duration::from_millis(500), b1.next_of("event")).await;
        if let Ok(e) = got {
            if e["event"].as_str().is_some_and(|s| s.starts_with("probe-")) {
                break;
            }
        }
        assert!(n < 40, "cross-node delivery did not resume");
    }
    assert!(na.metric("limpet_node_broker_reconnects_total").await >= 1.0);
    assert!(
        na.metric("limpet_node_cross_node_lost_total").await >= 1.0,
        "the local-only emit was counted as lost"
    );
    // Members are still known across nodes after the outage.
    let p = b1.ok(json!({"op": "presence", "room": "r"})).await;
    assert_eq!(p["members"].as_array().unwrap().len(), 3, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_over_limpet_broker() {
    broker_restart(Kind::Limpet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_over_redis() {
    broker_restart(Kind::Redis).await;
}

/// A limpet-broker that holds each client to 5 channels (the node's own
/// two, then three rooms) while clients on two nodes join 8 rooms. Before:
/// the first refused SUBSCRIBE dropped the link, and every resubscribe
/// after reconnecting was refused again, so the node reconnected in a
/// tight loop with no back-off and cross-node delivery stopped for every
/// room. Now each refusal is counted
/// (`limpet_node_broker_subscribe_refused_total`) and the link is kept:
/// no reconnects, and rooms within the cap still reach the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_keeps_the_broker_link() {
    let limits = limpet_config::ProtocolLimits {
        max_channels_per_client: 5,
        ..Default::default()
    };
    let broker = Broker::start_with(Kind::Limpet, limits).await;
    let (mut a, mut b) = two_nodes(&broker, ["na", "nb"], "").await;
    let mut ca = Client::connect(&a).await;
    let mut cb = Client::connect(&b).await;
    for i in 0..8 {
        ca.join(&format!("r{i}")).await;
        cb.join(&format!("r{i}")).await;
    }
    // r0 is within the cap on both nodes: messages still cross.
    ca.emit("r0", "hello", json!(1)).await;
    assert_eq!(cb.event_named("hello").await["data"], 1);
    cb.emit("r0", "back", json!(2)).await;
    assert_eq!(ca.event_named("back").await["data"], 2);
    for node in [&a, &b] {
        assert_eq!(
            node.metric("limpet_node_broker_reconnects_total").await,
            0.0
        );
        assert_eq!(node.metric("limpet_node_broker_connected").await, 1.0);
        let log = node.log_text();
        let lost = log.matches("lost the broker connection").count();
        let failed = log.matches("resubscribe failed").count();
        assert_eq!((lost, failed), (0, 0), "link drops, failed resubscribes");
    }
    for node in [&a, &b] {
        eventually("the refusals are counted", || async {
            node.metric("limpet_node_broker_subscribe_refused_total")
                .await
                >= 5.0
        })
        .await;
    }
    a.proc.assert_alive();
    b.proc.assert_alive();
}

/// A presence query waits up to a second for a peer that does not answer;
/// meanwhile the asking client's room messages keep being written to it,
/// not held until its ack (one task serves a client, and it writes while
/// a request waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_arrive_while_a_presence_query_waits() {
    use tokio_tungstenite::tungstenite::Message;
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("n1", &broker, "");
    node.wait_ready().await;
    // A peer that never answers: one heartbeat from a node that does not exist.
    let client = redis::Client::open(broker.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBLISH")
        .arg("limpet:nodes")
        .arg("{\"k\":\"hb\",\"o\":\"ghost\"}\n")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    node.wait_peers(1).await;
    let mut a = Client::connect(&node).await;
    let mut b = Client::connect(&node).await;
    a.join("r").await;
    b.join("r").await;
    let presence = json!({"op": "presence", "room": "r", "id": "who"});
    a.send_raw(Message::text(presence.to_string())).await;
    b.emit("r", "during", json!(1)).await;
    let event = a.next_of("event").await;
    let event_at = Instant::now();
    assert_eq!(event["event"], "during");
    let reply = a.next_reply().await;
    let ack_at = Instant::now();
    assert_eq!(reply["id"], "who");
    // The query lasts its full second (the ghost never answers); the
    // event, emitted at its start, arrives long before the ack. Before,
    // it was written with the ack, a second late.
    assert!(
        ack_at.duration_since(event_at) > Duration::from_millis(300),
        "the event waited for the presence ack ({:?} apart)",
        ack_at.duration_since(event_at)
    );
    assert_eq!(
        reply["result"]["complete"], false,
        "the ghost never answers"
    );
}
