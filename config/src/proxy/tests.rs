//! Parsing and validation tests for the `limpet-proxy` settings, and a
//! check that the shipped example file loads.

use super::*;
use crate::parse_str;
use std::path::Path;

fn parse(text: &str) -> Result<ProxyConfig, crate::ConfigError> {
    parse_str(text, Path::new("proxy.toml"))
}

const POOL: &str = r#"
[[pool]]
name = "nodes"
affinity = "cookie"
[pool.cookie]
secret = "0123456789abcdef0123"
[[pool.backend]]
id = "a"
address = "127.0.0.1:9001"
[[pool.backend]]
id = "b"
address = "localhost:9002"
weight = 3

[[route]]
pool = "nodes"
"#;

#[test]
fn empty_file_runs_on_loopback() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg, ProxyConfig::default());
    assert_eq!(cfg.listen[0].bind.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.timeouts.tunnel_idle.get().as_secs(), 3600);
}

#[test]
fn pools_and_routes() {
    let cfg = parse(POOL).unwrap();
    assert_eq!(cfg.pools[0].backends[1].weight, 3);
    assert_eq!(cfg.pools[0].balancer, Balancer::LeastConn);
    assert_eq!(cfg.routes[0].path_prefix, "/");
}

#[test]
fn errors_point_at_the_field() {
    let err = parse(&POOL.replace("pool = \"nodes\"", "pool = \"nodez\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("proxy.toml:16:8: route.0.pool: no pool named `nodez`"),
        "{err}"
    );
    let err = parse(&POOL.replace("localhost:9002", "localhost"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pool.0.backend.1.address: `localhost` is not host:port"),
        "{err}"
    );
    // A URL (an nginx proxy_pass habit) passed --check, then failed at run
    // time as a name to look up.
    let err = parse(&POOL.replace("localhost:9002", "http://127.0.0.1:9002"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`http://127.0.0.1:9002` is not host:port: write it without the scheme, as `127.0.0.1:9002`"),
        "{err}"
    );
    for bad in [
        "127.0.0.1:9002/",
        "a b:9002",
        "[::1:9002",
        "[zz]:9002",
        "host:0",
    ] {
        assert!(
            parse(&POOL.replace("localhost:9002", bad)).is_err(),
            "{bad} passed"
        );
    }
    for good in [
        "[::1]:9002",
        "node-a.internal:9002",
        "10.0.0.7:9002",
        "my_host:1",
    ] {
        assert!(
            parse(&POOL.replace("localhost:9002", good)).is_ok(),
            "{good} refused"
        );
    }
    let err = parse(&POOL.replace("affinity = \"cookie\"", "affinity = \"sticky\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("proxy.toml:4:12: unknown variant `sticky`"),
        "{err}"
    );
    let err = parse(&POOL.replace("affinity = \"cookie\"", "affinity = \"query\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pool.0.affinity: header and query affinity need affinity_key"),
        "{err}"
    );
    let err = parse("trusted_proxies = [\"10.0.0.0/99\"]")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("proxy.toml:1:"), "{err}");
}

#[test]
fn client_body_timeout_and_5xx_counting() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.timeouts.client_body.get().as_secs(), 60);
    let pool = parse(POOL).unwrap();
    assert!(!pool.pools[0].passive.fail_on_5xx);
    let err = parse("[timeouts]\nclient_body = \"0s\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timeouts.client_body: must be above 0"),
        "{err}"
    );
    assert_eq!(cfg.admin.request_timeout.get().as_secs(), 10);
    let err = parse("[admin]\nrequest_timeout = \"0s\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.request_timeout: must be above 0"),
        "{err}"
    );
}

#[test]
fn upgrade_protocols_default_to_websocket() {
    let cfg = parse(POOL).unwrap();
    assert_eq!(
        cfg.routes[0].upgrade_protocols,
        vec!["websocket".to_string()]
    );
    let err = parse(&POOL.replace(
        "pool = \"nodes\"\n",
        "pool = \"nodes\"\nupgrade_protocols = [\"web socket\"]\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("route.0.upgrade_protocols"), "{err}");
}

#[test]
fn shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in ["proxy.toml", "cluster/proxy.toml"] {
        let path = dir.join(name);
        if let Err(e) = crate::load_file::<ProxyConfig>(&path) {
            panic!("{e}");
        }
    }
}

#[test]
fn marked_down_backends_and_upstream_keepalive() {
    let cfg = parse(POOL).unwrap();
    assert!(cfg.pools[0].health.shuts_down_tunnels());
    assert_eq!(cfg.upstream_keepalive.idle.get().as_secs(), 30);
    assert_eq!(cfg.upstream_keepalive.interval.get().as_secs(), 10);
    assert_eq!(cfg.upstream_keepalive.count, 3);
    let keep = POOL.replace(
        "[[pool.backend]]\nid = \"a\"",
        "[pool.health]\non_marked_down = \"keep\"\n[[pool.backend]]\nid = \"a\"",
    );
    assert!(!parse(&keep).unwrap().pools[0].health.shuts_down_tunnels());
    let err = parse(&keep.replace("\"keep\"", "\"shutdown-sessions\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown variant `shutdown-sessions`, expected `shutdown-tunnels` or `keep`"),
        "{err}"
    );
    let off = format!("[upstream_keepalive]\nidle = 0\n{POOL}");
    assert!(parse(&off).unwrap().upstream_keepalive.idle.is_zero());
    for (bad, field) in [
        ("idle = \"500ms\"", "upstream_keepalive.idle"),
        ("interval = 0", "upstream_keepalive.interval"),
        ("count = 0", "upstream_keepalive.count"),
        ("count = 500", "upstream_keepalive.count"),
    ] {
        let err = parse(&format!("[upstream_keepalive]\n{bad}\n{POOL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

#[test]
fn socketio_affinity_and_its_session_table() {
    let cfg = parse(&POOL.replace("affinity = \"cookie\"", "affinity = \"socketio\"")).unwrap();
    let pool = &cfg.pools[0];
    assert_eq!(pool.affinity, Affinity::Socketio);
    assert_eq!(pool.socketio.max_sessions, 100_000);
    assert_eq!(pool.socketio.session_idle.get().as_secs(), 120);
    let set = POOL.replace(
        "[[pool.backend]]\nid = \"a\"",
        "[pool.socketio]\nmax_sessions = 500\nsession_idle = \"1m\"\n[[pool.backend]]\nid = \"a\"",
    );
    let cfg = parse(&set).unwrap();
    assert_eq!(cfg.pools[0].socketio.max_sessions, 500);
    assert_eq!(cfg.pools[0].socketio.session_idle.get().as_secs(), 60);
    for (bad, field) in [
        ("max_sessions = 0", "pool.0.socketio.max_sessions"),
        ("session_idle = 0", "pool.0.socketio.session_idle"),
    ] {
        let text = POOL.replace(
            "[[pool.backend]]\nid = \"a\"",
            &format!("[pool.socketio]\n{bad}\n[[pool.backend]]\nid = \"a\""),
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

#[test]
fn http2_limits() {
    let cfg = parse(POOL).unwrap();
    assert_eq!(cfg.http2, Http2Config::default());
    assert!(cfg.http2.enabled);
    assert_eq!(cfg.http2.max_concurrent_streams, 100);
    assert_eq!(cfg.http2.max_header_list_size.bytes(), 16 * 1024);
    assert_eq!(cfg.http2.max_pending_reset_streams, 20);
    assert_eq!(cfg.http2.max_error_reset_streams, 1024);
    let off = parse(&format!(
        "[http2]\nenabled = false\nmax_concurrent_streams = 10\n{POOL}"
    ))
    .unwrap();
    assert!(!off.http2.enabled);
    assert_eq!(off.http2.max_concurrent_streams, 10);
    for (bad, field) in [
        ("max_concurrent_streams = 0", "http2.max_concurrent_streams"),
        (
            "max_header_list_size = \"100b\"",
            "http2.max_header_list_size",
        ),
        (
            "max_pending_reset_streams = 0",
            "http2.max_pending_reset_streams",
        ),
        (
            "max_error_reset_streams = 0",
            "http2.max_error_reset_streams",
        ),
    ] {
        let err = parse(&format!("[http2]\n{bad}\n{POOL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

#[test]
fn tls_session_tickets_default_on() {
    let tls = |extra: &str| {
        format!("[[listen]]\nbind = \"127.0.0.1:8443\"\n[listen.tls]\n{extra}\n[[listen.tls.cert]]\ncert = \"a.pem\"\nkey = \"a.key\"\n")
    };
    let on = parse(&tls("")).unwrap();
    assert!(on.listen[0].tls.as_ref().is_some_and(|t| t.session_tickets));
    let off = parse(&tls("session_tickets = false")).unwrap();
    assert!(off.listen[0]
        .tls
        .as_ref()
        .is_some_and(|t| !t.session_tickets));
    let err = parse(&tls("session_tickets = \"yes\""))
        .unwrap_err()
        .to_string();
    // Line 4 is the `session_tickets` line.
    assert!(
        err.starts_with("proxy.toml:4:") && err.contains("expected a boolean"),
        "{err}"
    );
}
