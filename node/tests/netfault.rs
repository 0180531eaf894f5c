//! Issue 18, network faults between the nodes and their broker, with
//! real network namespaces and iptables (no RST, no ICMP). Skips loudly
//! without root, iproute2 or iptables.
//!
//! * Scenario 2: a node cut off from the broker by a silent black hole in
//!   the node's own namespace, its clients still connected. The node must
//!   notice, keep local delivery going, be declared down by the other
//!   nodes, and resync once the link heals.
//! * Scenario 3: the broker's host vanishes (a redis-server in a namespace
//!   of its own, every packet dropped) under two nodes, then comes back;
//!   then the broker process restarts. Every node notices, sheds and
//!   counts with bounded memory, and resumes soon after.

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

/// A redis-server inside `ns`, on its own address: the broker's "host".
/// Killed when the handle drops (declare it after the namespace).
async fn redis_in(ns: &Netns, port: u16) -> limpet_testkit::Logged {
    let port_arg = port.to_string();
    let bind = ns.ns_ip.to_string();
    let mut cmd = ns.command(limpet_testkit::redis_server_path().as_os_str());
    cmd.args([
        "--port",
        &port_arg,
        "--bind",
        &bind,
        "--protected-mode",
        "no",
    ])
    .args(["--save", "", "--appendonly", "no"])
    .args(["--daemonize", "no", "--loglevel", "warning"]);
    let redis = limpet_testkit::Logged::spawn("redis-server", &mut cmd);
    let addr = std::net::SocketAddr::new(ns.ns_ip, port);
    eventually("redis-server in its namespace accepts", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    redis
}

/// Emits `probe-N` from `from` until one reaches `to`; how long it took.
async fn cross_node_back(from: &mut Client, to: &mut Client, room: &str, tag: &str) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        from.emit(room, &format!("{tag}-{n}"), json!(n)).await;
        let got = tokio::time::timeout(Duration::from_millis(100), to.next_of("event")).await;
        if let Ok(e) = got {
            if e["event"].as_str().is_some_and(|s| s.starts_with(tag)) {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cross-node delivery {tag} did not resume"
        );
    }
}

/// The sum of every sample of `name` (all label sets) in `node`'s metrics.
async fn metric_sum(node: &NodeProcess, name: &str) -> f64 {
    let (_, body) = http(node.addr, "GET", "/metrics", &[], "").await;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Issue 18, scenario 3: the broker's host vanishes (every packet to and
/// from its namespace dropped: no RST, no ICMP) with two nodes elsewhere,
/// then comes back; then the broker process is restarted. Every node
/// notices, keeps local delivery, sheds and counts cross-node messages
/// with its memory bounded while a client keeps emitting, and resumes
/// cross-node delivery soon after the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_host_gone_then_back() {
    let Some(mut ns) = Netns::create(1) else {
        return;
    };
    let port = free_port();
    let mut redis = redis_in(&ns, port).await;
    let lines = format!("broker = [\"redis://{}:{port}/\"]", ns.ns_ip);
    // Senders are not rate-limited here: the flood below must outrun the
    // broker link, not the node's per-client limits.
    let extra = "[limits]\nrate_per_second = 100000\nrate_burst = 100000\n\
                 address_rate_per_second = 100000\naddress_rate_burst = 100000\n";
    let na = NodeProcess::start_with("na", &lines, extra);
    let nb = NodeProcess::start_with("nb", &lines, extra);
    for n in [&na, &nb] {
        n.wait_ready().await;
        n.wait_peers(1).await;
    }
    let mut a1 = Client::connect(&na).await;
    let mut a2 = Client::connect(&na).await;
    let mut b1 = Client::connect(&nb).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        c.join("r").await;
    }
    // The flood's room: one member on each node, so every message there
    // is a cross-node publish and nothing queues for a local reader.
    let mut flooder = Client::connect(&na).await;
    flooder.join("flood").await;
    b1.join("flood").await;
    a1.emit("r", "before", json!(1)).await;
    assert_eq!(b1.event_named("before").await["data"], 1);

    let rss_before = na.proc.rss_kib();
    let lost_before = na.metric("limpet_node_cross_node_lost_total").await;
    let shed_before = metric_sum(&na, "limpet_node_shed_total").await;
    ns.black_hole();
    let cut_at = Instant::now();

    // A client keeps emitting 16 KiB cross-node messages into the outage:
    // 2,000 of them, 32 MiB, far more than the publish queue may hold.
    let blob = "x".repeat(16 * 1024);
    let mut peak_queue = 0.0f64;
    let mut peak_rss = rss_before;
    const FLOOD: usize = 2000;
    for i in 0..FLOOD {
        flooder
            .emit("flood", "f", json!({"i": i, "blob": blob}))
            .await;
        if i % 100 == 0 {
            peak_queue = peak_queue.max(na.metric("limpet_node_publish_queued_bytes").await);
            peak_rss = peak_rss.max(na.proc.rss_kib());
        }
    }
    // Every node notices: /health says disconnected. Bound: the broker
    // response timeout (5 s) plus one heartbeat interval.
    let mut detected = Vec::new();
    for n in [&na, &nb] {
        let t = within(
            &format!("{} reports the broker disconnected", n.id),
            Duration::from_secs(15),
            || async { health(n).await.contains("\"broker\":\"disconnected\"") },
        )
        .await;
        detected.push(cut_at.elapsed().max(t));
    }
    eprintln!("MEASURED: broker host gone -> /health disconnected on na, nb: {detected:?}");
    for d in &detected {
        assert!(*d < Duration::from_secs(12), "detected after {d:?}");
    }
    for _ in 0..100 {
        flooder
            .emit("flood", "f", json!({"late": true, "blob": blob}))
            .await;
    }
    peak_queue = peak_queue.max(na.metric("limpet_node_publish_queued_bytes").await);
    peak_rss = peak_rss.max(na.proc.rss_kib());
    // Local delivery continues.
    a1.emit("r", "local-only", json!(2)).await;
    assert_eq!(a2.event_named("local-only").await["data"], 2);
    // Shed and counted: every flood message is either lost (dropped with
    // the link) or shed at the full publish queue.
    let lost = na.metric("limpet_node_cross_node_lost_total").await - lost_before;
    let shed = metric_sum(&na, "limpet_node_shed_total").await - shed_before;
    eprintln!(
        "MEASURED: during the outage na counted {lost} lost and {shed} shed of {} flood messages; \
         publish queue peak {peak_queue} B; RSS {rss_before} KiB before, peak {peak_rss} KiB",
        FLOOD + 100
    );
    assert!(
        lost + shed >= (FLOOD + 100) as f64,
        "every message of the flood is counted: lost {lost} + shed {shed}"
    );
    assert!(
        peak_queue <= 2.0 * 1024.0 * 1024.0,
        "publish queue {peak_queue} B"
    );
    assert!(
        peak_rss < rss_before + 24 * 1024,
        "RSS grew from {rss_before} to {peak_rss} KiB during the outage"
    );

    // Keep the broker away until na's reconnect back-off has grown to its
    // longest (the delay it logs stops growing), then bring it back just
    // after one of its attempts failed: the worst moment for the node.
    let delays = |n: &NodeProcess| -> Vec<String> {
        n.log_text()
            .lines()
            .filter_map(|l| {
                l.split("broker unreachable")
                    .nth(1)?
                    .split("; retrying ")
                    .nth(1)
            })
            .map(str::to_string)
            .collect()
    };
    within(
        "na's back-off reaches its cap",
        Duration::from_secs(60),
        || async {
            let d = delays(&na);
            d.len() >= 3 && d[d.len() - 1] == d[d.len() - 2]
        },
    )
    .await;
    let seen = delays(&na).len();
    within(
        "another failed attempt",
        Duration::from_secs(20),
        || async { delays(&na).len() > seen },
    )
    .await;
    eprintln!("na's reconnect delays during the outage: {:?}", delays(&na));
    ns.heal();
    let healed_at = Instant::now();
    let ab = cross_node_back(&mut a1, &mut b1, "r", "ab").await;
    let ba = cross_node_back(&mut b1, &mut a1, "r", "ba").await;
    let resumed = healed_at.elapsed();
    eprintln!(
        "MEASURED: broker host back -> cross-node delivery na->nb {ab:?}, both ways {resumed:?}"
    );
    assert!(
        resumed < Duration::from_secs(4),
        "cross-node delivery resumed {resumed:?} after the broker host came back"
    );
    let _ = ba;

    // The variant: the broker process is restarted (connections reset).
    drop(redis);
    let killed_at = Instant::now();
    within(
        "both nodes notice the restart",
        Duration::from_secs(15),
        || async {
            health(&na).await.contains("\"broker\":\"disconnected\"")
                && health(&nb).await.contains("\"broker\":\"disconnected\"")
        },
    )
    .await;
    eprintln!(
        "MEASURED: broker process killed -> both nodes disconnected: {:?}",
        killed_at.elapsed()
    );
    // Down long enough for a few failed (refused) attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis = redis_in(&ns, port).await;
    let started_at = Instant::now();
    cross_node_back(&mut a1, &mut b1, "r", "rab").await;
    cross_node_back(&mut b1, &mut a1, "r", "rba").await;
    let resumed = started_at.elapsed();
    eprintln!("MEASURED: broker process back -> cross-node delivery both ways: {resumed:?}");
    assert!(
        resumed < Duration::from_secs(4),
        "cross-node delivery resumed {resumed:?} after the broker restarted"
    );
    // Presence complete again (the members' re-announcement may trail
    // the first message through by a moment).
    let start = Instant::now();
    loop {
        let p = b1.ok(json!({"op": "presence", "room": "r"})).await;
        if p["members"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        eprintln!("presence {:?} after the restart: {p}", start.elapsed());
        assert!(start.elapsed() < Duration::from_secs(10), "presence: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a1, a2, b1, flooder));
    drop((na, nb));
    drop(redis);
    drop(ns);
}
