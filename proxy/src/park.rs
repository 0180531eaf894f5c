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
//! A request counts as in flight until its response is handed to hyper;
//! its body's writes count as activity. A body that goes quiet for that
//! long (a stream with nothing to send) may still be in flight when the
//! connection is stopped for parking: hyper then finishes it first, as
//! the head is already out, and the connection parks after it.
//!
//! Only a hyper connection that has answered a request is parked: hyper
//! counts a fresh one as busy, and stopping it would turn its first
//! answer into `Connection: close`. If the stop does not end hyper's part
//! at once (it was busy after all), the connection is let finish and
//! closes, as it would without keep-alive.
//!
//! A parked connection still ends `timeouts.header_read` after it fell
//! idle, as hyper ends an idle one: the deadline carries over to the
//! hyper connection that wakes, until it starts a request. TLS connections are not parked: rustls
//! may hold decrypted bytes the socket's readiness would not announce.

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a connection stays quiet, at least, before it is parked (it
/// is looked at once per period, so between one and two periods).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How often a connection with a request in flight (a long poll) is
/// looked at: it cannot park meanwhile, and a look is a wake-up.
pub const BUSY_LOOK: Duration = Duration::from_secs(8);

/// What the connection's serving loop knows of its hyper connection's
/// work: requests in flight, and a count of events (reads, requests
/// started and finished) that tells whether anything happened since it
/// last looked.
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Requests started on the connection, all hyper connections counted.
    requests: AtomicU64,
    events: AtomicU64,
    /// Set while hyper is being stopped for parking: the socket must
    /// outlive hyper's shutdown.
    parking: AtomicBool,
}

impl Activity {
    /// A request has started; it ends when the returned guard is dropped.
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
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.touch();
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

    /// Whether nothing happened since the last call and no request is in
    /// flight.
    pub fn check(&mut self, activity: &Activity) -> bool {
        let now = activity.events.load(Relaxed);
        let quiet = now == self.seen && activity.in_flight.load(Relaxed) == 0;
        self.seen = now;
        quiet
    }
}

/// A plain client socket as hyper serves it: it counts reads and writes
/// for [`Activity`] (a response body still going out keeps the connection
/// from looking idle), reads back first what a parked hyper connection
/// had read but not parsed, and does not shut the socket down while
/// parking.
pub struct Parkable {
    tcp: TcpStream,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl Parkable {
    pub fn new(tcp: TcpStream, activity: Arc<Activity>) -> Parkable {
        Parkable {
            tcp,
            unread: Bytes::new(),
            activity,
        }
    }

    /// Puts back bytes read from this socket and not yet used: they are
    /// read again before the socket's own.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.unread = if self.unread.is_empty() {
            bytes
        } else {
            [bytes, std::mem::take(&mut self.unread)].concat().into()
        };
    }

    /// Whether bytes wait to be read back.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket, and what is to be read before its own bytes.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.tcp, self.unread)
    }
}

impl AsyncRead for Parkable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            this.activity.touch();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
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
        this.activity.touch();
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.touch();
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
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
