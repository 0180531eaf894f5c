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
    let dir = dir.to_path_buf();
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("client.js"))
            .args([url, count.to_string()])
            .output()
            .expect("run the socket.io client")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
