//! Issue 18, network faults at the proxy, with the real binary on its own
//! "host" (a network namespace, `limpet_testkit::netns`):
//!
//! * scenario 1: a backend black hole (packets dropped, no RST). Active
//!   checks take it out, sticky clients are re-pinned, new connections
//!   wait at most `timeouts.connect`, its pooled connections are dropped
//!   and its tunnels closed (`health.on_marked_down`);
//! * scenario 5: two proxies on two hosts with the same config agree on
//!   every client's backend, and cutting one proxy's links to the
//!   backends changes only that proxy's health view.
//!
//! The proxies run inside the namespaces and the test backends in this
//! process on the root side of the veth pairs: a black hole is an
//! iptables DROP inside the proxy's namespace for the backend's port,
//! which is, for the proxy, the same silence as a vanished host (the
//! backends cannot move into a namespace themselves: they live in this
//! process, and entering a namespace would take `setns`, i.e. unsafe
//! code). Skips loudly without root, iproute2 or iptables.

mod common;

use common::*;
use futures_util::StreamExt;
use limpet_testkit::netns::Netns;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "netfault-shared-cookie-secret";

/// Health checks of these tests: out after `interval × fall + timeout`
/// = 2 s of silence.
const HEALTH: &str = "[pool.health]\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"500ms\"\nfall = 3\nrise = 2\n";
const DETECT_BOUND: Duration = Duration::from_secs(2);
/// What a loaded 2-core machine may add to any bound here.
const SLACK: Duration = Duration::from_secs(5);

/// Waits for `check` until `deadline`; how long it took from `since`.
async fn by<F, Fut>(what: &str, since: Instant, deadline: Instant, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {:?}",
            deadline - since
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    since.elapsed()
}

/// `[[pool]]` named `name` with `affinity`, the health checks above and
/// `backends`.
fn pool(name: &str, affinity: &str, backends: &[&TestBackend]) -> String {
    let mut text = format!(
        "[[pool]]\nname = \"{name}\"\naffinity = \"{affinity}\"\nbackend_header = true\n[pool.cookie]\nsecret = \"{SECRET}\"\n{HEALTH}"
    );
    for b in backends {
        text.push_str(&format!(
            "[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.id, b.addr
        ));
    }
    text
}

/// Listeners on every address of the proxy's own host, so the same text
/// serves a proxy in any namespace.
const LISTEN: &str =
    "[timeouts]\nconnect = \"1s\"\n[[listen]]\nbind = \"0.0.0.0:0\"\n[admin]\nbind = \"0.0.0.0:0\"\n";

async fn admin_pools(proxy: &ProxyProcess) -> String {
    http(proxy.admin, "GET", "/api/pools", &[]).await.body
}

fn count_up(pools_json: &str) -> usize {
    pools_json.matches("\"health\":\"up\"").count()
}

/// A WebSocket to `path` through the proxy with `cookie`: the socket and
/// the backend that answered.
async fn ws_with(proxy: &ProxyProcess, path: &str, cookie: &str) -> (Ws, String) {
    let (mut ws, _) = ws_connect(proxy.addr, path, Some(cookie))
        .await
        .expect("WebSocket through the proxy");
    let echo = echo(&mut ws, "hi").await;
    let backend = echo.split(':').next().unwrap_or_default().to_string();
    (ws, backend)
}

/// Resolves when the proxy closed `ws` (EOF, error or close frame).
async fn closed(ws: &mut Ws) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_backend_is_taken_out_and_its_tunnels_closed() {
    let Some(mut ns) = Netns::create(0) else {
        return;
    };
    let live = TestBackend::start_on("live", SocketAddr::new(ns.host_ip, 0)).await;
    let dead = TestBackend::start_on("dead", SocketAddr::new(ns.host_ip, 0)).await;
    let proxy = ProxyProcess::start_in(
        &ns,
        &format!(
            "{LISTEN}{}[[route]]\npool = \"nodes\"\n",
            pool("nodes", "cookie", &[&live, &dead])
        ),
    );

    // A cookie for each backend; the last plain request to `dead` leaves
    // a keep-alive connection to it in the proxy's pool.
    let (mut to_live, mut to_dead) = (None, None);
    for _ in 0..20 {
        let r = http(proxy.addr, "GET", "/", &[]).await;
        let pair = r.header("set-cookie").map(cookie_pair);
        match r.backend() {
            Some("live") => to_live = to_live.or(pair),
            Some("dead") => to_dead = to_dead.or(pair),
            other => panic!("answered by {other:?}"),
        }
        if to_live.is_some() && to_dead.is_some() {
            break;
        }
    }
    let (to_live, to_dead) = (
        to_live.expect("a live cookie"),
        to_dead.expect("a dead cookie"),
    );
    // Two keep-alive connections to `dead` in the proxy's pool: two slow
    // requests at once, each on a connection of its own.
    let pinned = [("cookie", to_dead.as_str())];
    let slow = || http(proxy.addr, "GET", "/slow", &pinned);
    let (r1, r2) = tokio::join!(slow(), slow());
    assert_eq!((r1.backend(), r2.backend()), (Some("dead"), Some("dead")));
    let pooled: Vec<SocketAddr> = dead.served_from.lock().expect("not poisoned")[..]
        .iter()
        .rev()
        .take(2)
        .copied()
        .collect();
    assert_ne!(pooled[0], pooled[1], "two connections");

    // Tunnels: three to the backend about to vanish, one to the other.
    let mut doomed = Vec::new();
    for _ in 0..3 {
        let (ws, on) = ws_with(&proxy, "/", &to_dead).await;
        assert_eq!(on, "dead");
        doomed.push(ws);
    }
    let (mut kept, on) = ws_with(&proxy, "/", &to_live).await;
    assert_eq!(on, "live");

    // The black hole: every packet between the proxy and `dead` dropped.
    ns.block_port(dead.addr.port());
    let cut = Instant::now();

    // A plain request pinned to it goes out now on a pooled connection,
    // into the silence: it must not wait for `timeouts.response` (60 s).
    let waiting = tokio::spawn({
        let (addr, cookie) = (proxy.addr, to_dead.clone());
        async move { http(addr, "GET", "/", &[("cookie", &cookie)]).await }
    });

    // A client pinned to it connects now, before any check noticed: the
    // proxy's connect gives up after `timeouts.connect` (1 s) and the
    // client lands on `live` with a new cookie.
    let started = Instant::now();
    let (ws, headers) = ws_connect(proxy.addr, "/", Some(&to_dead))
        .await
        .expect("a pinned client gets a live backend");
    let waited = started.elapsed();
    assert_eq!(headers["x-limpet-backend"], ["live"]);
    assert!(headers.contains_key("set-cookie"), "re-pinned: {headers:?}");
    assert!(
        waited < Duration::from_secs(1) + SLACK,
        "a new connection waited {waited:?}"
    );
    eprintln!("MEASURED: connect to a pinned, black-holed backend -> answered by live: {waited:?} (timeouts.connect = 1s)");
    drop(ws);

    // Active checks take it out within interval × fall + timeout.
    let detected = by(
        "active checks mark dead down",
        cut,
        cut + DETECT_BOUND + SLACK,
        || async {
            proxy
                .log_text()
                .contains("backend is down after 3 failed checks")
        },
    )
    .await;
    eprintln!("MEASURED: black hole -> marked down by active checks: {detected:?} (bound {DETECT_BOUND:?})");

    // Its tunnels are closed; the other one stays.
    for ws in &mut doomed {
        tokio::time::timeout_at(cut + DETECT_BOUND + SLACK, closed(ws))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a tunnel to the black-holed backend still open {:?} after the cut",
                    cut.elapsed()
                )
            });
    }
    eprintln!(
        "MEASURED: black hole -> its 3 tunnels closed: {:?}",
        cut.elapsed()
    );
    assert_eq!(echo(&mut kept, "still").await, "live:still");
    let metric = "limpet_proxy_tunnels_closed_total{backend=\"dead\",end=\"backend_marked_down\",pool=\"nodes\"}";
    // The proxy drops the sockets just before it counts and logs the close.
    eventually(
        "3 tunnels counted and logged as closed for the mark-down",
        || async {
            proxy.metric(metric).await == 3.0
                && proxy.log_text().matches("end=BackendMarkedDown").count() == 3
        },
    )
    .await;

    // The request that went into the black hole is sent elsewhere when
    // the checks mark the backend down.
    let r = tokio::time::timeout_at(cut + DETECT_BOUND + SLACK, waiting)
        .await
        .expect("the request on the pooled connection came back in time")
        .expect("the request task");
    assert_eq!(r.backend(), Some("live"), "{}", r.body);
    assert!(r.header("set-cookie").is_some(), "re-pinned with a cookie");
    eprintln!(
        "MEASURED: black hole -> request waiting on a pooled connection answered by live: {:?}",
        cut.elapsed()
    );

    // Their clients reconnect, with the same cookie, to the live backend.
    for _ in 0..3 {
        let (ws, on) = ws_with(&proxy, "/", &to_dead).await;
        assert_eq!(on, "live");
        drop(ws);
    }
    // Plain requests pinned to it are re-pinned.
    let r = http(proxy.addr, "GET", "/", &[("cookie", &to_dead)]).await;
    assert_eq!(r.backend(), Some("live"));
    assert!(r.header("set-cookie").is_some(), "re-pinned with a cookie");

    // Healed and back up: the pinned client reaches it again, on a new
    // connection, not on the keep-alive one from before the black hole.
    ns.heal();
    let healed = Instant::now();
    let back = by("dead is up again", healed, healed + DEADLINE, || async {
        count_up(&admin_pools(&proxy).await) == 2
    })
    .await;
    eprintln!("MEASURED: heal -> up again: {back:?} (rise = 2 × 500ms)");
    let r = http(proxy.addr, "GET", "/", &[("cookie", &to_dead)]).await;
    assert_eq!(r.backend(), Some("dead"));
    let from = dead.last_served_from().expect("served");
    assert!(
        !pooled.contains(&from),
        "a keep-alive connection from before the black hole was reused"
    );
    kept.close(None).await.ok();
    drop((doomed, kept));
    drop(proxy);
    drop(ns);
}

/// Sends everything not on the namespace's own /30 to the root side, so
/// the namespace reaches addresses of the root namespace beyond its link
/// (another host's link address) and answers clients from them.
fn route_via_host(ns: &Netns) {
    let ok = ns
        .command(std::ffi::OsStr::new("ip"))
        .args(["route", "add", "default", "via", &ns.host_ip.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "default route in {}", ns.name);
}

/// `GET path` through the proxy at `to` from the client address `from`.
async fn get_from(from: IpAddr, to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client address");
    let tcp = socket.connect(to).await.expect("connect to the proxy");
    http_on(tcp, "GET", path, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_agree_and_only_the_cut_one_sees_backends_down() {
    let Some(mut a_host) = Netns::create(1) else {
        return;
    };
    let Some(b_host) = Netns::create(2) else {
        return;
    };
    route_via_host(&a_host);
    route_via_host(&b_host);
    // The backends on the root side of A's link; B reaches them through
    // the root namespace, so both proxies have the very same config.
    let mut backends = Vec::new();
    for id in ["n1", "n2", "n3"] {
        backends.push(TestBackend::start_on(id, SocketAddr::new(a_host.host_ip, 0)).await);
    }
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let config = format!(
        "{LISTEN}{}{}[[route]]\npath_prefix = \"/c\"\npool = \"sticky\"\n[[route]]\npath_prefix = \"/h\"\npool = \"hashed\"\n",
        pool("sticky", "cookie", &refs),
        pool("hashed", "ip_hash", &refs)
    );
    let a = ProxyProcess::start_in(&a_host, &config);
    let b = ProxyProcess::start_in(&b_host, &config);

    // Cookies: a session started on one proxy keeps its backend on the
    // other (DNS round robin moving the client), WebSockets included.
    let mut sessions: Vec<(String, String)> = Vec::new();
    for i in 0..6 {
        let (first, then) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = http(first.addr, "GET", "/c", &[]).await;
        let on = r.backend().expect("a backend answered").to_string();
        let cookie = cookie_pair(r.header("set-cookie").expect("a new session's cookie"));
        let moved = http(then.addr, "GET", "/c", &[("cookie", &cookie)]).await;
        assert_eq!(moved.backend(), Some(on.as_str()), "session {i} moved");
        assert!(
            moved.header("set-cookie").is_none(),
            "the other proxy read it"
        );
        let (ws, ws_on) = ws_with(then, "/c", &cookie).await;
        assert_eq!(ws_on, on);
        drop(ws);
        sessions.push((cookie, on));
    }
    let spread: std::collections::BTreeSet<&str> =
        sessions.iter().map(|(_, on)| on.as_str()).collect();
    assert!(spread.len() >= 2, "sessions on {spread:?}");

    // ip_hash: the same client address gets the same backend from both.
    let clients = [a_host.host_ip, b_host.host_ip];
    let mut hashed = Vec::new();
    for from in clients {
        let via_a = get_from(from, a.addr, "/h", &[]).await;
        let via_b = get_from(from, b.addr, "/h", &[]).await;
        for r in [&via_a, &via_b] {
            assert!(r.body.contains(&format!("x-real-ip: {from}")), "{}", r.body);
        }
        assert_eq!(via_a.backend(), via_b.backend(), "client {from}");
        hashed.push(via_a.backend().expect("a backend").to_string());
    }

    // Cut A's links to every backend (a black hole inside A's host).
    for backend in &backends {
        a_host.block_port(backend.addr.port());
    }
    let cut = Instant::now();
    let took = by(
        "proxy A sees every backend down, B all up",
        cut,
        cut + DETECT_BOUND + SLACK,
        || async {
            assert_eq!(count_up(&admin_pools(&b).await), 6, "B's view changed");
            count_up(&admin_pools(&a).await) == 0
        },
    )
    .await;
    eprintln!("MEASURED: A cut from the backends -> A's admin API shows all down: {took:?}; B all up meanwhile");
    for pool in ["sticky", "hashed"] {
        for backend in &backends {
            let series = format!(
                "limpet_proxy_backend_up{{backend=\"{}\",pool=\"{pool}\"}}",
                backend.id
            );
            assert_eq!(b.metric(&series).await, 1.0, "B: {series}");
            assert_eq!(a.metric(&series).await, 0.0, "A: {series}");
        }
    }
    assert!(
        !b.log_text().contains("backend is down"),
        "{}",
        b.log_text()
    );
    // B serves every client as before; A has nothing to offer.
    for (cookie, on) in &sessions {
        let r = http(b.addr, "GET", "/c", &[("cookie", cookie)]).await;
        assert_eq!(r.backend(), Some(on.as_str()));
    }
    for (from, on) in clients.iter().zip(&hashed) {
        let r = get_from(*from, b.addr, "/h", &[]).await;
        assert_eq!(r.backend(), Some(on.as_str()));
    }
    assert_eq!(http(a.addr, "GET", "/c", &[]).await.status, 503);

    // Healed: A agrees with B again.
    a_host.heal();
    let healed = Instant::now();
    let back = by(
        "A sees the backends up again",
        healed,
        healed + DEADLINE,
        || async { count_up(&admin_pools(&a).await) == 6 },
    )
    .await;
    eprintln!("MEASURED: heal -> A's backends up again: {back:?}");
    for (cookie, on) in &sessions {
        let r = http(a.addr, "GET", "/c", &[("cookie", cookie)]).await;
        assert_eq!(r.backend(), Some(on.as_str()));
    }
    drop((a, b));
    drop(backends);
    drop((a_host, b_host));
}

/// The setting itself, on loopback (no namespace needed): a backend whose
/// checks fail closes its tunnels by default and keeps them with
/// `on_marked_down = "keep"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_marked_down_closes_tunnels_unless_told_to_keep_them() {
    for keep in [false, true] {
        let b1 = TestBackend::start("b1").await;
        let setting = if keep {
            "on_marked_down = \"keep\"\n"
        } else {
            ""
        };
        let proxy = ProxyProcess::start(&config(&[&b1], "", &format!("{HEALTH}{setting}")));
        let (mut ws, _) = ws_connect(proxy.addr, "/", None).await.expect("tunnel");
        assert_eq!(echo(&mut ws, "a").await, "b1:a");
        b1.unhealthy
            .store(true, std::sync::atomic::Ordering::Relaxed);
        eventually("b1 marked down", || async {
            proxy
                .log_text()
                .contains("backend is down after 3 failed checks")
        })
        .await;
        let ended = tokio::time::timeout(Duration::from_secs(4), closed(&mut ws)).await;
        assert_eq!(ended.is_err(), keep, "keep = {keep}: tunnel still open");
        if keep {
            assert_eq!(echo(&mut ws, "b").await, "b1:b");
        }
        let series = "limpet_proxy_tunnels_closed_total{backend=\"b1\",end=\"backend_marked_down\",pool=\"nodes\"}";
        let expected = if keep { 0.0 } else { 1.0 };
        eventually("the close counted", || async {
            proxy.metric(series).await == expected
        })
        .await;
    }
}

/// The second net: without health checks, TCP keepalive on the upstream
/// socket ends a quiet tunnel to a black-holed backend after `idle +
/// interval × count` (here 1 + 1 × 2 = 3 s), not after `tunnel_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_ends_a_quiet_tunnel_to_a_black_hole() {
    let Some(mut ns) = Netns::create(3) else {
        return;
    };
    let gone = TestBackend::start_on("gone", SocketAddr::new(ns.host_ip, 0)).await;
    let proxy = ProxyProcess::start_in(
        &ns,
        &format!(
            "[upstream_keepalive]\nidle = \"1s\"\ninterval = \"1s\"\ncount = 2\n{LISTEN}[[pool]]\nname = \"nodes\"\n[[pool.backend]]\nid = \"gone\"\naddress = \"{}\"\n[[route]]\npool = \"nodes\"\n",
            gone.addr
        ),
    );
    let (mut ws, _) = ws_connect(proxy.addr, "/", None).await.expect("tunnel");
    assert_eq!(echo(&mut ws, "a").await, "gone:a");
    ns.block_port(gone.addr.port());
    let cut = Instant::now();
    tokio::time::timeout_at(cut + Duration::from_secs(3) + SLACK, closed(&mut ws))
        .await
        .unwrap_or_else(|_| panic!("tunnel still open {:?} after the cut", cut.elapsed()));
    eprintln!(
        "MEASURED: black hole, no health checks -> tunnel ended by TCP keepalive: {:?} (bound 3s)",
        cut.elapsed()
    );
    eventually("the close logged with the keepalive's timeout", || async {
        proxy.log_text().contains("kind: TimedOut")
    })
    .await;
    drop(proxy);
    drop(ns);
}
