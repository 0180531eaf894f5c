//! Scenario 2, idle capacity: the memory each proxy (and limpet-node with
//! clients straight on it) spends per open but silent WebSocket
//! connection, read from `/proc` before and after opening them. This is
//! the figure that decides how many clients one machine can hold.
//!
//! The connections are opened in two batches, a quarter then the rest:
//! "per connection" is the growth over all of them, which includes the
//! allocator's high-water mark of the handshakes in flight (up to 256 at
//! once); "marginal" is the growth over the second batch only, when that
//! mark has been reached, so it is what one more idle tunnel costs.
//! RSS is read [`SETTLE`] after each batch.

use super::contenders::{start_proxy, Kind};
use super::procs::{free_addr, wait_port, Proc, BENCH_NODE_ADDRESS_LIMITS};
use crate::load;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long RSS is left to settle after a batch of connections, for every
/// contender alike: longer than limpet's heap trim period (5 s), so what is
/// read is what idle connections hold, not the handshakes' leftovers.
const SETTLE: Duration = Duration::from_secs(6);

/// The scenario-2 table: a row per proxy contender, then limpet-node.
pub(crate) async fn run(
    kinds: &[Kind],
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
    idle_conns: usize,
) -> anyhow::Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "\n## 2. Idle capacity: {idle_conns} idle WebSocket connections\n\n| process | RSS before | RSS with connections | per connection | marginal (last 3/4) | established |\n|---|---|---|---|---|---|");
    for &kind in kinds.iter().filter(|k| **k != Kind::Direct) {
        let Ok(Some((proc, addr))) = start_proxy(kind, backends, dir, bin) else {
            continue;
        };
        if !wait_port(addr).await {
            let _ = writeln!(md, "| {} | did not start | | | |", kind.name());
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = proc.rss_kib();
        let (mut held, failed) = load::idle(addr, "/idle", idle_conns / 4).await;
        tokio::time::sleep(SETTLE).await;
        let middle = proc.rss_kib();
        let (rest, rest_failed) = load::idle(addr, "/idle", idle_conns - idle_conns / 4).await;
        tokio::time::sleep(SETTLE).await;
        let after = proc.rss_kib();
        let _ = writeln!(
            md,
            "| {} | {} KiB | {} KiB | {:.1} KiB | {:.1} KiB | {} ({} failed) |",
            kind.name(),
            before,
            after,
            after.saturating_sub(before) as f64 / (held.len() + rest.len()).max(1) as f64,
            after.saturating_sub(middle) as f64 / rest.len().max(1) as f64,
            held.len() + rest.len(),
            failed + rest_failed
        );
        held.extend(rest);
        drop(held);
    }
    node(&mut md, dir, bin, idle_conns).await?;
    Ok(md)
}

/// limpet-node (with its broker) holding the idle clients itself.
async fn node(md: &mut String, dir: &Path, bin: &Path, idle_conns: usize) -> anyhow::Result<()> {
    let broker_addr = free_addr()?;
    let node_addr = free_addr()?;
    std::fs::write(
        dir.join("b.toml"),
        format!("bind = [\"{broker_addr}\"]\n[metrics]\nenabled = false\n"),
    )?;
    std::fs::write(dir.join("n.toml"), format!("id = \"bench\"\nbind = \"{node_addr}\"\nbroker = [\"redis://{broker_addr}/\"]\n[limits]\nmax_connections = 100000\n{BENCH_NODE_ADDRESS_LIMITS}"))?;
    let _broker = Proc::spawn(
        "limpet-broker",
        super::procs::limpet(bin, "limpet-broker")
            .arg("--config")
            .arg(dir.join("b.toml")),
    )?;
    wait_port(broker_addr).await;
    let node = Proc::spawn(
        "limpet-node",
        super::procs::limpet(bin, "limpet-node")
            .arg("--config")
            .arg(dir.join("n.toml")),
    )?;
    wait_port(node_addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.rss_kib();
    let (held, failed) = load::idle(node_addr, "/ws", idle_conns).await;
    tokio::time::sleep(SETTLE).await;
    let after = node.rss_kib();
    let _ = writeln!(
        md,
        "| limpet-node (clients directly) | {} KiB | {} KiB | {:.1} KiB | – | {} ({} failed) |",
        before,
        after,
        after.saturating_sub(before) as f64 / held.len().max(1) as f64,
        held.len(),
        failed
    );
    Ok(())
}
