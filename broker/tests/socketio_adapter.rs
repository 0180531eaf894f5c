//! The socket.io Redis adapter from npm (classic and sharded, over
//! node-redis and ioredis) with limpet-broker in place of Redis: two
//! socket.io servers share a room through the broker.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_redis_adapter_works_against_limpet_broker() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/socketio");
    assert!(
        dir.join("node_modules/@socket.io/redis-adapter").exists(),
        "npm fixtures missing: run `make test` (it runs npm ci in tests/socketio)"
    );
    let b = TestBroker::default().await;
    let url = format!("redis://{}/", b.addr);
    let script = dir.join("adapter.js");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "adapter script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["classic", "sharded", "ioredis"] {
        assert!(
            stdout.contains(&format!("{{\"kind\":\"{kind}\",\"ok\":true")),
            "{kind} adapter did not deliver across servers: {stdout}"
        );
    }
    b.stop().await;
}
