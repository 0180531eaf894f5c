//! The status page at `/` on the admin listener: behind the admin token,
//! static HTML that draws `/api/pools` live, and buttons that change a
//! backend's state. In headless Chromium (playwright-core from
//! tests/browser, installed by `make test`) with traffic and a tunnel
//! running, and with raw requests for the token and the origin checks.

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

const TOKEN: &str = "sesame-0123";

/// A request to the admin listener, with its own address as Host (what a
/// browser on the status page sends).
async fn admin(
    proxy: &ProxyProcess,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> HttpReply {
    let host = format!("Host: {}", proxy.admin);
    let mut all = vec![host.as_str()];
    all.extend_from_slice(headers);
    request(proxy.admin, method, path, &all, body).await
}

fn state_of(pools_json: &str, id: &str) -> String {
    let at = pools_json
        .find(&format!("\"id\":\"{id}\""))
        .unwrap_or_else(|| panic!("no {id} in {pools_json}"));
    let object = &pools_json[..at];
    let start = object.rfind('{').unwrap_or(0);
    let end = at + pools_json[at..].find('}').unwrap_or(pools_json.len() - at);
    let backend = &pools_json[start..end];
    backend
        .split("\"state\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_needs_the_token_and_refuses_other_origins() {
    let b1 = TestBackend::start("b1").await;
    let proxy = ProxyProcess::start(
        &config(&[&b1], "", "").replace("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n")),
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let denied = admin(&proxy, "GET", "/", &[], "").await;
    assert_eq!(denied.status, 401);
    assert!(
        denied
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic ")),
        "a browser is asked for the token"
    );
    let page = admin(&proxy, "GET", "/", &[&bearer], "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("<title>limpet-proxy status</title>"));
    assert!(
        !page.body.contains("src=\"http") && !page.body.contains("href=\"http"),
        "no external assets"
    );
    // Basic with the token as password, as a browser sends it.
    let basic = "Authorization: Basic YWRtaW46c2VzYW1lLTAxMjM=";
    assert_eq!(
        admin(&proxy, "GET", "/api/pools", &[basic], "")
            .await
            .status,
        200
    );

    // A page elsewhere cannot use a logged-in browser to drain a backend.
    let body = r#"{"state":"drain"}"#;
    let evil = admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        &[
            basic,
            "Origin: http://evil.example",
            "Content-Type: text/plain",
        ],
        body,
    )
    .await;
    assert_eq!(evil.status, 403, "{}", evil.body);
    let pools = admin(&proxy, "GET", "/api/pools", &[&bearer], "")
        .await
        .body;
    assert_eq!(state_of(&pools, "b1"), "ready");
    let own = format!("Origin: http://{}", proxy.admin);
    let ok = admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        &[basic, &own],
        body,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // Clients that are not browsers send no Origin and are unaffected.
    let ok = admin(
        &proxy,
        "PUT",
        "/api/pools/nodes/backends/b1",
        &[&bearer],
        r#"{"state":"ready"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium_shows_live_state_and_drains() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let modules = root.join("tests/browser/node_modules");
    assert!(
        modules.join("playwright-core").exists(),
        "playwright-core is not installed: run `make test` (npm ci in tests/browser)"
    );
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let proxy = ProxyProcess::start(
        &config(
            &[&b1, &b2],
            "",
            "affinity = \"none\"\nbalancer = \"round_robin\"",
        )
        .replace("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n")),
    );

    // Traffic while the page watches: requests, and one open tunnel.
    let (mut tunnel, _) = ws_connect(proxy.addr, "/chat", None).await.expect("tunnel");
    let echoed = echo(&mut tunnel, "hi").await;
    assert!(echoed.ends_with(":hi"), "{echoed}");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), proxy.addr);
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let _ = http(addr, "GET", "/", &[]).await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    let shot = std::env::temp_dir().join(format!("limpet-status-page-{}.png", std::process::id()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/status/status-page.js");
    let args = [
        format!("http://{}", proxy.admin),
        TOKEN.to_string(),
        "b2".to_string(),
        shot.display().to_string(),
    ];
    let summary = node_script(script, modules, args.to_vec()).await;
    stop.store(true, Relaxed);
    let _ = traffic.await;
    eprintln!("status page: {summary}\nscreenshot: {}", shot.display());
    assert!(summary.contains("\"ok\":true"), "{summary}");
    assert!(
        summary.contains("\"elsewhere\":[]"),
        "no external assets: {summary}"
    );
    assert!(summary.contains("\"console_errors\":[]"), "{summary}");
    assert!(summary.contains("\"error_text\":\"\""), "{summary}");
    // Both backends, up, with the tunnel on one of them.
    assert!(summary.contains("[\"b1\",\"127.0.0.1:"), "{summary}");
    assert!(summary.contains("[\"b2\",\"127.0.0.1:"), "{summary}");
    assert!(
        summary.contains("\"up\",\"drain\""),
        "b2 drained on the page: {summary}"
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot"
    );
    // The button really called the API.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let pools = admin(&proxy, "GET", "/api/pools", &[&bearer], "")
        .await
        .body;
    assert_eq!(state_of(&pools, "b2"), "drain");
    assert_eq!(state_of(&pools, "b1"), "ready");
    drop(tunnel);
}
