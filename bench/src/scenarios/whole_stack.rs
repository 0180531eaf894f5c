//! Scenario 5, the whole stack: clients in rooms of 4 spread over 3
//! nodes, each emitting to its room at a rate raised step by step until
//! latency breaks down, for limpet and for the nginx + socket.io + Redis
//! stack it replaces. It measures what users see (delivered/s, latency)
//! and what the stack costs (RSS, growth per client), and notes crashes.

use super::stack::{limpet_stack, socketio_stack};
use crate::load;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The scenario-5 table.
pub(crate) async fn run(quick: bool, dir: &Path, bin: &Path) -> String {
    let mut md = String::new();
    let (clients, secs, rates): (usize, u64, &[f64]) = if quick {
        (40, 3, &[5.0])
    } else {
        (400, 5, &[2.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    };
    let _ = writeln!(
        md,
        "\n## 5. Whole stack: {clients} clients in rooms of 4 over 3 nodes\n\nEvery client emits to its room at the given rate; each message is delivered to the 3 others. Raised step by step until latency breaks down.\n\n| stack | msgs/s per client | expected deliveries/s | delivered/s | p50 ms | p99 ms | errors | stack CPU µs per delivery | stack RSS | RSS growth per client | status |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for which in 0..2 {
        let stack = if which == 0 {
            limpet_stack(dir, bin, "limpet (proxy + 3 nodes + broker)", "").await
        } else {
            socketio_stack(dir).await
        };
        let mut stack = match stack {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {} | | | | | | | | | | not run: {e:#} |",
                    if which == 0 { "limpet" } else { "socket.io" }
                );
                continue;
            }
        };
        let baseline = stack.rss_kib();
        for &rate in rates {
            let (proto, entry) = (stack.proto, stack.entry);
            let cpu_before = stack.cpu_ticks();
            let run = tokio::spawn(load::rooms(
                proto,
                entry,
                clients,
                4,
                rate,
                Duration::from_secs(secs),
            ));
            tokio::time::sleep(Duration::from_secs(secs / 2 + 1)).await;
            let rss = stack.rss_kib();
            let r = run.await.unwrap_or_default();
            // Clock ticks are 10 ms: the stack's CPU (not the load
            // generator's) over what it delivered.
            let cpu = stack.cpu_ticks().saturating_sub(cpu_before) as f64 * 10_000.0;
            let cpu_per = if r.per_sec > 0.0 {
                format!("{:.1}", cpu / (r.per_sec * secs as f64))
            } else {
                "–".to_string()
            };
            let dead = stack.dead();
            let status = if dead.is_empty() {
                "ok".to_string()
            } else {
                format!("crashed: {}", dead.join(", "))
            };
            // Each client sends once at start, then `rate` a second.
            let expected = clients as f64 * (rate * secs as f64 + 1.0) * 3.0 / secs as f64;
            let _ = writeln!(
                md,
                "| {} | {rate} | {expected:.0} | {:.0} | {:.1} | {:.1} | {} | {cpu_per} | {:.1} MiB | {:.1} KiB | {status} |",
                stack.name,
                r.per_sec,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.errors,
                rss as f64 / 1024.0,
                rss.saturating_sub(baseline) as f64 / clients as f64
            );
            eprintln!(
                "limpet-bench: scenario 5 {} at {rate}/s: {:.0} delivered/s, p99 {} µs",
                stack.name, r.per_sec, r.p99_us
            );
            if !dead.is_empty() {
                break;
            }
        }
    }
    md
}
