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
use super::procs::{cpu_per_op, cpu_ticks, have, rss_of, wait_port};
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
    http: Vec<(Kind, Wrk)>,
    /// CPU µs per echoed message at saturation (user, sys), median run.
    cpu: Vec<(Kind, (f64, f64))>,
    /// Syscalls (`strace -c -f`, short runs of their own).
    syscalls: Vec<(Kind, Syscalls)>,
    /// RSS growth per connection once every echo client is connected,
    /// KiB, median run.
    busy_rss: Vec<(Kind, f64)>,
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
    let mut syscalls = Vec::new();
    let mut busy_rss = Vec::new();
    let mut failed_to_start = Vec::new();
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
        let mut rss = Vec::new();
        for _ in 0..s.repeat {
            one.push(load::echo(&targets[..1], 1, 100, Duration::from_secs(s.single_secs)).await);
            let rss_before: u64 = pids.iter().map(|&p| rss_of(p)).sum();
            // CPU from "all connected" to "all done": the handshakes and
            // closes are not per-message work.
            let (run, [(connected, before), (_, after)]) = load::echo_over(
                &targets,
                s.many_conns,
                100,
                Duration::from_secs(s.many_secs),
                None,
                || {
                    (
                        pids.iter().map(|&p| rss_of(p)).sum::<u64>(),
                        cpu_ticks(&pids),
                    )
                },
            )
            .await;
            if !pids.is_empty() {
                rss.push(connected.saturating_sub(rss_before) as f64 / s.many_conns as f64);
            }
            per_msg.push(cpu_per_op([before, after], run.count));
            lots.push(run);
        }
        single.push((kind, median_by(one)));
        many.push((kind, median_by(lots)));
        if !pids.is_empty() {
            per_msg.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            cpu.push((kind, per_msg[per_msg.len() / 2]));
        }
        if !rss.is_empty() {
            rss.sort_by(f64::total_cmp);
            busy_rss.push((kind, rss[rss.len() / 2]));
        }
        if have("wrk") {
            let before = cpu_ticks(&pids);
            let mut run = wrk(targets[0], s.wrk_secs);
            let after = cpu_ticks(&pids);
            if !pids.is_empty() {
                let requests = (run.rps * s.wrk_secs as f64) as u64;
                run.cpu = Some(cpu_per_op([before, after], requests));
            }
            http.push((kind, run));
        }
        if !pids.is_empty() && have("strace") {
            if let Some(n) = count_syscalls(&pids, &targets, s.many_conns).await {
                syscalls.push((kind, n));
            }
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
        syscalls,
        busy_rss,
        failed_to_start,
    }
}

/// Scenario 1 (with the contenders that could not be measured listed
/// first) and its charts: messages/s at saturation, CPU per message.
pub(crate) fn overhead(runs: &ProxyRuns, many_conns: usize) -> (String, Vec<ChartGroup>) {
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
            "\n### CPU and syscalls per echoed message, {many_conns} connections\n\nAn echoed message is one round trip: the proxy forwards it to the backend and the echo back. CPU: the contender's processes only (nginx: master and workers), from `/proc/<pid>/stat`, median of the runs, from all clients connected to all done. Syscalls: `strace -c -f` on the same processes (strace slows them, so these runs are not timed), over two runs of their own: the {many_conns} connections opened and closed with no message, then opened, echoing for {STRACE_SECS} s and closed; per connection is the first run's count over the connections, per message the second's count less the first's, over its messages. RSS: the contender's growth once every echo client is connected, per connection.\n\n| contender | user µs | sys µs | user + sys µs | ratio | syscalls per message | syscalls per connection (open and close) | RSS per busy connection |\n|---|---|---|---|---|---|---|---|"
        );
        let base = runs
            .cpu
            .iter()
            .find(|(k, _)| k.name() == "nginx")
            .map_or(0.0, |(_, (u, s))| u + s);
        for (k, (user, sys)) in &runs.cpu {
            let (per_msg, per_conn) = runs.syscalls.iter().find(|(c, _)| c == k).map_or(
                ("–".to_string(), "–".to_string()),
                |(_, n)| {
                    (
                        format!("{:.2}", n.per_message),
                        format!("{:.1}", n.per_connection),
                    )
                },
            );
            let busy = runs
                .busy_rss
                .iter()
                .find(|(c, _)| c == k)
                .map_or("–".to_string(), |(_, kib)| format!("{kib:.1} KiB"));
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {:.2} | {} | {per_msg} | {per_conn} | {busy} |",
                k.name(),
                user,
                sys,
                user + sys,
                ratio(user + sys, base)
            );
        }
        let _ = writeln!(md, "\nRatios are to nginx.");
    }
    let charts = vec![
        (
            format!("WebSocket echo, {many_conns} connections: messages/s"),
            runs.many
                .iter()
                .map(|(k, l)| (k.name().to_string(), l.per_sec))
                .collect(),
        ),
        (
            "WebSocket echo: proxy CPU µs per message (user + sys)".to_string(),
            runs.cpu
                .iter()
                .map(|(k, (u, s))| (k.name().to_string(), u + s))
                .collect(),
        ),
    ];
    (md, charts)
}

/// Scenario 3 (nothing without `wrk`) and its charts of requests/s and
/// CPU per request.
pub(crate) fn plain_http(runs: &ProxyRuns) -> (String, Vec<ChartGroup>) {
    let mut md = String::new();
    if !runs.http.is_empty() {
        let base = runs.http.first().map_or(0.0, |(_, w)| w.rps);
        let _ = writeln!(md, "\n## 3. Plain HTTP (wrk, 2 threads, 50 keep-alive connections)\n\nCPU: the contender's own processes, from `/proc/<pid>/stat` around the wrk run, per request.\n\n| contender | requests/s | ratio | p99 | CPU user µs per request | sys µs | user + sys µs |\n|---|---|---|---|---|---|---|");
        for (k, w) in &runs.http {
            let cpu = w.cpu.map_or("– | – | –".to_string(), |(u, s)| {
                format!("{u:.2} | {s:.2} | {:.2}", u + s)
            });
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {cpu} |",
                k.name(),
                w.rps,
                ratio(w.rps, base),
                w.p99
            );
        }
    }
    let charts = vec![
        (
            "plain HTTP (wrk): requests/s".to_string(),
            runs.http
                .iter()
                .map(|(k, w)| (k.name().to_string(), w.rps))
                .collect(),
        ),
        (
            "plain HTTP: proxy CPU µs per request (user + sys)".to_string(),
            runs.http
                .iter()
                .filter_map(|(k, w)| w.cpu.map(|(u, s)| (k.name().to_string(), u + s)))
                .collect(),
        ),
    ];
    (md, charts)
}

/// One `wrk` run: requests/s, its p99 as printed, and (filled in by the
/// caller) the contender's CPU µs per request, user and sys.
struct Wrk {
    rps: f64,
    p99: String,
    cpu: Option<(f64, f64)>,
}

fn wrk(target: SocketAddr, secs: u64) -> Wrk {
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
    Wrk {
        rps,
        p99,
        cpu: None,
    }
}

/// Seconds of echo load `strace` watches.
const STRACE_SECS: u64 = 3;

/// Syscalls a contender makes, from [`count_syscalls`].
pub(crate) struct Syscalls {
    /// Per echoed message (a round trip: the proxy forwards it to the
    /// backend and the echo back), the connections' opening and closing
    /// left out.
    per_message: f64,
    /// Per connection opened (WebSocket handshake, backend connect) and
    /// closed.
    per_connection: f64,
}

/// Counts the contender's syscalls (`strace -c -f` attached to `pids`) in
/// two runs of `conns` connections: opened and closed without a message,
/// then with [`STRACE_SECS`] of echo in between. The first gives the cost
/// of a connection; the difference, the cost of the messages. Counting
/// both in one run would charge a connection's setup to however many
/// messages it carried while strace slowed it.
async fn count_syscalls(pids: &[u32], targets: &[SocketAddr], conns: usize) -> Option<Syscalls> {
    let (opening, none) = strace_calls(pids, targets, conns, Duration::ZERO).await?;
    let (all, echoed) =
        strace_calls(pids, targets, conns, Duration::from_secs(STRACE_SECS)).await?;
    (echoed > none && conns > 0).then(|| Syscalls {
        per_message: (all - opening) / (echoed - none) as f64,
        per_connection: opening / conns as f64,
    })
}

/// `strace -c -f` attached to `pids` over one echo run of `conns`
/// connections echoing for `secs`: the syscalls counted and the round
/// trips echoed.
async fn strace_calls(
    pids: &[u32],
    targets: &[SocketAddr],
    conns: usize,
    secs: Duration,
) -> Option<(f64, u64)> {
    let out = std::env::temp_dir().join(format!("limpet-bench-strace-{}", std::process::id()));
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-o"]).arg(&out);
    for pid in pids {
        cmd.args(["-p", &pid.to_string()]);
    }
    let mut strace = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // strace attaches asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = load::echo(targets, conns, 100, secs).await;
    // The clients are gone; let the contender finish closing its side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGINT makes strace detach and write its summary.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let calls: f64 = text
        .lines()
        .find(|l| l.trim_end().ends_with("total"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    (run.errors == 0).then_some((calls, run.count))
}
