//! History and recovery end to end, over limpet-broker and over a real
//! redis-server: a client on node A sees offset N, A is SIGKILLed, five
//! messages are sent from node B, and the client, reconnecting to node C
//! with `since` N, gets exactly those five, in order, before an ack with
//! `recovered: true`. (The reconnect goes straight to node C: limpet-proxy's
//! binary is not built for this crate's tests; the proxy only forwards the
//! WebSocket, so what is tested here is the whole recovery.)

mod common;
use common::*;
use serde_json::{json, Value};

const HISTORY: &str = "[history]\nsize = 100\nttl = \"10m\"\n";

async fn recovery_after_a_node_dies(kind: Kind) {
    let broker = Broker::start(kind).await;
    let na = NodeProcess::start("ra", &broker, HISTORY);
    let nb = NodeProcess::start("rb", &broker, HISTORY);
    let nc = NodeProcess::start("rc", &broker, HISTORY);
    for n in [&na, &nb, &nc] {
        n.wait_ready().await;
        n.wait_peers(2).await;
    }
    let mut client = Client::connect(&na).await;
    let mut sender = Client::connect(&nb).await;
    // With history on, a join's ack says where the room's history stands.
    let at = client.join("r").await;
    assert_eq!(at["offset"], 0, "{at}");
    assert!(at["epoch"].is_string(), "{at}");
    sender.join("r").await;
    // Both see the first message with the same offset and epoch.
    sender
        .ok(json!({"op": "emit", "room": "r", "event": "m0", "data": 0, "self": true}))
        .await;
    let seen = client.event_named("m0").await;
    let own = sender.event_named("m0").await;
    let (n, epoch) = (seen["offset"].as_u64().unwrap(), seen["epoch"].clone());
    assert_eq!((n, &epoch), (1, &at["epoch"]), "{seen}");
    assert!(
        epoch.is_string() && !epoch.as_str().unwrap().is_empty(),
        "{seen}"
    );
    assert_eq!(
        (own["offset"].clone(), own["epoch"].clone()),
        (json!(n), epoch.clone())
    );

    na.signal("KILL");
    for i in 1..=5 {
        sender
            .ok(json!({"op": "emit", "room": "r", "event": format!("m{i}"), "data": i, "self": true}))
            .await;
    }
    // Its own copy of m5 comes back once m1..m5 are in the history.
    let last = sender.event_named("m5").await;
    assert_eq!(last["offset"], json!(n + 5), "{last}");

    let mut back = Client::connect(&nc).await;
    let ack = back
        .request(json!({"op": "join", "room": "r", "since": {"offset": n, "epoch": epoch}}))
        .await;
    let before_ack: Vec<Value> = back
        .take_pending()
        .into_iter()
        .filter(|v| v["type"] == "event")
        .collect();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["result"]["recovered"], true, "{ack}");
    let got: Vec<(Value, Value, Value)> = before_ack
        .iter()
        .map(|e| (e["event"].clone(), e["offset"].clone(), e["data"].clone()))
        .collect();
    let want: Vec<(Value, Value, Value)> = (1..=5)
        .map(|i| (json!(format!("m{i}")), json!(n + i), json!(i)))
        .collect();
    assert_eq!(
        got, want,
        "exactly the five missed messages, in order, before the ack"
    );
    assert!(before_ack
        .iter()
        .all(|e| e["epoch"] == epoch && e["room"] == "r"));
    // Nothing more arrives: each message once.
    assert!(back.drain_of("event").await.is_empty());
    // Live messages keep flowing after the rejoin.
    sender.emit("r", "m6", json!(6)).await;
    assert_eq!(back.event_named("m6").await["offset"], json!(n + 6));

    // A wrong epoch cannot be recovered: the client must resync.
    let mut other = Client::connect(&nc).await;
    let ack = other
        .ok(json!({"op": "join", "room": "r", "since": {"offset": n, "epoch": "0000000000000000"}}))
        .await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(
        ack["epoch"], epoch,
        "the ack names the current epoch: {ack}"
    );
    assert!(other.drain_of("event").await.is_empty(), "nothing replayed");

    // Bad `since`: each a clear error, and the connection stays usable.
    for (room, since, why) in [
        (
            "r",
            json!({"offset": n + 1000, "epoch": epoch}),
            "in the future",
        ),
        (
            "r2",
            json!({"offset": -1, "epoch": epoch}),
            "non-negative integer",
        ),
        (
            "r2",
            json!({"offset": 1.5, "epoch": epoch}),
            "non-negative integer",
        ),
        ("r2", json!({"offset": 1}), "epoch"),
        ("r2", json!("yesterday"), "expected"),
    ] {
        let reply = other
            .request(json!({"op": "join", "room": room, "since": since}))
            .await;
        assert_eq!(reply["code"], "bad_request", "{since}: {reply}");
        assert!(reply["message"].as_str().unwrap().contains(why), "{reply}");
    }
    other.ok(json!({"op": "ping"})).await;
    // A rejoin refused for its `since` leaves the client out of the room.
    let mut third = Client::connect(&nc).await;
    let reply = third
        .request(json!({"op": "join", "room": "r", "since": {"offset": n + 1000, "epoch": epoch}}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let reply = third
        .request(json!({"op": "emit", "room": "r", "event": "x"}))
        .await;
    assert_eq!(reply["code"], "not_member", "{reply}");
    assert!(
        nc.metric("limpet_node_recoveries_total{result=\"recovered\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_node_dies_over_limpet_broker() {
    recovery_after_a_node_dies(Kind::Limpet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_node_dies_over_redis() {
    recovery_after_a_node_dies(Kind::Redis).await;
}

/// Two nodes emitting into one room at once: every offset is given once,
/// and they are consecutive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_unique_and_consecutive_across_nodes() {
    let broker = Broker::start(Kind::Limpet).await;
    let (na, nb) = two_nodes(&broker, ["oa", "ob"], HISTORY).await;
    let mut a = Client::connect(&na).await;
    let mut b = Client::connect(&nb).await;
    let mut watcher = Client::connect(&na).await;
    for c in [&mut a, &mut b, &mut watcher] {
        c.join("busy").await;
    }
    // Sent without waiting for acks, interleaved from both nodes.
    use futures_util::SinkExt;
    for i in 0..20 {
        for c in [&mut a, &mut b] {
            let msg = json!({"op": "emit", "room": "busy", "event": "n", "data": i});
            c.ws.send(tokio_tungstenite::tungstenite::Message::text(
                msg.to_string(),
            ))
            .await
            .unwrap();
        }
    }
    let mut offsets = Vec::new();
    for _ in 0..40 {
        offsets.push(watcher.event_named("n").await["offset"].as_u64().unwrap());
    }
    offsets.sort();
    let first = offsets[0];
    assert_eq!(offsets, (first..first + 40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_node_dies_over_redis_cluster() {
    recovery_after_a_node_dies(Kind::RedisCluster).await;
}

/// With the broker gone, room messages still reach local members (without
/// an offset: they are not in any history), and a rejoin cannot recover:
/// its ack says `recovered: false` rather than failing the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_broker_local_delivery_goes_on_and_rejoins_resync() {
    let mut broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("rd", &broker, HISTORY);
    node.wait_ready().await;
    let mut a = Client::connect(&node).await;
    let mut b = Client::connect(&node).await;
    let at = a.join("r").await;
    b.join("r").await;
    broker.stop().await;
    b.emit("r", "offline", json!(1)).await;
    let e = a.event_named("offline").await;
    assert!(e.get("offset").is_none(), "{e}");
    let mut c = Client::connect(&node).await;
    let ack = c
        .ok(json!({"op": "join", "room": "r", "since": {"offset": at["offset"], "epoch": at["epoch"]}}))
        .await;
    assert_eq!(ack["recovered"], false, "{ack}");
}
