//! Scenario 5 under overload (`limpet-bench overload`): the whole stack
//! (proxy + 3 nodes + broker, rooms of 4) pushed to twice its saturation
//! rate, next to the same stack with load shedding turned off (the old
//! behaviour: every queue grows) and the socket.io stack (nginx + 3
//! socket.io nodes + Redis adapter + Redis).
//!
//! For each stack the rate per client is doubled step by step until the
//! stack saturates (it delivers less than 90% of what is offered, or p99
//! passes 500 ms); the last rate before that is its saturation rate. Then
//! it runs once more at twice that rate, and the bench prints delivered
//! messages per second, p50/p99 of delivered messages, what is missing,
//! and the drops the limpet nodes counted (`limpet_node_shed_total`, read
//! from each node's `/metrics`). It prints figures; it asserts nothing.

use crate::load::Latency;
use crate::rooms;
use crate::scenarios::procs::ticks_per_sec;
use crate::scenarios::stack::{
    limpet_stack, shed_counters, shed_since, shed_total, socketio_stack, Stack, SHEDDING_ON,
};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The old behaviour, for comparison in the same run: no age limit and
/// budgets too big to matter.
const SHEDDING_OFF: &str =
    "max_queue_delay = \"0s\"\npublish_queue_bytes = \"1gb\"\ninbound_queue_bytes = \"1gb\"\n";

/// One run of the room load at one rate.
struct Step {
    rate: f64,
    expected: f64,
    lat: Latency,
    /// limpet nodes' shed counters, summed, by `path` label.
    shed: Vec<(String, f64)>,
    dead: Vec<String>,
    /// CPU time of the stack's processes (not the load generator's) per
    /// delivered message, µs.
    cpu_us: Option<f64>,
}

impl Step {
    fn saturated(&self) -> bool {
        self.lat.per_sec < 0.9 * self.expected || self.lat.p99_us > 500_000
    }
}

pub async fn run(
    bin: &Path,
    clients: usize,
    secs: u64,
    only: &[String],
    fixed_rate: Option<f64>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("limpet-overload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut md = format!(
        "## 5b. Whole stack at twice its saturation rate: {clients} clients in rooms of 4, {secs} s per step\n\n\
         | stack | saturation (msgs/s per client) | run at | expected deliveries/s | delivered/s | p50 ms | p99 ms | missing | drops counted by the nodes | stack CPU µs per delivery | status |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (which, key) in ["on", "off", "socketio"].into_iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| o == key) {
            continue;
        }
        let stack = match which {
            0 => {
                limpet_stack(
                    &dir,
                    bin,
                    "limpet (shedding on, max_queue_delay 100ms)",
                    SHEDDING_ON,
                )
                .await
            }
            1 => {
                limpet_stack(
                    &dir,
                    bin,
                    "limpet (shedding off: old behaviour)",
                    SHEDDING_OFF,
                )
                .await
            }
            _ => socketio_stack(&dir).await,
        };
        let mut stack = match stack {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(md, "| stack {which} | | | | | | | | | | not run: {e:#} |");
                continue;
            }
        };
        let mut saturation = fixed_rate.map(|r| r / 2.0);
        let search: &[f64] = if fixed_rate.is_some() {
            &[]
        } else {
            &[10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
        };
        for &rate in search {
            let s = step(&mut stack, clients, secs, rate).await;
            eprintln!(
                "limpet-bench: overload {} at {rate}/s: {:.0} of {:.0} delivered/s, p99 {} µs, stack CPU {:.1} µs per delivery",
                stack.name, s.lat.per_sec, s.expected, s.lat.p99_us, s.cpu_us.unwrap_or(0.0)
            );
            if s.saturated() || !s.dead.is_empty() {
                break;
            }
            saturation = Some(rate);
        }
        let Some(saturation) = saturation else {
            let _ = writeln!(
                md,
                "| {} | below 10 | | | | | | | | | saturated at the first step |",
                stack.name
            );
            continue;
        };
        let s = step(&mut stack, clients, secs, 2.0 * saturation).await;
        let shed = if stack.nodes.is_empty() {
            "not counted".to_string()
        } else {
            let total = shed_total(&s.shed);
            let parts: Vec<String> = s.shed.iter().map(|(p, n)| format!("{p} {n:.0}")).collect();
            format!("{total:.0} ({})", parts.join(", "))
        };
        let status = if s.dead.is_empty() {
            "ok".to_string()
        } else {
            format!("crashed: {}", s.dead.join(", "))
        };
        let cpu = s.cpu_us.map_or("–".to_string(), |c| format!("{c:.1}"));
        let row = format!(
            "| {} | {saturation} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0}% | {shed} | {cpu} | {status} |",
            stack.name,
            s.rate,
            s.expected,
            s.lat.per_sec,
            s.lat.p50_us as f64 / 1000.0,
            s.lat.p99_us as f64 / 1000.0,
            (100.0 * (1.0 - s.lat.per_sec / s.expected)).max(0.0),
        );
        eprintln!("limpet-bench: {row}");
        md.push_str(&row);
        md.push('\n');
    }
    println!("{md}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs the room load once at `rate` and reads the nodes' drop counters
/// (their growth during the run).
async fn step(stack: &mut Stack, clients: usize, secs: u64, rate: f64) -> Step {
    let before = shed_counters(&stack.nodes).await;
    let cpu_before = stack.cpu_ticks();
    let (lat, expected) = rooms::once(
        stack.proto,
        stack.entry,
        clients,
        4,
        rate,
        Duration::from_secs(secs),
    )
    .await;
    let cpu = stack.cpu_ticks().saturating_sub(cpu_before);
    let shed = shed_since(&stack.nodes, &before).await;
    // Let queues empty before the next step.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The stack's CPU over what it delivered.
    let delivered = lat.per_sec * secs as f64;
    let cpu_us = (delivered > 0.0).then(|| cpu as f64 * 1e6 / ticks_per_sec() / delivered);
    Step {
        rate,
        expected,
        lat,
        shed,
        dead: stack.dead(),
        cpu_us,
    }
}
