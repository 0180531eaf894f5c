//! What a client can make the keyspace hold, and what it costs everyone
//! else, against the real binary: `maxmemory` (-OOM, noeviction) and its
//! gauges; huge COUNTs, XREAD BLOCK on thousands of streams and a
//! million-field HSET, each bounded by the existing request limits. Every
//! attack test asserts the process is alive, its memory bounded, and an
//! honest client served meanwhile.

mod common;
use common::*;
use limpet_testkit::eventually;

/// User + system CPU time of a process, in clock ticks (1/100 s on Linux),
/// fields 14 and 15 of `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

const OOM: &str = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";

/// A metric's value from `/metrics`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_refuses_writes_with_oom_and_metrics_report_the_keyspace() {
    let b = BrokerProcess::start(&format!("maxmemory = \"64kb\"\n{PORT_ZERO}"));
    let metrics = b.metrics.expect("metrics port");
    let mut c = Client::connect(b.addr).await;
    let value = "v".repeat(1000);
    let mut stored = 0;
    loop {
        let reply = c.call(&["SET", &format!("key:{stored}"), &value]).await;
        if reply == OOM {
            break;
        }
        assert_eq!(reply, "+OK\r\n");
        stored += 1;
        assert!(stored < 1000, "64kb of 1000-byte values never refused");
    }
    assert!(stored >= 32, "refused after only {stored} keys");
    // Every command that adds data is refused; reads and deletes are not.
    assert_eq!(c.call(&["HSET", "h", "f", "v"]).await, OOM);
    assert_eq!(c.call(&["XADD", "s", "*", "f", "v"]).await, OOM);
    assert_eq!(c.call(&["GET", "key:0"]).await.len(), 1000 + 9);
    assert_eq!(c.call(&["DEL", "key:0", "key:1", "key:2"]).await, ":3\r\n");
    assert_eq!(c.call(&["SET", "again", "v"]).await, "+OK\r\n");
    let info = c.call(&["INFO", "memory"]).await;
    assert!(info.contains("maxmemory:65536\r\n"), "{info}");
    assert!(info.contains("maxmemory_policy:noeviction\r\n"), "{info}");
    // CONFIG SET lifts the limit at run time.
    assert_eq!(
        c.call(&["CONFIG", "SET", "maxmemory", "0"]).await,
        "+OK\r\n"
    );
    assert_eq!(c.call(&["HSET", "h", "f", "v"]).await, ":1\r\n");
    eventually("the keyspace gauges to be refreshed", || async move {
        let bytes = metric(metrics, "limpet_broker_keyspace_bytes").await;
        let keys = metric(metrics, "limpet_broker_keys").await;
        bytes.is_some_and(|b| b > 30_000.0) && keys.is_some_and(|k| k >= 30.0)
    })
    .await;
    assert!(metric(metrics, "limpet_broker_oom_rejections_total")
        .await
        .is_some_and(|n| n >= 3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_counts_are_bounded_by_what_exists() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let mut c = Client::connect(b.addr).await;
    for i in 1..=3 {
        c.call(&["XADD", "s", &format!("{i}-0"), "f", "v"]).await;
        c.call(&["SET", &format!("k{i}"), "v"]).await;
    }
    let max = i64::MAX.to_string();
    let range = c.call(&["XRANGE", "s", "-", "+", "COUNT", &max]).await;
    assert!(range.starts_with("*3\r\n"), "{range}");
    let rev = c.call(&["XREVRANGE", "s", "+", "-", "COUNT", &max]).await;
    assert!(rev.starts_with("*3\r\n"), "{rev}");
    let read = c.call(&["XREAD", "COUNT", &max, "STREAMS", "s", "0"]).await;
    assert!(read.starts_with("*1\r\n*2\r\n$1\r\ns\r\n*3\r\n"), "{read}");
    let scan = c.call(&["SCAN", "0", "COUNT", &max]).await;
    assert!(scan.starts_with("*2\r\n$1\r\n0\r\n*4\r\n"), "{scan}");
    let info = c
        .call(&["XINFO", "STREAM", "s", "FULL", "COUNT", &max])
        .await;
    assert!(info.contains("$7\r\nentries\r\n*3\r\n"), "{info}");
    // Glob patterns are bounded like PSUBSCRIBE's.
    let long = format!("{}*", "?".repeat(300));
    let refused = "-ERR pattern exceeds maximum allowed size (limits.max_pattern_len = 256)\r\n";
    assert_eq!(c.call(&["KEYS", &long]).await, refused);
    assert_eq!(c.call(&["SCAN", "0", "MATCH", &long]).await, refused);
    assert!(c.call(&["KEYS", "k?"]).await.starts_with("*3\r\n"));
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xread_block_on_thousands_of_streams_is_parked_and_woken() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let streams = 5000;
    let mut args: Vec<String> = vec!["XREAD".into(), "BLOCK".into(), "0".into(), "STREAMS".into()];
    args.extend((0..streams).map(|i| format!("stream:{i}")));
    args.extend((0..streams).map(|_| "$".to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut blocked = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(b.addr).await;
        c.cmd(&args).await;
        blocked.push(c);
    }
    let addr = b.addr;
    eventually("20 clients blocked", || async move {
        let info = Client::connect(addr).await.call(&["INFO", "clients"]).await;
        info.contains("blocked_clients:20\r\n")
    })
    .await;
    // Waiting costs no CPU: over a one-second window the broker spends
    // next to nothing (a spinning XREAD, as the adapter's was against a
    // broker without XREAD, burns a core). Not a speed assertion: a loaded
    // machine only lowers what an idle process gets.
    let pid = b.proc.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 30,
        "{spent} CPU ticks in 1 s with 20 clients blocked"
    );
    // While they wait, others are served as usual.
    honest_client_served(b.addr, HONEST_WITHIN).await;
    let rss_blocked = b.proc.rss_kib();
    assert!(
        rss_blocked < 256 * 1024,
        "RSS {rss_blocked} KiB with 20 x 5000 waiters"
    );
    // One XADD to the last stream wakes every one of them with that entry.
    let mut w = Client::connect(b.addr).await;
    assert_eq!(
        w.call(&["XADD", "stream:4999", "7-1", "f", "v"]).await,
        "$3\r\n7-1\r\n"
    );
    for c in &mut blocked {
        assert_eq!(
            String::from_utf8_lossy(&c.frame().await),
            "*1\r\n*2\r\n$11\r\nstream:4999\r\n*1\r\n*2\r\n$3\r\n7-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
    }
    let info = w.call(&["INFO", "clients"]).await;
    assert!(info.contains("blocked_clients:0\r\n"), "{info}");
    // A blocked client that goes away is let go too.
    let mut gone = Client::connect(b.addr).await;
    gone.cmd(&args).await;
    eventually("one more blocked", || async move {
        let info = Client::connect(addr).await.call(&["INFO", "clients"]).await;
        info.contains("blocked_clients:1\r\n")
    })
    .await;
    drop(gone);
    eventually("the closed client unblocked", || async move {
        let info = Client::connect(addr).await.call(&["INFO", "clients"]).await;
        info.contains("blocked_clients:0\r\n")
    })
    .await;
    b.proc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_field_hset_is_bounded_by_the_multibulk_limit() {
    // limits.max_multibulk_len bounds how many fields one HSET can add: a
    // million fields (2,000,002 arguments) are refused from the header
    // alone, before any field is sent, at the default limit (1,048,576)
    // and at the lower one this broker runs with.
    let mut b = BrokerProcess::start(&format!(
        "{PORT_ZERO}[limits]\nmax_multibulk_len = 100002\n"
    ));
    let mut attacker = Client::connect(b.addr).await;
    attacker
        .send(b"*2000002\r\n$4\r\nHSET\r\n$1\r\nh\r\n")
        .await;
    assert_eq!(
        attacker.read_to_close().await,
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    // The most that fits, 50,000 fields in one HSET, is stored and counted,
    // in a pipeline with one more such HSET.
    let fields = 50_000;
    let mut req = format!("*{}\r\n$4\r\nHSET\r\n$3\r\nbig\r\n", 2 + 2 * fields).into_bytes();
    for i in 0..fields {
        let f = format!("f{i}");
        req.extend(format!("${}\r\n{f}\r\n$1\r\nv\r\n", f.len()).into_bytes());
    }
    let mut c = Client::connect(b.addr).await;
    c.send(&req.repeat(2)).await;
    honest_client_served(b.addr, HONEST_WITHIN).await;
    assert_eq!(c.frame().await, format!(":{fields}\r\n").into_bytes());
    assert_eq!(c.frame().await, b":0\r\n");
    assert_eq!(c.call(&["HLEN", "big"]).await, format!(":{fields}\r\n"));
    let rss = b.proc.rss_kib();
    assert!(
        rss < 256 * 1024,
        "RSS {rss} KiB after a {fields}-field hash"
    );
    assert_eq!(c.call(&["DEL", "big"]).await, ":1\r\n");
    b.proc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_queue_is_bounded_by_the_query_buffer_limit() {
    let mut b = BrokerProcess::start(&format!(
        "{PORT_ZERO}[limits]\nquery_buffer_limit = \"1mb\"\n"
    ));
    let metrics = b.metrics.expect("metrics port");
    let mut c = Client::connect(b.addr).await;
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    let value = "v".repeat(100_000);
    let mut refused = None;
    for i in 0..20 {
        let reply = c.call(&["SET", &format!("k{i}"), &value]).await;
        if reply != "+QUEUED\r\n" {
            refused = Some((i, reply));
            break;
        }
    }
    let (at, reply) = refused.expect("a 2 MB transaction was refused");
    assert!((9..=10).contains(&at), "refused at command {at}");
    assert!(
        reply.starts_with("-ERR MULTI queue exceeds limits.query_buffer_limit"),
        "{reply}"
    );
    assert_eq!(
        c.call(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.call(&["DBSIZE"]).await, ":0\r\n");
    let (_, body) = http_get(metrics, "/metrics").await;
    assert!(
        body.contains("limpet_broker_limit_rejections_total{limit=\"query_buffer_limit\"} 1"),
        "{body}"
    );
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// One small request that asks for a huge reply: `MGET` of one 1 MB key
/// 300 times is 300 MB of reply from 3 KB of request. Before, the whole
/// reply was built in memory first (RSS +300 MB; a million copies would
/// have taken the process down); the output limit only applied once it
/// was built. Now a reply stops growing at the output hard limit and the
/// client is closed, as Redis closes a client past that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_bigger_than_the_output_limit_closes_the_client_before_it_is_built() {
    const GROWTH_BOUND_KIB: u64 = 100 * 1024;
    let config = format!(
        "{PORT_ZERO}[output_limit]\nhard = \"8mb\"\n[output_limit_normal]\nhard = \"8mb\"\n"
    );
    let mut b = BrokerProcess::start(&config);
    let metrics = b.metrics.expect("metrics port");
    let mut c = Client::connect(b.addr).await;
    let value = "v".repeat(1 << 20);
    assert_eq!(c.call(&["SET", "big", &value]).await, "+OK\r\n");
    let base = b.proc.rss_kib();
    // Peak memory while the request runs (the reply is freed after).
    let pid = b.proc.child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(limpet_testkit::rss_kib(pid));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        })
    };
    let mut request = vec!["MGET"];
    request.extend(std::iter::repeat_n("big", 300));
    c.cmd(&request).await;
    let got = c.read_to_close().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    assert!(
        got.len() < 9 << 20,
        "closed without the 300 MB reply, got {} bytes",
        got.len()
    );
    let growth = peak.saturating_sub(base);
    assert!(
        growth < GROWTH_BOUND_KIB,
        "RSS grew by {growth} KiB at its peak"
    );
    eventually("the disconnect is counted", || async move {
        metric(
            metrics,
            "limpet_broker_reply_limit_disconnects_total{limit=\"hard\"}",
        )
        .await
            == Some(1.0)
    })
    .await;
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// WATCH of 200,000 distinct keys. Before, each key was checked against
/// every key already watched (4×10^10 comparisons: minutes of one worker
/// thread), and repeated WATCHes grew without limit. Now the check is a
/// hash lookup and one connection watches at most 100,000 keys: past it,
/// an error, at once. Below it WATCH still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_bounded_and_linear_in_its_keys() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let mut c = Client::connect(b.addr).await;
    let keys: Vec<String> = (0..200_000).map(|i| format!("w{i}")).collect();
    let mut request = vec!["WATCH"];
    request.extend(keys.iter().map(String::as_str));
    let reply = c.call(&request).await;
    assert_eq!(reply, "-ERR a connection may WATCH at most 100000 keys\r\n");
    honest_client_served(b.addr, HONEST_WITHIN).await;
    // 50,000 keys twice over (duplicates are free), then a change to one.
    let mut request = vec!["WATCH"];
    request.extend(keys[..50_000].iter().map(String::as_str));
    request.extend(keys[..50_000].iter().map(String::as_str));
    assert_eq!(c.call(&request).await, "+OK\r\n");
    let mut other = Client::connect(b.addr).await;
    assert_eq!(other.call(&["SET", "w49999", "x"]).await, "+OK\r\n");
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.call(&["PING"]).await, "+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]).await, "*-1\r\n", "the watch still fires");
    b.proc.assert_alive();
}

/// EXEC of writes queued while there was room, run after memory passed
/// `maxmemory`: Redis refuses the whole transaction with EXECABORT; before,
/// every queued write ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_queued_writes_past_maxmemory_is_refused() {
    let b = BrokerProcess::start(&format!("maxmemory = \"64kb\"\n{PORT_ZERO}"));
    let mut tx = Client::connect(b.addr).await;
    assert_eq!(tx.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(tx.call(&["SET", "late", "v"]).await, "+QUEUED\r\n");
    let mut filler = Client::connect(b.addr).await;
    let value = "v".repeat(1000);
    for i in 0.. {
        if filler.call(&["SET", &format!("f{i}"), &value]).await == OOM {
            break;
        }
        assert!(i < 1000, "never refused");
    }
    assert_eq!(
        tx.call(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of: OOM command not allowed when used memory > 'maxmemory'.\r\n"
    );
    assert_eq!(tx.call(&["EXISTS", "late"]).await, ":0\r\n");
}

/// SCAN with COUNT 9223372036854775807 on 250,000 keys. Before, one call
/// visited the whole table under the keyspace lock (KEYS by another name).
/// COUNT is a hint: now one call visits at most 100,000 slots and returns
/// a cursor to go on from, and the whole scan still sees every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scan_call_visits_a_bounded_part_of_the_keyspace() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let mut c = Client::connect(b.addr).await;
    let total = 250_000;
    for chunk in 0..total / 10_000 {
        let kv: Vec<String> = (chunk * 10_000..(chunk + 1) * 10_000)
            .flat_map(|i| [format!("k{i}"), "v".to_string()])
            .collect();
        let mut request = vec!["MSET"];
        request.extend(kv.iter().map(String::as_str));
        assert_eq!(c.call(&request).await, "+OK\r\n");
    }
    let mut cursor = "0".to_string();
    let mut calls = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        c.cmd(&["SCAN", &cursor, "COUNT", "9223372036854775807"])
            .await;
        let reply = c.frame().await;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let mut lines = text.split("\r\n");
        lines.next(); // *2
        lines.next(); // $len of the cursor
        cursor = lines.next().expect("a cursor").to_string();
        for l in lines {
            if let Some(k) = l.strip_prefix('k') {
                seen.insert(k.to_string());
            }
        }
        calls += 1;
        if cursor == "0" {
            break;
        }
        assert!(calls < 100, "the scan never ends");
    }
    assert!(calls >= 3, "one call visited everything ({calls} calls)");
    assert_eq!(
        seen.len(),
        total,
        "every key seen once the cursor is back at 0"
    );
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// A transaction of 100,001 queued commands: EXEC would hold the keyspace
/// lock for all of them. Past 100,000 the queue refuses, and EXEC answers
/// EXECABORT, as for any command refused while queuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_queue_holds_a_bounded_number_of_commands() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let mut c = Client::connect(b.addr).await;
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    let n = 100_001;
    let mut pipeline = Vec::new();
    for _ in 0..n {
        pipeline.extend_from_slice(b"*2\r\n$6\r\nEXISTS\r\n$1\r\nx\r\n");
    }
    c.send(&pipeline).await;
    let replies = c.frames(n).await;
    let text = String::from_utf8_lossy(&replies);
    assert_eq!(text.matches("+QUEUED\r\n").count(), 100_000);
    assert!(
        text.ends_with("-ERR MULTI queue holds at most 100000 commands; the transaction is discarded at EXEC\r\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    assert_eq!(
        c.call(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    honest_client_served(b.addr, HONEST_WITHIN).await;
    b.proc.assert_alive();
}

/// Keyspace events name the key in the channel: a 5,000-byte key name
/// made a channel longer than `limits.max_channel_len` (4 KB), which a
/// PUBLISH may not use and which every pattern is matched against. Its
/// keyspace-channel event is now skipped and counted; the keyevent one
/// (key in the payload) and events for other keys still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_for_keys_longer_than_a_channel_are_skipped() {
    let b = BrokerProcess::start(&format!("notify_keyspace_events = \"KEA\"\n{PORT_ZERO}"));
    let metrics = b.metrics.expect("metrics port");
    let mut sub = Client::connect(b.addr).await;
    sub.cmd(&["PSUBSCRIBE", "__keyspace@0__:*"]).await;
    sub.frame().await;
    let mut c = Client::connect(b.addr).await;
    let long = "k".repeat(5000);
    assert_eq!(c.call(&["SET", &long, "v"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", "short", "v"]).await, "+OK\r\n");
    let first = String::from_utf8_lossy(&sub.frame().await).into_owned();
    assert!(
        first.contains("__keyspace@0__:short\r\n"),
        "the first keyspace event is for the short key: {}",
        &first[..first.len().min(120)]
    );
    let rejected = metric(
        metrics,
        "limpet_broker_limit_rejections_total{limit=\"max_channel_len\"}",
    )
    .await;
    assert_eq!(rejected, Some(1.0));
}
