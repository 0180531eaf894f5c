//! The whole stacks that scenario 5 and `limpet-bench overload` drive:
//! limpet (limpet-proxy in front of 3 limpet-nodes sharing a
//! limpet-broker) and the stack it replaces (nginx in front of 3
//! socket.io servers with the Redis adapter and a Redis). Both take the
//! same room protocol load, so the two are measured the same way.

use super::contenders::{start_proxy_tls, Kind, Spread};
use super::procs::{
    cpu_ticks, free_addr, have, redis_server, wait_port, Proc, BENCH_NODE_ADDRESS_LIMITS,
};
use crate::rooms::RoomProto;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A running stack for scenario 5: its processes and the address clients use.
pub(crate) struct Stack {
    pub name: &'static str,
    procs: Vec<Proc>,
    pub entry: SocketAddr,
    pub proto: RoomProto,
    /// limpet-node ports (their `/metrics`); empty for other stacks.
    pub nodes: Vec<SocketAddr>,
}

impl Stack {
    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(Proc::rss_kib).sum()
    }

    /// CPU time (user + system) of every process of the stack so far, in
    /// clock ticks of 10 ms; the load generator is not part of it.
    pub fn cpu_ticks(&self) -> u64 {
        let pids: Vec<u32> = self.procs.iter().flat_map(Proc::pids).collect();
        let (user, sys) = cpu_ticks(&pids);
        user + sys
    }

    /// CPU clock ticks (user + system) so far, summed by process name
    /// (the 3 nodes are one entry).
    pub fn cpu_by_name(&self) -> Vec<(String, u64)> {
        self.by_name(|p| {
            let (user, sys) = cpu_ticks(&p.pids());
            user + sys
        })
    }

    /// Resident memory in KiB, summed by process name.
    pub fn rss_by_name(&self) -> Vec<(String, u64)> {
        self.by_name(Proc::rss_kib)
    }

    fn by_name(&self, of: impl Fn(&Proc) -> u64) -> Vec<(String, u64)> {
        let mut sums: Vec<(String, u64)> = Vec::new();
        for p in &self.procs {
            let v = of(p);
            match sums.iter_mut().find(|(n, _)| *n == p.name) {
                Some((_, total)) => *total += v,
                None => sums.push((p.name.clone(), v)),
            }
        }
        sums
    }

    /// Names of processes that have exited.
    pub fn dead(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then(|| p.name.clone()))
            .collect()
    }
}

/// Runtime threads per limpet process in the stack. Five processes share
/// this machine's two cores, so each gets one, as one would deploy them
/// (nginx's `worker_processes` is the same decision): with a thread per
/// core in every process, idle threads are woken to steal work on each
/// event, and a run of 2,000 clients cost a third more CPU per delivery
/// (31.6 against 23.7 µs at 16 msgs/s per active client).
const STACK_THREADS: &str = "1";

/// Shedding by age as well as by bytes: what a signalling deployment,
/// where a late message is worthless, would set. It is the nodes' share
/// of a 250 ms end-to-end budget; the proxy, the broker and the kernel
/// buffers between them take the rest.
pub(crate) const SHEDDING_ON: &str = "max_queue_delay = \"100ms\"\n";

/// `node_limits` is appended to each node's `[limits]`.
pub(crate) async fn limpet_stack(
    dir: &Path,
    bin: &Path,
    name: &'static str,
    node_limits: &str,
) -> anyhow::Result<Stack> {
    let broker = free_addr()?;
    std::fs::write(
        dir.join("s5-broker.toml"),
        format!("bind = [\"{broker}\"]\n[metrics]\nenabled = false\n"),
    )?;
    let mut procs = vec![Proc::spawn(
        "limpet-broker",
        super::procs::limpet(bin, "limpet-broker")
            .arg("--config")
            .arg(dir.join("s5-broker.toml"))
            .env("TOKIO_WORKER_THREADS", STACK_THREADS),
    )?];
    wait_port(broker).await;
    let mut backends = String::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr = free_addr()?;
        let path = dir.join(format!("s5-node{i}.toml"));
        std::fs::write(&path, format!("id = \"n{i}\"\nbind = \"{addr}\"\nbroker = [\"redis://{broker}/\"]\n[limits]\nmax_connections = 100000\nrate_per_second = 1000\nrate_burst = 1000\n{BENCH_NODE_ADDRESS_LIMITS}{node_limits}"))?;
        procs.push(Proc::spawn(
            "limpet-node",
            super::procs::limpet(bin, "limpet-node")
                .arg("--config")
                .arg(&path)
                .env("TOKIO_WORKER_THREADS", STACK_THREADS),
        )?);
        wait_port(addr).await;
        nodes.push(addr);
        let _ = write!(
            backends,
            "[[pool.backend]]\nid = \"n{i}\"\naddress = \"{addr}\"\n"
        );
    }
    let entry = free_addr()?;
    let path = dir.join("s5-proxy.toml");
    std::fs::write(&path, format!("[[listen]]\nbind = \"{entry}\"\n[admin]\nenabled = false\n[limits]\nmax_connections = 100000\n[[pool]]\nname = \"nodes\"\naffinity = \"none\"\n{backends}[[route]]\npool = \"nodes\"\n"))?;
    procs.push(Proc::spawn(
        "limpet-proxy",
        super::procs::limpet(bin, "limpet-proxy")
            .arg("--config")
            .arg(&path)
            .env("TOKIO_WORKER_THREADS", STACK_THREADS),
    )?);
    anyhow::ensure!(wait_port(entry).await, "limpet-proxy did not start");
    // Let the nodes see each other before rooms span them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(Stack {
        name,
        procs,
        entry,
        proto: RoomProto::Limpet,
        nodes,
    })
}

pub(crate) async fn socketio_stack(dir: &Path) -> anyhow::Result<Stack> {
    let fixtures = std::env::current_dir()?.join("tests/socketio");
    anyhow::ensure!(
        fixtures
            .join("node_modules/@socket.io/redis-adapter")
            .exists(),
        "npm fixtures missing: run make test-deps"
    );
    anyhow::ensure!(
        have("nginx") && have("redis-server") && have("node"),
        "nginx, redis-server or node missing"
    );
    let redis = free_addr()?;
    let mut procs = vec![redis_server(redis)?];
    wait_port(redis).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let addr = free_addr()?;
        procs.push(Proc::spawn(
            "socket.io",
            Command::new("node")
                .arg(fixtures.join("room-server.js"))
                .arg(addr.port().to_string())
                .arg(format!("redis://{redis}/")),
        )?);
        anyhow::ensure!(wait_port(addr).await, "socket.io node did not start");
        nodes.push(addr);
    }
    // Clients speak WebSocket only (no polling), so socket.io needs no
    // stickiness: nginx spreads connections evenly, as limpet-proxy does.
    let (nginx, entry) = start_proxy_tls(
        Kind::Nginx,
        &nodes,
        dir,
        Path::new("."),
        None,
        Spread::Connection,
    )?
    .ok_or_else(|| anyhow::anyhow!("nginx"))?;
    procs.push(nginx);
    anyhow::ensure!(wait_port(entry).await, "nginx did not start");
    Ok(Stack {
        name: "nginx + 3 socket.io + Redis adapter + Redis",
        procs,
        entry,
        proto: RoomProto::SocketIo,
        nodes: Vec::new(),
    })
}

/// `limpet_node_shed_total` of every node, summed by `path`.
pub(crate) async fn shed_counters(nodes: &[SocketAddr]) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for &node in nodes {
        for line in metrics(node).await.lines() {
            let Some(rest) = line.strip_prefix("limpet_node_shed_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let path = labels
                .split(',')
                .find_map(|l| l.strip_prefix("path=\""))
                .map(|p| p.trim_end_matches('"').to_string())
                .unwrap_or_default();
            let n: f64 = value.trim().parse().unwrap_or(0.0);
            match sums.iter_mut().find(|(p, _)| *p == path) {
                Some((_, total)) => *total += n,
                None => sums.push((path, n)),
            }
        }
    }
    sums
}

/// How much each `path` of `limpet_node_shed_total` grew since `before`
/// (a [`shed_counters`] reading).
pub(crate) async fn shed_since(
    nodes: &[SocketAddr],
    before: &[(String, f64)],
) -> Vec<(String, f64)> {
    shed_counters(nodes)
        .await
        .into_iter()
        .map(|(path, n)| {
            let was = before.iter().find(|(p, _)| *p == path);
            (path, n - was.map_or(0.0, |(_, n)| *n))
        })
        .collect()
}

/// All paths of a [`shed_since`] reading together. Folded from 0.0: an
/// empty `sum` of floats is -0.0, which printed as "-0".
pub(crate) fn shed_total(by_path: &[(String, f64)]) -> f64 {
    by_path.iter().fold(0.0, |total, (_, n)| total + n.max(0.0))
}

/// The body of `GET /metrics`, or empty.
async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        Some(String::from_utf8_lossy(&raw).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}
