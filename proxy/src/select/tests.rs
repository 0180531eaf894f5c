//! Backend selection as the request path sees it: cookie, hash key and
//! balancer through the one entry point.

use super::*;
use http::HeaderValue;
use std::sync::atomic::Ordering::Relaxed;

const COOKIE_POOL: &str = "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"0123456789abcdef0123\"";

fn client() -> IpAddr {
    "203.0.113.7".parse().unwrap()
}

fn cookie_wish(pool: &Pool, value: &str) -> Wish {
    let mut headers = HeaderMap::new();
    let cookie = format!("other=1; {}={value}", pool.config.cookie.name);
    headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
    Wish::read(pool, &headers, &Uri::from_static("/"), client())
}

/// The backend id a `Set-Cookie` value pins the client to.
fn pinned_id(pool: &Pool, set_cookie: &str) -> String {
    let value = set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v)
        .unwrap();
    pool.sealer.open(value).unwrap()
}

#[test]
fn valid_cookie_on_a_healthy_backend_goes_there_without_a_new_cookie() {
    let pool = Pool::for_test(COOKIE_POOL, &[1, 1, 1]);
    let wish = cookie_wish(&pool, &pool.sealer.seal("b2"));
    assert_eq!(wish, Wish::Cookie(Pinned::Backend(2)));
    for _ in 0..5 {
        let choice = select(&pool, &wish, &[]).unwrap();
        assert_eq!(choice.index, 2);
        assert_eq!(choice.outcome, Outcome::Hit);
        assert_eq!(choice.set_cookie, None);
    }
    // A drained backend still takes the clients pinned to it.
    pool.backends[2].set_admin_state(AdminState::Drain);
    assert_eq!(select(&pool, &wish, &[]).unwrap().index, 2);
}

#[test]
fn forged_or_missing_cookie_gets_a_backend_and_a_fresh_cookie_naming_it() {
    let pool = Pool::for_test(COOKIE_POOL, &[1, 1, 1]);
    let other_key = cookie::Sealer::new(b"another secret entirely......").seal("b1");
    for (wish, outcome) in [
        (cookie_wish(&pool, "not-a-sealed-value"), Outcome::Invalid),
        (cookie_wish(&pool, &other_key), Outcome::Invalid),
        (
            cookie_wish(&pool, &pool.sealer.seal("gone")),
            Outcome::Invalid,
        ),
        (
            Wish::read(&pool, &HeaderMap::new(), &Uri::from_static("/"), client()),
            Outcome::New,
        ),
    ] {
        let choice = select(&pool, &wish, &[]).unwrap();
        assert_eq!(choice.outcome, outcome, "{wish:?}");
        let set_cookie = choice.set_cookie.expect("a fresh cookie");
        assert!(set_cookie.starts_with("limpet_sticky="), "{set_cookie}");
        assert_eq!(
            pinned_id(&pool, &set_cookie),
            pool.backends[choice.index].id
        );
    }
}

#[test]
fn cookie_on_an_unhealthy_or_failed_backend_is_re_pinned_elsewhere() {
    let pool = Pool::for_test(COOKIE_POOL, &[1, 1]);
    let wish = cookie_wish(&pool, &pool.sealer.seal("b0"));
    pool.backends[0].set_healthy(false);
    let choice = select(&pool, &wish, &[]).unwrap();
    assert_eq!((choice.index, choice.outcome), (1, Outcome::Down));
    assert_eq!(pinned_id(&pool, &choice.set_cookie.unwrap()), "b1");
    // Healthy again, but this request already failed on it.
    pool.backends[0].set_healthy(true);
    let choice = select(&pool, &wish, &[0]).unwrap();
    assert_eq!((choice.index, choice.outcome), (1, Outcome::Down));
    // Maintenance moves pinned clients too.
    pool.backends[0].set_admin_state(AdminState::Maint);
    assert_eq!(select(&pool, &wish, &[]).unwrap().index, 1);
}

#[test]
fn hash_key_always_picks_the_same_backend_and_needs_no_cookie() {
    let pool = Pool::for_test("affinity = \"ip_hash\"", &[1, 1, 1, 1]);
    let headers = HeaderMap::new();
    let uri = Uri::from_static("/");
    let mut seen = std::collections::HashSet::new();
    for k in 0..64u8 {
        let ip = IpAddr::from([198, 18, 0, k]);
        let wish = Wish::read(&pool, &headers, &uri, ip);
        assert_eq!(wish, Wish::Key(vec![198, 18, 0, k]));
        let first = select(&pool, &wish, &[]).unwrap();
        assert_eq!(first.outcome, Outcome::Hashed);
        assert_eq!(first.set_cookie, None);
        for _ in 0..3 {
            assert_eq!(select(&pool, &wish, &[]).unwrap(), first);
        }
        // Its backend failed for this request: another one, never it.
        let second = select(&pool, &wish, &[first.index]).unwrap();
        assert_ne!(second.index, first.index);
        seen.insert(first.index);
    }
    assert_eq!(seen.len(), 4, "64 addresses spread over every backend");
}

#[test]
fn header_affinity_without_the_header_falls_back_to_the_balancer() {
    let pool = Pool::for_test("affinity = \"header\"\naffinity_key = \"x-room\"", &[1, 1]);
    let uri = Uri::from_static("/");
    let wish = Wish::read(&pool, &HeaderMap::new(), &uri, client());
    assert_eq!(wish, Wish::Any);
    assert_eq!(
        select(&pool, &wish, &[]).unwrap().outcome,
        Outcome::Balanced
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-room", HeaderValue::from_static("lobby"));
    let wish = Wish::read(&pool, &headers, &uri, client());
    assert_eq!(wish, Wish::Key(b"lobby".to_vec()));
}

#[test]
fn the_balancer_spreads_sessions_without_affinity() {
    let pool = Pool::for_test(
        "affinity = \"none\"\nbalancer = \"round_robin\"",
        &[1, 1, 1],
    );
    let wish = Wish::read(&pool, &HeaderMap::new(), &Uri::from_static("/"), client());
    assert_eq!(wish, Wish::Any);
    let mut counts = [0usize; 3];
    for _ in 0..30 {
        let choice = select(&pool, &wish, &[]).unwrap();
        assert_eq!(choice.outcome, Outcome::Balanced);
        assert_eq!(choice.set_cookie, None);
        counts[choice.index] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
}

#[test]
fn no_backend_says_why() {
    let pool = Pool::for_test("", &[1, 1]);
    assert_eq!(
        select(&pool, &Wish::Any, &[0, 1]),
        Err(NoBackend::Unreachable)
    );
    for b in &pool.backends {
        b.set_healthy(false);
    }
    assert_eq!(select(&pool, &Wish::Any, &[]), Err(NoBackend::NoneUp));
    let pool = Pool::for_test("max_connections_per_backend = 1", &[1, 1]);
    for b in &pool.backends {
        b.active.store(1, Relaxed);
    }
    assert_eq!(select(&pool, &Wish::Any, &[]), Err(NoBackend::AllFull));
}

/// A mark-down reaches the tunnels and requests open when it happens, not
/// those that start later (a tunnel opened after the backend came back
/// must not be closed by an old verdict).
#[tokio::test]
async fn a_shutdown_reaches_only_sessions_open_before_it() {
    use std::time::Duration;
    let pool = Pool::for_test("", &[1]);
    let backend = &pool.backends[0];
    backend.shutdown_sessions();
    let waiting = backend.sessions_shut_down();
    tokio::pin!(waiting);
    let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
    assert!(early.is_err(), "an earlier shutdown was seen");
    backend.shutdown_sessions();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the shutdown reaches it");
}

const SOCKETIO_POOL: &str =
    "affinity = \"socketio\"\n[pool.cookie]\nsecret = \"0123456789abcdef0123\"";

fn socketio_wish(pool: &Pool, uri: &'static str, cookie: Option<&str>) -> Wish {
    let mut headers = HeaderMap::new();
    if let Some(value) = cookie {
        let cookie = format!("{}={value}", pool.config.cookie.name);
        headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
    }
    Wish::read(pool, &headers, &Uri::from_static(uri), client())
}

#[test]
fn socketio_sids_go_to_their_backend_or_get_session_unknown() {
    let pool = Pool::for_test(SOCKETIO_POOL, &[1, 1, 1]);
    let table = pool.sids.as_ref().expect("a socketio pool has a sid table");
    table.insert("S1", "b1".into(), Instant::now());
    table.insert("S9", "removed".into(), Instant::now());

    // A handshake: no sid, balanced, and a cookie issued for browsers.
    let wish = socketio_wish(&pool, "/socket.io/?EIO=4&transport=polling&t=x", None);
    assert_eq!(
        wish,
        Wish::Session {
            sid: Sid::Absent,
            pinned: Pinned::Absent,
            handshake: true
        }
    );
    let choice = select(&pool, &wish, &[]).unwrap();
    assert_eq!(choice.outcome, Outcome::New);
    assert!(choice.set_cookie.is_some());

    // A known sid wins over round robin, and over a cookie naming another.
    let wish = socketio_wish(
        &pool,
        "/socket.io/?EIO=4&transport=websocket&sid=S1",
        Some(&pool.sealer.seal("b0")),
    );
    for _ in 0..4 {
        let choice = select(&pool, &wish, &[]).unwrap();
        assert_eq!((choice.index, choice.outcome), (1, Outcome::Sid));
        assert_eq!(choice.set_cookie, None);
    }
    // Drain keeps sessions; down, maint, a failed attempt or removal end them.
    pool.backends[1].set_admin_state(AdminState::Drain);
    assert_eq!(select(&pool, &wish, &[]).unwrap().index, 1);
    assert_eq!(select(&pool, &wish, &[1]), Err(NoBackend::SessionGone));
    pool.backends[1].set_admin_state(AdminState::Maint);
    assert_eq!(select(&pool, &wish, &[]), Err(NoBackend::SessionGone));
    pool.backends[1].set_admin_state(AdminState::Ready);
    pool.backends[1].set_healthy(false);
    assert_eq!(select(&pool, &wish, &[]), Err(NoBackend::SessionGone));
    let removed = socketio_wish(&pool, "/socket.io/?EIO=4&transport=polling&sid=S9", None);
    assert!(matches!(removed, Wish::Session { sid: Sid::Gone, .. }));
    assert_eq!(select(&pool, &removed, &[]), Err(NoBackend::SessionGone));

    // An unknown sid (another instance's, or forgotten) follows the
    // cookie when there is one, and is balanced otherwise.
    let wish = socketio_wish(
        &pool,
        "/socket.io/?EIO=4&transport=polling&sid=ELSEWHERE",
        Some(&pool.sealer.seal("b2")),
    );
    let choice = select(&pool, &wish, &[]).unwrap();
    assert_eq!((choice.index, choice.outcome), (2, Outcome::Hit));
    let wish = socketio_wish(
        &pool,
        "/socket.io/?EIO=4&transport=polling&sid=ELSEWHERE",
        None,
    );
    assert!(matches!(
        wish,
        Wish::Session {
            sid: Sid::Unknown,
            handshake: false,
            ..
        }
    ));
    assert!(select(&pool, &wish, &[]).is_ok());
    let stats = table.stats();
    assert_eq!((stats.hits, stats.misses), (2, 2));
}

#[test]
fn the_sid_table_survives_a_reload_with_its_new_limits() {
    let pool = Pool::for_test(SOCKETIO_POOL, &[1, 1]);
    let table = pool.sids.clone().unwrap();
    table.insert("S1", "b1".into(), Instant::now());
    table.insert("S2", "b0".into(), Instant::now());
    let mut cfg = pool.config.clone();
    cfg.socketio.max_sessions = 1;
    let reloaded = Pool::new(cfg, Some(&pool)).unwrap();
    let kept = reloaded.sids.as_ref().unwrap();
    assert!(std::sync::Arc::ptr_eq(kept, &table));
    assert_eq!(kept.len(), 1, "shrunk to the new bound");
    assert_eq!(
        kept.lookup("S2", Instant::now()),
        socketio::SidLookup::Known("b0".into())
    );
    let cookie_pool = Pool::for_test(COOKIE_POOL, &[1]);
    assert!(cookie_pool.sids.is_none());
}
