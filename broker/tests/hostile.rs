//! Hostile clients against the real binary: each test makes one attack and
//! checks that the broker is alive, that its memory stays bounded where
//! memory is the issue, and that an honest client is still served within
//! a generous deadline (seconds: the machine may be loaded; these are not
//! speed tests).

mod common;
use common::*;

/// CVE-2022-36021's shape: a pattern and a channel that make a naive glob
/// matcher take pattern length × channel length steps (10^10 here, per
/// publish; PING took over 80 s on a debug build before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pattern_and_one_publish_cannot_freeze_the_broker() {
    let pattern = format!("*{}b", "a".repeat(10_000));
    let channel = format!("{}c", "a".repeat(9_999)).repeat(100);

    // Default limits: both are refused with Redis-style size errors.
    let mut b = BrokerProcess::start(PORT_ZERO);
    let mut attacker = Client::connect(b.addr).await;
    let reply = attacker.call(&["PSUBSCRIBE", &pattern]).await;
    assert_eq!(
        reply,
        "-ERR pattern exceeds maximum allowed size (limits.max_pattern_len = 256)\r\n"
    );
    let reply = attacker.call(&["PUBLISH", &channel, "x"]).await;
    assert_eq!(
        reply,
        "-ERR channel name exceeds maximum allowed size (limits.max_channel_len = 4096)\r\n"
    );
    let reply = attacker.call(&["PUBSUB", "CHANNELS", &pattern]).await;
    assert!(reply.starts_with("-ERR pattern exceeds"), "{reply}");
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
    let (_, metrics) = http_get(b.metrics.expect("metrics port"), "/metrics").await;
    assert!(
        metrics.contains("limpet_broker_limit_rejections_total{limit=\"max_pattern_len\"} 2"),
        "{metrics}"
    );

    // Limits raised so the attack gets through: matching itself stays cheap.
    let config =
        format!("{PORT_ZERO}[limits]\nmax_pattern_len = 20000\nmax_channel_len = \"2mb\"\n");
    let mut b = BrokerProcess::start(&config);
    let mut attacker = Client::connect(b.addr).await;
    attacker.cmd(&["PSUBSCRIBE", &pattern]).await;
    attacker.frame().await;
    let mut publishers = Vec::new();
    for _ in 0..3 {
        let mut p = Client::connect(b.addr).await;
        p.cmd(&["PUBLISH", &channel, "x"]).await;
        publishers.push(p);
    }
    honest_client_served(b.addr, HONEST_WITHIN).await;
    for p in &mut publishers {
        assert_eq!(p.frame().await, b":0\r\n");
    }
    b.proc.assert_alive();
}
