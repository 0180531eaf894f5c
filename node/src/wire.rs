//! One client's socket: reading WebSocket messages and writing its
//! [`Outbox`], holding no buffer while the client is idle.
//!
//! This is the proxy's lazy-buffer relay (`proxy/src/tcp_relay.rs`)
//! applied to WebSocket frames:
//!
//! * **Reading** borrows a buffer from the worker thread's pool for the
//!   poll that reads and gives it back in the same poll; the [`Decoder`]
//!   takes what it needs (a message's bytes, sized to it) and the rest of
//!   the read, when a read holds more than one message, waits in
//!   `pending_in`, freed once used.
//! * **Writing** takes the whole outbox, encodes frames into a pooled
//!   buffer and writes it; the buffer is kept only while the socket will
//!   not take all of it (a slow reader), and at most [`WRITE_CHUNK`] bytes
//!   of frames (plus one frame) are encoded ahead of the socket, so a
//!   stuck client holds one chunk of private copies, not its whole queue.
//!
//! Both sides are driven from one poll ([`Wire::poll_io`]) of the
//! client's single task, woken by the socket or by the outbox.

use crate::metrics::Metrics;
use crate::shed::{self, MaxAge};
use crate::sockets::{Frame, Outbox, Payload};
use crate::ws::{self, Decoder, Event, OpCode, WsError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one read takes from the socket.
const READ_SIZE: usize = 16 * 1024;
/// Bytes of frames encoded ahead of the socket at once.
pub const WRITE_CHUNK: usize = 64 * 1024;
/// Buffers a worker thread keeps for reuse, of each kind.
const KEEP: usize = 8;

thread_local! {
    static READ_POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static WRITE_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_read() -> Box<[u8]> {
    READ_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_SIZE].into_boxed_slice())
}

fn give_read(buf: Box<[u8]>) {
    READ_POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

fn take_write() -> Vec<u8> {
    WRITE_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(WRITE_CHUNK))
}

/// Buffers that grew past a chunk (one huge frame) are not kept.
fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() > 2 * WRITE_CHUNK {
        return;
    }
    buf.clear();
    WRITE_POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

/// Why the connection cannot go on.
#[derive(Debug, Error)]
pub enum WireError {
    /// The client broke the protocol: close with the error's code.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// The socket failed: the peer is gone.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The client closed the TCP connection.
    #[error("end of stream")]
    Eof,
}

/// Encoded frames being written.
struct Pending {
    buf: Vec<u8>,
    pos: usize,
    /// Counted queue bytes these frames stand for, released once written.
    held: usize,
}

/// One client's socket; see the module doc.
pub struct Wire<S> {
    io: S,
    decoder: Decoder,
    /// Bytes read past the last event, not decoded yet (usually none).
    pending_in: Vec<u8>,
    eof: bool,
    out: Option<Pending>,
    /// Frames taken from the outbox that did not fit the last chunk.
    taken: VecDeque<crate::sockets::Outgoing>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// `early`: bytes the HTTP layer read past the upgrade request.
    pub fn new(io: S, decoder: Decoder, early: Vec<u8>) -> Wire<S> {
        Wire {
            io,
            decoder,
            pending_in: early,
            eof: false,
            out: None,
            taken: VecDeque::new(),
        }
    }

    /// Whether this socket holds any buffer now: what "idle costs no
    /// buffer" means, checked by the tests.
    pub fn holds_buffers(&self) -> bool {
        self.pending_in.capacity() > 0
            || self.out.is_some()
            || self.taken.capacity() > 0
            || self.decoder.mid_message()
    }

    /// Writes what is queued, then reads: `Ready` with the next event
    /// from the client, or an error; `Pending` when the client has sent
    /// nothing more (writing goes on in the background of later polls).
    /// Cancel-safe: all state is in `self`.
    pub fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        max_age: MaxAge,
        metrics: &Metrics,
    ) -> Poll<Result<Event, WireError>> {
        outbox.register(cx.waker());
        if let Poll::Ready(Err(e)) = self.poll_write(cx, outbox, max_age, metrics) {
            return Poll::Ready(Err(e.into()));
        }
        self.poll_read(cx)
    }

    /// Reads until one event is complete.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event, WireError>> {
        loop {
            if !self.pending_in.is_empty() {
                let (used, r) = self.decoder.feed(&self.pending_in);
                self.pending_in.drain(..used);
                if self.pending_in.is_empty() {
                    self.pending_in = Vec::new();
                }
                if let Some(event) = r? {
                    return Poll::Ready(Ok(event));
                }
            }
            if self.eof {
                return Poll::Ready(Err(WireError::Eof));
            }
            let mut buf = take_read();
            let mut read = ReadBuf::new(&mut buf);
            let n = match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => read.filled().len(),
                Poll::Ready(Err(e)) => {
                    give_read(buf);
                    return Poll::Ready(Err(e.into()));
                }
                Poll::Pending => {
                    give_read(buf);
                    return Poll::Pending;
                }
            };
            if n == 0 {
                give_read(buf);
                self.eof = true;
                continue;
            }
            let (used, r) = self.decoder.feed(&buf[..n]);
            if used < n && r.is_ok() {
                self.pending_in.extend_from_slice(&buf[used..n]);
            }
            give_read(buf);
            if let Some(event) = r? {
                return Poll::Ready(Ok(event));
            }
        }
    }

    /// Writes queued frames until the outbox is empty (`Ready(Ok)`) or the
    /// socket will take no more (`Pending`).
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        max_age: MaxAge,
        metrics: &Metrics,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(p) = self.out.as_mut() {
                while p.pos < p.buf.len() {
                    let n = ready!(Pin::new(&mut self.io).poll_write(cx, &p.buf[p.pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    p.pos += n;
                }
                if let Some(p) = self.out.take() {
                    outbox.written(p.held, metrics);
                    give_write(p.buf);
                }
            }
            if self.taken.is_empty() {
                self.taken = outbox.take();
                if self.taken.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            self.encode(outbox, max_age, metrics);
        }
    }

    /// Encodes taken frames into one chunk for [`Wire::poll_write`].
    fn encode(&mut self, outbox: &Outbox, max_age: MaxAge, metrics: &Metrics) {
        let mut buf = take_write();
        let mut held = 0;
        while buf.len() < WRITE_CHUNK {
            let Some(out) = self.taken.pop_front() else {
                break;
            };
            let counted = out.counted();
            // A room message that waited too long (the node or this
            // client is behind) is dropped, not delivered late.
            if out.since.is_some_and(|t| max_age.expired(t)) {
                shed::count(
                    &metrics.backplane.shed,
                    shed::Path::NodeToClient,
                    shed::Reason::TooOld,
                );
                outbox.written(counted, metrics);
                continue;
            }
            held += counted;
            let (op, bytes): (OpCode, &[u8]) = match &out.payload {
                Payload::Data(Frame::Text(t)) => (OpCode::Text, t.as_bytes()),
                Payload::Data(Frame::Binary(b)) => (OpCode::Binary, b),
                Payload::Control(op, b) => (*op, b),
            };
            ws::put_header(&mut buf, op, bytes.len());
            buf.extend_from_slice(bytes);
        }
        if self.taken.is_empty() {
            // Let the queue's allocation go while the client is idle.
            self.taken = VecDeque::new();
        }
        if buf.is_empty() {
            give_write(buf);
        } else {
            self.out = Some(Pending { buf, pos: 0, held });
        }
    }

    /// Drops every frame still queued or half written, releasing its bytes.
    pub fn discard(&mut self, outbox: &Outbox, metrics: &Metrics) {
        if let Some(p) = self.out.take() {
            outbox.written(p.held, metrics);
        }
        let rest = std::mem::take(&mut self.taken);
        for out in rest.into_iter().chain(outbox.take()) {
            outbox.written(out.counted(), metrics);
        }
    }

    /// Writes a close frame and shuts the write side down.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut frame = Vec::with_capacity(4 + reason.len());
        ws::put_close(&mut frame, code, reason);
        self.io.write_all(&frame).await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn masked(text: &str) -> Vec<u8> {
        let mut out = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// After a message in and frames out, an idle socket holds no buffer;
    /// a message that arrives in pieces is held only until it is whole.
    #[tokio::test]
    async fn an_idle_socket_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let metrics = Metrics::new();
        let outbox = Outbox::new(16);
        let mut wire = Wire::new(server, Decoder::new(1000, 4000), Vec::new());
        let max_age = MaxAge::new(std::time::Duration::ZERO);
        assert!(!wire.holds_buffers(), "a new socket");

        let mut two = masked("one");
        two.extend(masked("two"));
        client.write_all(&two).await.unwrap();
        for want in ["one", "two"] {
            let ev = poll_fn(|cx| wire.poll_io(cx, &outbox, max_age, &metrics)).await;
            assert_eq!(ev.unwrap(), Event::Text(want.into()));
        }
        assert!(!wire.holds_buffers(), "after two messages from one read");

        let frame = Frame::text("x".repeat(100));
        let socket = crate::sockets::LocalSocket::new(outbox.clone());
        assert!(socket.queue("s", &frame, false, 1 << 20, &metrics, "local"));
        poll_fn(|cx| wire.poll_write(cx, &outbox, max_age, &metrics))
            .await
            .unwrap();
        let mut got = [0u8; 102];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..2], &[0x81, 100]);
        assert!(!wire.holds_buffers(), "after writing");
        assert!(outbox.take().capacity() == 0, "the outbox let its queue go");

        let half = masked("whole");
        client.write_all(&half[..4]).await.unwrap();
        let pending =
            poll_fn(|cx| Poll::Ready(wire.poll_io(cx, &outbox, max_age, &metrics).is_pending()))
                .await;
        assert!(pending && wire.holds_buffers(), "half a message is held");
        client.write_all(&half[4..]).await.unwrap();
        let ev = poll_fn(|cx| wire.poll_io(cx, &outbox, max_age, &metrics)).await;
        assert_eq!(ev.unwrap(), Event::Text("whole".into()));
        assert!(!wire.holds_buffers());
    }

    /// Pongs (and pings) for a client that never reads stop at the
    /// queue's frame bound instead of piling up.
    #[test]
    fn control_frames_are_bounded_too() {
        let outbox = Outbox::new(4);
        let socket = crate::sockets::LocalSocket::new(outbox.clone());
        for _ in 0..100 {
            socket.control(OpCode::Pong, bytes::Bytes::from_static(b"p"));
        }
        assert_eq!(outbox.take().len(), 4);
    }

    /// A client that does not read holds one chunk of encoded frames at
    /// most; the rest waits in the (shared) queue.
    #[tokio::test]
    async fn a_slow_reader_holds_one_chunk() {
        let (_client, server) = tokio::io::duplex(1024);
        let metrics = Metrics::new();
        let outbox = Outbox::new(1000);
        let socket = crate::sockets::LocalSocket::new(outbox.clone());
        let mut wire = Wire::new(server, Decoder::new(1000, 4000), Vec::new());
        let frame = Frame::text("y".repeat(10_000));
        for _ in 0..50 {
            assert!(socket.queue("s", &frame, false, 1 << 30, &metrics, "local"));
        }
        let max_age = MaxAge::new(std::time::Duration::ZERO);
        let blocked =
            poll_fn(|cx| Poll::Ready(wire.poll_write(cx, &outbox, max_age, &metrics).is_pending()))
                .await;
        assert!(blocked);
        let encoded = wire.out.as_ref().map_or(0, |p| p.buf.len());
        assert!(encoded <= WRITE_CHUNK + 10_010, "{encoded} bytes encoded");
        let encoded_frames = WRITE_CHUNK.div_ceil(10_004);
        assert_eq!(wire.taken.len(), 50 - encoded_frames, "the rest waits");
    }
}
