//! Overload against real limpet-node processes: a client floods a room
//! faster than the node's broker link can carry it. The node must shed
//! (drop and count) instead of queueing without limit, so that a later
//! message from an honest client still crosses the cluster in time.
//! And a node that falls behind on its own (too little CPU for what its
//! clients send) refuses new events at the door until it has caught up.

mod common;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per second the relay lets through from the node to the broker.
const LINK_BYTES_PER_SECOND: usize = 512 * 1024;

/// A TCP relay in front of the broker whose node → broker direction
/// carries at most [`LINK_BYTES_PER_SECOND`]: a slow broker link, the way
/// an overloaded broker or a congested network looks to the node.
async fn slow_link(broker: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(broker).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move {
                let chunk = 8 * 1024;
                let pause = Duration::from_secs_f64(chunk as f64 / LINK_BYTES_PER_SECOND as f64);
                let mut buf = vec![0u8; chunk];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
        }
    });
    addr
}

/// One client floods a room with 60,000 messages of 1 KB (60 MB) from node
/// A, whose broker link carries 512 KB/s; the room's other member is on
/// node B. Before: every publish waited in an unbounded queue, so the
/// node held the whole flood and an honest message sent after it would
/// have crossed after about two minutes. Now the publish queue is bounded
/// (`publish_queue_bytes`): the flood is shed and counted, the flooder
/// still gets its acks, and the honest message arrives in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_and_counted_while_an_honest_message_gets_through() {
    let broker = Broker::start(Kind::Limpet).await;
    let link = slow_link(broker.addr).await;
    let limits = "[limits]\nrate_per_second = 1000000\nrate_burst = 1000000\naddress_rate_per_second = 1000000\naddress_rate_burst = 1000000\npublish_queue_bytes = \"64kb\"";
    let mut a = NodeProcess::start_with("a", &format!("broker = [\"redis://{link}/\"]"), limits);
    let mut b = NodeProcess::start("b", &broker, limits);
    a.wait_ready().await;
    b.wait_ready().await;
    a.wait_peers(1).await;
    b.wait_peers(1).await;

    let mut member = Client::connect(&b).await;
    member.join("busy").await;
    let mut flooder = Client::connect(&a).await;
    flooder.join("busy").await;
    // The room spans both nodes before the flood starts.
    member.about("joined", &flooder.socket).await;
    // The member reads all along, as an honest client does.
    let receiving = tokio::spawn(async move {
        let later = member.event_named("later").await;
        (member, later)
    });

    let before = a.proc.rss_kib() / 1024;
    let mut peak = before;
    let filler = "f".repeat(1000);
    let total = 60_000;
    for i in 0..total {
        // No request id: fire and forget, as fast as the socket takes them.
        let frame =
            json!({"op": "emit", "room": "busy", "event": "flood", "data": {"i": i, "p": filler}});
        flooder
            .send_raw(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await;
        if i % 2000 == 0 {
            peak = peak.max(a.proc.rss_kib() / 1024);
        }
    }
    // The flooder is still answered: its emit is accepted (acked) even
    // when the copy for other nodes is shed.
    let ack = tokio::time::timeout(
        DEADLINE,
        flooder.ok(json!({"op": "emit", "room": "busy", "event": "flood", "data": {"last": true}})),
    )
    .await
    .expect("the flooder's ack comes in time");
    assert_eq!(ack["room"], "busy");
    peak = peak.max(a.proc.rss_kib() / 1024);

    // What was kept drains quickly: the queue never held more than its
    // budget. (Before, 60 MB at 512 KB/s: about two minutes.)
    eventually("node a's publish queue drains", || async {
        a.metric("limpet_node_publish_queued_bytes").await == 0.0
    })
    .await;
    let mut honest = Client::connect(&a).await;
    honest.join("busy").await;
    honest.emit("busy", "later", json!({"n": 1})).await;
    let (mut member, got) = tokio::time::timeout(DEADLINE, receiving)
        .await
        .expect("the honest message crosses the cluster in time, not behind the flood")
        .expect("member task");
    assert_eq!(got["data"]["n"], 1);
    assert_eq!(got["from"], honest.socket.as_str());

    let shed = a
        .metric("limpet_node_shed_total{path=\"node_to_broker\",reason=\"queue_full\"}")
        .await;
    eprintln!("overload: {shed} publishes shed; RSS {before} MiB before, {peak} MiB peak");
    assert!(shed > 0.0, "the flood was shed and counted");
    // Before, the backlog made publishes time out: node a dropped its
    // broker connection over and over (losing everything queued), and
    // node b, missing a's heartbeats, reported a's members as gone.
    assert_eq!(a.metric("limpet_node_broker_reconnects_total").await, 0.0);
    assert_eq!(b.metric("limpet_node_peer_down_total").await, 0.0);
    a.proc.assert_alive();
    b.proc.assert_alive();
    // Before, the node held the whole 60 MB flood in its publish queue.
    assert!(
        peak < before + 30,
        "node a grew from {before} MiB to {peak} MiB under the flood"
    );
    // Both nodes still answer everyone.
    assert_eq!(member.ok(json!({"op": "ping"})).await["pong"], true);
    assert_eq!(honest.ok(json!({"op": "ping"})).await["pong"], true);
}

/// A node that is behind refuses new room messages at the door instead of
/// carrying them late. The node is stopped (SIGSTOP) while a client sends
/// 100 acked emits: they wait unread in the kernel, as they do for a node
/// that gets too little CPU. When it runs again its event loop is half a
/// second late, over a quarter of `max_queue_delay`: the emits it reads
/// then get error `overloaded` (counted as shed, not against the client's
/// error budget) and reach nobody. Before, all 100 were carried to the
/// room, each half a second late. Once it has caught up, emits are
/// accepted and delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_refuses_new_events_until_it_catches_up() {
    let broker = Broker::start(Kind::Limpet).await;
    let limits = "[limits]\nmax_queue_delay = \"200ms\"\nrate_per_second = 100000\nrate_burst = 100000\nmax_errors_per_minute = 5";
    let mut node = NodeProcess::start("a", &broker, limits);
    node.wait_ready().await;
    let mut sender = Client::connect(&node).await;
    sender.join("late").await;
    let mut reader = Client::connect(&node).await;
    reader.join("late").await;
    sender.about("joined", &reader.socket).await;

    let total = 100u64;
    node.signal("STOP");
    for i in 0..total {
        let frame =
            json!({"op": "emit", "room": "late", "event": "e", "data": {"i": i}, "id": 1000 + i});
        sender
            .send_raw(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    node.signal("CONT");

    let (mut acked, mut refused) = (0u64, 0u64);
    for _ in 0..total {
        let reply = sender.next_reply().await;
        let id = reply["id"].as_u64().expect("a reply to one of the emits");
        assert!((1000..1000 + total).contains(&id), "{reply}");
        match reply["type"].as_str() {
            Some("ack") => acked += 1,
            _ => {
                assert_eq!(reply["code"], "overloaded", "{reply}");
                refused += 1;
            }
        }
    }
    eprintln!("overload: {acked} emits accepted, {refused} refused at the door");
    assert!(
        refused > 0,
        "a node half a second behind refuses new events"
    );
    let shed = node
        .metric("limpet_node_shed_total{path=\"client_to_node\",reason=\"overloaded\"}")
        .await;
    assert_eq!(shed, refused as f64, "every refusal is counted");
    assert_eq!(
        node.metric("limpet_node_errors_total{code=\"overloaded\"}")
            .await,
        0.0,
        "a shed message is not the client's error"
    );
    // Only what was accepted reached the room. An accepted event can
    // still age past its share of the budget on the way out to the
    // reader (on a loaded machine it does), and is then dropped and
    // counted on that path, so accepted = delivered + shed to the client.
    let got = reader.drain_of("event").await;
    let mut shed_to_client = 0.0;
    for reason in ["too_old", "queue_full"] {
        shed_to_client += node
            .metric(&format!(
                "limpet_node_shed_total{{path=\"node_to_client\",reason=\"{reason}\"}}"
            ))
            .await;
    }
    assert!(
        got.iter().all(|e| e["event"] == "e"),
        "only the emitted events reached the room"
    );
    assert_eq!(
        got.len() as u64 + shed_to_client as u64,
        acked,
        "every accepted emit was delivered or counted as shed on its way to the reader \
         ({} delivered, {shed_to_client} shed)",
        got.len()
    );

    // Caught up: new events are accepted and delivered again, and the
    // sender, refused more often than its error budget allows, is still
    // connected.
    let mut accepted = false;
    for _ in 0..100 {
        let reply = sender
            .request(json!({"op": "emit", "room": "late", "event": "after", "data": {}}))
            .await;
        if reply["type"] == "ack" {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "emits are accepted once the node has caught up");
    assert_eq!(
        reader.event_named("after").await["from"],
        sender.socket.as_str()
    );
    node.proc.assert_alive();
}
