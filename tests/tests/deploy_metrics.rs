//! Every metric name that `deploy/prometheus/alerts.yml` and
//! `deploy/grafana/limpet.json` use is one the binaries really export
//! (issue 19): the three binaries are started from the shipped default
//! configs in `deploy/etc/limpet/` (every address moved to port 0 on
//! 127.0.0.1, the node pointed at the broker, the proxy at the node), some
//! traffic makes the labelled series appear, and `/metrics` of each is
//! scraped.
//!
//! A labelled series appears only once a label value is first used. The
//! test makes the cheap ones happen (a request and a WebSocket upgrade
//! through the proxy, a SIGHUP reload, an `INFO` on the broker, which reads
//! the slow-client counters). The rest need a TLS listener or an attack to
//! appear; they are listed in [`FIRST_USE`], and for those the test checks
//! instead that the owning crate's `src/metrics.rs` registers exactly that
//! name, so a typo in the rules or the dashboard still fails.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this
//! test's own executable (`target/<profile>/`): `CARGO_BIN_EXE_*` only
//! exists in the crate that owns a binary.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use limpet_testkit::{write_temp, Logged, DEADLINE};

/// Names used by the rules or the dashboard whose series only exist after
/// an event this test does not cause, with the event.
const FIRST_USE: &[(&str, &str)] = &[
    (
        "limpet_proxy_certificate_expiry_timestamp_seconds",
        "a TLS listener with a certificate",
    ),
    (
        "limpet_proxy_tls_reloads_total",
        "a certificate reload on a TLS listener",
    ),
    (
        "limpet_proxy_limit_rejections_total",
        "a connection refused by a limit",
    ),
    (
        "limpet_proxy_upstream_connect_errors_total",
        "a backend refusing a connection",
    ),
    (
        "limpet_broker_limit_rejections_total",
        "a command refused by a limit",
    ),
    (
        "limpet_node_rejected_connections_total",
        "an upgrade refused by a limit",
    ),
    ("limpet_node_closes_total", "a client closed by the server"),
    ("limpet_node_shed_total", "a message dropped under load"),
    (
        "limpet_node_messages_out_total",
        "a message delivered to a local client",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    limpet_testkit::workspace_binary(name)
}

/// A shipped default config with `replacements` applied; each must match.
fn deploy_config(name: &str, replacements: &[(&str, String)]) -> PathBuf {
    let path = repo().join(format!("deploy/etc/limpet/{name}.toml"));
    let mut text = std::fs::read_to_string(&path).expect("read shipped config");
    for (from, to) in replacements {
        assert!(text.contains(from), "{} has no `{from}`", path.display());
        text = text.replace(from, to);
    }
    write_temp("limpet-deploy-metrics", &format!("{name}.toml"), &text)
}

fn start(name: &str, config: &Path, markers: &[&str]) -> (Logged, Vec<SocketAddr>) {
    let mut proc = Logged::spawn(
        &format!("limpet-{name}"),
        Command::new(binary(name))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info"),
    );
    let addrs = proc.wait_addrs(markers);
    (proc, addrs)
}

/// Sends `request` and reads until the peer closes (or, with `until`, until
/// the response so far contains it). Bounded by the harness deadline.
fn exchange(addr: SocketAddr, request: &[u8], until: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).expect("set timeout");
    s.write_all(request).expect("send request");
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read from {addr}: {e}"),
        }
        if let Some(marker) = until {
            if String::from_utf8_lossy(&got).contains(marker) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, req.as_bytes(), None)
}

/// Sample names (`name` of `name{labels} value`) in the body of a
/// Prometheus text scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    let body = scrape.split_once("\r\n\r\n").map_or(scrape, |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `limpet_...` identifier in a file.
fn names_used_in(file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join(file)).expect("read deploy file");
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("limpet_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    assert!(!names.is_empty(), "{file} uses no limpet_ metric");
    names
}

#[test]
fn alert_and_dashboard_metrics_are_exported_by_the_running_binaries() {
    // Broker, from deploy/etc/limpet/broker.toml.
    let broker_cfg = deploy_config(
        "broker",
        &[
            ("127.0.0.1:6379", "127.0.0.1:0".into()),
            ("127.0.0.1:9121", "127.0.0.1:0".into()),
        ],
    );
    let (_broker, b) = start(
        "broker",
        &broker_cfg,
        &[
            "listening for Redis-protocol clients",
            "serving Prometheus metrics",
        ],
    );
    let (broker_addr, broker_metrics) = (b[0], b[1]);

    // Node, on that broker.
    let node_cfg = deploy_config(
        "node",
        &[
            ("bind = \"127.0.0.1:9001\"", "bind = \"127.0.0.1:0\"".into()),
            ("redis://127.0.0.1:6379/", format!("redis://{broker_addr}/")),
        ],
    );
    let (_node, n) = start("node", &node_cfg, &["listening for WebSocket clients"]);
    let node_addr = n[0];

    // Proxy, in front of the node.
    let proxy_cfg = deploy_config(
        "proxy",
        &[
            ("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:0\"".into()),
            ("bind = \"127.0.0.1:9180\"", "bind = \"127.0.0.1:0\"".into()),
            (
                "address = \"127.0.0.1:9001\"",
                format!("address = \"{node_addr}\""),
            ),
        ],
    );
    let (proxy, p) = start(
        "proxy",
        &proxy_cfg,
        &["listening for HTTP and WebSocket clients", "admin listener"],
    );
    let (proxy_addr, proxy_admin) = (p[0], p[1]);

    // Traffic that makes labelled series appear.
    // A request through the proxy: requests, affinity, upstream response time.
    let reply = http_get(proxy_addr, "/health");
    assert!(
        reply.starts_with("HTTP/1.1 "),
        "no HTTP reply through the proxy: {reply:?}"
    );
    // A WebSocket upgrade through the proxy to the node: upgrades, tunnels,
    // a node connection. Closed by dropping the socket after the 101.
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {proxy_addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let reply = exchange(proxy_addr, upgrade.as_bytes(), Some("\r\n\r\n"));
    assert!(
        reply.starts_with("HTTP/1.1 101"),
        "upgrade through the proxy: {reply:?}"
    );
    // A reload: limpet_proxy_reloads_total{outcome="ok"}.
    proxy.signal("HUP");
    // INFO reads (and so creates) the broker's slow-client counters.
    let info = exchange(broker_addr, b"INFO\r\n", Some("# Clients"));
    assert!(info.starts_with('$'), "INFO reply: {info:?}");

    // Scrape until the reload is counted (SIGHUP is handled asynchronously).
    let deadline = Instant::now() + DEADLINE;
    let proxy_scrape = loop {
        let s = http_get(proxy_admin, "/metrics");
        if s.contains("limpet_proxy_reloads_total{outcome=\"ok\"}") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload never counted; scrape:\n{s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut exported = sample_names(&proxy_scrape);
    exported.extend(sample_names(&http_get(broker_metrics, "/metrics")));
    exported.extend(sample_names(&http_get(node_addr, "/metrics")));
    for binary in ["proxy", "broker", "node"] {
        assert!(
            exported
                .iter()
                .any(|n| n.starts_with(&format!("limpet_{binary}_"))),
            "no limpet_{binary}_ metric scraped: {exported:?}"
        );
    }

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/limpet.json"] {
        for name in names_used_in(file) {
            used.insert(name.clone());
            if exported.contains(&name) {
                continue;
            }
            if let Some((_, event)) = FIRST_USE.iter().find(|(n, _)| *n == name) {
                let crate_dir = name.split('_').nth(1).expect("limpet_<binary>_...");
                let source =
                    std::fs::read_to_string(repo().join(format!("{crate_dir}/src/metrics.rs")))
                        .expect("read metrics.rs");
                if source.contains(&format!("\"{name}\"")) {
                    continue;
                }
                missing.push(format!("{file}: {name} (first use: {event}) is not registered in {crate_dir}/src/metrics.rs"));
            } else {
                missing.push(format!("{file}: {name} is not in the live scrape"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unknown metric names:\n{}\nscraped: {exported:?}",
        missing.join("\n")
    );
    // The exception list stays short: every entry is used by the rules or
    // the dashboard. (One may still show up in the scrape: the node counts
    // the upgrade's close only when it notices it.)
    for (name, _) in FIRST_USE {
        assert!(
            used.contains(*name),
            "{name} is listed in FIRST_USE but neither file uses it: drop it from the list"
        );
    }
}
