//! Secrets the node is given never reach its log.

mod common;
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const PASSWORD: &str = "Br0kerPassw0rdNeverLogged";

/// An in-process limpet-broker that requires `PASSWORD`; `None` when the
/// address is not free yet (a restart on the same port).
async fn start_broker(addr: SocketAddr) -> Option<tokio::sync::watch::Sender<bool>> {
    let config = limpet_config::BrokerConfig {
        bind: vec![addr],
        requirepass: Some(PASSWORD.to_string()),
        ..Default::default()
    };
    let broker = Arc::new(limpet_broker::server::Broker::new(config, None));
    let server = limpet_broker::server::Server::bind(broker).await.ok()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(server.run(rx));
    Some(tx)
}

/// [`start_broker`], retried until the port is free, within the deadline.
async fn start_broker_within(addr: SocketAddr) -> tokio::sync::watch::Sender<bool> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(stop) = start_broker(addr).await {
            return stop;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker cannot bind {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node logs its broker connection (connected, unreachable, lost,
/// restored). Before: every one of those lines carried the broker URL with
/// its password (`broker=redis://:PASS@127.0.0.1:6379/`). Now the password
/// shows as `***`, and the node still authenticates and serves clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_password_never_appears_in_the_log() {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // The broker is not up yet: the node logs that it is unreachable.
    let mut node = NodeProcess::start_with(
        "n1",
        &format!("broker = [\"redis://:{PASSWORD}@{addr}/\"]"),
        "",
    );
    eventually("the node reports the broker unreachable", || async {
        node.log_text().contains("broker unreachable")
    })
    .await;
    let stop = start_broker_within(addr).await;
    node.wait_ready().await;
    // Lose the broker and get it back: the node logs both.
    let _ = stop.send(true);
    eventually("the node notices the broker is gone", || async {
        node.log_text().contains("lost the broker connection")
    })
    .await;
    let _stop = start_broker_within(addr).await;
    eventually("the node reconnects", || async {
        node.log_text().contains("broker connection restored")
    })
    .await;

    node.proc.assert_alive();
    // An honest client is served, and the node still authenticated.
    let mut client = tokio::time::timeout(Duration::from_secs(20), async {
        let mut c = Client::connect(&node).await;
        c.join("room").await;
        c
    })
    .await
    .expect("an honest client joins within 20 s");
    client.emit("room", "hello", serde_json::json!(1)).await;
    node.wait_ready().await;

    let log = node.log_text();
    assert!(
        !log.contains(PASSWORD),
        "the broker password is in the node's log:\n{log}"
    );
    assert!(
        log.contains(&format!("redis://:***@{addr}/")),
        "the log names the broker (redacted):\n{log}"
    );
    node.proc.assert_alive();
}
