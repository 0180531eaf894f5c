//! Idle keep-alive connections that hold no HTTP buffers.
//!
//! hyper's HTTP/1 server reserves an 8 KiB read buffer before each read,
//! idle or not, and keeps its write buffer and a box the size of a
//! request's future for the connection's life: an idle keep-alive
//! connection cost about 15 KiB here against nginx's 1.5. So a plain
//! connection with no request in flight and nothing read for one to two
//! [`PARK_AFTER`] periods is taken back from hyper: a graceful shutdown of
//! an idle hyper connection ends hyper's part at once, and while
//! [`Activity`] says parking, [`Parkable`] leaves the socket open instead
//! of shutting it down. The socket then waits for the client's next bytes
//! holding no buffer (`TcpStream::readable`), and a new hyper connection
//! serves them; bytes hyper had read but not parsed go first.
//!
//! A request counts as in flight until hyper drops its response body
//! (after the last frame); a write the client does not take keeps the
//! connection from looking quiet too. Only a hyper connection that has
//! answered a request is parked: one that has read part of a first head
//! is busy to hyper, and stopping it would turn its answer into
//! `Connection: close`. If the stop does not end hyper's part at once
//! (busy after all: an upload still coming in after an early answer),
//! the connection is let finish and closes, as without keep-alive.
//!
//! A parked connection still ends `timeouts.header_read` after its last
//! request ended, as hyper ends an idle one: the deadline carries over to
//! the hyper connection that wakes, until it starts a request. TLS
//! connections are not parked: rustls may hold decrypted bytes the
//! socket's readiness would not announce.

use crate::prefixed::Prefixed;
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection stays quiet, at least, before it is parked (it
/// is looked at once per period, so between one and two periods).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How often a connection with a request in flight (a long poll) is
/// looked at: it cannot park meanwhile, and a look is a wake-up.
pub const BUSY_LOOK: Duration = Duration::from_secs(8);

/// What the connection's serving loop knows of its hyper connection's
/// work: requests in flight (until hyper drops the response body), a
/// write that waits for the client, and a count of events (reads,
/// writes, requests started and finished) that tells whether anything
/// happened since it last looked.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Requests started on the connection, all hyper connections counted.
    requests: AtomicU64,
    events: AtomicU64,
    /// A write returned `Pending`: the client is not reading.
    write_blocked: AtomicBool,
    /// Set while hyper is being stopped for parking: the socket must
    /// outlive hyper's shutdown.
    parking: AtomicBool,
    /// When the last request in flight ended, in ms after `base`.
    done_ms: AtomicU64,
    base: Instant,
    /// Told when the last request in flight ends (for a serving loop
    /// that looks less often while one is in flight).
    idle: Notify,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            done_ms: AtomicU64::new(0),
            base: Instant::now(),
            idle: Notify::new(),
        }
    }
}

impl Activity {
    /// A request has started; it ends when the returned guard is dropped
    /// (it rides in the response body, see [`Tracked`]).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        self.events.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub fn busy(&self) -> bool {
        self.in_flight.load(Relaxed) > 0
    }

    /// When the last request ended (the connection's start before any).
    pub fn idle_since(&self) -> Instant {
        self.base + Duration::from_millis(self.done_ms.load(Relaxed))
    }

    /// Resolves once the last request in flight has ended (at once if
    /// one ended since the previous call).
    pub async fn became_idle(&self) {
        self.idle.notified().await
    }

    fn touch(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    pub fn set_parking(&self, on: bool) {
        self.parking.store(on, Relaxed);
    }
}

/// One request in flight (see [`Activity::start`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Relaxed) == 1 {
            let ms = u64::try_from(a.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            a.done_ms.store(ms, Relaxed);
            a.idle.notify_one();
        }
        a.touch();
    }
}

/// A response body that holds its request's [`InFlight`] until hyper
/// drops it, after the last frame.
pub struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: Option<InFlight>) -> Tracked<B> {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Tells, once per [`PARK_AFTER`], whether a connection has been quiet
/// since the last look.
pub struct Quiet {
    seen: u64,
}

impl Quiet {
    pub fn new(activity: &Activity) -> Quiet {
        Quiet {
            seen: activity.events.load(Relaxed),
        }
    }

    /// Whether nothing happened since the last call, no request is in
    /// flight and no write waits for the client.
    pub fn check(&mut self, activity: &Activity) -> bool {
        let now = activity.events.load(Relaxed);
        let quiet = now == self.seen
            && activity.in_flight.load(Relaxed) == 0
            && !activity.write_blocked.load(Relaxed);
        self.seen = now;
        quiet
    }
}

/// A plain client socket as hyper serves it: it counts reads and writes
/// for [`Activity`] (a write that returns `Pending` marks the client as
/// not reading), reads back first what a parked hyper connection had read
/// but not parsed ([`Prefixed`]), and does not shut the socket down while
/// parking.
pub struct Parkable {
    io: Prefixed<TcpStream>,
    activity: Arc<Activity>,
}

impl Parkable {
    pub fn new(tcp: TcpStream, activity: Arc<Activity>) -> Parkable {
        Parkable {
            io: Prefixed::new(tcp, Bytes::new()),
            activity,
        }
    }

    /// Puts back bytes read from this socket and not yet used.
    pub fn unread(&mut self, bytes: Bytes) {
        self.io.unread(bytes);
    }

    /// Whether bytes wait to be read back.
    pub fn has_unread(&self) -> bool {
        self.io.has_leftover()
    }

    pub fn tcp(&self) -> &TcpStream {
        self.io.get_ref()
    }

    /// The socket, and what is to be read before its own bytes.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        self.io.into_parts()
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        self.activity.touch();
        self.activity
            .write_blocked
            .store(polled.is_pending(), Relaxed);
    }
}

impl AsyncRead for Parkable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Parkable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn unread_bytes_come_back_before_the_sockets_own() {
        let (mut client, server) = pair().await;
        let activity = Arc::new(Activity::default());
        let mut p = Parkable::new(server, activity);
        p.unread(Bytes::from_static(b"b"));
        p.unread(Bytes::from_static(b"a"));
        client.write_all(b"c").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        while got.len() < 3 {
            let n = p.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abc");
    }

    #[tokio::test]
    async fn a_shutdown_while_parking_leaves_the_socket_open() {
        let (mut client, server) = pair().await;
        let activity = Arc::new(Activity::default());
        let mut p = Parkable::new(server, activity.clone());
        activity.set_parking(true);
        p.shutdown().await.unwrap();
        activity.set_parking(false);
        p.write_all(b"still here").await.unwrap();
        p.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"still here");
    }

    #[test]
    fn quiet_means_nothing_happened_and_nothing_in_flight() {
        let activity = Arc::new(Activity::default());
        let mut quiet = Quiet::new(&activity);
        assert!(quiet.check(&activity));
        let request = activity.start();
        assert!(!quiet.check(&activity), "a request started");
        assert!(!quiet.check(&activity), "a request is in flight");
        drop(request);
        assert!(!quiet.check(&activity), "a request ended");
        assert!(quiet.check(&activity));
        activity.touch();
        assert!(!quiet.check(&activity), "bytes were read");
    }
}
