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

    // The worst that fits the default limits: 1,000 patterns of 256 bytes
    // with a long `?` run (matched bit-parallel, off the async workers)
    // against 4 KB channels, in pipelined publishes.
    let b = BrokerProcess::start(PORT_ZERO);
    let mut attacker = Client::connect(b.addr).await;
    for i in 0..1000 {
        let tail = format!("{i}b*");
        let p = format!("*{}{tail}", "?".repeat(255 - tail.len()));
        attacker.cmd(&["PSUBSCRIBE", &p]).await;
    }
    attacker.frames(1000).await;
    let channel = "a".repeat(4096);
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut p = Client::connect(b.addr).await;
        let one = encode(&["PUBLISH", &channel, "x"]);
        p.send(&one.repeat(2)).await;
        publishers.push(p);
    }
    honest_client_served(b.addr, HONEST_WITHIN).await;
    for p in &mut publishers {
        assert_eq!(p.frames(2).await, b":0\r\n:0\r\n");
    }
}

/// One client asking for 200,000 patterns made every PUBLISH match all of
/// them (11 publishes/s on a debug build, against thousands without).
/// Now a client holds at most `limits.max_patterns_per_client` patterns
/// and `limits.max_channels_per_client` channels; a subscribe past either
/// is refused whole, with an error, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_caps_on_patterns_and_channels() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let metrics = b.metrics.expect("metrics port");
    let mut attacker = Client::connect(b.addr).await;
    let batches = 200;
    for batch in 0..batches {
        let patterns: Vec<String> = (0..1000).map(|i| format!("pat:{batch}:{i}:*:x")).collect();
        let mut args = vec!["PSUBSCRIBE"];
        args.extend(patterns.iter().map(String::as_str));
        attacker.cmd(&args).await;
    }
    // The first batch fits under the default cap of 1024; no other does.
    attacker.frames(1000).await;
    for _ in 1..batches {
        assert_eq!(
            String::from_utf8_lossy(&attacker.frame().await),
            "-ERR too many patterns for this client (limits.max_patterns_per_client = 1024)\r\n"
        );
    }
    let mut observer = Client::connect(b.addr).await;
    assert_eq!(observer.call(&["PUBSUB", "NUMPAT"]).await, ":1000\r\n");
    honest_client_served(b.addr, HONEST_WITHIN).await;

    // Channels: 100,000 by default, shard channels included.
    let mut hoarder = Client::connect(b.addr).await;
    let names: Vec<String> = (0..100_000).map(|i| format!("c{i}")).collect();
    for chunk in names.chunks(5000) {
        let mut args = vec!["SUBSCRIBE"];
        args.extend(chunk.iter().map(String::as_str));
        hoarder.cmd(&args).await;
    }
    hoarder.frames(names.len()).await;
    assert_eq!(
        hoarder.call(&["SSUBSCRIBE", "one-more"]).await,
        "-ERR too many channels for this client (limits.max_channels_per_client = 100000)\r\n"
    );
    // Already held: not a new channel, so not refused.
    assert_eq!(
        hoarder.call(&["SUBSCRIBE", "c7"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nc7\r\n:100000\r\n"
    );
    assert_eq!(
        metric(
            metrics,
            "limpet_broker_limit_rejections_total{limit=\"max_patterns_per_client\"}"
        )
        .await,
        batches - 1
    );
    assert_eq!(
        metric(
            metrics,
            "limpet_broker_limit_rejections_total{limit=\"max_channels_per_client\"}"
        )
        .await,
        1
    );
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// Password guessing. Before: 20,000 pipelined guesses on one connection
/// were all answered in about half a second, with one WARN line each
/// (2.2 MB of log). Now a connection is closed after three failures, each
/// failure's reply is held back for a delay that doubles per failure from
/// the same address, and the log line is written at most once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_cut_off_slowed_and_quietly_logged() {
    const PASSWORD: &str = "the-right-one";
    let config = format!(
        "requirepass = \"{PASSWORD}\"\n{PORT_ZERO}[auth_failures]\ndelay = \"50ms\"\nmax_delay = \"2s\"\n"
    );
    let mut b = BrokerProcess::start(&config);
    let metrics = b.metrics.expect("metrics port");
    let log_before = b.log_text().len();

    let mut pipelined = Client::connect(b.addr).await;
    let guesses: Vec<u8> = (0..20_000)
        .flat_map(|i| encode(&["AUTH", &format!("guess{i}")]))
        .collect();
    // The broker may close before taking it all.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut pipelined.stream, &guesses).await;
    let answered = String::from_utf8_lossy(&pipelined.read_to_close().await)
        .matches("WRONGPASS")
        .count();
    assert!(
        answered <= 3,
        "{answered} guesses answered on one connection"
    );

    // The same address again: three more failures, each held back longer
    // (the address already has three: 400 ms + 800 ms + 1.6 s).
    let mut again = Client::connect(b.addr).await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        assert_eq!(
            again.call(&["AUTH", &format!("again{i}")]).await,
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        );
    }
    assert_eq!(again.read_to_close().await, b"", "closed after three");
    let held = started.elapsed();
    assert!(
        held >= std::time::Duration::from_secs(2),
        "held only {held:?}"
    );

    // The right password is held back as long as a failure (2 s cap here),
    // but served.
    honest_client_served_auth(b.addr, Some(PASSWORD), HONEST_WITHIN).await;
    b.proc.assert_alive();
    assert_eq!(
        metric(metrics, "limpet_broker_auth_failures_total").await,
        6
    );
    assert_eq!(
        metric(metrics, "limpet_broker_auth_failure_disconnects_total").await,
        2
    );
    let logged = b.log_text().len() - log_before;
    assert!(logged < 4096, "{logged} bytes of log for 6 failures");
}

/// Guessing on fresh connections. Before: the password was checked and a
/// right one answered `+OK` at once, only WRONGPASS was held back, so a
/// guesser opening a new connection per guess read "no reply within one
/// round trip" as wrong and never waited (+OK in about 1 ms after a
/// failure). Now, once the address has failures, the right password is
/// held back as long as a wrong one (2 s here, at least).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_password_is_held_like_a_wrong_one_after_failures() {
    const PASSWORD: &str = "the-right-one";
    const HOLD: std::time::Duration = std::time::Duration::from_secs(2);
    let config = format!(
        "requirepass = \"{PASSWORD}\"\n{PORT_ZERO}[auth_failures]\ndelay = \"2s\"\nmax_delay = \"2s\"\n"
    );
    let mut b = BrokerProcess::start(&config);

    // No failures yet: nothing held (only checked to be served at all).
    let mut first = Client::connect(b.addr).await;
    assert_eq!(first.call(&["AUTH", PASSWORD]).await, "+OK\r\n");

    let mut guesser = Client::connect(b.addr).await;
    assert_eq!(
        guesser.call(&["AUTH", "guess"]).await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );

    // A lower bound on time: a loaded machine only makes it longer.
    let mut fresh = Client::connect(b.addr).await;
    let started = std::time::Instant::now();
    assert_eq!(fresh.call(&["AUTH", PASSWORD]).await, "+OK\r\n");
    let held = started.elapsed();
    assert!(held >= HOLD, "+OK after only {held:?}");

    let mut hello = Client::connect(b.addr).await;
    let started = std::time::Instant::now();
    hello
        .cmd(&["HELLO", "2", "AUTH", "default", PASSWORD])
        .await;
    let reply = String::from_utf8_lossy(&hello.frame().await).into_owned();
    let held = started.elapsed();
    assert!(reply.starts_with('*'), "{reply}");
    assert!(held >= HOLD, "HELLO AUTH answered after only {held:?}");

    assert_eq!(fresh.call(&["PING"]).await, "+PONG\r\n");
    b.proc.assert_alive();
}

/// Connections that never authenticate. Before: with requirepass and the
/// default `timeout = 0`, a silent connection kept its slot forever, so
/// maxclients of them locked the real nodes out. Now one that has not
/// authenticated within `auth_timeout` (1 s here) is closed; an
/// authenticated idle one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_silent_client_is_closed_after_auth_timeout() {
    const PASSWORD: &str = "the-right-one";
    let config = format!("requirepass = \"{PASSWORD}\"\nauth_timeout = \"1s\"\n{PORT_ZERO}");
    let mut b = BrokerProcess::start(&config);
    let metrics = b.metrics.expect("metrics port");

    let mut authed = Client::connect(b.addr).await;
    assert_eq!(authed.call(&["AUTH", PASSWORD]).await, "+OK\r\n");
    // Connected after `authed` authenticated, so when it is closed `authed`
    // has been idle longer than auth_timeout too.
    let mut silent = Client::connect(b.addr).await;
    assert_eq!(silent.read_to_close().await, b"", "closed without a reply");

    assert_eq!(authed.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(
        metric(metrics, "limpet_broker_auth_timeout_disconnects_total").await,
        1
    );
    b.proc.assert_alive();
}

/// Requests of empty arguments: 6 bytes each on the wire, a 32-byte
/// handle each in memory, and only the wire bytes were checked against
/// `limits.query_buffer_limit`. 500 connections × 10,000 empty arguments
/// (60 KB each, under a 256 KB limit) grew RSS by 190 MiB; now the
/// handles count too, so each of them passes the limit and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_arguments_count_against_the_query_buffer_limit() {
    const GROWTH_BOUND_KIB: u64 = 48 * 1024;
    let config = format!("{PORT_ZERO}[limits]\nquery_buffer_limit = \"256kb\"\n");
    let mut b = BrokerProcess::start(&config);
    let metrics = b.metrics.expect("metrics port");
    let base = b.proc.rss_kib();
    let mut request = b"*10001\r\n".to_vec();
    request.extend(b"$0\r\n\r\n".repeat(10_000));
    let mut attackers = Vec::new();
    for _ in 0..500 {
        let mut c = Client::connect(b.addr).await;
        // The broker may close before taking it all.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut c.stream, &request).await;
        attackers.push(c);
    }
    limpet_testkit::eventually("every attacker closed, or runaway memory", || async {
        metric(
            metrics,
            "limpet_broker_query_buffer_limit_disconnects_total",
        )
        .await
            >= 500
            || b.proc.rss_kib().saturating_sub(base) > GROWTH_BOUND_KIB
    })
    .await;
    let growth = b.proc.rss_kib().saturating_sub(base);
    assert!(growth < GROWTH_BOUND_KIB, "RSS grew by {growth} KiB");
    for c in &mut attackers {
        assert_eq!(c.read_to_close().await, b"");
    }
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// A flood of connections past `maxclients`. Before: one WARN line per
/// refused connection (2,000 lines here), so the flood also filled the
/// log. Now the first refusal and every thousandth are logged with the
/// running count; every refused client still gets Redis's error, and a
/// client admitted before the flood keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_maxclients_are_logged_once_per_thousand() {
    let config = format!("maxclients = 2\n{PORT_ZERO}");
    let mut b = BrokerProcess::start(&config);
    let metrics = b.metrics.expect("metrics port");
    let mut admitted = Client::connect(b.addr).await;
    let _second = Client::connect(b.addr).await;
    assert_eq!(admitted.call(&["PING"]).await, "+PONG\r\n");
    let flood = 2_000;
    for batch in 0..flood / 100 {
        let mut refused = Vec::new();
        for _ in 0..100 {
            refused.push(Client::connect(b.addr).await);
        }
        // The first of each batch reads its refusal (a refusal written
        // after the cap of in-flight refusals is a plain close instead).
        let first = refused[0].read_to_close().await;
        assert!(
            first.is_empty() || first == b"-ERR max number of clients reached\r\n",
            "batch {batch}: {:?}",
            String::from_utf8_lossy(&first)
        );
    }
    limpet_testkit::eventually("every refusal counted", || async {
        metric(metrics, "limpet_broker_rejected_connections_total").await >= flood
    })
    .await;
    assert_eq!(admitted.call(&["PING"]).await, "+PONG\r\n");
    let lines = b
        .log_text()
        .lines()
        .filter(|l| l.contains("refusing client"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines for {flood} refusals"
    );
    b.proc.assert_alive();
}
