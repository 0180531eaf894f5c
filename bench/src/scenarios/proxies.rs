//! Scenarios 1 and 3, per proxy contender: WebSocket echo of 100-byte
//! messages over one connection (the cost of the extra hop) and over many
//! (saturation), and plain HTTP keep-alive requests with `wrk`. Both are
//! measured while one proxy instance is up, so each contender starts once;
//! the two tables are rendered apart because the report puts scenario 2
//! between them.
//!
//! The saturation run also reads the CPU time (user and sys apart) of the
//! contender's own processes from `/proc/<pid>/stat` before and after, and
//! divides it by the round trips: on a shared machine throughput swings
//! 10–30 % between runs, CPU time per message far less.

use super::contenders::{start_proxy, Kind};
use super::procs::{cpu_ticks, have, ticks_per_sec, wait_port};
use super::report::{latency_table, median_by, ratio, ChartGroup};
use super::sizes::Sizes;
use crate::load::{self, Latency};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What scenarios 1 and 3 measured, a row per contender that started.
pub(crate) struct ProxyRuns {
    single: Vec<(Kind, Latency)>,
    many: Vec<(Kind, Latency)>,
    /// `wrk` requests/s and its p99 as printed; empty without `wrk`.
    http: Vec<(Kind, (f64, String))>,
    /// CPU µs per echoed message at saturation (user, sys), median run.
    cpu: Vec<(Kind, (f64, f64))>,
    failed_to_start: Vec<String>,
}

/// Starts each contender in turn over `backends` and drives the echo and
/// HTTP load through it.
pub(crate) async fn measure(
    kinds: &[Kind],
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
    s: &Sizes,
) -> ProxyRuns {
    let mut single = Vec::new();
    let mut many = Vec::new();
    let mut http = Vec::new();
    let mut cpu = Vec::new();
    let mut failed_to_start = Vec::new();
    let tick_us = 1e6 / ticks_per_sec();
    for &kind in kinds {
        let started = match start_proxy(kind, backends, dir, bin) {
            Ok(s) => s,
            Err(e) => {
                failed_to_start.push(format!("{}: {e:#}", kind.name()));
                continue;
            }
        };
        let targets: Vec<SocketAddr> = match &started {
            Some((_, addr)) => {
                if !wait_port(*addr).await {
                    failed_to_start.push(format!("{} did not start listening", kind.name()));
                    continue;
                }
                vec![*addr]
            }
            None => backends.to_vec(),
        };
        let pids = started.as_ref().map(|(p, _)| p.pids()).unwrap_or_default();
        let mut one = Vec::new();
        let mut lots = Vec::new();
        let mut per_msg = Vec::new();
        for _ in 0..s.repeat {
            one.push(load::echo(&targets[..1], 1, 100, Duration::from_secs(s.single_secs)).await);
            let before = cpu_ticks(&pids);
            let run = load::echo(
                &targets,
                s.many_conns,
                100,
                Duration::from_secs(s.many_secs),
            )
            .await;
            let after = cpu_ticks(&pids);
            let n = run.count.max(1) as f64;
            per_msg.push((
                after.0.saturating_sub(before.0) as f64 * tick_us / n,
                after.1.saturating_sub(before.1) as f64 * tick_us / n,
            ));
            lots.push(run);
        }
        single.push((kind, median_by(one)));
        many.push((kind, median_by(lots)));
        if !pids.is_empty() {
            per_msg.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            cpu.push((kind, per_msg[per_msg.len() / 2]));
        }
        if have("wrk") {
            http.push((kind, wrk(targets[0], s.wrk_secs)));
        }
        eprintln!(
            "limpet-bench: {} done ({:?})",
            kind.name(),
            started.as_ref().map(|(_, a)| *a)
        );
    }
    ProxyRuns {
        single,
        many,
        http,
        cpu,
        failed_to_start,
    }
}

/// Scenario 1 (with the contenders that could not be measured listed
/// first) and its chart of messages/s at saturation.
pub(crate) fn overhead(runs: &ProxyRuns, many_conns: usize) -> (String, ChartGroup) {
    let mut md = String::new();
    for note in &runs.failed_to_start {
        let _ = writeln!(md, "* not measured: {note}");
    }
    let _ = writeln!(
        md,
        "## 1. Proxy overhead: WebSocket echo, 100-byte messages"
    );
    latency_table(
        &mut md,
        "One connection (the cost of the hop)",
        "round trips/s",
        &runs.single,
    );
    latency_table(
        &mut md,
        &format!("{many_conns} connections (saturation)"),
        "messages/s",
        &runs.many,
    );
    if !runs.cpu.is_empty() {
        let _ = writeln!(
            md,
            "\n### CPU per echoed message, {many_conns} connections\n\nThe contender's processes only (nginx: master and workers), from `/proc/<pid>/stat`, median of the runs.\n\n| contender | user µs | sys µs | user + sys µs |\n|---|---|---|---|"
        );
        for (k, (user, sys)) in &runs.cpu {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {:.2} |",
                k.name(),
                user,
                sys,
                user + sys
            );
        }
    }
    let chart = (
        format!("WebSocket echo, {many_conns} connections: messages/s"),
        runs.many
            .iter()
            .map(|(k, l)| (k.name().to_string(), l.per_sec))
            .collect(),
    );
    (md, chart)
}

/// Scenario 3 (nothing without `wrk`) and its chart of requests/s.
pub(crate) fn plain_http(runs: &ProxyRuns) -> (String, ChartGroup) {
    let mut md = String::new();
    if !runs.http.is_empty() {
        let base = runs.http.first().map_or(0.0, |(_, (rps, _))| *rps);
        let _ = writeln!(md, "\n## 3. Plain HTTP (wrk, 2 threads, 50 keep-alive connections)\n\n| contender | requests/s | ratio | p99 |\n|---|---|---|---|");
        for (k, (rps, p99)) in &runs.http {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} |",
                k.name(),
                rps,
                ratio(*rps, base),
                p99
            );
        }
    }
    let chart = (
        "plain HTTP (wrk): requests/s".to_string(),
        runs.http
            .iter()
            .map(|(k, (rps, _))| (k.name().to_string(), *rps))
            .collect(),
    );
    (md, chart)
}

fn wrk(target: SocketAddr, secs: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c50",
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://{target}/"),
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let rps = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "–".into());
    (rps, p99)
}
