//! Issue 18, scenario 6: a Redis Cluster across three hosts, one master
//! partitioned from the nodes. Three redis-server cluster masters, each in
//! a network namespace of its own, reachable from the root namespace (the
//! nodes' host) and from each other over a full mesh of veth pairs, each
//! at one service address (a /32 on the namespace's loopback, routed), so
//! the cluster bus keeps working while the nodes' side of one master is
//! cut with iptables (silent drops: no RST, no ICMP). Two limpet-nodes use
//! the cluster (sharded pub/sub). Rooms on the other masters' slots must
//! keep working across nodes while the cut lasts, and the room on the cut
//! master's slots must work again after the partition heals.
//!
//! Needs root, iproute2, iptables, redis-server and redis-cli; skips
//! loudly without root or the network tools.

mod common;

use common::*;
use limpet_testkit::netns::Netns;
use serde_json::json;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run a network setup command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(std::process::Command::new("ip").args(args));
}

fn ip_in(ns: &Netns, args: &[&str]) {
    run(ns.command(OsStr::new("ip")).args(args));
}

/// The three master "hosts": each namespace gets a service address on its
/// loopback, routed from the root namespace over its veth, and a veth to
/// each other namespace with routes to their service addresses. The mesh
/// links go when the namespaces do.
fn mesh(hosts: &[Netns]) -> Vec<Ipv4Addr> {
    let pid = std::process::id();
    // Unique among running tests, unlike a number made from the pid.
    let m = hosts[0].subnet();
    let service: Vec<Ipv4Addr> = (0..hosts.len())
        .map(|k| Ipv4Addr::new(10, 202, m, k as u8 + 1))
        .collect();
    for (k, ns) in hosts.iter().enumerate() {
        let s = format!("{}/32", service[k]);
        ip_in(ns, &["addr", "add", &s, "dev", "lo"]);
        ip(&["route", "add", &s, "via", &ns.ns_ip.to_string()]);
    }
    let mut link = 0u8;
    for i in 0..hosts.len() {
        for j in i + 1..hosts.len() {
            let (a, b) = (
                format!("lc{}{i}{j}a", pid % 100_000),
                format!("lc{}{i}{j}b", pid % 100_000),
            );
            let (ai, bi) = (
                Ipv4Addr::new(10, 203, m, 4 * link + 1),
                Ipv4Addr::new(10, 203, m, 4 * link + 2),
            );
            link += 1;
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &hosts[i].name]);
            ip(&["link", "set", &b, "netns", &hosts[j].name]);
            for (ns, dev, addr, peer, to) in [
                (&hosts[i], &a, ai, bi, service[j]),
                (&hosts[j], &b, bi, ai, service[i]),
            ] {
                ip_in(ns, &["addr", "add", &format!("{addr}/30"), "dev", dev]);
                ip_in(ns, &["link", "set", dev, "up"]);
                ip_in(
                    ns,
                    &[
                        "route",
                        "add",
                        &format!("{to}/32"),
                        "via",
                        &peer.to_string(),
                    ],
                );
            }
        }
    }
    service
}

/// A cluster-enabled redis-server in `ns`, bound to and announcing `addr`.
fn master(ns: &Netns, addr: Ipv4Addr, port: u16) -> limpet_testkit::Logged {
    let dir = std::env::temp_dir().join(format!(
        "limpet-netfault-cluster-{}-{addr}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a folder for nodes.conf");
    let (port, addr) = (port.to_string(), addr.to_string());
    let mut cmd = ns.command(limpet_testkit::redis_server_path().as_os_str());
    cmd.current_dir(&dir)
        .args(["--port", &port, "--bind", &addr, "--protected-mode", "no"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-announce-ip", &addr])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--loglevel", "warning"]);
    limpet_testkit::Logged::spawn(&format!("redis-server {addr}"), &mut cmd)
}

fn cli(addr: Ipv4Addr, port: u16, args: &[&str]) -> String {
    let (h, p) = (addr.to_string(), port.to_string());
    run(std::process::Command::new("redis-cli")
        .args(["-h", &h, "-p", &p])
        .args(args))
}

/// Which master (index into `service`) serves `key`'s slot.
fn owner(service: &[Ipv4Addr], port: u16, key: &str) -> usize {
    let slot: u16 = cli(service[0], port, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .expect("a slot number");
    for line in cli(service[0], port, &["cluster", "nodes"]).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(ip) = fields.get(1).and_then(|a| a.split(':').next()) else {
            continue;
        };
        let serves = fields.iter().skip(8).any(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if serves {
            if let Some(k) = service.iter().position(|s| s.to_string() == ip) {
                return k;
            }
        }
    }
    panic!("no master serves slot {slot} of {key}");
}

/// Emits `tag-N` from `from` until one reaches `to` (at most `bound`);
/// how long it took, or `None`.
async fn delivered(
    from: &mut Client,
    to: &mut Client,
    room: &str,
    tag: &str,
    bound: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < bound {
        n += 1;
        from.emit(room, &format!("{tag}-{n}"), json!(n)).await;
        let got = tokio::time::timeout(Duration::from_millis(200), to.next_of("event")).await;
        if let Ok(e) = got {
            if e["event"].as_str().is_some_and(|s| s.starts_with(tag)) && e["room"] == room {
                return Some(start.elapsed());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_master_partitioned_from_the_nodes() {
    let mut hosts = Vec::new();
    for k in 2..5 {
        let Some(ns) = Netns::create(k) else {
            return;
        };
        hosts.push(ns);
    }
    let service = mesh(&hosts);
    let port = free_port();
    let masters: Vec<_> = hosts
        .iter()
        .zip(&service)
        .map(|(ns, &addr)| master(ns, addr, port))
        .collect();
    for &s in &service {
        eventually("a master answers", || async move {
            tokio::net::TcpStream::connect((s, port)).await.is_ok()
        })
        .await;
    }
    let members: Vec<String> = service.iter().map(|s| format!("{s}:{port}")).collect();
    let mut create = std::process::Command::new("redis-cli");
    create.args(["--cluster", "create"]).args(&members).args([
        "--cluster-replicas",
        "0",
        "--cluster-yes",
    ]);
    run(&mut create);
    for &s in &service {
        eventually("cluster state ok", || async move {
            cli(s, port, &["cluster", "info"]).contains("cluster_state:ok")
        })
        .await;
    }

    // Cut the master that does not serve the heartbeat channel, and pick
    // node ids whose own channels are elsewhere too: the partition then
    // takes exactly the rooms on its slots.
    let nodes_master = owner(&service, port, "limpet:nodes");
    let cut = (nodes_master + 1) % service.len();
    let ids: Vec<String> = (0..40)
        .map(|i| format!("n{i}"))
        .filter(|id| owner(&service, port, &format!("limpet:node:{id}")) != cut)
        .take(2)
        .collect();
    let room_cut = (0..200)
        .map(|i| format!("c{i}"))
        .find(|r| owner(&service, port, &format!("limpet:room:{r}")) == cut)
        .expect("a room on the cut master");
    let room_ok = (0..200)
        .map(|i| format!("k{i}"))
        .find(|r| owner(&service, port, &format!("limpet:room:{r}")) != cut)
        .expect("a room on another master");
    let urls: Vec<String> = members
        .iter()
        .map(|m| format!("\"redis://{m}/\""))
        .collect();
    let lines = format!("broker = [{}]\ncluster = true", urls.join(", "));
    // The probes below emit fast: not into the per-client rate limit.
    let extra = "[limits]\nrate_per_second = 10000\nrate_burst = 10000\n";
    let na = NodeProcess::start_with(&ids[0], &lines, extra);
    let nb = NodeProcess::start_with(&ids[1], &lines, extra);
    for n in [&na, &nb] {
        n.wait_ready().await;
        n.wait_peers(1).await;
    }
    let mut a1 = Client::connect(&na).await;
    let mut b1 = Client::connect(&nb).await;
    for room in [&room_cut, &room_ok] {
        a1.join(room).await;
        b1.join(room).await;
    }
    for room in [&room_cut, &room_ok] {
        let t = delivered(&mut a1, &mut b1, room, "pre", Duration::from_secs(20)).await;
        assert!(t.is_some(), "{room} works across nodes before the cut");
    }

    // The partition: the cut master's namespace drops everything from and
    // to the nodes' host; the other masters still reach it.
    let nodes_side = hosts[cut].host_ip.to_string();
    hosts[cut].add_rule(&["INPUT", "-s", &nodes_side, "-j", "DROP"]);
    hosts[cut].add_rule(&["OUTPUT", "-d", &nodes_side, "-j", "DROP"]);
    let cut_at = Instant::now();
    // A message into the cut room first, so its publish is in flight.
    a1.emit(&room_cut, "into-the-cut", json!(0)).await;
    // Rooms on the other masters keep working, both ways, and keep
    // working for a while (through the response timeout and beyond).
    let mut worst = Duration::ZERO;
    while cut_at.elapsed() < Duration::from_secs(12) {
        a1.emit(&room_cut, "cut", json!(0)).await;
        let ab = delivered(&mut a1, &mut b1, &room_ok, "ok-ab", Duration::from_secs(20)).await;
        let ba = delivered(&mut b1, &mut a1, &room_ok, "ok-ba", Duration::from_secs(20)).await;
        let (Some(ab), Some(ba)) = (ab, ba) else {
            panic!(
                "{room_ok} (another master) stopped working {:?} into the cut",
                cut_at.elapsed()
            );
        };
        worst = worst.max(ab).max(ba);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("MEASURED: during the cut, {room_ok} on another master: worst delivery {worst:?}");
    assert!(
        worst < Duration::from_secs(3),
        "{room_ok} stalled {worst:?} during the cut"
    );
    let health = http(na.addr, "GET", "/health", &[], "").await.1;
    eprintln!("during the cut, na /health: {health}");
    let lost = na.metric("limpet_node_cross_node_lost_total").await;
    eprintln!("MEASURED: na counted {lost} cross-node messages lost during the cut");
    assert!(lost >= 1.0, "the messages into the cut room are counted");
    // The nodes still see each other (the heartbeat channel is elsewhere).
    assert!(health.contains("\"peers\":1"), "{health}");

    for ns in hosts.iter_mut() {
        ns.heal();
    }
    let healed_at = Instant::now();
    let back = delivered(&mut a1, &mut b1, &room_cut, "back", Duration::from_secs(30)).await;
    let back = back.expect("the cut room works again after the partition heals");
    let both = delivered(
        &mut b1,
        &mut a1,
        &room_cut,
        "back-ba",
        Duration::from_secs(30),
    )
    .await
    .expect("both ways");
    eprintln!(
        "MEASURED: partition healed -> {room_cut} across nodes again: {back:?} (both ways {:?})",
        healed_at.elapsed()
    );
    let _ = both;
    drop((a1, b1));
    drop((na, nb));
    drop(masters);
    drop(hosts);
}
