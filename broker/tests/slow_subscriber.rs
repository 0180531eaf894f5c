//! A subscriber that stops reading is cut off at its output limit; the
//! publisher is never blocked and everyone else receives everything.

mod common;
use common::*;
use limpet_config::{BrokerConfig, ByteSize, OutputLimit};
use std::time::Duration;

const MSG_LEN: usize = 1000;

/// Sequence number at the front of a message frame's payload.
fn seq_of(frame: &[u8]) -> usize {
    let text = String::from_utf8_lossy(frame);
    text.rsplit("\r\n")
        .nth(1)
        .and_then(|p| p.split(':').next())
        .and_then(|s| s.parse().ok())
        .expect("a numbered message")
}

/// The payload that tells readers to stop.
const END: usize = usize::MAX - 1;

fn payload(i: usize) -> String {
    let mut p = format!("{i}:");
    p.extend(std::iter::repeat_n('x', MSG_LEN - p.len()));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_limit_cuts_off_a_stalled_subscriber_only() {
    let config = BrokerConfig {
        output_limit: OutputLimit {
            hard: ByteSize(1 << 20),
            soft: ByteSize(0),
            soft_seconds: 0,
        },
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut stalled = b.client().await;
    stalled.cmd(&["SUBSCRIBE", "feed"]).await;
    stalled.frame().await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut r = b.client().await;
        r.cmd(&["SUBSCRIBE", "feed"]).await;
        r.frame().await;
        readers.push(r);
    }
    // Publish until the stalled one is gone; the kernel's socket buffers
    // absorb a few MB first, so the count is not known in advance.
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut got = 0usize;
                loop {
                    let seq = seq_of(&r.frame().await);
                    if seq == END {
                        return got;
                    }
                    assert_eq!(seq, got, "in order, none lost");
                    got += 1;
                }
            })
        })
        .collect();
    let mut p = b.client().await;
    let mut published = 0usize;
    let mut receivers_seen = Vec::new();
    let mut peak_owed = 0u64;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let reply = p.call(&["PUBLISH", "feed", &payload(published)]).await;
        receivers_seen.push(reply.clone());
        published += 1;
        // What the broker holds for any client stays within the limit.
        for c in b.broker.clients() {
            peak_owed = peak_owed.max(c.output_bytes());
        }
        if b.broker
            .metrics
            .slow_client_disconnects
            .with_label_values(&["hard"])
            .get()
            == 1
        {
            break;
        }
        assert!(published < 500_000, "stalled subscriber never cut off");
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher was slowed down"
        );
    }
    // A few more after the cut: three receivers now.
    for _ in 0..10 {
        p.call(&["PUBLISH", "feed", &payload(published)]).await;
        published += 1;
    }
    let last = p.call(&["PUBLISH", "feed", &format!("{END}:end")]).await;
    assert_eq!(last, ":3\r\n", "the stalled subscriber left the channel");
    for t in reader_tasks {
        assert_eq!(
            t.await.unwrap(),
            published,
            "every reader got every message"
        );
    }
    assert_eq!(receivers_seen[0], ":4\r\n");
    // The stalled client's connection is closed: after the bytes the kernel
    // already held, EOF; it did not receive everything.
    let held = stalled.read_to_close().await;
    assert!(
        held.len() < published * (MSG_LEN + 40),
        "got {} bytes",
        held.len()
    );
    assert!(
        peak_owed <= (1 << 20) + MSG_LEN as u64 + 64,
        "held {peak_owed} bytes for one client"
    );
    assert!(peak_owed > 0);
    let peak = b
        .broker
        .metrics
        .slow_client_disconnects
        .with_label_values(&["hard"])
        .get();
    assert_eq!(peak, 1, "only the stalled subscriber was cut off");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_cuts_off_after_its_grace_period() {
    let config = BrokerConfig {
        output_limit: OutputLimit {
            hard: ByteSize(0),
            soft: ByteSize(256 * 1024),
            soft_seconds: 1,
        },
        ..loopback_config()
    };
    let b = TestBroker::start(config).await;
    let mut stalled = b.client().await;
    stalled.cmd(&["SUBSCRIBE", "feed"]).await;
    stalled.frame().await;
    let mut p = b.client().await;
    let started = std::time::Instant::now();
    let mut published = 0usize;
    while b
        .broker
        .metrics
        .slow_client_disconnects
        .with_label_values(&["soft"])
        .get()
        == 0
    {
        p.call(&["PUBLISH", "feed", &payload(published)]).await;
        published += 1;
        if published.is_multiple_of(1000) {
            // Slow down once well past the limit, so the grace period is what ends it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() < DEADLINE, "soft limit never enforced");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "cut before the grace period"
    );
    stalled.read_to_close().await;
    assert_eq!(
        p.call(&["PUBSUB", "NUMSUB", "feed"]).await,
        "*2\r\n$4\r\nfeed\r\n:0\r\n"
    );
    b.stop().await;
}

/// A client without subscriptions pipelines `PUBSUB CHANNELS` (a big reply
/// each) and never reads. Before, every command ran at once and the
/// replies piled up: +482 MiB RSS for 15 KB of requests. Now its commands
/// stop running while it owes 1 MiB, and one reply past
/// `output_limit_normal.hard` cuts it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_paused_then_cut_off() {
    const GROWTH_BOUND_KIB: u64 = 32 * 1024;
    let mut b = BrokerProcess::start(PORT_ZERO);
    let metrics = b.metrics.expect("metrics port");
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("channel:{i:05}:{}", "x".repeat(80)))
        .collect();
    let mut sub = Client::connect(b.addr).await;
    sub.subscribe_all(&names).await;
    let base = b.proc.rss_kib();

    let mut attacker = Client::connect(b.addr).await;
    let one = encode(&["PUBSUB", "CHANNELS"]);
    attacker.send(&one.repeat(15_000 / one.len())).await;
    // Either the broker pauses the attacker, or (before the fix) its
    // memory runs away; both end the wait.
    limpet_testkit::eventually(
        "backpressure on the attacker, or runaway memory",
        || async {
            metric(metrics, "limpet_broker_output_backpressure_total").await >= 1
                || b.proc.rss_kib().saturating_sub(base) > GROWTH_BOUND_KIB
        },
    )
    .await;
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
    let growth = b.proc.rss_kib().saturating_sub(base);
    assert!(
        growth < GROWTH_BOUND_KIB,
        "RSS grew by {growth} KiB for 15 KB of unread requests"
    );

    // One reply above a small hard limit: the client is cut off, counted.
    let mut b = BrokerProcess::start(&format!(
        "{PORT_ZERO}[output_limit_normal]\nhard = \"256kb\"\n"
    ));
    let metrics = b.metrics.expect("metrics port");
    let mut sub = Client::connect(b.addr).await;
    sub.subscribe_all(&names).await;
    let mut attacker = Client::connect(b.addr).await;
    attacker.send(&one).await;
    // Closed (what the kernel took before the cut may still arrive).
    attacker.read_to_close().await;
    limpet_testkit::eventually("the cut is counted", || async {
        metric(
            metrics,
            "limpet_broker_reply_limit_disconnects_total{limit=\"hard\"}",
        )
        .await
            == 1
    })
    .await;
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}
