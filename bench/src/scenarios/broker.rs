//! Scenario 4, limpet-broker next to redis-server on the same machine:
//! pipelined `PUBLISH` throughput with `redis-benchmark`, and fan-out
//! (publish → receive) to many subscribers of one channel and to many
//! channels of two subscribers each, driven by the bench's own client.
//! Skipped with a note when Redis is not installed.

use super::procs::{free_addr, have, redis_server, wait_port, Proc};
use super::report::{median_by, ratio, ChartGroup};
use super::sizes::Sizes;
use crate::load;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// The scenario-4 table and its chart of one-channel fan-out.
pub(crate) async fn run(dir: &Path, bin: &Path, s: &Sizes) -> anyhow::Result<(String, ChartGroup)> {
    let mut md = String::new();
    let _ = writeln!(md, "\n## 4. Broker: limpet-broker vs redis-server\n\n| measurement | redis-server | limpet-broker | ratio |\n|---|---|---|---|");
    let mut chart = Vec::new();
    if have("redis-server") && have("redis-benchmark") {
        let lb = free_addr()?;
        let rb = free_addr()?;
        std::fs::write(
            dir.join("bb.toml"),
            format!("bind = [\"{lb}\"]\n[metrics]\nenabled = false\n"),
        )?;
        let _l = Proc::spawn(
            "limpet-broker",
            Command::new(bin.join("limpet-broker"))
                .arg("--config")
                .arg(dir.join("bb.toml"))
                .env("RUST_LOG", "warn"),
        )?;
        let _r = redis_server(rb)?;
        wait_port(lb).await;
        wait_port(rb).await;
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
        let (r, l) = (med(pr), med(pl));
        let _ = writeln!(
            md,
            "| `redis-benchmark -P 16 -n {} PUBLISH`, requests/s | {r:.0} | {l:.0} | {} |",
            s.publish_n,
            ratio(l, r)
        );
        for (label, channels, subs) in [
            ("1 publisher → 100 subscribers, one channel", 1, 100),
            (
                "wide fan-out, 2 subscribers per channel",
                s.wide_channels,
                2,
            ),
        ] {
            let mut rr = Vec::new();
            let mut ll = Vec::new();
            for _ in 0..s.repeat {
                rr.push(load::fanout(rb, channels, subs, s.fanout_msgs, 100).await);
                ll.push(load::fanout(lb, channels, subs, s.fanout_msgs, 100).await);
            }
            let (r, l) = (median_by(rr), median_by(ll));
            let _ = writeln!(
                md,
                "| {label} ({channels} channel(s)): delivered/s | {:.0} | {:.0} | {} |",
                r.per_sec,
                l.per_sec,
                ratio(l.per_sec, r.per_sec)
            );
            let _ = writeln!(
                md,
                "| {label}: publish→receive p99 µs | {} | {} | {} |",
                r.p99_us,
                l.p99_us,
                ratio(l.p99_us as f64, r.p99_us as f64)
            );
            if channels == 1 {
                chart.push(("redis-server".to_string(), r.per_sec));
                chart.push(("limpet-broker".to_string(), l.per_sec));
            }
        }
    } else {
        let _ = writeln!(
            md,
            "| (redis-server / redis-benchmark not installed: run `make test-deps`) | | | |"
        );
    }
    Ok((
        md,
        ("broker fan-out 1 → 100: delivered/s".to_string(), chart),
    ))
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
