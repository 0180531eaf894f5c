//! Test harness: WebSocket/HTTP backends that say who they are, the real
//! `limpet-proxy` binary on port 0, and small raw clients.
#![allow(dead_code, unused_imports)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

pub use limpet_testkit::DEADLINE;

pub mod pki;

/// A backend: `GET /health` (200, or 503 when told to fail), `/slow` (answers
/// after 3 s), `/upload` (answers once it has read the whole body), WebSocket echo
/// that prefixes each message with its id, and any other request answered
/// with its id and the request headers it received.
pub struct TestBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub unhealthy: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    /// The proxy-side address of the connection each request other than
    /// `/health` came on, in order: tells a reused keep-alive connection
    /// from a fresh one.
    pub served_from: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(id: &str) -> TestBackend {
        Self::start_on(id, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(id: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let unhealthy = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let served_from = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (id2, unhealthy2, requests2, served2) = (
            id.to_string(),
            unhealthy.clone(),
            requests.clone(),
            served_from.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let (id, unhealthy, requests, served) = (
                    id2.clone(),
                    unhealthy2.clone(),
                    requests2.clone(),
                    served2.clone(),
                );
                conns.spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (id, unhealthy, requests) =
                            (id.clone(), unhealthy.clone(), requests.clone());
                        if req.uri().path() != "/health" {
                            if let Ok(mut s) = served.lock() {
                                s.push(peer);
                            }
                        }
                        async move {
                            if req.uri().path() == "/upload" {
                                return Ok(upload_respond(&id, &requests, req).await);
                            }
                            if req.uri().path() == "/slow" {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            Ok::<_, Infallible>(backend_respond(&id, &unhealthy, &requests, req))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestBackend {
            id: id.to_string(),
            addr,
            unhealthy,
            requests,
            served_from,
            task,
        }
    }

    /// Where the last request other than `/health` came from.
    pub fn last_served_from(&self) -> Option<SocketAddr> {
        self.served_from.lock().ok()?.last().copied()
    }

    /// Stops accepting and drops every connection; returns once the port
    /// refuses connections (until then the kernel may still accept them).
    pub async fn kill(&self) {
        self.task.abort();
        let addr = self.addr;
        eventually("the killed backend's port refuses", || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a test backend answers to `/big`: 3.25 MB of numbered lines, so
/// a piece lost, doubled or moved shows.
pub fn big_body() -> String {
    (0..250_000).map(|i| format!("line {i:07}\n")).collect()
}

/// `/upload`: reads the whole request body before answering, as most real
/// backends do, so a slow upload keeps the proxy waiting for the answer.
async fn upload_respond(
    id: &str,
    requests: &AtomicUsize,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    requests.fetch_add(1, Relaxed);
    let (status, body) = match req.into_body().collect().await {
        Ok(b) => (
            StatusCode::OK,
            format!("backend={id}\nbytes={}\n", b.to_bytes().len()),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("backend={id}\nbad body: {e}\n"),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn backend_respond(
    id: &str,
    unhealthy: &AtomicBool,
    requests: &AtomicUsize,
    mut req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() == "/health" {
        return if unhealthy.load(Relaxed) {
            text(StatusCode::SERVICE_UNAVAILABLE, "sick\n".into())
        } else {
            text(StatusCode::OK, "ok\n".into())
        };
    }
    requests.fetch_add(1, Relaxed);
    if req.uri().path() == "/big" {
        return text(StatusCode::OK, big_body());
    }
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        if req.uri().path() == "/refuse-upgrade" {
            return text(StatusCode::FORBIDDEN, format!("{id} refuses\n"));
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let id = id.to_string();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(t)
                        if ws.send(Message::text(format!("{id}:{t}"))).await.is_err() =>
                    {
                        break
                    }
                    Message::Text(_) => {}
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
        let h = r.headers_mut();
        h.insert("connection", "upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        return r;
    }
    let mut body = format!("backend={id}\n");
    for (k, v) in req.headers() {
        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    text(StatusCode::OK, body)
}

/// The real proxy binary with a config file; learns its ports from the log.
pub struct ProxyProcess {
    pub proc: limpet_testkit::Logged,
    pub config_path: std::path::PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

pub fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    limpet_testkit::write_temp("limpet-proxy-test", name, text)
}

static CONFIG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl ProxyProcess {
    pub fn start(config_text: &str) -> ProxyProcess {
        Self::launch(
            std::process::Command::new(env!("CARGO_BIN_EXE_limpet-proxy")),
            config_text,
            None,
        )
    }

    /// The proxy with one more environment variable.
    pub fn start_with_env(config_text: &str, key: &str, value: &std::ffi::OsStr) -> ProxyProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_limpet-proxy"));
        cmd.env(key, value);
        Self::launch(cmd, config_text, None)
    }

    /// The proxy inside a network namespace (a "host" of the fault
    /// tests), with its listeners bound to `0.0.0.0:0` in the config;
    /// `addr` and `admin` are then the namespace's address and those ports.
    pub fn start_in(ns: &limpet_testkit::netns::Netns, config_text: &str) -> ProxyProcess {
        let binary = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_limpet-proxy"));
        Self::launch(ns.command(binary), config_text, Some(ns.ns_ip))
    }

    fn launch(
        mut cmd: std::process::Command,
        config_text: &str,
        ip: Option<std::net::IpAddr>,
    ) -> ProxyProcess {
        let path = write_temp(
            &format!("proxy-{}.toml", CONFIG_SEQ.fetch_add(1, Relaxed)),
            config_text,
        );
        let mut proc = limpet_testkit::Logged::spawn(
            "limpet-proxy",
            cmd.arg("--config").arg(&path).env("RUST_LOG", "info"),
        );
        let mut addrs =
            proc.wait_addrs(&["listening for HTTP and WebSocket clients", "admin listener"]);
        if let Some(ip) = ip {
            for a in &mut addrs {
                a.set_ip(ip);
            }
        }
        ProxyProcess {
            proc,
            config_path: path,
            addr: addrs[0],
            admin: addrs[1],
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.text()
    }

    pub async fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", &[]).await.body
    }

    /// A metric line's value, 0 when absent.
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }
}

/// Config text for a pool of `backends` behind one route, listener and
/// admin on port 0. `pool_extra` lands inside `[[pool]]`.
pub fn config(backends: &[&TestBackend], top_extra: &str, pool_extra: &str) -> String {
    let head = format!(
        "{top_extra}\n[[listen]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"nodes\"\nbackend_header = true\n{pool_extra}\n"
    );
    head + &backends_and_route(backends)
}

/// The end of every test config: `backends` as the `[[pool.backend]]`s of
/// the pool `nodes` opened above, and the route to it.
pub fn backends_and_route(backends: &[&TestBackend]) -> String {
    let mut text = String::new();
    for b in backends {
        text.push_str(&format!(
            "[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.id, b.addr
        ));
    }
    text.push_str("[[route]]\npool = \"nodes\"\n");
    text
}

pub struct HttpReply {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The backend id a test backend wrote in the body.
    pub fn backend(&self) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix("backend="))
    }
}

/// One HTTP/1.1 request with `body` on a fresh connection, `Connection:
/// close`; `headers` are whole header lines (`Host: test.local` unless one
/// of them is a Host).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> HttpReply {
    let s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str("Host: test.local\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    exchange(s, &req).await
}

/// Writes a whole request and reads the reply until the server closes.
async fn exchange(mut s: TcpStream, req: &str) -> HttpReply {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read reply");
    parse_reply(&raw)
}

/// Runs a Node script with `modules` as its `NODE_PATH` (the npm packages
/// `make test` installs under tests/); returns its stdout, trimmed.
pub async fn node_script(
    script: std::path::PathBuf,
    modules: std::path::PathBuf,
    args: Vec<String>,
) -> String {
    let shown = script.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args(args)
            .env("NODE_PATH", modules)
            .output()
            .expect("run node (Debian package nodejs)")
    })
    .await
    .expect("the node script's task");
    assert!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One HTTP/1.1 request on a fresh connection, `Connection: close`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    let s = TcpStream::connect(addr).await.expect("connect");
    http_on(s, method, path, headers).await
}

/// [`http`] on a connection the caller made (e.g. from a chosen source
/// address).
pub async fn http_on(
    s: TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    exchange(s, &req).await
}

pub fn parse_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    // Bodies here are small; undo chunked encoding if used.
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|x| x == "chunked"))
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket through the proxy; returns the socket and the 101's headers.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> Result<(Ws, BTreeMap<String, Vec<String>>), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(tungstenite::Error::Io)?;
    let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake in time")?;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in resp.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    Ok((ws, headers))
}

/// Sends `text` and returns the echo, e.g. `b2:text`.
pub async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return t.to_string();
        }
    }
}

/// `name=value` of the cookie a response set.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub use limpet_testkit::eventually;
