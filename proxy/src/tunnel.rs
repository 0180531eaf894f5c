//! Byte copying for upgraded (WebSocket) connections.
//!
//! After `101 Switching Protocols` the proxy stops parsing and copies bytes
//! both ways. A half-close (FIN) on one side is passed on to the other
//! while the other direction keeps flowing. The tunnel ends when both
//! directions have finished, when either side errors, or when no byte has
//! moved for the idle timeout (nginx's `proxy_read_timeout`, but counting
//! both directions, so a server that only pushes keeps the tunnel alive).
//!
//! [`serve`] is the tunnel's whole life after the request path hands it
//! over: the counts the shutdown drain waits for, the drain deadline and
//! the backend's health (`on_marked_down`) that cut it, and one log line
//! when it opens and one when it closes. It
//! takes the raw sockets back from hyper when both sides are plain TCP and
//! hands them to [`crate::tcp_relay`] (no buffer while idle, one wakeup
//! per message); a TLS side goes through the generic [`run`] here.

use crate::limits::SharedSlot;
use crate::live::Proxy;
use crate::park::Parkable;
use crate::prefixed::Prefixed;
use crate::select::{ActiveGuard, Backend, Pool};
use crate::signal::Waiter;
use crate::tcp_relay::{IdleTimer, Relay};
use crate::upstream::Body;
use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Copy buffer per direction of a TLS tunnel (the generic path).
const BUF: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    /// A socket failed: which copy saw it (`client_to_backend`,
    /// `backend_to_client`, or `either` on the TLS path, which copies both
    /// ways in one call) and the error's kind, so the log line says why.
    Error {
        copying: &'static str,
        kind: std::io::ErrorKind,
    },
    IdleTimeout,
    /// Closed by the proxy's shutdown drain deadline.
    Deadline,
    /// Closed because health checks marked the backend down
    /// (`health.on_marked_down = "shutdown-tunnels"`).
    BackendMarkedDown,
}

impl End {
    /// Label of `limpet_proxy_tunnels_closed_total{end}`.
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error { .. } => "error",
            End::IdleTimeout => "idle_timeout",
            End::Deadline => "deadline",
            End::BackendMarkedDown => "backend_marked_down",
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub to_upstream: u64,
    pub to_client: u64,
}

/// A stream that notes the time of its last read and counts bytes read.
struct Watched<S> {
    inner: S,
    started: Instant,
    last: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes.fetch_add(n as u64, Relaxed);
            self.last
                .store(self.started.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The generic path (a TLS side): copies until done. Both directions run in one task with no lock
/// between them (`copy_bidirectional`, which also passes half-closes on);
/// byte totals are reported at the end.
pub async fn run<C, U>(client: C, upstream: U, idle: Duration) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up_bytes = Arc::new(AtomicU64::new(0));
    let down_bytes = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        inner: client,
        started,
        last: last.clone(),
        bytes: up_bytes.clone(),
    };
    let mut upstream = Watched {
        inner: upstream,
        started,
        last: last.clone(),
        bytes: down_bytes.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF);
    let watchdog = async {
        if idle.is_zero() {
            return std::future::pending::<()>().await;
        }
        loop {
            let quiet_since = Duration::from_millis(last.load(Relaxed));
            let deadline = quiet_since + idle;
            let now = started.elapsed();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline - now).await;
        }
    };
    let end = tokio::select! {
        r = copy => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Error { copying: "either", kind: e.kind() },
        },
        _ = watchdog => End::IdleTimeout,
    };
    Outcome {
        end,
        to_upstream: up_bytes.load(Relaxed),
        to_client: down_bytes.load(Relaxed),
    }
}

/// Both halves of an upgraded exchange, as the request path hands them
/// over: hyper lets go of the sockets once the `101` reaches the client.
pub struct Handoff {
    pub pool: Arc<Pool>,
    pub backend: Arc<Backend>,
    pub client: IpAddr,
    /// Counts the tunnel against its backend until it ends.
    pub guard: ActiveGuard,
    /// `timeouts.tunnel_idle`.
    pub idle: Duration,
    pub client_upgrade: OnUpgrade,
    pub upstream_upgrade: OnUpgrade,
    /// The backend connection's handle, held until both upgrades resolve
    /// so the connection is not shut down under the `101`.
    pub sender: SendRequest<Body>,
    /// The client connection's place in `limits.max_connections` (and
    /// per-address), held for the tunnel's life.
    pub slot: Option<SharedSlot>,
}

/// Waits for both upgrades, then hands the tunnel to a task of its own
/// that copies until it ends; counted in `Proxy::tunnels` (what the
/// shutdown drain waits for) and logged when it opens and closes.
///
/// Two plain TCP sockets (the common case) get [`tcp_relay::Relay`],
/// which holds no buffer while idle; a TLS side keeps the generic
/// [`run`] over hyper's `Upgraded`, since rustls has to decrypt into a
/// buffer of its own anyway. Each gets its own task so that an open
/// tunnel's task is only as large as its own path needs (the state of
/// this function, the upgrades and the other path, is not carried along
/// for the tunnel's whole life).
pub async fn serve(proxy: Arc<Proxy>, handoff: Handoff) {
    let Handoff {
        pool,
        backend,
        client,
        guard,
        idle,
        client_upgrade,
        upstream_upgrade,
        sender,
        slot,
    } = handoff;
    let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(pool = %pool.name(), backend = %backend.id, %client, "upgrade failed: {e}");
            return;
        }
    };
    drop(sender);
    proxy.tunnels.fetch_add(1, Relaxed);
    tracing::info!(pool = %pool.name(), backend = %backend.id, %client, "tunnel open");
    let open = Open {
        proxy,
        pool,
        backend,
        client,
        guard,
        _slot: slot,
        started: Instant::now(),
    };
    match (raw(client_io), raw(upstream_io)) {
        (Ok((c, c_left)), Ok((u, u_left))) => {
            tokio::spawn(relay_tcp(open, Relay::new(c, c_left, u, u_left), idle));
        }
        (c, u) => {
            tokio::spawn(relay_generic(open, generic(c), generic(u), idle));
        }
    };
}

/// What an open tunnel keeps for its close: the count it holds and the
/// fields of its log line.
struct Open {
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    backend: Arc<Backend>,
    client: IpAddr,
    /// Counts the tunnel against its backend until it ends.
    guard: ActiveGuard,
    /// Counts it against the proxy's connection limits until it ends.
    _slot: Option<SharedSlot>,
    started: Instant,
}

impl Open {
    /// Counts the bytes (looked up here, so an open tunnel holds no handle
    /// on the metrics), releases the counts and logs the close.
    fn close(self, out: Outcome) {
        let Open {
            proxy,
            pool,
            backend,
            client,
            guard,
            _slot,
            started,
        } = self;
        let bytes = &proxy.metrics.tunnel_bytes;
        bytes
            .with_label_values(&["to_backend"])
            .inc_by(out.to_upstream);
        bytes
            .with_label_values(&["to_client"])
            .inc_by(out.to_client);
        proxy
            .metrics
            .tunnels_closed
            .with_label_values(&[pool.name(), &backend.id, out.end.label()])
            .inc();
        guard.count_bytes(out.to_upstream + out.to_client);
        drop(guard);
        proxy.tunnels.fetch_sub(1, Relaxed);
        tracing::info!(
            pool = %pool.name(),
            backend = %backend.id,
            %client,
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_to_backend = out.to_upstream,
            bytes_to_client = out.to_client,
            end = ?out.end,
            "tunnel closed"
        );
    }
}

impl Open {
    /// What tells the tunnel the proxy cuts it from outside: the shutdown
    /// drain deadline, or health checks marking its backend down.
    fn cut(&self) -> Cut {
        Cut {
            deadline: self.proxy.close_tunnels.ever(),
            marked_down: self.backend.marked_down().next(),
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Open::cut`]: two waiters, polled side by side with the
    /// signals they came from (a tunnel holds their owners anyway).
    struct Cut {
        #[pin]
        deadline: Waiter,
        #[pin]
        marked_down: Waiter,
    }
}

impl Cut {
    fn poll_cut(self: Pin<&mut Self>, cx: &mut Context<'_>, open: &Open) -> Poll<End> {
        let this = self.project();
        if this
            .deadline
            .poll_fired(cx, &open.proxy.close_tunnels)
            .is_ready()
        {
            return Poll::Ready(End::Deadline);
        }
        if this
            .marked_down
            .poll_fired(cx, open.backend.marked_down())
            .is_ready()
        {
            return Poll::Ready(End::BackendMarkedDown);
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A plain TCP tunnel's whole life, as the future its task runs: the
    /// relay, its idle timer and the cut, each held once. An idle tunnel
    /// is mostly this task (640 bytes with tokio's header) and two socket
    /// registrations (256 bytes each), so it is written out by hand: an
    /// `async fn` with a `select!` kept its arguments twice and the cut's
    /// futures twice (1.5 KiB).
    struct TcpTunnel {
        // Taken when the tunnel ends; the sockets close before the log line.
        live: Option<(Relay, Open)>,
        #[pin]
        idle: IdleTimer,
        #[pin]
        cut: Cut,
    }
}

fn relay_tcp(open: Open, relay: Relay, idle: Duration) -> TcpTunnel {
    TcpTunnel {
        idle: IdleTimer::new(idle, relay.moved()),
        cut: open.cut(),
        live: Some((relay, open)),
    }
}

impl Future for TcpTunnel {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let Some((relay, open)) = this.live.as_mut() else {
            return Poll::Ready(());
        };
        let end = if let Poll::Ready(end) = relay.poll_copy(cx) {
            end
        } else if let Poll::Ready(end) = this.idle.poll_silent(cx, relay.moved()) {
            end
        } else if let Poll::Ready(end) = this.cut.poll_cut(cx, open) {
            end
        } else {
            return Poll::Pending;
        };
        let out = Outcome {
            end,
            to_upstream: relay.to_upstream(),
            to_client: relay.to_client(),
        };
        if let Some((relay, open)) = this.live.take() {
            drop(relay);
            open.close(out);
        }
        Poll::Ready(())
    }
}

/// A tunnel with a TLS side; the drain deadline or a mark-down cuts it
/// (its byte counts are then lost, as they live in the copy).
async fn relay_generic(open: Open, client: Box<dyn Io>, upstream: Box<dyn Io>, idle: Duration) {
    let cut = open.cut();
    tokio::pin!(cut);
    let cut = std::future::poll_fn(|cx| cut.as_mut().poll_cut(cx, &open));
    let out = tokio::select! {
        out = run(client, upstream, idle) => out,
        end = cut => Outcome { end, to_upstream: 0, to_client: 0 },
    };
    open.close(out);
}

/// The plain TCP socket under an upgraded connection and the bytes hyper
/// had read past the upgrade head; the connection back when it is not
/// plain TCP (TLS).
fn raw(io: Upgraded) -> Result<(TcpStream, Bytes), Upgraded> {
    let io = match io.downcast::<TokioIo<Parkable>>() {
        Ok(parts) => {
            // What hyper read came first, then what it had not yet taken.
            let (tcp, unread) = parts.io.into_inner().into_parts();
            let leftover = if unread.is_empty() {
                parts.read_buf
            } else {
                [parts.read_buf, unread].concat().into()
            };
            return Ok((tcp, leftover));
        }
        Err(io) => io,
    };
    io.downcast::<TokioIo<TcpStream>>()
        .map(|parts| (parts.io.into_inner(), parts.read_buf))
}

/// Either side as the generic path takes it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn generic(side: Result<(TcpStream, Bytes), Upgraded>) -> Box<dyn Io> {
    match side {
        Ok((inner, leftover)) => Box::new(Prefixed::new(inner, leftover)),
        Err(upgraded) => Box::new(TokioIo::new(upgraded)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(run(client, upstream, Duration::from_secs(5)));
        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // Client half-closes; upstream sees EOF but can still answer.
        client_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
        upstream_peer.write_all(b"bye").await.unwrap();
        let mut got = [0u8; 3];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        drop(upstream_peer);
        let out = task.await.unwrap();
        assert_eq!(out.end, End::Closed);
        assert_eq!((out.to_upstream, out.to_client), (5, 3));
    }

    /// An idle tunnel costs mostly its task; the task's future was 1,360
    /// bytes (a 1.5 KiB task) before it was written out by hand. A field
    /// that grows it is a cost for every open WebSocket: tokio adds about
    /// 100 bytes and rounds the task up to 128, so 536 bytes is a
    /// 640-byte task.
    #[test]
    fn an_idle_tunnel_task_stays_small() {
        let size = std::mem::size_of::<TcpTunnel>();
        assert!(size <= 536, "TcpTunnel is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_are_closed() {
        let (client, _cp) = tokio::io::duplex(1024);
        let (upstream, _up) = tokio::io::duplex(1024);
        let out = run(client, upstream, Duration::from_secs(30)).await;
        assert_eq!(out.end, End::IdleTimeout);
    }
}
