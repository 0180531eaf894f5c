//! Scenario 6, the TLS edge: limpet-proxy (rustls) against nginx and
//! HAProxy (OpenSSL), each terminating TLS 1.3 with the same self-signed
//! ECDSA P-256 certificate, made at start, in front of the same plain echo
//! backends. Measured per contender:
//!
//! * wss echo: `tls_conns` connections echoing 100-byte messages through
//!   the TLS edge; messages/s, the contender's CPU per echoed message (user
//!   and sys apart, over the echo only, not the handshakes) and its RSS per
//!   connection (peak while the echo runs, over the RSS before connecting).
//! * full handshakes/s: `handshakers` closed-loop clients, no resumption.
//! * resumed handshakes/s: the same clients keeping their session tickets
//!   (TLS 1.3 PSK), each coming back at once; the share the server really
//!   resumed is printed next to it.
//! * returning clients: `returning` clients taking turns, so a client comes
//!   back after that many other handshakes, as a site's visitors do; shows
//!   whether the server's resumption state covers them.
//!
//! Every handshake also carries one proxied `GET /` (see `tls_load`), so CPU
//! per handshake is a whole short HTTPS connection. Contenders take turns
//! within each round, restarted every time; figures are medians over rounds.

use super::contenders::{echo_backends, installed, start_proxy_tls, Kind, Spread, TlsFiles};
use super::procs::{cpu_per_op, cpu_ticks, need_binaries, rss_of, scratch_dir, wait_port};
use super::report::{ratio, ChartGroup};
use super::sizes::Sizes;
use crate::load::{self, Latency};
use crate::tls_load::{self, Handshakes};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// µs of CPU per operation, (user, sys).
type Cpu = (f64, f64);

/// One contender in one round.
struct Row {
    kind: Kind,
    wss: Latency,
    wss_cpu: Cpu,
    rss_per_conn_kib: f64,
    full: (Handshakes, Cpu),
    resumed: (Handshakes, Cpu),
    returning: (Handshakes, Cpu),
}

/// The certificate (PEM files in `dir`) and its DER for the client.
fn make_cert(dir: &Path) -> anyhow::Result<(TlsFiles, Vec<u8>)> {
    let made = tls_load::bench_cert()?;
    let files = TlsFiles {
        cert: dir.join("bench-cert.pem"),
        key: dir.join("bench-key.pem"),
        cert_and_key: dir.join("bench-cert-and-key.pem"),
    };
    std::fs::write(&files.cert, &made.cert_pem)?;
    std::fs::write(&files.key, &made.key_pem)?;
    std::fs::write(
        &files.cert_and_key,
        format!("{}{}", made.cert_pem, made.key_pem),
    )?;
    Ok((files, made.der))
}

/// Measures every TLS-capable contender `rounds` times, taking turns.
async fn measure(
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
    s: &Sizes,
    rounds: usize,
) -> anyhow::Result<(Vec<Vec<Row>>, Vec<String>)> {
    let (files, der) = make_cert(dir)?;
    let full_client = vec![tls_load::client_config(&der, false)?];
    let wss_client = full_client[0].clone();
    let kinds: Vec<Kind> = installed()
        .into_iter()
        .filter(|k| *k != Kind::Direct)
        .collect();
    let secs = Duration::from_secs(s.tls_secs);
    let mut all = Vec::new();
    let mut notes = Vec::new();
    for round in 0..rounds {
        let mut rows = Vec::new();
        for &kind in &kinds {
            let (proc, addr) = match start_proxy_tls(
                kind,
                backends,
                dir,
                bin,
                Some(&files),
                Spread::ClientAddress,
            ) {
                Ok(Some(started)) => started,
                Ok(None) => continue,
                Err(e) => {
                    notes.push(format!("{}: {e:#}", kind.name()));
                    continue;
                }
            };
            if !wait_port(addr).await {
                notes.push(format!("{} did not start listening", kind.name()));
                continue;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Fresh clients for every contender: no tickets from another.
            let resuming = (0..s.returning_clients.max(s.handshakers))
                .map(|_| tls_load::client_config(&der, true))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let pids = proc.pids();
            let cpu = || cpu_ticks(&pids);

            // wss echo, with the RSS peak sampled while it runs.
            let rss = || pids.iter().copied().map(rss_of).sum::<u64>();
            let before = rss();
            let (peak, stop) = (
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicBool::new(false)),
            );
            let sampler = {
                let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        peak.fetch_max(pids.iter().copied().map(rss_of).sum(), Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let (wss, ticks) = load::echo_over(
                &[addr],
                s.tls_conns,
                100,
                secs,
                Some(wss_client.clone()),
                cpu,
            )
            .await;
            stop.store(true, Relaxed);
            let _ = sampler.await;
            let wss_cpu = cpu_per_op(ticks, wss.count);
            let rss_per_conn_kib =
                peak.load(Relaxed).saturating_sub(before) as f64 / s.tls_conns.max(1) as f64;

            let k = s.handshakers;
            let (full, t) =
                tls_load::handshakes(addr, k, (secs, usize::MAX), &full_client, cpu).await;
            let full_cpu = cpu_per_op(t, full.latency.count);

            let mine = &resuming[..k];
            tls_load::handshakes(addr, k, (secs * 4, 1), mine, || ()).await;
            let (resumed, t) = tls_load::handshakes(addr, k, (secs, usize::MAX), mine, cpu).await;
            let resumed_cpu = cpu_per_op(t, resumed.latency.count);

            let many = &resuming[..s.returning_clients];
            let pass = s.returning_clients.div_ceil(k);
            tls_load::handshakes(addr, k, (secs * 6, pass), many, || ()).await;
            let (returning, t) = tls_load::handshakes(addr, k, (secs, usize::MAX), many, cpu).await;
            let returning_cpu = cpu_per_op(t, returning.latency.count);
            drop(proc);
            eprintln!(
                "limpet-bench: TLS round {} {}: wss {:.0}/s, full {:.0}/s, resumed {:.0}/s ({} of {})",
                round + 1,
                kind.name(),
                wss.per_sec,
                full.latency.per_sec,
                resumed.latency.per_sec,
                resumed.resumed,
                resumed.latency.count
            );
            rows.push(Row {
                kind,
                wss,
                wss_cpu,
                rss_per_conn_kib,
                full: (full, full_cpu),
                resumed: (resumed, resumed_cpu),
                returning: (returning, returning_cpu),
            });
        }
        all.push(rows);
    }
    Ok((all, notes))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn share(h: &Handshakes) -> String {
    format!(
        "{:.0} %",
        100.0 * h.resumed as f64 / h.latency.count.max(1) as f64
    )
}

/// The scenario's markdown (medians, limpet / nginx, then every round)
/// and its charts.
fn render(
    rounds: &[Vec<Row>],
    notes: &[String],
    s: &Sizes,
    heading: &str,
) -> (String, Vec<ChartGroup>) {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n{heading} TLS edge: wss echo and TLS 1.3 handshakes\n"
    );
    let _ = writeln!(md, "Every contender terminates TLS 1.3 with the same self-signed ECDSA P-256 certificate (made at start) in front of the same plain echo backends; the client is rustls (X25519, TLS13_AES_128_GCM_SHA256, ALPN http/1.1). CPU is the contender's processes only, from `/proc/<pid>/stat`. A handshake is a whole short connection: handshake, one proxied `GET /`, close. {} handshaking clients in a closed loop; {} s per measurement; medians of {} round(s), contenders taking turns within a round.\n", s.handshakers, s.tls_secs, rounds.len());
    for note in notes {
        let _ = writeln!(md, "* not measured: {note}");
    }
    let kinds: Vec<Kind> = rounds
        .first()
        .map(|r| r.iter().map(|row| row.kind).collect())
        .unwrap_or_default();
    let med = |kind: Kind, f: &dyn Fn(&Row) -> f64| {
        median(
            rounds
                .iter()
                .flatten()
                .filter(|r| r.kind == kind)
                .map(f)
                .collect(),
        )
    };
    let _ = writeln!(
        md,
        "| measure | {} | limpet-proxy / nginx |\n|---|{}---|",
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(kinds.len())
    );
    type Metric<'a> = (String, &'a dyn Fn(&Row) -> f64, usize);
    let c = s.tls_conns;
    let metrics: Vec<Metric> = vec![
        (
            format!("wss echo, {c} connections: messages/s"),
            &|r| r.wss.per_sec,
            0,
        ),
        ("wss echo: p99 µs".into(), &|r| r.wss.p99_us as f64, 0),
        ("wss: CPU per message, user µs".into(), &|r| r.wss_cpu.0, 2),
        ("wss: CPU per message, sys µs".into(), &|r| r.wss_cpu.1, 2),
        (
            "wss: CPU per message, user + sys µs".into(),
            &|r| r.wss_cpu.0 + r.wss_cpu.1,
            2,
        ),
        (
            "wss: RSS per connection, KiB".into(),
            &|r| r.rss_per_conn_kib,
            1,
        ),
        ("full handshakes/s".into(), &|r| r.full.0.latency.per_sec, 0),
        (
            "full: p99 ms".into(),
            &|r| r.full.0.latency.p99_us as f64 / 1e3,
            1,
        ),
        (
            "full: CPU per handshake, user µs".into(),
            &|r| r.full.1 .0,
            0,
        ),
        (
            "full: CPU per handshake, sys µs".into(),
            &|r| r.full.1 .1,
            0,
        ),
        (
            "full: CPU per handshake, user + sys µs".into(),
            &|r| r.full.1 .0 + r.full.1 .1,
            0,
        ),
        (
            "resumed handshakes/s (clients back at once)".into(),
            &|r| r.resumed.0.latency.per_sec,
            0,
        ),
        (
            "resumed: share really resumed, %".into(),
            &|r| pct(&r.resumed.0),
            0,
        ),
        (
            "resumed: CPU per handshake, user + sys µs".into(),
            &|r| r.resumed.1 .0 + r.resumed.1 .1,
            0,
        ),
        (
            format!("{} returning clients: handshakes/s", s.returning_clients),
            &|r| r.returning.0.latency.per_sec,
            0,
        ),
        (
            format!(
                "{} returning clients: share resumed, %",
                s.returning_clients
            ),
            &|r| pct(&r.returning.0),
            0,
        ),
        (
            format!(
                "{} returning clients: CPU per handshake, user + sys µs",
                s.returning_clients
            ),
            &|r| r.returning.1 .0 + r.returning.1 .1,
            0,
        ),
    ];
    for (name, f, digits) in &metrics {
        let values: Vec<f64> = kinds.iter().map(|k| med(*k, f)).collect();
        let of = |k: Kind| kinds.iter().position(|x| *x == k).map(|i| values[i]);
        let vs = match (of(Kind::Limpet), of(Kind::Nginx)) {
            (Some(l), Some(n)) => ratio(l, n),
            _ => "–".into(),
        };
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
        let _ = writeln!(md, "| {name} | {} | {vs} |", cells.join(" | "));
    }
    let _ = writeln!(md, "\nEvery round (errors in brackets: failed connections or handshakes):\n\n| round | contender | wss msgs/s | wss CPU µs/msg (user + sys) | RSS KiB/conn | full hs/s | full CPU µs/hs | resumed hs/s (resumed) | resumed CPU µs/hs | {} returning (resumed) |\n|---|---|---|---|---|---|---|---|---|---|", s.returning_clients);
    for (i, rows) in rounds.iter().enumerate() {
        for r in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} ({}) | {:.2} + {:.2} | {:.1} | {:.0} ({}) | {:.0} + {:.0} | {:.0} ({}) | {:.0} + {:.0} | {:.0}/s ({}) |",
                i + 1,
                r.kind.name(),
                r.wss.per_sec,
                r.wss.errors,
                r.wss_cpu.0,
                r.wss_cpu.1,
                r.rss_per_conn_kib,
                r.full.0.latency.per_sec,
                r.full.0.latency.errors,
                r.full.1 .0,
                r.full.1 .1,
                r.resumed.0.latency.per_sec,
                share(&r.resumed.0),
                r.resumed.1 .0,
                r.resumed.1 .1,
                r.returning.0.latency.per_sec,
                share(&r.returning.0),
            );
        }
    }
    let chart = |title: String, f: &dyn Fn(&Row) -> f64| -> ChartGroup {
        (
            title,
            kinds
                .iter()
                .map(|k| (k.name().to_string(), med(*k, f)))
                .collect(),
        )
    };
    let charts = vec![
        chart(format!("wss echo, {c} connections: messages/s"), &|r| {
            r.wss.per_sec
        }),
        chart("wss echo: CPU ns per message (user + sys)".into(), &|r| {
            (r.wss_cpu.0 + r.wss_cpu.1) * 1e3
        }),
        chart("TLS 1.3 full handshakes/s".into(), &|r| {
            r.full.0.latency.per_sec
        }),
    ];
    (md, charts)
}

fn pct(h: &Handshakes) -> f64 {
    100.0 * h.resumed as f64 / h.latency.count.max(1) as f64
}

/// Scenario 6 inside `limpet-bench run`, over the run's backends.
pub(crate) async fn run(
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
    s: &Sizes,
) -> anyhow::Result<(String, Vec<ChartGroup>)> {
    let (rounds, notes) = measure(backends, dir, bin, s, s.repeat).await?;
    Ok(render(&rounds, &notes, s, "## 6."))
}

/// Scenario 6 alone (`limpet-bench tls`): its own backends, `rounds`
/// rounds, the report written to `out`.
pub(crate) async fn standalone(
    quick: bool,
    rounds: Option<usize>,
    out: &Path,
    bin: &Path,
) -> anyhow::Result<()> {
    let s = Sizes::new(quick);
    need_binaries(bin, &["limpet-proxy"])?;
    let dir = scratch_dir("limpet-bench-tls")?;
    let me = std::env::current_exe()?;
    let (backends, backend_procs) = echo_backends(&me).await?;
    let measured = measure(&backends, &dir, bin, &s, rounds.unwrap_or(s.repeat).max(1)).await;
    drop(backend_procs);
    let _ = std::fs::remove_dir_all(&dir);
    let (rounds, notes) = measured?;
    let mut md = super::report::header(quick, rounds.len());
    md = md.replacen("limpet-bench run", "limpet-bench tls", 1);
    md.push_str(&render(&rounds, &notes, &s, "##").0);
    super::report::write(out, &md)
}
