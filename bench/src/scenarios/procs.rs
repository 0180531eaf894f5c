//! Shared process plumbing for the scenarios: start a contender with its
//! output discarded and kill it on drop, pick a free loopback port, wait
//! until something listens there, read resident memory from `/proc`, and
//! ask the system which third-party tools (and versions) are installed.
//! Kept apart so every scenario starts and measures processes the same way.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A limpet binary of `bin` with warnings only in its log.
/// `LIMPET_BENCH_GLIBC_TUNABLES` gives it that `GLIBC_TUNABLES`, to
/// measure an allocator setting against the default.
pub(crate) fn limpet(bin: &Path, name: &str) -> Command {
    let mut cmd = Command::new(bin.join(name));
    cmd.env("RUST_LOG", "warn");
    if let Ok(tunables) = std::env::var("LIMPET_BENCH_GLIBC_TUNABLES") {
        cmd.env("GLIBC_TUNABLES", tunables);
    }
    cmd
}

/// Every bench client connects from 127.0.0.1, so the node's per-address
/// limits (meant for one hostile host) would refuse most of the load.
pub(crate) const BENCH_NODE_ADDRESS_LIMITS: &str =
    "max_connections_per_address = 100000\naddress_rate_per_second = 1000000\naddress_rate_burst = 1000000\n";

pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    /// Resident memory of the process and its children, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(rss_of).sum()
    }

    /// The process and its direct children.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut pids = vec![pid];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat =
                    std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(pid) {
                    pids.push(child);
                }
            }
        }
        pids
    }
}

impl Drop for Proc {
    /// Kills the process and its children: nginx's workers outlive a
    /// killed master otherwise, and would hold the machine's CPU and ports
    /// for every later run.
    fn drop(&mut self) {
        let children: Vec<String> = self
            .pids()
            .into_iter()
            .skip(1)
            .map(|p| p.to_string())
            .collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !children.is_empty() {
            let _ = Command::new("kill")
                .arg("-9")
                .args(&children)
                .stderr(Stdio::null())
                .status();
        }
        let _ = &self.name;
    }
}

/// User and system CPU time of `pids` so far, in clock ticks (1/100 s on
/// Linux), from `/proc/<pid>/stat`.
pub(crate) fn cpu_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(u, s), pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: state is the 1st, utime the 12th.
        let mut rest = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .skip(11);
        let mut next = || rest.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (du, ds) = (next(), next());
        (u + du, s + ds)
    })
}

/// Clock ticks per second of [`cpu_ticks`] (`getconf CLK_TCK`), asked
/// once per run.
pub(crate) fn ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU µs per operation (user, sys) between two [`cpu_ticks`] readings.
pub(crate) fn cpu_per_op(ticks: [(u64, u64); 2], ops: u64) -> (f64, f64) {
    let tick_us = 1e6 / ticks_per_sec();
    let n = ops.max(1) as f64;
    (
        ticks[1].0.saturating_sub(ticks[0].0) as f64 * tick_us / n,
        ticks[1].1.saturating_sub(ticks[0].1) as f64 * tick_us / n,
    )
}

/// Resident memory of one process, in KiB (`VmRSS`).
pub(crate) fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A redis-server on loopback at `addr` with persistence off: the contender
/// in the broker comparison and the backplane of the socket.io stack.
///
/// Protected mode off: the load generator connects from 127.0.0.1–8
/// ([`crate::load::SOURCES`]), and Redis 7's protected mode answers
/// `-DENIED` to every loopback address but 127.0.0.1, which silently cut
/// seven in eight fan-out subscribers from Redis's figures.
pub(crate) fn redis_server(addr: SocketAddr) -> anyhow::Result<Proc> {
    Proc::spawn(
        "redis-server",
        Command::new("redis-server").args([
            "--port",
            &addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
    )
}

/// Fails unless every one of `names` is in `bin` (the release binaries).
pub(crate) fn need_binaries(bin: &Path, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        anyhow::ensure!(
            bin.join(name).exists(),
            "{} missing: build with `cargo build --release`",
            bin.join(name).display()
        );
    }
    Ok(())
}

/// A fresh scratch folder for one run's configs and files.
pub(crate) fn scratch_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A fresh loopback address on a free port, for a process about to start.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(format!("127.0.0.1:{}", free_port()).parse()?)
}

pub(crate) async fn wait_port(addr: SocketAddr) -> bool {
    // Up to 30 s: a Node.js process on a busy 2-core machine can be slow to listen.
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

pub(crate) fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| "not installed".into())
}
