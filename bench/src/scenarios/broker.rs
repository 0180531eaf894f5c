//! Scenario 4, limpet-broker next to redis-server on the same machine:
//! pipelined `PUBLISH` throughput with `redis-benchmark`, and fan-out
//! (publish → receive) in two shapes, driven by the bench's own client:
//! one channel with 100 subscribers, and many channels with two
//! subscribers each. Each subscriber is its own TCP connection; the
//! publisher is closed loop with a window ([`load::WINDOW`]), so the load
//! saturates whichever server is measured.
//!
//! Per shape and server: delivered messages per second, publish → receive
//! p50 and p99, and the server's CPU time per delivered message (user and
//! sys of the server process alone, from `/proc/<pid>/stat`, counted from
//! the first publish to the last delivery). The two servers run one after
//! the other in every round, so machine noise hits both alike; CPU per
//! delivery is the figure that noise moves least. Skipped with a note when
//! Redis is not installed.
//!
//! Then memory per idle client ([`idle`]): a fresh server of each kind
//! (so the fan-out's high-water marks do not hide the growth) gets
//! thousands of connections that each answered one PING, then the same
//! connections each subscribe to a channel of their own; RSS growth per
//! connection is read from `/proc` after a few quiet seconds.
//!
//! `limpet-bench broker` runs this scenario alone (see [`standalone`]).

use super::procs::{
    cpu_ticks, free_addr, have, redis_server, ticks_per_sec, version, wait_port, Proc,
};
use super::report::{median_by, ratio, ChartGroup};
use super::sizes::Sizes;
use crate::load::{self, Latency};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One fan-out run against one server.
#[derive(Clone, Default)]
struct Fanout {
    latency: Latency,
    /// Server CPU per delivered message, µs: user, sys.
    user_us: f64,
    sys_us: f64,
    /// The load generator's own CPU per delivered message, µs (user +
    /// sys): on a machine it shares with the server, what is left of the
    /// cores for the server is what this leaves.
    client_us: f64,
}

impl Fanout {
    fn cpu_us(&self) -> f64 {
        self.user_us + self.sys_us
    }
}

/// The median run by rate, with the median CPU per delivery (the two
/// medians are taken apart: the fastest run need not be the cheapest).
fn median(runs: Vec<Fanout>) -> Fanout {
    let mut cpu: Vec<(f64, f64)> = runs.iter().map(|r| (r.user_us, r.sys_us)).collect();
    cpu.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (user_us, sys_us) = cpu.get(cpu.len() / 2).copied().unwrap_or_default();
    let mut client: Vec<f64> = runs.iter().map(|r| r.client_us).collect();
    client.sort_by(f64::total_cmp);
    Fanout {
        client_us: client.get(client.len() / 2).copied().unwrap_or_default(),
        latency: median_by(runs.into_iter().map(|r| r.latency).collect()),
        user_us,
        sys_us,
    }
}

async fn fanout(addr: SocketAddr, pid: u32, channels: usize, subs: usize, msgs: usize) -> Fanout {
    let me = std::process::id();
    let probe = || (cpu_ticks(&[pid]), cpu_ticks(&[me]));
    let (latency, [(server0, me0), (server1, me1)]) =
        load::fanout(addr, channels, subs, msgs, 100, probe).await;
    let per = 1e6 / ticks_per_sec() / latency.count.max(1) as f64;
    let client = (me1.0 + me1.1).saturating_sub(me0.0 + me0.1);
    Fanout {
        user_us: server1.0.saturating_sub(server0.0) as f64 * per,
        sys_us: server1.1.saturating_sub(server0.1) as f64 * per,
        client_us: client as f64 * per,
        latency,
    }
}

/// The scenario-4 table and its charts: one-channel fan-out, and the
/// server's CPU per delivery in both shapes.
pub(crate) async fn run(
    dir: &Path,
    bin: &Path,
    s: &Sizes,
) -> anyhow::Result<(String, Vec<ChartGroup>)> {
    let mut md = String::new();
    let _ = writeln!(md, "\n## 4. Broker: limpet-broker vs redis-server\n");
    let mut chart = Vec::new();
    let mut cpu_chart = Vec::new();
    if !(have("redis-server") && have("redis-benchmark")) {
        let _ = writeln!(
            md,
            "(redis-server / redis-benchmark not installed: run `make test-deps`)"
        );
        return Ok((md, Vec::new()));
    }
    let lb = free_addr()?;
    let rb = free_addr()?;
    let limpet = start_limpet(dir, bin, "bb", lb)?;
    let redis = redis_server(rb)?;
    wait_port(lb).await;
    wait_port(rb).await;
    let _ = writeln!(
        md,
        "Fan-out: each subscriber its own connection, one publisher closed loop with {} publishes in flight, 100-byte payloads; CPU is the server process's user + sys time per delivered message from the first publish to the last delivery. Medians of {} round(s), servers alternated within each round.\n",
        load::WINDOW,
        s.repeat
    );
    let _ = writeln!(
        md,
        "| measurement | redis-server | limpet-broker | limpet / redis |\n|---|---|---|---|"
    );
    let mut pl = Vec::new();
    let mut pr = Vec::new();
    for _ in 0..s.repeat {
        pr.push(redis_benchmark(rb, s.publish_n));
        pl.push(redis_benchmark(lb, s.publish_n));
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (rp, lp) = (med(pr), med(pl));
    let _ = writeln!(
        md,
        "| `redis-benchmark -P 16 -n {} PUBLISH`, requests/s | {rp:.0} | {lp:.0} | {} |",
        s.publish_n,
        ratio(lp, rp)
    );
    let shapes = [
        (
            "1 channel × 100 subscribers",
            "1×100",
            1,
            100,
            s.fanout_msgs,
        ),
        (
            "wide: 2 subscribers per channel",
            "wide",
            s.wide_channels,
            2,
            s.wide_msgs,
        ),
    ];
    for (label, short, channels, subs, msgs) in shapes {
        let mut rr = Vec::new();
        let mut ll = Vec::new();
        for _ in 0..s.repeat {
            rr.push(fanout(rb, redis.child.id(), channels, subs, msgs).await);
            ll.push(fanout(lb, limpet.child.id(), channels, subs, msgs).await);
        }
        let (r, l) = (median(rr), median(ll));
        let label = format!("{label} ({channels} channel(s), {msgs} publishes)");
        let _ = writeln!(
            md,
            "| {label}: delivered/s | {:.0} | {:.0} | {} |",
            r.latency.per_sec,
            l.latency.per_sec,
            ratio(l.latency.per_sec, r.latency.per_sec)
        );
        for (what, rv, lv) in [
            ("p50", r.latency.p50_us, l.latency.p50_us),
            ("p99", r.latency.p99_us, l.latency.p99_us),
        ] {
            let _ = writeln!(
                md,
                "| {label}: publish→receive {what} µs | {rv} | {lv} | {} |",
                ratio(lv as f64, rv as f64)
            );
        }
        let _ = writeln!(
            md,
            "| {label}: server CPU µs per delivery (user + sys) | {:.2} ({:.2} + {:.2}) | {:.2} ({:.2} + {:.2}) | {} |",
            r.cpu_us(),
            r.user_us,
            r.sys_us,
            l.cpu_us(),
            l.user_us,
            l.sys_us,
            ratio(l.cpu_us(), r.cpu_us())
        );
        let _ = writeln!(
            md,
            "| {label}: load generator CPU µs per delivery (same machine) | {:.2} | {:.2} | |",
            r.client_us, l.client_us
        );
        let lost = r.latency.errors + l.latency.errors;
        if lost > 0 {
            let _ = writeln!(
                md,
                "| {label}: messages not received (redis, limpet) | {} | {} | |",
                r.latency.errors, l.latency.errors
            );
        }
        cpu_chart.push((format!("redis-server, {short}"), r.cpu_us()));
        cpu_chart.push((format!("limpet-broker, {short}"), l.cpu_us()));
        if channels == 1 {
            chart.push(("redis-server".to_string(), r.latency.per_sec));
            chart.push(("limpet-broker".to_string(), l.latency.per_sec));
        }
    }
    drop((limpet, redis));
    idle(&mut md, dir, bin, s.idle_conns.min(5000)).await?;
    Ok((
        md,
        vec![
            ("broker fan-out 1 → 100: delivered/s".to_string(), chart),
            (
                "broker: server CPU µs per delivery (user + sys)".to_string(),
                cpu_chart,
            ),
        ],
    ))
}

/// `limpet-bench broker`: scenario 4 alone, written to `out` (markdown)
/// with the date, machine and versions.
pub(crate) async fn standalone(
    quick: bool,
    rounds: Option<usize>,
    out: &Path,
    bin: &Path,
) -> anyhow::Result<()> {
    let mut s = Sizes::new(quick);
    s.repeat = rounds.unwrap_or(s.repeat).max(1);
    anyhow::ensure!(
        bin.join("limpet-broker").exists(),
        "{} missing: build with `cargo build --release -p limpet-broker`",
        bin.join("limpet-broker").display()
    );
    let dir = std::env::temp_dir().join(format!("limpet-bench-broker-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut md = format!(
        "# limpet-broker fan-out{}\n\nGenerated by `limpet-bench broker{}{}`.\n\n* date: {}\n* machine: {} cores, {}, load average before the run: {}\n* versions: limpet {}, {}\n",
        if quick { " (quick run)" } else { "" },
        if quick { " --quick" } else { "" },
        rounds.map(|n| format!(" --rounds {n}")).unwrap_or_default(),
        version("date", &["-u"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version("uname", &["-sr"]),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        env!("CARGO_PKG_VERSION"),
        version("redis-server", &["--version"]),
    );
    let (table, _) = run(&dir, bin, &s).await?;
    md.push_str(&table);
    super::report::write(out, &md)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A limpet-broker on `addr` with metrics off, its config written to
/// `dir`/`name`.toml.
fn start_limpet(dir: &Path, bin: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<Proc> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("bind = [\"{addr}\"]\n[metrics]\nenabled = false\n"),
    )?;
    Proc::spawn(
        "limpet-broker",
        super::procs::limpet(bin, "limpet-broker")
            .arg("--config")
            .arg(config),
    )
}

/// Quiet time before RSS is read: Redis shrinks an idle client's query
/// and reply buffers in its once-a-second client cron, only after the
/// client has been idle for 2 s.
const IDLE_SETTLE: Duration = Duration::from_secs(4);

/// Memory per idle client: RSS growth of a fresh server per connection,
/// first with `conns` connections that each answered a PING, then with
/// each of them also subscribed to a channel of its own.
async fn idle(md: &mut String, dir: &Path, bin: &Path, conns: usize) -> anyhow::Result<()> {
    let _ = writeln!(
        md,
        "\nMemory per idle client: a fresh server each, {conns} connections (one PING each), then each also subscribed to its own channel; RSS growth per connection from `/proc` after {} s quiet.\n\n| measurement | redis-server | limpet-broker | limpet / redis |\n|---|---|---|---|",
        IDLE_SETTLE.as_secs()
    );
    let lb = free_addr()?;
    let rb = free_addr()?;
    let mut rows = Vec::new();
    for (addr, proc) in [
        (rb, redis_server(rb)?),
        (lb, start_limpet(dir, bin, "bi", lb)?),
    ] {
        wait_port(addr).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = proc.rss_kib();
        let mut held = open_idle(addr, conns).await;
        tokio::time::sleep(IDLE_SETTLE).await;
        let plain = proc.rss_kib();
        let subscribed = subscribe_each(&mut held).await;
        tokio::time::sleep(IDLE_SETTLE).await;
        let subs = proc.rss_kib();
        let per = |kib: u64| kib.saturating_sub(before) as f64 * 1024.0 / held.len().max(1) as f64;
        rows.push((per(plain), per(subs), held.len(), subscribed));
        drop(held);
    }
    let [(rp, rs, rn, rsn), (lp, ls, ln, lsn)] = rows[..] else {
        return Ok(());
    };
    let _ = writeln!(
        md,
        "| RSS per idle connection, bytes ({rn} / {ln} connected) | {rp:.0} | {lp:.0} | {} |",
        ratio(lp, rp)
    );
    let _ = writeln!(
        md,
        "| RSS per idle subscriber, bytes ({rsn} / {lsn} subscribed) | {rs:.0} | {ls:.0} | {} |",
        ratio(ls, rs)
    );
    Ok(())
}

/// Opens up to `conns` connections, each of which answered one PING.
async fn open_idle(addr: SocketAddr, conns: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(conns);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    while next < conns || !pending.is_empty() {
        while next < conns && pending.len() < 256 {
            let i = next;
            next += 1;
            pending.push(async move {
                let mut tcp = load::connect_from(i, addr).await.ok()?;
                ask(&mut tcp, b"PING\r\n", b"+PONG\r\n").await?;
                Some(tcp)
            });
        }
        if let Some(Some(tcp)) = pending.next().await {
            held.push(tcp);
        }
    }
    held
}

/// Subscribes each connection to a channel of its own; returns how many
/// got their confirmation.
async fn subscribe_each(held: &mut [TcpStream]) -> usize {
    let mut ok = 0;
    for chunk in held.chunks_mut(256) {
        let mut pending: FuturesUnordered<_> = chunk
            .iter_mut()
            .enumerate()
            .map(|(i, tcp)| async move {
                let ch = format!("idle:{i}:{}", tcp.local_addr().map_or(0, |a| a.port()));
                let cmd = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{ch}\r\n", ch.len());
                // The confirmation ends with the subscription count, 1.
                ask(tcp, cmd.as_bytes(), b":1\r\n").await
            })
            .collect();
        while let Some(r) = pending.next().await {
            ok += usize::from(r.is_some());
        }
    }
    ok
}

/// Sends `req` and reads until the reply ends with `end` (5 s at most).
async fn ask(tcp: &mut TcpStream, req: &[u8], end: &[u8]) -> Option<()> {
    tcp.write_all(req).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let read = async {
        while !got.ends_with(end) {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?
}

fn redis_benchmark(addr: SocketAddr, n: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-q",
            "-n",
            &n.to_string(),
            "-P",
            "16",
            "PUBLISH",
            "ch",
            "hello",
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\r', "\n"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split("PUBLISH ch hello: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or(0.0)
}
