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
        "[limits]\nrate_per_second = 100000\nrate_burst = 100000",
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
