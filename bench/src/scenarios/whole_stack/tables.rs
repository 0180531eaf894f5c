//! Scenario 5's tables and charts: a row per rate step, the summary of
//! the goals against what each stack measured, and the bars for the SVG.
//! Apart from the measuring (`whole_stack`), which only collects rows.

use super::{Row, Run};
use crate::scenarios::report::ChartGroup;
use std::fmt::Write as _;

/// One step's table row.
pub(super) fn table_row(name: &str, r: &Row) -> String {
    let missing = if r.expected > 0.0 {
        format!(
            "{:.1}%",
            (100.0 * (1.0 - r.lat.per_sec / r.expected)).max(0.0)
        )
    } else {
        "–".to_string()
    };
    let status = if !r.dead.is_empty() {
        format!("crashed: {}", r.dead.join(", "))
    } else if r.saturated() {
        "saturated".to_string()
    } else {
        "ok".to_string()
    };
    let late = if r.stale > 0 {
        format!(" ({} after their step)", r.stale)
    } else {
        String::new()
    };
    let shed = match &r.shed {
        None => "not counted".to_string(),
        Some(parts) if parts.is_empty() => "0".to_string(),
        Some(parts) => {
            let each: Vec<String> = parts.iter().map(|(p, n)| format!("{p} {n:.0}")).collect();
            format!("{:.0} ({})", r.shed_total().unwrap_or(0.0), each.join(", "))
        }
    };
    let rate = if r.rate > 0.0 {
        format!("{}", r.rate)
    } else {
        "0 (all idle)".to_string()
    };
    format!(
        "| {name} | {rate} | {:.0} | {:.0}{late} | {missing} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {shed} | {} | {:.1} MiB | {status} |",
        r.expected,
        r.lat.per_sec,
        r.lat.p50_us as f64 / 1000.0,
        r.lat.p99_us as f64 / 1000.0,
        r.cpu_us.map_or("–".to_string(), |c| format!("{c:.1}")),
        r.stack_cores,
        r.generator_cores,
        r.lost,
        r.rss_kib as f64 / 1024.0,
    )
}

/// A summary row of RSS per client against the 1/8 goal, then the same
/// by process.
fn rss_rows(
    md: &mut String,
    label: &str,
    (limpet, limpet_by): (f64, &[(String, f64)]),
    (sio, sio_by): (f64, &[(String, f64)]),
) {
    let _ = writeln!(
        md,
        "| {label} | {limpet:.1} KiB | {sio:.1} KiB | {:.3} | ≤ 0.125 |",
        limpet / sio.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| the same by process | {} | {} | | |",
        parts(limpet_by, " KiB"),
        parts(sio_by, " KiB")
    );
}

/// `name a, name b` with one decimal.
pub(super) fn parts(of: &[(String, f64)], unit: &str) -> String {
    of.iter()
        .map(|(name, v)| format!("{name} {v:.1}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The goals of the scenario against what was measured.
pub(super) fn summary(runs: &[Run]) -> String {
    let mut md = String::from(
        "\n| measure | limpet | socket.io stack | limpet / socket.io | goal |\n|---|---|---|---|---|\n",
    );
    let (Some(limpet), Some(sio)) = (runs.first(), runs.get(1)) else {
        return String::new();
    };
    let _ = writeln!(
        md,
        "| clients connected (failed) | {} ({}) | {} ({}) | | |",
        limpet.joined, limpet.failed, sio.joined, sio.failed
    );
    rss_rows(
        &mut md,
        "RSS per connected client (all growth over all clients)",
        (limpet.rss_per_client_kib, &limpet.rss_per_client_by_name),
        (sio.rss_per_client_kib, &sio.rss_per_client_by_name),
    );
    let range = |run: &Run| {
        format!(
            "{:.1}–{:.1} MiB",
            run.rss_range_kib.0 as f64 / 1024.0,
            run.rss_range_kib.1 as f64 / 1024.0
        )
    };
    let _ = writeln!(
        md,
        "| stack RSS with every client connected, lowest–highest of the samples (the median is used above) | {} | {} | | |",
        range(limpet),
        range(sio)
    );
    rss_rows(
        &mut md,
        &format!(
            "RSS per client past the first {} (one more client)",
            limpet.warm
        ),
        (limpet.marginal_rss_kib, &limpet.marginal_rss_by_name),
        (sio.marginal_rss_kib, &sio.marginal_rss_by_name),
    );
    let fmt_rate = |run: &Run| match (run.saturation(), run.rows.last()) {
        (None, _) => "below the first step".to_string(),
        (Some(r), Some(last)) if !last.saturated() => format!("{r} or more (not reached)"),
        (Some(r), _) => format!("{r}"),
    };
    let _ = writeln!(
        md,
        "| saturation: highest rate kept up with (msgs/s per active client) | {} | {} | | |",
        fmt_rate(limpet),
        fmt_rate(sio)
    );
    if let Some((a, b)) = common_rate(runs).and_then(|r| Some((limpet.at(r)?, sio.at(r)?))) {
        if let (Some(x), Some(y)) = (a.cpu_us, b.cpu_us) {
            let _ = writeln!(
                md,
                "| stack CPU per delivery at {} msgs/s per active client | {x:.1} µs | {y:.1} µs | {:.3} | ≤ 0.2 |",
                a.rate,
                x / y.max(1e-9)
            );
            let _ = writeln!(
                md,
                "| the same by process | {} | {} | | |",
                parts(&a.cpu_us_by_name, " µs"),
                parts(&b.cpu_us_by_name, " µs")
            );
        }
    }
    if let Some(half) = limpet.saturation().and_then(|s| limpet.at(s / 2.0)) {
        let sio_half = sio.at(half.rate).map_or("–".to_string(), |r| {
            format!("{:.1} ms", r.lat.p99_us as f64 / 1000.0)
        });
        let _ = writeln!(
            md,
            "| p99 at half limpet's saturation ({} msgs/s per active client) | {:.1} ms | {sio_half} | | < 10 ms |",
            half.rate,
            half.lat.p99_us as f64 / 1000.0
        );
    }
    let past = |run: &Run| {
        run.rows
            .last()
            .filter(|r| r.saturated())
            .map_or("–".to_string(), |r| {
                format!(
                    "at {}: p99 {:.1} ms, {:.0} of {:.0}/s delivered, drops counted: {}",
                    r.rate,
                    r.lat.p99_us as f64 / 1000.0,
                    r.lat.per_sec,
                    r.expected,
                    r.shed_total()
                        .map_or("not counted".to_string(), |n| format!("{n:.0}"))
                )
            })
    };
    let _ = writeln!(
        md,
        "| past saturation | {} | {} | | bounded p99, counted drops |",
        past(limpet),
        past(sio)
    );
    md
}

/// Bars for the SVG: CPU per delivery at the highest rate both stacks
/// kept up with, and RSS per client.
pub(super) fn charts(runs: &[Run]) -> Vec<ChartGroup> {
    let short = |run: &Run| {
        if run.name.starts_with("limpet") {
            "limpet stack"
        } else {
            "socket.io stack"
        }
        .to_string()
    };
    let mut cpu = Vec::new();
    if let Some(rate) = common_rate(runs) {
        for run in runs {
            if let Some(us) = run.at(rate).and_then(|r| r.cpu_us) {
                cpu.push((short(run), us));
            }
        }
    }
    vec![
        ("whole stack: CPU µs per delivered message".to_string(), cpu),
        (
            "whole stack: RSS KiB per connected client".to_string(),
            runs.iter()
                .map(|run| (short(run), run.rss_per_client_kib))
                .collect(),
        ),
    ]
}

/// The highest rate both stacks kept up with: CPU per delivery is
/// compared there, as at lower rates the idle clients' heartbeats weigh
/// more.
fn common_rate(runs: &[Run]) -> Option<f64> {
    runs.iter()
        .map(Run::saturation)
        .try_fold(f64::INFINITY, |low, r| r.map(|r| low.min(r)))
        .filter(|r| r.is_finite())
}
