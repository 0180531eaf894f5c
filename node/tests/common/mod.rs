//! Harness: a broker (limpet-broker in-process, or a real redis-server),
//! real limpet-node processes, and WebSocket clients that speak the
//! node protocol.
#![allow(dead_code, unused_imports)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use limpet_testkit::{free_port, RedisServer};

pub use limpet_testkit::DEADLINE;

/// Which broker the nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Limpet,
    Redis,
    /// Three redis-server masters in cluster mode: nodes use sharded pub/sub.
    RedisCluster,
}

pub struct Broker {
    pub kind: Kind,
    pub addr: SocketAddr,
    limpet: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
    redis: Option<RedisServer>,
    /// The members of a Redis cluster.
    cluster: Vec<RedisServer>,
    /// The limits a limpet-broker runs with.
    limits: limpet_config::ProtocolLimits,
}

impl Broker {
    pub async fn start(kind: Kind) -> Broker {
        Self::start_with(kind, Default::default()).await
    }

    /// Starts a broker; a limpet-broker runs with `limits`.
    pub async fn start_with(kind: Kind, limits: limpet_config::ProtocolLimits) -> Broker {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(kind, addr, limits).await
    }

    /// Starts a broker on `addr` (e.g. a test namespace's veth address).
    pub async fn start_at(
        kind: Kind,
        addr: SocketAddr,
        limits: limpet_config::ProtocolLimits,
    ) -> Broker {
        let mut b = Broker {
            kind,
            addr,
            limpet: None,
            redis: None,
            cluster: Vec::new(),
            limits,
        };
        b.restart().await;
        b
    }

    /// Starts (again) on the same address.
    pub async fn restart(&mut self) {
        match self.kind {
            Kind::RedisCluster => self.start_cluster().await,
            Kind::Limpet => {
                let config = limpet_config::BrokerConfig {
                    bind: vec![self.addr],
                    limits: self.limits.clone(),
                    ..Default::default()
                };
                let broker = Arc::new(limpet_broker::server::Broker::new(config, None));
                let deadline = tokio::time::Instant::now() + DEADLINE;
                let server = loop {
                    match limpet_broker::server::Server::bind(broker.clone()).await {
                        Ok(s) => break s,
                        Err(e) => {
                            assert!(tokio::time::Instant::now() < deadline, "rebind broker: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                let (tx, rx) = tokio::sync::watch::channel(false);
                self.limpet = Some((tx, tokio::spawn(server.run(rx))));
            }
            Kind::Redis => {
                self.redis = Some(RedisServer::start_on(self.addr.port(), None, &[]).await);
            }
        }
    }

    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.limpet.take() {
            let _ = tx.send(true);
            let _ = tokio::time::timeout(DEADLINE, task).await;
        }
        // Dropping the redis-server kills it.
        self.redis = None;
        let addr = self.addr;
        eventually("broker port closed", || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The `broker = ...` lines of a node config for this broker.
    pub fn node_config(&self) -> String {
        if self.kind == Kind::RedisCluster {
            let urls: Vec<String> = self
                .cluster
                .iter()
                .map(|r| format!("\"redis://{}/\"", r.addr))
                .collect();
            format!("broker = [{}]\ncluster = true", urls.join(", "))
        } else {
            format!("broker = [\"{}\"]", self.url())
        }
    }

    async fn start_cluster(&mut self) {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "limpet-redis-cluster-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let member = RedisServer::start_on(
                port,
                Some(&dir),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
            .await;
            addrs.push(member.addr.to_string());
            self.cluster.push(member);
        }
        self.addr = self.cluster[0].addr;
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create (package redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for member in &self.cluster {
            let port = member.addr.port().to_string();
            eventually("cluster state ok", || {
                let port = port.clone();
                async move {
                    std::process::Command::new("redis-cli")
                        .args(["-p", &port, "cluster", "info"])
                        .output()
                        .is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                        })
                }
            })
            .await;
        }
    }
}

/// Two nodes on `broker` with the same `extra` config, returned once both
/// have the broker and the first has heard the second.
pub async fn two_nodes(broker: &Broker, ids: [&str; 2], extra: &str) -> (NodeProcess, NodeProcess) {
    let first = NodeProcess::start(ids[0], broker, extra);
    let second = NodeProcess::start(ids[1], broker, extra);
    first.wait_ready().await;
    second.wait_ready().await;
    first.wait_peers(1).await;
    (first, second)
}

pub struct NodeProcess {
    pub id: String,
    pub proc: limpet_testkit::Logged,
    pub addr: SocketAddr,
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl NodeProcess {
    /// Starts a node; `extra` is appended to its TOML config.
    pub fn start(id: &str, broker: &Broker, extra: &str) -> NodeProcess {
        Self::start_with(id, &broker.node_config(), extra)
    }

    /// Starts a node whose `broker = ...` lines are `broker_lines` (e.g. a
    /// relay in front of the broker).
    pub fn start_with(id: &str, broker_lines: &str, extra: &str) -> NodeProcess {
        Self::start_wrapped(id, "127.0.0.1:0", broker_lines, extra, &[])
    }

    /// Starts a node listening on `bind`, its command line prefixed with
    /// `wrap` (e.g. `ip netns exec NS` to run it in a test namespace).
    pub fn start_wrapped(
        id: &str,
        bind: &str,
        broker_lines: &str,
        extra: &str,
        wrap: &[&str],
    ) -> NodeProcess {
        // Quick node heartbeats so dead nodes are noticed fast in tests.
        let fast = "[heartbeat]\nnode_interval = \"300ms\"\nnode_timeout = \"2s\"\n";
        let extra = if extra.contains("[heartbeat]") {
            extra.replace("[heartbeat]\n", fast)
        } else {
            format!("{extra}\n{fast}")
        };
        let text = format!("id = \"{id}\"\nbind = \"{bind}\"\n{broker_lines}\n{extra}\n");
        let name = format!(
            "{id}-{}.toml",
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let path = limpet_testkit::write_temp("limpet-node-test", &name, &text);
        let node = env!("CARGO_BIN_EXE_limpet-node");
        let mut cmd = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(node);
                c
            }
            None => std::process::Command::new(node),
        };
        let mut proc = limpet_testkit::Logged::spawn(
            &format!("node {id}"),
            cmd.arg("--config").arg(&path).env(
                "RUST_LOG",
                std::env::var("LIMPET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        );
        let addr = proc.wait_addrs(&["listening for WebSocket clients"])[0];
        NodeProcess {
            id: id.to_string(),
            proc,
            addr,
        }
    }

    /// Waits until the node reports a broker connection in /health.
    pub async fn wait_ready(&self) {
        let addr = self.addr;
        eventually("node connected to the broker", || async move {
            http(addr, "GET", "/health", &[], "")
                .await
                .1
                .contains("\"broker\":\"connected\"")
        })
        .await;
    }

    /// Waits until the node has heard heartbeats from `n` other nodes.
    pub async fn wait_peers(&self, n: usize) {
        let addr = self.addr;
        let want = format!("\"peers\":{n}");
        eventually("node sees its peers", || {
            let want = want.clone();
            async move {
                http(addr, "GET", "/health", &[], "")
                    .await
                    .1
                    .contains(&want)
            }
        })
        .await;
    }

    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    pub fn log_text(&self) -> String {
        self.proc.text()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http(self.addr, "GET", "/metrics", &[], "").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

/// The headers of a valid WebSocket upgrade request (RFC 6455's sample
/// key), which the handshake tests vary one at a time.
pub const UPGRADE: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

/// A raw HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A protocol client: requests with ids, and a buffer of everything else.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket: String,
    pub node: String,
    next_id: u64,
    pending: VecDeque<Value>,
}

impl Client {
    pub async fn connect(node: &NodeProcess) -> Client {
        Self::connect_with(node, &[])
            .await
            .unwrap_or_else(|status| panic!("websocket handshake: refused with {status}"))
    }

    /// Connects with extra request headers (`X-Forwarded-For`, `Origin`);
    /// `Err(status)` when the node refuses the upgrade.
    pub async fn connect_with(node: &NodeProcess, headers: &[(&str, &str)]) -> Result<Client, u16> {
        Self::connect_url(&format!("ws://{}/ws", node.addr), headers).await
    }

    /// Connects with `?token=...`; `Err(status)` when refused.
    pub async fn connect_token(node: &NodeProcess, token: &str) -> Result<Client, u16> {
        Self::connect_url(&format!("ws://{}/ws?token={token}", node.addr), &[]).await
    }

    pub async fn connect_url(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let ws = match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
        {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16())
            }
            Err(e) => panic!("websocket handshake: {e}"),
        };
        let mut c = Client {
            ws,
            socket: String::new(),
            node: String::new(),
            next_id: 1,
            pending: VecDeque::new(),
        };
        let welcome = c.next_of("welcome").await;
        c.socket = welcome["socket"].as_str().unwrap().to_string();
        c.node = welcome["node"].as_str().unwrap().to_string();
        Ok(c)
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Next frame from the server (text parsed as JSON), or None if closed.
    async fn read(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame in time")?;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Message::Binary(b)) => {
                    let nl = b
                        .iter()
                        .position(|&x| x == b'\n')
                        .expect("binary frames have a header line");
                    let mut v: Value = serde_json::from_slice(&b[..nl]).unwrap();
                    v["binary"] = json!(b[nl + 1..].to_vec());
                    return Some(v);
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                    return Some(json!({"type": "__close", "code": code}));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends a request with a fresh id and returns its ack or error frame.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.send_raw(Message::text(req.to_string())).await;
        loop {
            let v = self
                .read()
                .await
                .expect("connection open while waiting for an ack");
            if v["id"] == json!(id) && (v["type"] == "ack" || v["type"] == "error") {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// The next ack or error frame, whatever its id (buffered ones first).
    pub async fn next_reply(&mut self) -> Value {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|v| v["type"] == "ack" || v["type"] == "error")
        {
            return self.pending.remove(pos).unwrap();
        }
        loop {
            let v = self
                .read()
                .await
                .expect("connection open while waiting for a reply");
            if v["type"] == "ack" || v["type"] == "error" {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    pub async fn ok(&mut self, req: Value) -> Value {
        let reply = self.request(req.clone()).await;
        assert_eq!(reply["type"], "ack", "{req} failed: {reply}");
        reply["result"].clone()
    }

    /// The next frame of `kind` (buffered ones first).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|v| v["type"] == kind) {
            return self.pending.remove(pos).unwrap();
        }
        loop {
            let v = self
                .read()
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for {kind}"));
            if v["type"] == kind {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Frames buffered while waiting for acks, oldest first, taken.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Frames of `kind` received so far without waiting (after a round trip).
    pub async fn drain_of(&mut self, kind: &str) -> Vec<Value> {
        self.ok(json!({"op": "ping"})).await;
        let (matching, rest): (Vec<Value>, Vec<Value>) =
            self.pending.drain(..).partition(|v| v["type"] == kind);
        self.pending = rest.into();
        matching
    }

    /// The next room event named `event`, skipping others.
    pub async fn event_named(&mut self, event: &str) -> Value {
        loop {
            let e = self.next_of("event").await;
            if e["event"] == event {
                return e;
            }
        }
    }

    /// The next frame of `kind` about socket `socket` (joined / left).
    pub async fn about(&mut self, kind: &str, socket: &str) -> Value {
        loop {
            let v = self.next_of(kind).await;
            if v["socket"] == socket {
                return v;
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.ok(json!({"op": "join", "room": room})).await
    }

    pub async fn emit(&mut self, room: &str, event: &str, data: Value) {
        self.ok(json!({"op": "emit", "room": room, "event": event, "data": data}))
            .await;
    }

    /// Reads until the server closes; returns the close code (0 if none).
    pub async fn closed_with(&mut self) -> u16 {
        loop {
            match self.read().await {
                None => return 0,
                Some(v) if v["type"] == "__close" => return v["code"].as_u64().unwrap_or(0) as u16,
                Some(_) => continue,
            }
        }
    }
}

pub use limpet_testkit::eventually;
