//! The tunnel between two plain TCP sockets: what most WebSocket tunnels
//! are, and what they cost while idle and per forwarded message.
//!
//! [`Relay`] owns the two sockets and nothing else of size:
//!
//! * **No buffer while idle.** Each direction waits for its source to be
//!   readable without a buffer: it borrows one from the worker's
//!   [`bufpool`] for the poll that reads, writes, and gives it back in the
//!   same poll.
//!   It keeps the buffer only while the destination will not take all of
//!   it (backpressure: reading stops until the write is done).
//! * **One task for both directions**, so a message is one wakeup: the
//!   socket that became readable wakes this task, which reads it and
//!   writes the other socket directly.
//! * **No EAGAIN reads.** tokio's `poll_read` marks the socket not ready
//!   after a short read, so the next wait goes straight to epoll instead of
//!   a `read` that would only return EAGAIN.
//! * **No per-chunk bookkeeping shared with anyone.** Byte counts are plain
//!   fields, read by the caller when the relay ends (or is cut by the drain
//!   deadline); no clock is read per message: the idle timer ticks eight
//!   times per `tunnel_idle` and looks at whether the counts changed, so
//!   a tunnel closes after between 1 and 1.125 × `tunnel_idle` of
//!   silence (never sooner).
//!
//! Half-close: when one side sends FIN, what it sent is written out, then
//! the other side's write half is shut down while the other direction
//! keeps flowing. The relay ends when both directions have ended, when
//! either errors, or after `idle` without a byte in either direction.
//!
//! Bytes the HTTP layer read past the upgrade head (`leftover`) are
//! written before anything read from the socket afterwards.

use crate::bufpool;
use crate::tunnel::End;
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Bytes read and not yet written, in a buffer held only until they are.
enum Chunk {
    /// Borrowed from the pool; goes back once written.
    Pooled(Box<[u8]>),
    /// What the HTTP layer had read past the upgrade head.
    Leftover(Bytes),
}

struct InFlight {
    chunk: Chunk,
    start: usize,
    end: usize,
}

impl InFlight {
    fn bytes(&self) -> &[u8] {
        let all: &[u8] = match &self.chunk {
            Chunk::Pooled(b) => b,
            Chunk::Leftover(b) => b,
        };
        &all[self.start..self.end]
    }

    fn release(self) {
        if let Chunk::Pooled(buf) = self.chunk {
            bufpool::give(buf);
        }
    }

    /// Writes what is left to `dst`; `Ready(Ok)` once all of it is.
    fn poll_write(&mut self, cx: &mut Context<'_>, dst: &mut TcpStream) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, self.bytes()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// One direction: reads `src`, writes `dst`.
#[derive(Default)]
struct Half {
    /// Boxed: only a direction whose destination is slow (or that starts
    /// with leftover bytes) has one, and an idle tunnel is smaller
    /// without its room.
    in_flight: Option<Box<InFlight>>,
    /// `src` sent FIN.
    eof: bool,
    /// This direction is over: `dst`'s write half is shut down, or, for
    /// the direction that ends last, `dst` closes with the relay.
    done: bool,
    bytes: u64,
}

impl Half {
    /// Leftover bytes count as tunnel bytes, as if the relay had read them.
    fn with_leftover(leftover: Bytes) -> Half {
        let bytes = leftover.len() as u64;
        let in_flight = (!leftover.is_empty()).then(|| {
            Box::new(InFlight {
                start: 0,
                end: leftover.len(),
                chunk: Chunk::Leftover(leftover),
            })
        });
        Half {
            in_flight,
            bytes,
            ..Half::default()
        }
    }

    /// Moves bytes until `src` has nothing more to read for now, `dst`
    /// will take no more, or this direction is over (`Ready(Ok)`).
    /// `other_done`: the other direction is over, so the relay ends with
    /// this one.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(flight) = &mut self.in_flight {
                ready!(flight.poll_write(cx, dst))?;
                if let Some(flight) = self.in_flight.take() {
                    flight.release();
                }
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                // The last direction to end skips the shutdown: the relay
                // ends and closing `dst` sends the same FIN, after what was
                // written (nothing is left unread on it, so no reset).
                if !other_done {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // The buffer is borrowed only for this poll: when `src` has
            // nothing, `poll_read` registers for readiness and the buffer
            // goes straight back, so a waiting direction holds none. (One
            // readiness check instead of a `poll_read_ready` first.)
            let mut buf = bufpool::take();
            let mut read = ReadBuf::new(&mut buf);
            let n = match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => read.filled().len(),
                Poll::Ready(Err(e)) => {
                    bufpool::give(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    bufpool::give(buf);
                    return Poll::Pending;
                }
            };
            if n == 0 {
                bufpool::give(buf);
                self.eof = true;
                continue;
            }
            self.bytes += n as u64;
            // Written straight away; kept (boxed) only if `dst` will not
            // take all of it now.
            let mut flight = InFlight {
                chunk: Chunk::Pooled(buf),
                start: 0,
                end: n,
            };
            match flight.poll_write(cx, dst) {
                Poll::Ready(Ok(())) => flight.release(),
                Poll::Ready(Err(e)) => {
                    flight.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    self.in_flight = Some(Box::new(flight));
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A tunnel between a client and a backend socket; see the module doc.
pub struct Relay {
    client: TcpStream,
    upstream: TcpStream,
    /// Client to backend.
    up: Half,
    /// Backend to client.
    down: Half,
}

impl Relay {
    /// A relay that first writes `client_leftover` to the backend and
    /// `upstream_leftover` to the client.
    pub fn new(
        client: TcpStream,
        client_leftover: Bytes,
        upstream: TcpStream,
        upstream_leftover: Bytes,
    ) -> Relay {
        Relay {
            client,
            upstream,
            up: Half::with_leftover(client_leftover),
            down: Half::with_leftover(upstream_leftover),
        }
    }

    /// Bytes from the client so far, leftover included (all of them
    /// written to the backend once the relay has ended normally).
    pub fn to_upstream(&self) -> u64 {
        self.up.bytes
    }

    /// Bytes from the backend so far, leftover included.
    pub fn to_client(&self) -> u64 {
        self.down.bytes
    }

    /// Bytes moved so far in both directions (what [`IdleTimer`] watches).
    pub fn moved(&self) -> u64 {
        self.up.bytes + self.down.bytes
    }

    /// Moves what can be moved now in both directions; `Ready` once the
    /// tunnel has ended (both directions done, or an error).
    pub fn poll_copy(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let Relay {
            client,
            upstream,
            up,
            down,
        } = self;
        let up_state = up.poll(cx, client, upstream, down.done);
        let down_state = down.poll(cx, upstream, client, up.done);
        match (up_state, down_state) {
            (Poll::Ready(Err(e)), _) => Poll::Ready(End::Error {
                copying: "client_to_backend",
                kind: e.kind(),
            }),
            (_, Poll::Ready(Err(e))) => Poll::Ready(End::Error {
                copying: "backend_to_client",
                kind: e.kind(),
            }),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(End::Closed),
            _ => Poll::Pending,
        }
    }

    /// Copies until the tunnel ends; `idle` zero means no idle timeout.
    /// Dropping the future leaves the counts as they were. The tests drive
    /// a relay this way; the proxy's tunnel task (`tunnel::TcpTunnel`)
    /// polls [`Relay::poll_copy`] and an [`IdleTimer`] beside its cut.
    #[cfg(test)]
    pub async fn run(&mut self, idle: Duration) -> End {
        let timer = IdleTimer::new(idle, self.moved());
        tokio::pin!(timer);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(end) = self.poll_copy(cx) {
                return Poll::Ready(end);
            }
            timer.as_mut().poll_silent(cx, self.moved())
        })
        .await
    }
}

pin_project_lite::pin_project! {
    /// The idle timeout of one tunnel. It ticks every `idle / CHECKS` and
    /// notes at each tick whether bytes moved since the last one, so no
    /// clock is read while bytes move. Silence is counted in ticks; the
    /// tunnel closes after between `idle` and `idle + idle/CHECKS`
    /// without a byte, never sooner (for `idle` of 8 ms or more: a tick
    /// is at least 1 ms).
    pub struct IdleTimer {
        #[pin]
        timer: Option<Sleep>,
        tick: Duration,
        seen: u64,
        // Ticks in a row without a byte moved.
        quiet: u32,
        // Quiet ticks that make `idle`.
        limit: u32,
    }
}

impl IdleTimer {
    const CHECKS: u32 = 8;

    /// A timer for `idle` of silence (zero: never), given the byte count
    /// now.
    pub fn new(idle: Duration, moved: u64) -> IdleTimer {
        // At least 1 ms, so that a tiny `idle` cannot make a zero tick.
        let tick = (idle / Self::CHECKS).max(Duration::from_millis(1));
        let limit = idle.as_nanos().div_ceil(tick.as_nanos());
        IdleTimer {
            timer: (!idle.is_zero()).then(|| tokio::time::sleep(tick)),
            tick,
            seen: moved,
            quiet: 0,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    /// `Ready(End::IdleTimeout)` once `moved` (the byte count now) has
    /// not changed for `idle`.
    pub fn poll_silent(self: Pin<&mut Self>, cx: &mut Context<'_>, moved: u64) -> Poll<End> {
        let this = self.project();
        let Some(mut timer) = this.timer.as_pin_mut() else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(cx).is_ready() {
            if moved != *this.seen {
                *this.seen = moved;
                *this.quiet = 0;
                // Counted from now: ticks this task missed (a stalled
                // thread) fell before the bytes that just moved, and are
                // not silence after them.
                let next = tokio::time::Instant::now() + *this.tick;
                timer.as_mut().reset(next);
                continue;
            }
            *this.quiet += 1;
            if *this.quiet >= *this.limit {
                return Poll::Ready(End::IdleTimeout);
            }
            let next = timer.deadline() + *this.tick;
            timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// (client peer, backend peer, relay between them)
    async fn tunnel(
        client_left: &'static [u8],
        up_left: &'static [u8],
    ) -> (TcpStream, TcpStream, Relay) {
        let (client_peer, client) = pair().await;
        let (upstream, backend_peer) = pair().await;
        let relay = Relay::new(
            client,
            Bytes::from_static(client_left),
            upstream,
            Bytes::from_static(up_left),
        );
        (client_peer, backend_peer, relay)
    }

    #[tokio::test]
    async fn leftovers_go_first_and_half_close_passes_both_ways() {
        let (mut client, mut backend, mut relay) = tunnel(b"early ", b"hello ").await;
        let task = tokio::spawn(async move {
            let end = relay.run(Duration::from_secs(30)).await;
            (end, relay.to_upstream(), relay.to_client())
        });
        client.write_all(b"client").await.unwrap();
        let mut got = [0u8; 12];
        backend.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early client");
        backend.write_all(b"backend").await.unwrap();
        let mut got = [0u8; 13];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello backend");

        // The client half-closes: the backend sees EOF and can still answer.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        backend.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        backend.write_all(b"after").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
        // Now the backend half-closes too: the client sees EOF, tunnel ends.
        backend.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (end, to_up, to_client) = task.await.unwrap();
        assert_eq!(end, End::Closed);
        // Leftovers count: they are tunnel bytes the HTTP layer read early.
        assert_eq!((to_up, to_client), (12, 18));
    }

    #[tokio::test]
    async fn large_transfer_to_a_slow_reader_arrives_intact() {
        let (mut client, mut backend, mut relay) = tunnel(b"", b"").await;
        let task = tokio::spawn(async move {
            let end = relay.run(Duration::from_secs(30)).await;
            (end, relay.to_upstream())
        });
        const LEN: usize = 8 * 1024 * 1024;
        let data: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        // Read in small pieces with pauses so the relay meets backpressure.
        let mut got = Vec::with_capacity(LEN);
        let mut buf = [0u8; 1000];
        let mut reads = 0u32;
        loop {
            let n = backend.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            reads += 1;
            if reads.is_multiple_of(256) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert!(got == expected, "the bytes arrive in order and intact");
        drop(backend);
        drop(writer.await.unwrap());
        let (end, to_up) = task.await.unwrap();
        assert_eq!(to_up, LEN as u64);
        assert_ne!(end, End::IdleTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_in_both_directions_ends_the_tunnel() {
        let (_client, _backend, mut relay) = tunnel(b"", b"").await;
        let started = Instant::now();
        assert_eq!(relay.run(Duration::from_secs(30)).await, End::IdleTimeout);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_one_direction_keeps_the_tunnel_open() {
        let (mut client, mut backend, mut relay) = tunnel(b"", b"").await;
        let run = relay.run(Duration::from_secs(30));
        tokio::pin!(run);
        // The backend pushes every 20 s for two minutes; the client says
        // nothing. Each push must reach the client and keep the tunnel.
        for _ in 0..6 {
            backend.write_all(b"push").await.unwrap();
            let mut got = [0u8; 4];
            tokio::select! {
                end = run.as_mut() => panic!("tunnel ended while the backend pushed: {end:?}"),
                r = client.read_exact(&mut got) => { r.unwrap(); }
            }
            tokio::select! {
                end = run.as_mut() => panic!("tunnel ended within tunnel_idle: {end:?}"),
                _ = tokio::time::sleep(Duration::from_secs(20)) => {}
            }
        }
        let quiet = Instant::now();
        assert_eq!(run.as_mut().await, End::IdleTimeout);
        // The last push was 20 s ago: closed 30 s after it, within the
        // tick's slack (30 s / 8), never sooner.
        let after = quiet.elapsed();
        assert!(after >= Duration::from_secs(10), "closed early: {after:?}");
        assert!(
            after <= Duration::from_millis(13_750),
            "closed late: {after:?}"
        );
    }

    /// One poll of `timer` with `moved` bytes so far.
    async fn poll_once(mut timer: Pin<&mut IdleTimer>, moved: u64) -> Poll<End> {
        std::future::poll_fn(|cx| Poll::Ready(timer.as_mut().poll_silent(cx, moved))).await
    }

    /// A thread stalled past `tunnel_idle` (a paused VM, a starved
    /// runtime) wakes to every tick it missed at once: those fell before
    /// the bytes that moved when it woke, so they must not count as
    /// silence after them.
    #[tokio::test(start_paused = true)]
    async fn ticks_missed_while_stalled_are_not_silence_after_bytes() {
        let idle = Duration::from_secs(30);
        let timer = IdleTimer::new(idle, 0);
        tokio::pin!(timer);
        assert!(poll_once(timer.as_mut(), 0).await.is_pending());
        tokio::time::advance(Duration::from_secs(100)).await;
        // Bytes moved as the task woke: the tunnel is not idle.
        assert!(
            poll_once(timer.as_mut(), 1).await.is_pending(),
            "closed right after bytes moved"
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            poll_once(timer.as_mut(), 1).await.is_pending(),
            "closed before tunnel_idle"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            poll_once(timer.as_mut(), 1).await,
            Poll::Ready(End::IdleTimeout)
        );
    }

    #[tokio::test]
    async fn a_reset_ends_the_tunnel_with_an_error() {
        let (client, _backend, mut relay) = tunnel(b"", b"").await;
        client.set_zero_linger().unwrap();
        drop(client);
        // The log line says which copy failed and why.
        assert_eq!(
            relay.run(Duration::from_secs(30)).await,
            End::Error {
                copying: "client_to_backend",
                kind: io::ErrorKind::ConnectionReset
            }
        );
    }
}
