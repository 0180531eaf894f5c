//! History recovery through limpet-proxy, with the real binaries (issue 16):
//! limpet-broker (or redis-server), three limpet-nodes with
//! `[history] size = 100`, and limpet-proxy in front of them with cookie
//! affinity. A client connects through the proxy and keeps its affinity
//! cookie, joins room `r` and sees an event with offset N; its node is
//! SIGKILLed; five messages are sent from a client on another node; the
//! first client reconnects through the proxy with the same cookie (the
//! proxy must send it to a live node) and rejoins with `since` N. It must
//! get exactly those five, in order, before the ack with `recovered: true`,
//! and nothing else after it.
//!
//! The binaries are the ones next to this test's executable
//! (`target/<profile>/`), found as in `deploy_metrics.rs`: build them first
//! (`cargo build -p limpet-node -p limpet-proxy -p limpet-broker`, or
//! `cargo test --workspace`). Every process is killed when its `Logged`
//! handle drops, the test failing or not.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use limpet_testkit::{eventually, http_get, start_binary, RedisServer, DEADLINE};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const COOKIE: &str = "limpet_sticky";

/// A protocol client over a WebSocket through the proxy.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    node: String,
    next_id: u64,
}

impl Client {
    /// Connects to the proxy's `/ws`, sending `cookie` (`name=value`) when
    /// given. Returns the client and the affinity cookie the proxy set on
    /// the 101, if it set one.
    async fn connect(proxy: SocketAddr, cookie: Option<&str>) -> (Client, Option<String>) {
        let mut req = format!("ws://{proxy}/ws").into_client_request().unwrap();
        if let Some(c) = cookie {
            req.headers_mut()
                .insert("cookie", HeaderValue::from_str(c).unwrap());
        }
        let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake in time")
            .expect("WebSocket upgrade through the proxy");
        let set = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|v| v.starts_with(&format!("{COOKIE}=")))
            .map(str::to_string);
        let mut c = Client {
            ws,
            node: String::new(),
            next_id: 1,
        };
        let welcome = c.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.node = welcome["node"]
            .as_str()
            .expect("welcome names the node")
            .into();
        (c, set)
    }

    /// The next text frame, parsed.
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("a WebSocket frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Message::Close(f) => panic!("closed by the server: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Sends `req` with a fresh id; returns the frames received before its
    /// reply, and the reply (ack or error).
    async fn request(&mut self, mut req: Value) -> (Vec<Value>, Value) {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .expect("send");
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if v["id"] == json!(id) && (v["type"] == "ack" || v["type"] == "error") {
                return (before, v);
            }
            before.push(v);
        }
    }

    async fn ok(&mut self, req: Value) -> Value {
        let (_, reply) = self.request(req.clone()).await;
        assert_eq!(reply["type"], "ack", "{req}: {reply}");
        reply["result"].clone()
    }

    /// The next room event named `name`, skipping other frames.
    async fn event_named(&mut self, name: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == "event" && v["event"] == name {
                return v;
            }
        }
    }
}

enum Kind {
    Limpet,
    Redis,
}

async fn recovery_through_the_proxy(kind: Kind) {
    // The broker.
    let (_broker, _redis, broker_addr) = match kind {
        Kind::Limpet => {
            let (p, a) = start_binary(
                "broker",
                "broker",
                "bind = [\"127.0.0.1:0\"]\n[metrics]\nenabled = false\n",
                None,
                &["listening for Redis-protocol clients"],
            );
            (Some(p), None, a[0])
        }
        Kind::Redis => {
            let r = RedisServer::start(&[]).await;
            let a = r.addr;
            (None, Some(r), a)
        }
    };

    // Three nodes with history and quick heartbeats.
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        let config = format!(
            "id = \"{id}\"\nbind = \"127.0.0.1:0\"\nbroker = [\"redis://{broker_addr}/\"]\n\
             [history]\nsize = 100\nttl = \"10m\"\n\
             [heartbeat]\nnode_interval = \"300ms\"\nnode_timeout = \"2s\"\n"
        );
        let (p, a) = start_binary(
            "node",
            id,
            &config,
            None,
            &["listening for WebSocket clients"],
        );
        nodes.push((id, p, a[0]));
    }
    for &(_, _, addr) in &nodes {
        eventually(
            "node connected to the broker and seeing 2 peers",
            || async move {
                let h = http_get(addr, "/health").await;
                h.contains("\"broker\":\"connected\"") && h.contains("\"peers\":2")
            },
        )
        .await;
    }

    // The proxy, cookie affinity, quick health checks.
    let backends: String = nodes
        .iter()
        .map(|(id, _, addr)| format!("[[pool.backend]]\nid = \"{id}\"\naddress = \"{addr}\"\n"))
        .collect();
    let proxy_config = format!(
        "[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
         [[pool]]\nname = \"nodes\"\naffinity = \"cookie\"\nbackend_header = true\n\
         [pool.cookie]\nname = \"{COOKIE}\"\nsecret = \"recovery-via-proxy-test-secret\"\n\
         [pool.health]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n\
         {backends}[[route]]\npath_prefix = \"/\"\npool = \"nodes\"\nupgrade_protocols = [\"websocket\"]\n"
    );
    let (_proxy, p) = start_binary(
        "proxy",
        "proxy",
        &proxy_config,
        None,
        &["listening for HTTP and WebSocket clients"],
    );
    let proxy = p[0];
    eventually("proxy reaches a node", || async move {
        http_get(proxy, "/health").await.starts_with("HTTP/1.1 200")
    })
    .await;

    // The client, through the proxy; it keeps the affinity cookie.
    let (mut client, cookie) = Client::connect(proxy, None).await;
    let cookie = cookie.expect("the proxy sets its affinity cookie on the 101");
    let home = client.node.clone();
    let at = client.ok(json!({"op": "join", "room": "r"})).await;
    assert!(at["epoch"].is_string(), "history is on: {at}");

    // The sender, straight on another node.
    let (_, _, sender_addr) = nodes
        .iter()
        .find(|(id, _, _)| *id != home)
        .expect("another node");
    let mut sender = {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{sender_addr}/ws"))
            .await
            .expect("connect to the sender's node");
        let mut c = Client {
            ws,
            node: String::new(),
            next_id: 1,
        };
        c.node = c.next().await["node"].as_str().unwrap().into();
        c
    };
    assert_ne!(sender.node, home);
    sender.ok(json!({"op": "join", "room": "r"})).await;
    sender
        .ok(json!({"op": "emit", "room": "r", "event": "m0", "data": 0, "self": true}))
        .await;
    let seen = client.event_named("m0").await;
    let n = seen["offset"].as_u64().expect("an event has an offset");
    let epoch = seen["epoch"].clone();
    assert!(
        epoch.as_str().is_some_and(|e| !e.is_empty()),
        "an event has an epoch: {seen}"
    );

    // The client's node dies; five messages are sent meanwhile.
    let (_, dead, _) = nodes
        .iter_mut()
        .find(|(id, _, _)| *id == home)
        .expect("the client's node is one of ours");
    dead.signal("KILL");
    dead.wait_exit();
    drop(client);
    for i in 1..=5 {
        sender
            .ok(json!({"op": "emit", "room": "r", "event": format!("m{i}"), "data": i, "self": true}))
            .await;
    }
    // The sender's own m5 comes back once m1..m5 have offsets (are in the history).
    let last = sender.event_named("m5").await;
    assert_eq!(last["offset"], json!(n + 5), "{last}");

    // Back through the proxy with the same cookie: a live node, re-pinned.
    let (mut back, repin) = Client::connect(proxy, Some(&cookie)).await;
    assert_ne!(
        back.node, home,
        "the proxy sent the client to its dead node"
    );
    let repin = repin.expect("the proxy re-pins the client on the 101");
    assert_ne!(repin, cookie, "a new affinity cookie for the new node");
    let (before_ack, ack) = back
        .request(json!({"op": "join", "room": "r", "since": {"offset": n, "epoch": epoch}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["result"]["recovered"], true, "{ack}");
    assert_eq!(ack["result"]["missed"], 5, "{ack}");
    let events: Vec<&Value> = before_ack.iter().filter(|v| v["type"] == "event").collect();
    let got: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| (e["event"].clone(), e["offset"].clone(), e["data"].clone()))
        .collect();
    let want: Vec<(Value, Value, Value)> = (1..=5)
        .map(|i| (json!(format!("m{i}")), json!(n + i), json!(i)))
        .collect();
    assert_eq!(
        got, want,
        "exactly the five missed messages, in order, before the ack"
    );
    assert!(
        events
            .iter()
            .all(|e| e["epoch"] == epoch && e["room"] == "r"),
        "{events:?}"
    );
    // Nothing replayed twice: after a round trip, no further event.
    let (after, _) = back.request(json!({"op": "ping"})).await;
    assert!(
        after.iter().all(|v| v["type"] != "event"),
        "more events after the ack: {after:?}"
    );
    // Live messages flow again, with the next offset.
    sender
        .ok(json!({"op": "emit", "room": "r", "event": "m6", "data": 6}))
        .await;
    assert_eq!(back.event_named("m6").await["offset"], json!(n + 6));

    // A wrong epoch, through the proxy, is not recovered: resync.
    let (mut other, _) = Client::connect(proxy, Some(&repin)).await;
    let (before, ack) = other
        .request(
            json!({"op": "join", "room": "r", "since": {"offset": n, "epoch": "0000000000000000"}}),
        )
        .await;
    assert_eq!(ack["result"]["recovered"], false, "{ack}");
    assert_eq!(ack["result"]["epoch"], epoch, "{ack}");
    assert!(
        before.iter().all(|v| v["type"] != "event"),
        "nothing replayed: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_through_the_proxy_over_limpet_broker() {
    recovery_through_the_proxy(Kind::Limpet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_through_the_proxy_over_redis() {
    recovery_through_the_proxy(Kind::Redis).await;
}
