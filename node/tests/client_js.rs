//! The JavaScript client (node/client/limpet.js) tested with `node --test`
//! against two real limpet-node processes with auth and history on. Skipped,
//! loudly, when `node` is not installed.

mod common;
use common::*;
use std::process::Stdio;

const SECRET: &str = "client-js-secret-at-least-32-bytes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_passes_its_tests() {
    let node_bin = std::process::Command::new("node").arg("--version").output();
    if !node_bin.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: `node` is not installed; node/client/limpet.js was not tested");
        return;
    }
    let broker = Broker::start(Kind::Limpet).await;
    let extra =
        format!("[auth]\nrequired = true\nhmac_secret = \"{SECRET}\"\n[history]\nsize = 100\n");
    let (na, nb) = two_nodes(&broker, ["js-a", "js-b"], &extra).await;
    let urls = format!("ws://{}/ws,ws://{}/ws", na.addr, nb.addr);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/client");
    let mut child = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "--test", "test/"])
        .current_dir(dir)
        .env("LIMPET_URLS", &urls)
        .env("LIMPET_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node --test");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut r, &mut s).await;
            s
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    // Bounded so a hung test run cannot hang this one (the child is
    // killed when dropped).
    let status = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait())
        .await
        .expect("node --test finishes")
        .expect("node --test runs");
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    assert!(status.success(), "node --test failed:\n{out}\n{err}");
    assert!(out.contains("# fail 0"), "{out}");
}
