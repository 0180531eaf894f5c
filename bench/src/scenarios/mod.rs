//! The benchmark runner: starts each contender in turn over the same
//! backends, drives the same load, reads resident memory from `/proc`, and
//! writes `latest.md` (tables with ratios to the baseline) and `latest.svg`.
//! Speed is only ever printed here, never asserted.
//!
//! `run` is the order of the report; each scenario lives in its own module
//! and hands back its markdown and chart pieces. Shared plumbing: `procs`
//! (processes, ports, memory), `contenders` (the proxies and the echo
//! backends), `report` (tables, medians, SVG), `sizes` (full or quick).
//! Scenario 6 (`tls_edge`) runs the proxies again behind TLS.

mod broker;
mod contenders;
mod idle;
pub(crate) mod procs;
mod proxies;
mod report;
mod sizes;
pub(crate) mod stack;
mod tls_edge;
mod whole_stack;

use sizes::Sizes;
use std::fmt::Write as _;
use std::path::Path;

/// Scenario 4 on its own (`limpet-bench broker`).
pub async fn broker(
    quick: bool,
    rounds: Option<usize>,
    out: &Path,
    bin: &Path,
) -> anyhow::Result<()> {
    broker::standalone(quick, rounds, out, bin).await
}

/// Scenario 6 on its own (`limpet-bench tls`).
pub async fn tls(quick: bool, rounds: Option<usize>, out: &Path, bin: &Path) -> anyhow::Result<()> {
    tls_edge::standalone(quick, rounds, out, bin).await
}

/// Scenario 5 on its own (`limpet-bench stack`).
pub async fn stack(
    quick: bool,
    clients: Option<usize>,
    rates: &[f64],
    limpet_only: bool,
    out: &Path,
    bin: &Path,
) -> anyhow::Result<()> {
    whole_stack::standalone(quick, clients, rates, limpet_only, out, bin).await
}

pub async fn run(quick: bool, out: &Path, bin: &Path) -> anyhow::Result<()> {
    let s = Sizes::new(quick);
    procs::need_binaries(bin, &["limpet-proxy", "limpet-broker", "limpet-node"])?;
    let dir = procs::scratch_dir("limpet-bench")?;
    let me = std::env::current_exe()?;
    let started = std::time::Instant::now();
    let mut md = report::header(quick, s.repeat);
    let (backends, backend_procs) = contenders::echo_backends(&me).await?;
    let kinds = contenders::installed();

    // 1 + 3 are measured together (one proxy start each), 2 in between.
    let runs = proxies::measure(&kinds, &backends, &dir, bin, &s).await;
    let (overhead_md, echo_charts) = proxies::overhead(&runs, s.many_conns);
    md.push_str(&overhead_md);
    md.push_str(&idle::run(&kinds, &backends, &dir, bin, s.idle_conns).await?);
    let (http_md, http_charts) = proxies::plain_http(&runs);
    md.push_str(&http_md);
    let (broker_md, broker_charts) = broker::run(&dir, bin, &s).await?;
    md.push_str(&broker_md);
    let (stack_md, stack_charts) = whole_stack::run(quick, None, &[], false, &dir, bin, &me).await;
    md.push_str(&stack_md);
    let (tls_md, tls_charts) = tls_edge::run(&backends, &dir, bin, &s).await?;
    md.push_str(&tls_md);
    let _ = writeln!(
        md,
        "\nTotal run time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );

    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("latest.md"), &md)?;
    std::fs::write(
        out.join("latest.svg"),
        report::svg(
            &[
                echo_charts,
                http_charts,
                broker_charts,
                stack_charts,
                tls_charts,
            ]
            .concat(),
        ),
    )?;
    println!("{md}");
    eprintln!(
        "limpet-bench: wrote {} and latest.svg",
        out.join("latest.md").display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(backend_procs);
    Ok(())
}
