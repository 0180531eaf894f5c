//! Real socket.io servers and clients from npm behind limpet-proxy.
//!
//! socket.io starts every session with HTTP long-polling and upgrades to a
//! WebSocket later; every request of a session must reach the node that
//! holds it. With cookie affinity every client works; with affinity off,
//! most handshakes fail — the reason a sticky proxy exists. `make test`
//! installs the npm packages into tests/socketio/node_modules.

mod common;
use common::*;
use limpet_testkit::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/socketio");
    assert!(
        dir.join("node_modules/socket.io").exists(),
        "socket.io is not installed: run `make test` (it runs npm ci in tests/socketio)"
    );
    dir
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_nodes(dir: &Path) -> (Vec<Node>, Vec<(String, u16)>) {
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for id in ["io1", "io2", "io3"] {
        let port = free_port();
        let child = Command::new("node")
            .arg(dir.join("server.js"))
            .args([port.to_string(), id.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("run node (Debian package nodejs)");
        nodes.push(Node(child));
        addrs.push((id.to_string(), port));
    }
    for (_, port) in &addrs {
        let port = *port;
        eventually("socket.io server listens", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }
    (nodes, addrs)
}

fn proxy_config(addrs: &[(String, u16)], pool: &str) -> String {
    let mut text = format!("[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"io\"\n{pool}\n");
    for (id, port) in addrs {
        text.push_str(&format!(
            "[[pool.backend]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    text.push_str("[[route]]\npool = \"io\"\n");
    text
}

/// Runs the npm client against `url`; returns its JSON summary line.
async fn run_clients(dir: &Path, url: &str, count: usize) -> String {
    let args = vec![url.to_string(), count.to_string()];
    node_script(dir.join("client.js"), dir.join("node_modules"), args).await
}

fn field(summary: &str, name: &str) -> usize {
    let key = format!("\"{name}\":");
    summary
        .split(&key)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_needs_stickiness_and_gets_it() {
    let dir = fixtures();
    let (_nodes, addrs) = start_nodes(&dir).await;
    let clients = 30;

    let sticky = ProxyProcess::start(&proxy_config(
        &addrs,
        "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"socket.io test secret\"",
    ));
    let summary = run_clients(&dir, &format!("http://{}", sticky.addr), clients).await;
    assert_eq!(
        field(&summary, "ok"),
        clients,
        "every client works behind cookie affinity: {summary}"
    );
    assert_eq!(field(&summary, "failed"), 0, "{summary}");
    assert_eq!(
        field(&summary, "websocket"),
        clients,
        "every client upgraded to a websocket: {summary}"
    );
    for (id, _) in &addrs {
        assert!(
            summary.contains(&format!("\"{id}\":")),
            "sessions spread over all nodes: {summary}"
        );
    }

    let loose = ProxyProcess::start(&proxy_config(
        &addrs,
        "affinity = \"none\"\nbalancer = \"round_robin\"",
    ));
    let summary = run_clients(&dir, &format!("http://{}", loose.addr), clients).await;
    let failed = field(&summary, "failed");
    assert!(
        failed > clients / 2,
        "without affinity most sessions should break: {summary}"
    );
    eprintln!("without affinity: {summary}");
}

/// Runs `proxy/tests/socketio/cookieless-client.js` (Node clients without
/// `withCredentials`) against `url`; returns its JSON summary line.
async fn run_cookieless_clients(dir: &Path, url: &str, count: usize) -> String {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio/cookieless-client.js");
    let args = vec![url.to_string(), count.to_string()];
    node_script(script, dir.join("node_modules"), args).await
}

/// Node's `socket.io-client` keeps no cookies unless `withCredentials` is
/// set, so behind cookie affinity its polling requests scatter over the
/// nodes and most sessions break. `affinity = "socketio"` follows the
/// engine.io sid instead: every session works, polling then WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_affinity_needs_no_cookies() {
    let dir = fixtures();
    let (_nodes, addrs) = start_nodes(&dir).await;
    let clients = 30;

    let proxy = ProxyProcess::start(&proxy_config(
        &addrs,
        "affinity = \"socketio\"\n[pool.cookie]\nsecret = \"socket.io test secret\"",
    ));
    let summary = run_cookieless_clients(&dir, &format!("http://{}", proxy.addr), clients).await;
    eprintln!("socketio affinity, no cookies: {summary}");
    assert_eq!(
        field(&summary, "ok"),
        clients,
        "every session works: {summary}"
    );
    assert_eq!(field(&summary, "failed"), 0, "{summary}");
    assert_eq!(field(&summary, "connect_error"), 0, "{summary}");
    assert_eq!(field(&summary, "disconnect"), 0, "{summary}");
    assert_eq!(
        field(&summary, "upgraded"),
        clients,
        "every session alive on its WebSocket after the upgrade: {summary}"
    );
    let nodes_used = addrs
        .iter()
        .filter(|(id, _)| summary.contains(&format!("\"{id}\":")))
        .count();
    assert!(nodes_used > 1, "sessions spread over the nodes: {summary}");
    let learned = proxy
        .metric("limpet_proxy_socketio_handshakes_total{pool=\"io\",result=\"learned\"}")
        .await;
    assert!(
        learned >= clients as f64,
        "every handshake's sid learned: {learned}"
    );
    let hits = proxy
        .metric("limpet_proxy_socketio_sid_lookups_total{pool=\"io\",result=\"hit\"}")
        .await;
    // At least the polling hello and the upgrade of each session.
    assert!(hits >= 2.0 * clients as f64, "sid hits: {hits}");
    let sessions = proxy
        .metric("limpet_proxy_socketio_sessions{pool=\"io\"}")
        .await;
    assert!(
        sessions >= clients as f64,
        "sessions in the table: {sessions}"
    );

    // The problem this solves: the same clients behind cookie affinity.
    let cookie = ProxyProcess::start(&proxy_config(
        &addrs,
        "affinity = \"cookie\"\n[pool.cookie]\nsecret = \"socket.io test secret\"",
    ));
    let summary = run_cookieless_clients(&dir, &format!("http://{}", cookie.addr), clients).await;
    eprintln!("cookie affinity, no cookies: {summary}");
    assert!(
        field(&summary, "failed") > 0,
        "cookie affinity cannot hold clients without a cookie jar: {summary}"
    );
}

/// One engine.io polling request through the proxy: `(status, backend, body)`.
async fn poll(
    proxy: std::net::SocketAddr,
    method: &str,
    query: &str,
    body: &str,
) -> (u16, String, String) {
    let path = format!("/socket.io/?EIO=4&transport=polling{query}");
    let reply = request(
        proxy,
        method,
        &path,
        &["Content-Type: text/plain;charset=UTF-8"],
        body,
    )
    .await;
    let backend = reply.header("x-limpet-backend").unwrap_or("").to_string();
    (reply.status, backend, reply.body)
}

/// The sid of an engine.io open packet.
fn sid_of(open: &str) -> String {
    open.split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {open}"))
        .to_string()
}

/// A session's requests follow its sid to the node that issued it; once
/// that node is gone the client gets engine.io's own "session unknown"
/// (and reconnects) instead of a node that never heard of it. A sid the
/// proxy does not know is balanced, and its node says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_sid_follows_its_node_and_ends_cleanly_when_it_is_gone() {
    let dir = fixtures();
    let (mut nodes, addrs) = start_nodes(&dir).await;
    let proxy = ProxyProcess::start(&proxy_config(
        &addrs,
        "affinity = \"socketio\"\nbalancer = \"round_robin\"\nbackend_header = true",
    ));
    let (status, node, open) = poll(proxy.addr, "GET", "", "").await;
    assert_eq!(status, 200, "{open}");
    let sid = sid_of(&open);
    let with_sid = format!("&sid={sid}");
    // Round robin would move every other request; the sid holds them.
    for _ in 0..4 {
        let (status, on, body) = poll(proxy.addr, "POST", &with_sid, "40").await;
        assert_eq!(
            (status, on.as_str(), body.as_str()),
            (200, node.as_str(), "ok")
        );
    }
    // The handshake answer had no cookie to hold the client: only the sid.
    let unknown = poll(proxy.addr, "POST", "&sid=not-a-session", "40").await;
    assert_eq!(unknown.0, 400, "the node answers for a sid nobody issued");
    assert!(unknown.2.contains("Session ID unknown"), "{}", unknown.2);

    // The session's node dies: its sid gets engine.io's answer from the proxy.
    let index = addrs
        .iter()
        .position(|(id, _)| *id == node)
        .expect("a node id");
    let port = addrs[index].1;
    nodes.remove(index);
    eventually("the node's port refuses", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    let (status, on, body) = poll(proxy.addr, "POST", &with_sid, "40").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(on, "", "answered by the proxy, not by a node");
    assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
    // A new session still works, on a live node.
    let (status, on, _) = poll(proxy.addr, "GET", "", "").await;
    assert_eq!(status, 200);
    assert_ne!(on, node);
}
