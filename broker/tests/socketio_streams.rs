//! What socket.io apps use Redis for, against the real `limpet-broker`
//! binary: the Streams adapter from npm with connection state recovery
//! (three socket.io servers), and the state pattern of the scaling guides
//! (room state in a hash, presence keys with a TTL and an `expired`
//! keyspace notification, counters).

mod common;
use common::*;
use limpet_testkit::eventually;

/// Runs a node script from tests/socketio with the broker's URL; returns
/// its stdout. The process is killed if it outlives the deadline.
async fn run_node(script: &str, url: &str) -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/socketio");
    assert!(
        dir.join("node_modules/@socket.io/redis-streams-adapter")
            .exists(),
        "npm fixtures missing: run `npm ci` in tests/socketio (`make test` does)"
    );
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .arg(url)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let out = tokio::time::timeout(DEADLINE * 2, child.wait_with_output())
        .await
        .expect("node script finishes within the deadline")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_adapter_crosses_servers_and_recovers_missed_messages() {
    let mut b = BrokerProcess::start(PORT_ZERO);
    let out = run_node("streams-adapter.js", &format!("redis://{}/", b.addr)).await;
    assert!(
        out.contains(r#""room":{"ok":true,"got":[["cross"],["cross"],["cross"]]}"#),
        "a room emit did not reach all three servers: {out}"
    );
    assert!(
        out.contains(
            r#""recovery":{"ok":true,"recovered":true,"got":["away-1","away-2","away-3"]}"#
        ),
        "the cut client did not recover its three messages: {out}"
    );
    b.proc.assert_alive();
    // Every XREAD BLOCK of the adapters was let go when they disconnected.
    let addr = b.addr;
    eventually(
        "the adapters' clients gone, none left blocked",
        || async move {
            let info = Client::connect(addr).await.call(&["INFO", "clients"]).await;
            info.contains("connected_clients:1\r\n") && info.contains("blocked_clients:0\r\n")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_state_presence_ttl_and_expired_notification() {
    let b = BrokerProcess::start(&format!("notify_keyspace_events = \"Ex\"\n{PORT_ZERO}"));
    let mut sub = Client::connect(b.addr).await;
    assert_eq!(
        sub.call(&["SUBSCRIBE", "__keyevent@0__:expired"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$22\r\n__keyevent@0__:expired\r\n:1\r\n"
    );
    let mut c = Client::connect(b.addr).await;
    // Room state in a hash, as the scaling guides keep it.
    assert_eq!(
        c.call(&["HSET", "room:42:state", "topic", "rust", "host", "ann"])
            .await,
        ":2\r\n"
    );
    assert_eq!(
        c.call(&["HGETALL", "room:42:state"]).await,
        "*4\r\n$5\r\ntopic\r\n$4\r\nrust\r\n$4\r\nhost\r\n$3\r\nann\r\n"
    );
    assert_eq!(c.call(&["HDEL", "room:42:state", "host"]).await, ":1\r\n");
    assert_eq!(
        c.call(&["HGETALL", "room:42:state"]).await,
        "*2\r\n$5\r\ntopic\r\n$4\r\nrust\r\n"
    );
    // Counters per server.
    assert_eq!(c.call(&["INCR", "sockets:server-a"]).await, ":1\r\n");
    assert_eq!(c.call(&["INCRBY", "sockets:server-a", "4"]).await, ":5\r\n");
    // Presence with a TTL; nobody reads the key again, so the `expired`
    // event can only come from active expiry.
    assert_eq!(
        c.call(&["SET", "presence:u", "online", "EX", "1"]).await,
        "+OK\r\n"
    );
    assert_eq!(c.call(&["EXPIRE", "room:42:state", "1"]).await, ":1\r\n");
    let mut expired = Vec::new();
    for _ in 0..2 {
        let frame = String::from_utf8_lossy(&sub.frame().await).into_owned();
        expired.push(frame);
    }
    expired.sort();
    assert_eq!(
        expired,
        [
            "*3\r\n$7\r\nmessage\r\n$22\r\n__keyevent@0__:expired\r\n$10\r\npresence:u\r\n",
            "*3\r\n$7\r\nmessage\r\n$22\r\n__keyevent@0__:expired\r\n$13\r\nroom:42:state\r\n",
        ]
    );
    assert_eq!(
        c.call(&["EXISTS", "presence:u", "room:42:state"]).await,
        ":0\r\n"
    );
    assert_eq!(c.call(&["GET", "sockets:server-a"]).await, "$1\r\n5\r\n");
    // The same through CONFIG SET: turn notifications off, nothing comes.
    assert_eq!(
        c.call(&["CONFIG", "SET", "notify-keyspace-events", ""])
            .await,
        "+OK\r\n"
    );
    assert_eq!(
        c.call(&["SET", "presence:v", "online", "PX", "1"]).await,
        "+OK\r\n"
    );
    eventually("presence:v expires", || {
        let addr = b.addr;
        async move {
            let mut c = Client::connect(addr).await;
            c.call(&["DBSIZE"]).await == ":1\r\n"
        }
    })
    .await;
    assert_eq!(
        sub.call(&["PING"]).await,
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        "no expired event once notifications are off"
    );
}
