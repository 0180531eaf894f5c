//! Issue 18, scenario 4: lossy links, with the real binaries on separate
//! "hosts". Two limpet-nodes, each in its own network namespace, behind
//! limpet-proxy (root namespace, on loopback), over limpet-broker (root
//! namespace, on each node's veth address). Inside each node's namespace
//! iptables drops 5 % of the TCP packets, at random, of both legs: proxy
//! to node (the node's listening port) and node to broker (the broker's
//! port). Four clients through the proxy, two on each node, send 1,000
//! room messages between them; every one must reach each of the three
//! other clients exactly once and in order. The latency is printed (p50,
//! p99, max; not asserted), and afterwards every client, tunnel and
//! broker link must still work: nothing stuck.
//!
//! Needs root, iproute2 and iptables: skips with a loud `SKIPPED:` line
//! otherwise. The binaries are the ones next to this test's executable
//! (`cargo test --workspace` builds them).

use futures_util::{SinkExt, StreamExt};
use limpet_testkit::netns::Netns;
use limpet_testkit::{eventually, free_port, http_get, start_binary, DEADLINE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const LOSS: f64 = 0.05;
const CLIENTS: usize = 4;
/// Room messages in all (each client sends a quarter).
const MESSAGES: usize = 1000;

/// Packets the random-loss rules inside `ns` have dropped so far.
fn dropped(ns: &Netns) -> u64 {
    let out = ns
        .command(std::ffi::OsStr::new("iptables"))
        .args(["-w", "-L", "-v", "-n", "-x"])
        .output()
        .expect("run iptables -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DROP") && l.contains("statistic"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The value of the first sample of `metric` in a Prometheus text body.
fn sample(body: &str, metric: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(metric)?.trim().parse().ok())
        .unwrap_or(0.0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("a WebSocket frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(f) => panic!("closed by the server: {f:?}"),
            _ => continue,
        }
    }
}

/// Sends `req` with `id` and waits for its ack, keeping room events that
/// come first in `events`.
async fn request(ws: &mut Ws, id: u64, mut req: Value, events: &mut Vec<Value>) -> Value {
    req["id"] = json!(id);
    ws.send(Message::text(req.to_string())).await.expect("send");
    loop {
        let v = next_json(ws).await;
        if v["id"] == json!(id) {
            assert_eq!(v["type"], "ack", "{req}: {v}");
            return v;
        }
        events.push(v);
    }
}

/// Per-sender sequence numbers a client received, with each message's
/// latency.
struct Received {
    seqs: Vec<Vec<u64>>,
    latencies: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_all_arrive_over_lossy_links() {
    let Some(mut na) = Netns::create(0) else {
        return;
    };
    let Some(mut nb) = Netns::create(1) else {
        return;
    };
    // The broker on the root side of both veth pairs, one port.
    let port = free_port();
    let (broker, _) = start_binary(
        "broker",
        "broker",
        &format!(
            "bind = [\"{}:{port}\", \"{}:{port}\"]\n[metrics]\nenabled = false\n",
            na.host_ip, nb.host_ip
        ),
        None,
        &["listening for Redis-protocol clients"],
    );
    let mut nodes = Vec::new();
    for (id, ns) in [("node-a", &na), ("node-b", &nb)] {
        let config = format!(
            "id = \"{id}\"\nbind = \"{}:0\"\nbroker = [\"redis://{}:{port}/\"]\n",
            ns.ns_ip, ns.host_ip
        );
        let (p, a) = start_binary(
            "node",
            id,
            &config,
            Some(ns),
            &["listening for WebSocket clients"],
        );
        nodes.push((id, p, a[0]));
    }
    for &(_, _, addr) in &nodes {
        eventually("node connected and seeing its peer", || async move {
            let h = http_get(addr, "/health").await;
            h.contains("\"broker\":\"connected\"") && h.contains("\"peers\":1")
        })
        .await;
    }
    let backends: String = nodes
        .iter()
        .map(|(id, _, addr)| format!("[[pool.backend]]\nid = \"{id}\"\naddress = \"{addr}\"\n"))
        .collect();
    // Health checks that ride out a lost SYN (1 s retransmit) or two.
    let proxy_config = format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[pool]]\nname = \"nodes\"\naffinity = \"none\"\nbalancer = \"round_robin\"\n\
         [pool.health]\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"3s\"\nrise = 1\nfall = 3\n\
         {backends}[[route]]\npath_prefix = \"/\"\npool = \"nodes\"\nupgrade_protocols = [\"websocket\"]\n"
    );
    let (proxy, addrs) = start_binary(
        "proxy",
        "proxy",
        &proxy_config,
        None,
        &["listening for HTTP and WebSocket clients", "admin listener"],
    );
    let (proxy_addr, admin) = (addrs[0], addrs[1]);
    eventually("the proxy has both nodes up", || async move {
        let m = http_get(admin, "/metrics").await;
        m.lines()
            .filter(|l| l.starts_with("limpet_proxy_backend_up") && l.ends_with(" 1"))
            .count()
            == 2
    })
    .await;

    // The loss, on both legs, in both nodes' namespaces.
    for (ns, (_, _, addr)) in [&mut na, &mut nb].into_iter().zip(&nodes) {
        ns.lossy_served_port(addr.port(), LOSS);
        ns.lossy_port(port, LOSS);
    }

    // Four clients through the proxy, two on each node.
    let mut clients: Vec<(Ws, String)> = Vec::new();
    let mut attempts = 0;
    while clients.len() < CLIENTS {
        attempts += 1;
        assert!(attempts < 40, "could not place two clients on each node");
        let (mut ws, _) = tokio::time::timeout(
            DEADLINE,
            tokio_tungstenite::connect_async(format!("ws://{proxy_addr}/ws")),
        )
        .await
        .expect("handshake in time")
        .expect("WebSocket upgrade through the proxy");
        let welcome = next_json(&mut ws).await;
        let node = welcome["node"].as_str().unwrap_or_default().to_string();
        if clients.iter().filter(|(_, n)| *n == node).count() < CLIENTS / 2 {
            clients.push((ws, node));
        }
    }
    let mut early = Vec::new();
    for (ws, _) in clients.iter_mut() {
        request(ws, 1, json!({"op": "join", "room": "r"}), &mut early).await;
    }
    drop(early);
    let p = {
        let (ws, _) = &mut clients[0];
        let mut ev = Vec::new();
        eventually_presence(ws, &mut ev).await
    };
    assert_eq!(p, CLIENTS, "presence before the run");

    // The run: each client sends its quarter, paced at 50 per second, and
    // reads everything the others send, concurrently.
    let base = Instant::now();
    let per = MESSAGES / CLIENTS;
    let mut tasks = Vec::new();
    for (k, (ws, _)) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let writer = async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for seq in 0..per as u64 {
                    tick.tick().await;
                    let t = base.elapsed().as_micros() as u64;
                    let emit = json!({"op": "emit", "room": "r", "event": "m",
                                      "data": {"from": k, "seq": seq, "t": t}});
                    tx.send(Message::text(emit.to_string()))
                        .await
                        .expect("send");
                }
                tx
            };
            let reader = async {
                let mut got = Received {
                    seqs: vec![Vec::new(); CLIENTS],
                    latencies: Vec::new(),
                };
                let want = per * (CLIENTS - 1);
                let deadline = Instant::now() + Duration::from_secs(120);
                while got.latencies.len() < want {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Ok(Some(Ok(msg))) = tokio::time::timeout(left, rx.next()).await else {
                        break;
                    };
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if v["type"] != "event" || v["event"] != "m" {
                        continue;
                    }
                    let d = &v["data"];
                    let (Some(from), Some(seq), Some(t)) =
                        (d["from"].as_u64(), d["seq"].as_u64(), d["t"].as_u64())
                    else {
                        panic!("a malformed event: {v}");
                    };
                    let now = base.elapsed().as_micros() as u64;
                    got.latencies
                        .push(Duration::from_micros(now.saturating_sub(t)));
                    got.seqs[from as usize].push(seq);
                }
                got
            };
            let (tx, got) = tokio::join!(writer, reader);
            (k, tx.reunite(rx).expect("the halves of one stream"), got)
        }));
    }
    let mut latencies = Vec::new();
    let mut back = Vec::new();
    for t in tasks {
        let (k, ws, got) = t.await.expect("client task");
        for (from, seqs) in got.seqs.iter().enumerate() {
            let want: Vec<u64> = if from == k {
                Vec::new()
            } else {
                (0..per as u64).collect()
            };
            assert_eq!(
                seqs,
                &want,
                "client {k}: messages from client {from}: {} of {} arrived",
                seqs.len(),
                want.len()
            );
        }
        latencies.extend(got.latencies);
        back.push(ws);
    }
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    eprintln!(
        "MEASURED: {MESSAGES} room messages, {} deliveries over 5 % loss: p50 {:?}, p99 {:?}, max {:?}, in {:?}",
        latencies.len(),
        q(0.50),
        q(0.99),
        q(1.0),
        base.elapsed()
    );

    let drops = (dropped(&na), dropped(&nb));
    eprintln!("MEASURED: packets dropped by the loss rules: {drops:?}");
    assert!(
        drops.0 > 0 && drops.1 > 0,
        "the loss was applied: {drops:?}"
    );

    // Nothing stuck: every tunnel still carries a round trip, every node
    // still has its broker link, and the loss caused no reconnects that
    // lost messages (all arrived above).
    for (i, ws) in back.iter_mut().enumerate() {
        let mut ev = Vec::new();
        request(ws, 1000 + i as u64, json!({"op": "ping"}), &mut ev).await;
    }
    for (id, _, addr) in &nodes {
        let m = http_get(*addr, "/metrics").await;
        let reconnects = sample(&m, "limpet_node_broker_reconnects_total");
        let lost = sample(&m, "limpet_node_cross_node_lost_total");
        eprintln!("MEASURED: {id}: broker reconnects {reconnects}, cross-node lost {lost}");
        assert_eq!(sample(&m, "limpet_node_broker_connected"), 1.0, "{id}");
    }
    let m = http_get(admin, "/metrics").await;
    let closed: f64 = m
        .lines()
        .filter(|l| l.starts_with("limpet_proxy_tunnels_closed_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    eprintln!("MEASURED: proxy tunnels closed during the run: {closed}");
    drop(back);
    // Processes before the namespaces.
    drop(proxy);
    drop(nodes);
    drop(broker);
    drop((na, nb));
}

/// The number of members `presence` reports for room `r`, once complete.
async fn eventually_presence(ws: &mut Ws, events: &mut Vec<Value>) -> usize {
    let deadline = Instant::now() + DEADLINE;
    let mut id = 100;
    loop {
        id += 1;
        let ack = request(ws, id, json!({"op": "presence", "room": "r"}), events).await;
        let r = &ack["result"];
        let n = r["members"].as_array().map_or(0, Vec::len);
        if (r["complete"] == true && n == CLIENTS) || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
