//! The real binary: CLI flags, config errors, metrics, signals.

mod common;
use common::*;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_limpet-broker");

const PORT_ZERO: &str = "bind = [\"127.0.0.1:0\"]\n[metrics]\nbind = \"127.0.0.1:0\"\n";

#[test]
fn version_and_check() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("limpet-broker {}", env!("CARGO_PKG_VERSION"))
    );

    let good = write_temp(
        "good.toml",
        "maxclients = 10\n[output_limit]\nhard = \"64mb\"\n",
    );
    let out = limpet_testkit::run_check(BIN, &good);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("is ok"));

    let bad = write_temp("bad.toml", "maxclients = 10\n\n[output_limit]\nhrad = 1\n");
    let out = limpet_testkit::run_check(BIN, &bad);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(&format!("{}:4:1: ", bad.display())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown field `hrad`"),
        "{}",
        out.stderr
    );

    let missing = limpet_testkit::run_check(BIN, std::path::Path::new("/nonexistent/broker.toml"));
    assert_eq!(missing.code, Some(1));
    assert!(
        missing
            .stderr
            .contains("/nonexistent/broker.toml: cannot read config file"),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_and_stops_cleanly_on_sigterm() {
    let mut broker = BrokerProcess::start(PORT_ZERO);
    let mut sub = Client::connect(broker.addr).await;
    sub.cmd(&["SUBSCRIBE", "a"]).await;
    sub.frame().await;
    let mut p = Client::connect(broker.addr).await;
    assert_eq!(p.call(&["PUBLISH", "a", "x"]).await, ":1\r\n");
    sub.frame().await;
    p.send(b"*1\r\n$-3\r\n").await;
    p.read_to_close().await;

    let (status, body) = http_get(broker.metrics.unwrap(), "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "limpet_broker_connected_clients 1",
        "limpet_broker_channels 1",
        "limpet_broker_messages_published_total 1",
        "limpet_broker_messages_delivered_total 1",
        "limpet_broker_protocol_errors_total 1",
        "limpet_broker_connections_total 2",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "metrics lack {line:?}:\n{body}"
        );
    }
    let (status, _) = http_get(broker.metrics.unwrap(), "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    broker.signal("TERM");
    assert_eq!(broker.wait(), Some(0), "log:\n{}", broker.log_text());
    assert_eq!(
        sub.read_to_close().await,
        b"",
        "subscriber closed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_a_clear_error() {
    let first = BrokerProcess::start("bind = [\"127.0.0.1:0\"]\n[metrics]\nenabled = false\n");
    let config = write_temp(
        "clash.toml",
        &format!("bind = [\"{}\"]\n[metrics]\nenabled = false\n", first.addr),
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {}", first.addr)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; nothing to test");
        return;
    }
    let broker = BrokerProcess::start("bind = [\"[::1]:0\"]\n[metrics]\nenabled = false\n");
    assert!(broker.addr.is_ipv6());
    let mut c = Client::connect(broker.addr).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
}
