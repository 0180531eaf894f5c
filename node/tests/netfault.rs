//! Issue 18, scenario 2: a node cut off from the broker by a silent black
//! hole (iptables DROP inside the node's own network namespace: no RST,
//! no ICMP), its clients still connected. The node must notice, keep
//! local delivery going, be declared down by the other nodes, and resync
//! once the link heals. Skips loudly without root, iproute2 or iptables.

mod common;

use common::*;
use limpet_testkit::netns::Netns;
use serde_json::json;
use std::time::{Duration, Instant};

async fn health(node: &NodeProcess) -> String {
    http(node.addr, "GET", "/health", &[], "").await.1
}

/// Polls until `check` holds, for at most `bound`; returns how long it took.
async fn within<F, Fut>(what: &str, bound: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_from_the_broker_by_a_black_hole() {
    let Some(mut ns) = Netns::create(0) else {
        return;
    };
    // The broker on the root side of the veth pair: the node in the
    // namespace reaches it over the veth, the node in the root namespace
    // locally.
    let addr = format!("{}:{}", ns.host_ip, free_port()).parse().unwrap();
    let broker = Broker::start_at(Kind::Limpet, addr, Default::default()).await;
    let wrap = ["ip", "netns", "exec", ns.name.as_str()];
    let cut = NodeProcess::start_wrapped(
        "cut",
        &format!("{}:0", ns.ns_ip),
        &broker.node_config(),
        "",
        &wrap,
    );
    let peer = NodeProcess::start("peer", &broker, "");
    cut.wait_ready().await;
    peer.wait_ready().await;
    cut.wait_peers(1).await;
    peer.wait_peers(1).await;

    let mut a1 = Client::connect(&cut).await;
    let mut a2 = Client::connect(&cut).await;
    let mut b1 = Client::connect(&peer).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        c.join("r").await;
    }
    a1.emit("r", "before", json!(1)).await;
    assert_eq!(b1.event_named("before").await["data"], 1);
    b1.about("joined", &a2.socket).await;

    // The cut: the backplane only; clients keep their connections.
    ns.block_port(broker.addr.port());
    let cut_at = Instant::now();
    // A join of a new room right after the cut: its SUBSCRIBE goes into
    // the black hole before the node can know.
    let mut a3 = Client::connect(&cut).await;
    a3.join("fresh").await;

    // The other node declares the cut node's members left (node_down)
    // after node_timeout (2 s here).
    let mut gone = std::collections::HashSet::new();
    while gone.len() < 2 {
        let l = b1.next_of("left").await;
        if l["socket"] == a1.socket || l["socket"] == a2.socket {
            assert_eq!(l["reason"], "node_down", "{l}");
            gone.insert(l["socket"].to_string());
        }
    }
    let declared = cut_at.elapsed();
    assert!(
        declared < Duration::from_secs(12),
        "node_down after {declared:?}"
    );
    eprintln!("MEASURED: black hole -> peer reports members left (node_down): {declared:?}");

    // Detection: a heartbeat publish (every 300 ms) that gets no answer
    // within the 5 s response timeout breaks the link.
    let detect = within(
        "cut node reports broker disconnected",
        Duration::from_secs(15),
        || async { health(&cut).await.contains("\"broker\":\"disconnected\"") },
    )
    .await;
    let detect = cut_at.elapsed().max(detect);
    eprintln!("MEASURED: black hole -> /health broker disconnected: {detect:?}");

    // Local delivery continues.
    a1.emit("r", "local-only", json!(2)).await;
    assert_eq!(a2.event_named("local-only").await["data"], 2);

    // Hold the cut long enough for reconnect attempts to go into the
    // black hole too.
    tokio::time::sleep(Duration::from_secs(4)).await;

    ns.heal();
    let healed_at = Instant::now();
    let reconnect = within("cut node reconnects", Duration::from_secs(15), || async {
        health(&cut).await.contains("\"broker\":\"connected\"")
    })
    .await;
    eprintln!("MEASURED: heal -> /health broker connected: {reconnect:?}");
    // Members re-announced to the other node.
    let mut back = std::collections::HashSet::new();
    while back.len() < 2 {
        let j = b1.next_of("joined").await;
        if j["socket"] == a1.socket || j["socket"] == a2.socket {
            back.insert(j["socket"].to_string());
        }
    }
    // Cross-node delivery back.
    let mut n = 0;
    loop {
        n += 1;
        a1.emit("r", &format!("probe-{n}"), json!(n)).await;
        let got = tokio::time::timeout(
            Duration::from_millis(500),
            b1.event_named(&format!("probe-{n}")),
        )
        .await;
        if got.is_ok() {
            break;
        }
        assert!(n < 30, "cross-node delivery did not resume");
    }
    let resync = healed_at.elapsed();
    assert!(resync < Duration::from_secs(20), "resync took {resync:?}");
    eprintln!("MEASURED: heal -> members joined again and cross-node delivery back: {resync:?}");
    let p = b1.ok(json!({"op": "presence", "room": "r"})).await;
    assert_eq!(p["members"].as_array().unwrap().len(), 3, "{p}");
    // The room joined during the cut works across nodes too.
    let mut b2 = Client::connect(&peer).await;
    b2.join("fresh").await;
    let mut m = 0;
    loop {
        m += 1;
        b2.emit("fresh", &format!("f-{m}"), json!(m)).await;
        let got = tokio::time::timeout(
            Duration::from_millis(500),
            a3.event_named(&format!("f-{m}")),
        )
        .await;
        if got.is_ok() {
            break;
        }
        assert!(
            m < 20,
            "the room joined during the cut never got its subscription"
        );
    }
    let lost = cut.metric("limpet_node_cross_node_lost_total").await;
    eprintln!("MEASURED: cross-node messages counted lost on the cut node: {lost}");
    assert!(lost >= 1.0, "the local-only emit was counted as lost");
    // Processes before the namespace.
    drop((a1, a2, a3, b1, b2));
    drop(cut);
    drop(peer);
    drop(broker);
    drop(ns);
}
