//! The benchmark runner: starts each contender in turn over the same
//! backends, drives the same load, reads resident memory from `/proc`, and
//! writes `latest.md` (tables with ratios to the baseline) and `latest.svg`.
//! Speed is only ever printed here, never asserted.

use crate::load::{self, Latency};
use anyhow::Context;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every bench client connects from 127.0.0.1, so the node's per-address
/// limits (meant for one hostile host) would refuse most of the load.
const BENCH_NODE_ADDRESS_LIMITS: &str =
    "max_connections_per_address = 100000\naddress_rate_per_second = 1000000\naddress_rate_burst = 1000000\n";

struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
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
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let mut total = rss_of(pid);
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
                    total += rss_of(child);
                }
            }
        }
        total
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn wait_port(addr: SocketAddr) -> bool {
    // Up to 30 s: a Node.js process on a busy 2-core machine can be slow to listen.
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn version(cmd: &str, args: &[&str]) -> String {
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Limpet,
    Nginx,
    Haproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Limpet => "limpet-proxy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// Starts a proxy contender in front of `backends`; `None` for direct.
fn start_proxy(
    kind: Kind,
    backends: &[SocketAddr],
    dir: &Path,
    bin: &Path,
) -> anyhow::Result<Option<(Proc, SocketAddr)>> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let servers = |f: &dyn Fn(usize, &SocketAddr) -> String| {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| f(i, b))
            .collect::<String>()
    };
    let proc = match kind {
        Kind::Direct => return Ok(None),
        Kind::Limpet => {
            let cfg = format!(
                "[[listen]]\nbind = \"{addr}\"\n[admin]\nenabled = false\n[limits]\nmax_connections = 100000\n[[pool]]\nname = \"b\"\naffinity = \"ip_hash\"\n{}[[route]]\npool = \"b\"\n",
                servers(&|i, b| format!("[[pool.backend]]\nid = \"b{i}\"\naddress = \"{b}\"\n"))
            );
            let path = dir.join("limpet-proxy.toml");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "limpet-proxy",
                Command::new(bin.join("limpet-proxy"))
                    .arg("--config")
                    .arg(&path)
                    .env("RUST_LOG", "warn"),
            )?
        }
        Kind::Nginx => {
            let d = dir.display();
            let cfg = format!(
                "user root;\nworker_processes auto;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  upstream nodes {{ ip_hash; {} keepalive 64; }}\n  server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://nodes;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
                servers(&|_, b| format!("server {b};"))
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "nginx",
                Command::new("nginx")
                    .arg("-c")
                    .arg(&path)
                    .args(["-g", "daemon off;"]),
            )?
        }
        Kind::Haproxy => {
            let cfg = format!(
                "global\n  maxconn 9600\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\nfrontend fe\n  bind {addr}\n  default_backend be\nbackend be\n  balance source\n{}",
                servers(&|i, b| format!("  server b{i} {b}\n"))
            );
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, cfg)?;
            Proc::spawn(
                "haproxy",
                Command::new("haproxy").arg("-f").arg(&path).arg("-db"),
            )?
        }
    };
    Ok(Some((proc, addr)))
}

/// One echo table: a row per contender, rate as a ratio to the first row.
fn latency_table(md: &mut String, heading: &str, rate: &str, rows: &[(Kind, Latency)]) {
    let base = rows.first().map_or(0.0, |(_, l)| l.per_sec);
    let _ = writeln!(
        md,
        "\n### {heading}\n\n| contender | {rate} | ratio | p50 µs | p90 µs | p99 µs | p99.9 µs | round trips | errors |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (k, l) in rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            k.name(),
            l.per_sec,
            ratio(l.per_sec, base),
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.count,
            l.errors
        );
    }
}

fn median_by(mut runs: Vec<Latency>) -> Latency {
    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    runs.get(runs.len() / 2).cloned().unwrap_or_default()
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "–".into()
    }
}

struct Sizes {
    repeat: usize,
    single_secs: u64,
    many_conns: usize,
    many_secs: u64,
    idle_conns: usize,
    wrk_secs: u64,
    publish_n: usize,
    fanout_msgs: usize,
    wide_channels: usize,
}

pub async fn run(quick: bool, out: &Path, bin: &Path) -> anyhow::Result<()> {
    let s = if quick {
        Sizes {
            repeat: 1,
            single_secs: 2,
            many_conns: 100,
            many_secs: 2,
            idle_conns: 1000,
            wrk_secs: 2,
            publish_n: 200_000,
            fanout_msgs: 2_000,
            wide_channels: 100,
        }
    } else {
        Sizes {
            repeat: 3,
            single_secs: 4,
            many_conns: 1000,
            many_secs: 5,
            idle_conns: 9000,
            wrk_secs: 5,
            publish_n: 1_000_000,
            fanout_msgs: 20_000,
            wide_channels: 1000,
        }
    };
    for b in ["limpet-proxy", "limpet-broker", "limpet-node"] {
        anyhow::ensure!(
            bin.join(b).exists(),
            "{} missing: build with `cargo build --release`",
            bin.join(b).display()
        );
    }
    let dir = std::env::temp_dir().join(format!("limpet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let me = std::env::current_exe()?;
    let started = std::time::Instant::now();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Limpet benchmarks{}\n",
        if quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(md, "Generated by `limpet-bench run{}`. Every contender ran on this machine in this run, one after another, over the same backends; ratios are to the baseline of each table. Medians of {} run(s).\n", if quick { " --quick" } else { "" }, s.repeat);
    let _ = writeln!(
        md,
        "* date: {}",
        Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "* machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version("uname", &["-sr"])
    );
    let _ = writeln!(
        md,
        "* versions: limpet {}, {}, {}, {}, {}, {}\n",
        env!("CARGO_PKG_VERSION"),
        version("nginx", &["-v"]),
        version("haproxy", &["-v"]),
        version("redis-server", &["--version"]),
        version("wrk", &["-v"]),
        version("rustc", &["-V"])
    );

    // Three echo backends, shared by every proxy contender.
    let mut backends = Vec::new();
    let mut backend_procs = Vec::new();
    for i in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        backend_procs.push(Proc::spawn(
            &format!("echo-{i}"),
            Command::new(&me).args(["echo-server", "--addr", &addr.to_string()]),
        )?);
        anyhow::ensure!(wait_port(addr).await, "echo backend {addr} did not start");
        backends.push(addr);
    }
    let kinds: Vec<Kind> = [Kind::Direct, Kind::Limpet, Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .filter(|k| match k {
            Kind::Nginx => have("nginx"),
            Kind::Haproxy => have("haproxy"),
            _ => true,
        })
        .collect();

    // 1 + 3: proxy overhead and plain HTTP.
    let mut single = Vec::new();
    let mut many = Vec::new();
    let mut http = Vec::new();
    let mut failed_to_start = Vec::new();
    for &kind in &kinds {
        let started = match start_proxy(kind, &backends, &dir, bin) {
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
            None => backends.clone(),
        };
        let mut one = Vec::new();
        let mut lots = Vec::new();
        for _ in 0..s.repeat {
            one.push(load::echo(&targets[..1], 1, 100, Duration::from_secs(s.single_secs)).await);
            lots.push(
                load::echo(
                    &targets,
                    s.many_conns,
                    100,
                    Duration::from_secs(s.many_secs),
                )
                .await,
            );
        }
        single.push((kind, median_by(one)));
        many.push((kind, median_by(lots)));
        if have("wrk") {
            http.push((kind, wrk(targets[0], s.wrk_secs)));
        }
        eprintln!(
            "limpet-bench: {} done ({:?})",
            kind.name(),
            started.as_ref().map(|(_, a)| *a)
        );
    }
    for note in &failed_to_start {
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
        &single,
    );
    latency_table(
        &mut md,
        &format!("{} connections (saturation)", s.many_conns),
        "messages/s",
        &many,
    );

    // 2: idle capacity.
    let _ = writeln!(md, "\n## 2. Idle capacity: {} idle WebSocket connections\n\n| process | RSS before | RSS with connections | per connection | established |\n|---|---|---|---|---|", s.idle_conns);
    for &kind in kinds.iter().filter(|k| **k != Kind::Direct) {
        let Ok(Some((proc, addr))) = start_proxy(kind, &backends, &dir, bin) else {
            continue;
        };
        if !wait_port(addr).await {
            let _ = writeln!(md, "| {} | did not start | | | |", kind.name());
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = proc.rss_kib();
        let (held, failed) = load::idle(addr, "/idle", s.idle_conns).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = proc.rss_kib();
        let n = held.len().max(1) as f64;
        let _ = writeln!(
            md,
            "| {} | {} KiB | {} KiB | {:.1} KiB | {} ({} failed) |",
            kind.name(),
            before,
            after,
            after.saturating_sub(before) as f64 / n,
            held.len(),
            failed
        );
        drop(held);
    }
    {
        let broker_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let node_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        std::fs::write(
            dir.join("b.toml"),
            format!("bind = [\"{broker_addr}\"]\n[metrics]\nenabled = false\n"),
        )?;
        std::fs::write(dir.join("n.toml"), format!("id = \"bench\"\nbind = \"{node_addr}\"\nbroker = [\"redis://{broker_addr}/\"]\n[limits]\nmax_connections = 100000\n{BENCH_NODE_ADDRESS_LIMITS}"))?;
        let _broker = Proc::spawn(
            "limpet-broker",
            Command::new(bin.join("limpet-broker"))
                .arg("--config")
                .arg(dir.join("b.toml")),
        )?;
        wait_port(broker_addr).await;
        let node = Proc::spawn(
            "limpet-node",
            Command::new(bin.join("limpet-node"))
                .arg("--config")
                .arg(dir.join("n.toml"))
                .env("RUST_LOG", "warn"),
        )?;
        wait_port(node_addr).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = node.rss_kib();
        let target: SocketAddr = node_addr;
        let (held, failed) = load::idle(target, "/ws", s.idle_conns).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = node.rss_kib();
        let _ = writeln!(
            md,
            "| limpet-node (clients directly) | {} KiB | {} KiB | {:.1} KiB | {} ({} failed) |",
            before,
            after,
            after.saturating_sub(before) as f64 / held.len().max(1) as f64,
            held.len(),
            failed
        );
    }

    // 3: plain HTTP.
    if !http.is_empty() {
        let base = http.first().map_or(0.0, |(_, (rps, _))| *rps);
        let _ = writeln!(md, "\n## 3. Plain HTTP (wrk, 2 threads, 50 keep-alive connections)\n\n| contender | requests/s | ratio | p99 |\n|---|---|---|---|");
        for (k, (rps, p99)) in &http {
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

    // 4: broker.
    let _ = writeln!(md, "\n## 4. Broker: limpet-broker vs redis-server\n\n| measurement | redis-server | limpet-broker | ratio |\n|---|---|---|---|");
    let mut chart = Vec::new();
    if have("redis-server") && have("redis-benchmark") {
        let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let rb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
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
        let _r = Proc::spawn(
            "redis-server",
            Command::new("redis-server").args([
                "--port",
                &rb.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        )?;
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
    // 5: the whole stack.
    whole_stack(&mut md, quick, &dir, bin).await;
    let _ = writeln!(
        md,
        "\nTotal run time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );

    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("latest.md"), &md)?;
    let groups = vec![
        (
            format!("WebSocket echo, {} connections: messages/s", s.many_conns),
            many.iter()
                .map(|(k, l)| (k.name().to_string(), l.per_sec))
                .collect(),
        ),
        (
            "plain HTTP (wrk): requests/s".to_string(),
            http.iter()
                .map(|(k, (rps, _))| (k.name().to_string(), *rps))
                .collect(),
        ),
        ("broker fan-out 1 → 100: delivered/s".to_string(), chart),
    ];
    std::fs::write(out.join("latest.svg"), svg(&groups))?;
    println!("{md}");
    eprintln!(
        "limpet-bench: wrote {} and latest.svg",
        out.join("latest.md").display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(backend_procs);
    Ok(())
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

/// Horizontal bar charts, one per group, each on its own scale; no dependencies.
fn svg(groups: &[(String, Vec<(String, f64)>)]) -> String {
    let (w, row) = (760.0, 30.0);
    let h: f64 = groups
        .iter()
        .map(|(_, bars)| 44.0 + row * bars.len() as f64)
        .sum::<f64>()
        + 16.0;
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"#0f172a\"/>\n");
    let mut y = 8.0;
    for (title, bars) in groups {
        let max = bars.iter().map(|(_, v)| *v).fold(1.0, f64::max);
        let _ = writeln!(
            out,
            "<text x=\"16\" y=\"{}\" fill=\"#e2e8f0\" font-size=\"15\">{title}</text>",
            y + 22.0
        );
        y += 34.0;
        for (label, v) in bars {
            let len = (v / max) * (w - 300.0);
            let color = if label.starts_with("limpet") {
                "#38bdf8"
            } else {
                "#94a3b8"
            };
            let _ = writeln!(out, "<text x=\"16\" y=\"{}\" fill=\"#e2e8f0\">{label}</text><rect x=\"170\" y=\"{y}\" width=\"{len:.1}\" height=\"20\" rx=\"4\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#e2e8f0\">{v:.0}</text>", y + 15.0, 176.0 + len, y + 15.0);
            y += row;
        }
        y += 10.0;
    }
    out.push_str("</svg>\n");
    out
}

/// A running stack for scenario 5: its processes and the address clients use.
pub(crate) struct Stack {
    pub name: &'static str,
    procs: Vec<Proc>,
    pub entry: SocketAddr,
    pub proto: load::RoomProto,
    /// limpet-node ports (their `/metrics`); empty for other stacks.
    pub nodes: Vec<SocketAddr>,
}

impl Stack {
    pub fn rss_kib(&self) -> u64 {
        self.procs.iter().map(Proc::rss_kib).sum()
    }

    /// Names of processes that have exited.
    pub fn dead(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| matches!(p.child.try_wait(), Ok(Some(_))).then(|| p.name.clone()))
            .collect()
    }
}

/// `node_limits` is appended to each node's `[limits]`.
pub(crate) async fn limpet_stack(
    dir: &Path,
    bin: &Path,
    name: &'static str,
    node_limits: &str,
) -> anyhow::Result<Stack> {
    let broker: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    std::fs::write(
        dir.join("s5-broker.toml"),
        format!("bind = [\"{broker}\"]\n[metrics]\nenabled = false\n"),
    )?;
    let mut procs = vec![Proc::spawn(
        "limpet-broker",
        Command::new(bin.join("limpet-broker"))
            .arg("--config")
            .arg(dir.join("s5-broker.toml"))
            .env("RUST_LOG", "warn"),
    )?];
    wait_port(broker).await;
    let mut backends = String::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let path = dir.join(format!("s5-node{i}.toml"));
        std::fs::write(&path, format!("id = \"n{i}\"\nbind = \"{addr}\"\nbroker = [\"redis://{broker}/\"]\n[limits]\nmax_connections = 100000\nrate_per_second = 1000\nrate_burst = 1000\n{BENCH_NODE_ADDRESS_LIMITS}{node_limits}"))?;
        procs.push(Proc::spawn(
            "limpet-node",
            Command::new(bin.join("limpet-node"))
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "warn"),
        )?);
        wait_port(addr).await;
        nodes.push(addr);
        let _ = write!(
            backends,
            "[[pool.backend]]\nid = \"n{i}\"\naddress = \"{addr}\"\n"
        );
    }
    let entry: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let path = dir.join("s5-proxy.toml");
    std::fs::write(&path, format!("[[listen]]\nbind = \"{entry}\"\n[admin]\nenabled = false\n[limits]\nmax_connections = 100000\n[[pool]]\nname = \"nodes\"\naffinity = \"none\"\n{backends}[[route]]\npool = \"nodes\"\n"))?;
    procs.push(Proc::spawn(
        "limpet-proxy",
        Command::new(bin.join("limpet-proxy"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn"),
    )?);
    anyhow::ensure!(wait_port(entry).await, "limpet-proxy did not start");
    // Let the nodes see each other before rooms span them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(Stack {
        name,
        procs,
        entry,
        proto: load::RoomProto::Limpet,
        nodes,
    })
}

pub(crate) async fn socketio_stack(dir: &Path) -> anyhow::Result<Stack> {
    let fixtures = std::env::current_dir()?.join("tests/socketio");
    anyhow::ensure!(
        fixtures
            .join("node_modules/@socket.io/redis-adapter")
            .exists(),
        "npm fixtures missing: run make test-deps"
    );
    anyhow::ensure!(
        have("nginx") && have("redis-server") && have("node"),
        "nginx, redis-server or node missing"
    );
    let redis: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut procs = vec![Proc::spawn(
        "redis-server",
        Command::new("redis-server").args([
            "--port",
            &redis.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
    )?];
    wait_port(redis).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        procs.push(Proc::spawn(
            "socket.io",
            Command::new("node")
                .arg(fixtures.join("room-server.js"))
                .arg(addr.port().to_string())
                .arg(format!("redis://{redis}/")),
        )?);
        anyhow::ensure!(wait_port(addr).await, "socket.io node did not start");
        nodes.push(addr);
    }
    let (nginx, entry) = start_proxy(Kind::Nginx, &nodes, dir, Path::new("."))?
        .ok_or_else(|| anyhow::anyhow!("nginx"))?;
    procs.push(nginx);
    anyhow::ensure!(wait_port(entry).await, "nginx did not start");
    Ok(Stack {
        name: "nginx + 3 socket.io + Redis adapter + Redis",
        procs,
        entry,
        proto: load::RoomProto::SocketIo,
        nodes: Vec::new(),
    })
}

async fn whole_stack(md: &mut String, quick: bool, dir: &Path, bin: &Path) {
    let (clients, secs, rates): (usize, u64, &[f64]) = if quick {
        (40, 3, &[5.0])
    } else {
        (400, 5, &[2.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    };
    let _ = writeln!(
        md,
        "\n## 5. Whole stack: {clients} clients in rooms of 4 over 3 nodes\n\nEvery client emits to its room at the given rate; each message is delivered to the 3 others. Raised step by step until latency breaks down.\n\n| stack | msgs/s per client | expected deliveries/s | delivered/s | p50 ms | p99 ms | errors | stack RSS | RSS growth per client | status |\n|---|---|---|---|---|---|---|---|---|---|"
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
                    "| {} | | | | | | | | | not run: {e:#} |",
                    if which == 0 { "limpet" } else { "socket.io" }
                );
                continue;
            }
        };
        let baseline = stack.rss_kib();
        for &rate in rates {
            let (proto, entry) = (stack.proto, stack.entry);
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
                "| {} | {rate} | {expected:.0} | {:.0} | {:.1} | {:.1} | {} | {:.1} MiB | {:.1} KiB | {status} |",
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
}
