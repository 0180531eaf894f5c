//! The load generator: WebSocket echo round trips (plain, or `wss://`
//! through `tls_load`), idle connections held cheaply, and Redis-protocol
//! fan-out (rooms live in `rooms`). Connections are spread over
//! several 127.0.0.x source addresses so ephemeral ports never run out.

use crate::echo_server::small_ws_config;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const SOURCES: usize = 8;

/// Raises the soft open-files limit to the hard one.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Connects from 127.0.0.(1 + i % SOURCES).
pub async fn connect_from(i: usize, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = IpAddr::from([127, 0, 0, 1 + (i % SOURCES) as u8]);
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub count: u64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
}

pub(crate) fn summarize(h: &Histogram<u64>, elapsed: Duration, errors: u64) -> Latency {
    Latency {
        count: h.len(),
        per_sec: h.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        errors,
    }
}

/// What the clients recorded into a shared histogram, once they are done.
pub(crate) fn merged(all: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    all.lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram())
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `conns` WebSocket clients each doing closed-loop echo round trips of
/// `size`-byte messages for `duration`; targets are used round robin.
pub async fn echo(
    targets: &[SocketAddr],
    conns: usize,
    size: usize,
    duration: Duration,
) -> Latency {
    echo_over(targets, conns, size, duration, None, || ())
        .await
        .0
}

/// [`echo`], over TLS (`wss://`) when `tls` is given; `probe` is called
/// once every connection is open (before the first message) and once all
/// are done, so the caller can read the contender's CPU time and memory
/// over the echo alone, without the handshakes.
pub async fn echo_over<T, P: Fn() -> T>(
    targets: &[SocketAddr],
    conns: usize,
    size: usize,
    duration: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    probe: P,
) -> (Latency, [T; 2]) {
    let all = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let target = targets[i % targets.len()];
        let run = EchoConn {
            all: all.clone(),
            errors: errors.clone(),
            ready: ready.clone(),
            size,
            duration,
        };
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            match tls {
                None => {
                    let ws = async {
                        let tcp = connect_from(i, target).await.ok()?;
                        ws_handshake(target, tcp).await
                    }
                    .await;
                    run.run(ws).await;
                }
                Some(config) => {
                    let ws = async {
                        let tls = crate::tls_load::connect(i, target, config).await.ok()?;
                        ws_handshake(target, tls).await
                    }
                    .await;
                    run.run(ws).await;
                }
            }
        }));
    }
    ready.wait().await;
    let first = probe();
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().min(duration + Duration::from_secs(1));
    let last = probe();
    let h = merged(&all);
    (summarize(&h, elapsed, errors.load(Relaxed)), [first, last])
}

async fn ws_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    target: SocketAddr,
    stream: S,
) -> Option<WebSocketStream<S>> {
    let url = format!("ws://{target}/echo");
    tokio_tungstenite::client_async_with_config(url, stream, Some(small_ws_config()))
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// One echo client's share of [`echo_over`]: what it reports into.
struct EchoConn {
    all: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    ready: Arc<tokio::sync::Barrier>,
    size: usize,
    duration: Duration,
}

impl EchoConn {
    /// Waits for every client to be connected, then echoes until the deadline.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(self, ws: Option<WebSocketStream<S>>) {
        self.ready.wait().await;
        let Some(mut ws) = ws else {
            self.errors.fetch_add(1, Relaxed);
            return;
        };
        let payload = "x".repeat(self.size);
        let mut local = histogram();
        let deadline = Instant::now() + self.duration;
        while Instant::now() < deadline {
            let sent = Instant::now();
            if ws.send(Message::text(payload.clone())).await.is_err() {
                self.errors.fetch_add(1, Relaxed);
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(m))) if m.is_text() => {
                    let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                }
                _ => {
                    self.errors.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
        let _ = ws.close(None).await;
        if let Ok(mut h) = self.all.lock() {
            let _ = h.add(&local);
        }
    }
}

/// Opens `conns` WebSocket connections with a raw handshake and holds
/// them (a few KB each on our side). Returns the sockets and the failures.
pub async fn idle(target: SocketAddr, path: &str, conns: usize) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < conns || !pending.is_empty() {
        while next < conns && pending.len() < 256 {
            let i = next;
            pending.push(async move {
                let mut tcp = connect_from(i, target).await.ok()?;
                let req = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
                tcp.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await.ok()?.ok()?;
                    if n == 0 {
                        return None;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                got.starts_with(b"HTTP/1.1 101").then_some(tcp)
            });
            next += 1;
        }
        match pending.next().await {
            Some(Some(tcp)) => held.push(tcp),
            Some(None) => failed += 1,
            None => {}
        }
    }
    (held, failed)
}

/// Redis-protocol fan-out: `subs_per_channel` subscribers on each of
/// `channels` channels, one publisher sending `messages` messages round
/// robin over the channels, closed loop with at most `WINDOW` publishes in
/// flight. Delivered messages per second and publish-to-receive latency,
/// and what `probe` returned when the first publish went out and when the
/// last subscriber was done (the caller reads the server's CPU time with
/// it, so connecting and subscribing are not counted).
pub async fn fanout<T, P: Fn() -> T>(
    broker: SocketAddr,
    channels: usize,
    subs_per_channel: usize,
    messages: usize,
    size: usize,
    probe: P,
) -> (Latency, [T; 2]) {
    let origin = Instant::now();
    let all = Arc::new(Mutex::new(histogram()));
    let expected = messages / channels * subs_per_channel * channels;
    let received = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    let mut ready = Vec::new();
    for c in 0..channels {
        for s in 0..subs_per_channel {
            let (all, received) = (all.clone(), received.clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            ready.push(rx);
            let per_sub = messages / channels;
            subs.push(tokio::spawn(async move {
                let Ok(mut tcp) = connect_from(c * subs_per_channel + s, broker).await else {
                    return;
                };
                let cmd = format!("SUBSCRIBE ch{c}\r\n");
                if tcp.write_all(cmd.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut local = histogram();
                let mut seen = 0usize;
                let mut confirmed = false;
                let mut tx = Some(tx);
                let mut chunk = vec![0u8; 64 * 1024];
                while seen < per_sub {
                    let n =
                        match tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => break,
                        };
                    buf.extend_from_slice(&chunk[..n]);
                    if !confirmed {
                        if let Some(pos) = buf.windows(3).position(|w| w == b":1\r") {
                            buf.drain(..pos + 4);
                            confirmed = true;
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        } else {
                            continue;
                        }
                    }
                    // Payloads start with "T<micros since origin>|"; count and time them.
                    let mut start = 0;
                    while let Some(off) = buf[start..].iter().position(|&b| b == b'T') {
                        let at = start + off + 1;
                        let Some(end) = buf[at..].iter().position(|&b| b == b'|') else {
                            break;
                        };
                        if let Some(sent) = std::str::from_utf8(&buf[at..at + end])
                            .ok()
                            .and_then(|t| t.parse::<u64>().ok())
                        {
                            let now = origin.elapsed().as_micros() as u64;
                            let _ = local.record(now.saturating_sub(sent).max(1));
                            seen += 1;
                        }
                        start = at + end;
                    }
                    buf.drain(..start);
                }
                received.fetch_add(seen as u64, Relaxed);
                if let Ok(mut h) = all.lock() {
                    let _ = h.add(&local);
                }
            }));
        }
    }
    for r in ready {
        let _ = tokio::time::timeout(Duration::from_secs(20), r).await;
    }
    let Ok(mut publisher) = connect_from(0, broker).await else {
        let nothing = summarize(&histogram(), Duration::ZERO, expected as u64);
        return (nothing, [probe(), probe()]);
    };
    let first = probe();
    let started = Instant::now();
    {
        let pad = "p".repeat(size.saturating_sub(24));
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut replies = vec![0u8; 64 * 1024];
        let mut outstanding = 0usize;
        for i in 0..messages / channels * channels {
            let payload = format!("T{}|{pad}", origin.elapsed().as_micros());
            let ch = format!("ch{}", i % channels);
            batch.extend_from_slice(
                format!(
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{ch}\r\n${}\r\n{payload}\r\n",
                    ch.len(),
                    payload.len()
                )
                .as_bytes(),
            );
            outstanding += 1;
            if batch.len() > 16 * 1024 || outstanding >= WINDOW {
                if publisher.write_all(&batch).await.is_err() {
                    break;
                }
                batch.clear();
                // Keep at most one window in flight: read the integer replies.
                let mut lines = 0;
                while lines < outstanding {
                    match publisher.read(&mut replies).await {
                        Ok(n) if n > 0 => {
                            lines += replies[..n].iter().filter(|&&b| b == b'\n').count()
                        }
                        _ => break,
                    }
                }
                outstanding = 0;
            }
        }
        let _ = publisher.write_all(&batch).await;
    }
    for s in subs {
        let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
    }
    let elapsed = started.elapsed();
    let last = probe();
    let h = merged(&all);
    let got = received.load(Relaxed);
    let latency = summarize(&h, elapsed, expected.saturating_sub(got as usize) as u64);
    (latency, [first, last])
}

/// Publishes the fan-out publisher keeps in flight before it waits for
/// their replies.
pub const WINDOW: usize = 64;
