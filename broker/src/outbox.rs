//! [`Outbox`]: every byte owed to one client, in order, and the only code
//! that writes to its socket.
//!
//! Replies and pushed messages share one ordered queue of whole frames, and
//! every write happens under the lock that guards it, so a push never
//! overtakes a reply made before it and no two writers interleave inside a
//! frame. Either side may write: a publisher writes the messages it queued
//! straight to a subscriber's socket at the end of its batch of requests
//! (one `writev` per subscriber, no task woken), and only what the socket
//! does not take stays queued for the subscriber's own task, which is told
//! once (its `writer` flag) and then waits for the socket to drain.
//!
//! While the client's own task runs a batch of requests
//! (its `running` flag) its replies build up in the session's buffer, not
//! here. Everything queued before the batch began comes first; everything
//! pushed during it goes after those replies (a message on a channel the
//! batch just subscribed to must follow the confirmation), unless the
//! session moves it into its buffer first ([`Outbox::take_held`]), which
//! it does before every command so that, as in Redis, a reply follows the
//! messages delivered before it ran. Publishers only queue meanwhile.
//!
//! This module imports nothing else from the crate.

use bytes::{Buf, Bytes, BytesMut};
use socket2::SockRef;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Most queued frames handed to one `writev`.
const MAX_IOV: usize = 64;
/// Ring slots an emptied queue keeps (4 KiB): what a subscriber gets in a
/// publisher's batch or two, see [`Frames`].
const KEEP_FRAMES: usize = 128;

/// Laid out in the order a delivery reads it (`repr(C)`: the compiler
/// would sort by size): the flags and counts first, then the socket and
/// the inline front frame, so queuing one message and writing it touch
/// as few cache lines as possible.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Outbox {
    /// The connection is gone: nothing queued would ever be written.
    pub(crate) closed: bool,
    /// The connection task is running requests; their replies will go in
    /// at `held`, before whatever was pushed meanwhile.
    running: bool,
    /// The connection task has been told to wait for the socket and write
    /// the rest: nobody else writes until it has.
    pub(crate) writer: bool,
    /// A publisher holds this client in its [`crate::handle::Fanout`].
    pub(crate) scheduled: bool,
    /// A publisher's write failed; the connection task closes on it.
    error: Option<io::ErrorKind>,
    /// Bytes in `queue`.
    pub(crate) bytes: usize,
    held: usize,
    /// `None` until the connection task attaches its socket, and again once
    /// it closed (tests run sessions without one: the bytes stay queued).
    sock: Option<Arc<TcpStream>>,
    queue: Frames,
}

impl Outbox {
    pub(crate) fn attach(&mut self, sock: Arc<TcpStream>) {
        self.sock = Some(sock);
    }

    /// Drops everything owed and the socket; later pushes are refused.
    /// Returns the bytes dropped.
    pub(crate) fn close(&mut self) -> usize {
        self.sock = None;
        self.closed = true;
        self.queue = Frames::default();
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn push(&mut self, msg: Bytes) {
        self.bytes += msg.len();
        self.queue.push(msg);
    }

    /// The client's task starts running requests.
    pub(crate) fn begin(&mut self) {
        self.running = true;
        self.held = self.queue.len();
    }

    /// Moves what was pushed since [`Outbox::begin`] to the end of `out`.
    /// Returns the bytes moved.
    pub(crate) fn take_held(&mut self, out: &mut BytesMut) -> usize {
        let from = self.held.min(self.queue.len());
        let mut moved = 0;
        for msg in self.queue.split_off(from) {
            moved += msg.len();
            out.extend_from_slice(&msg);
        }
        self.bytes -= moved;
        moved
    }

    /// Ends the client's batch: the replies in `out` go in before what was
    /// pushed during it, and what the socket takes now is written. When
    /// bytes remain, [`Outbox::writer`] is set: the client's task must wait
    /// for the socket. Returns the bytes written.
    pub(crate) fn commit(&mut self, out: &mut BytesMut) -> io::Result<usize> {
        self.running = false;
        let mut written = 0;
        if !out.is_empty() && self.queue.is_empty() && !self.writer {
            // Nothing owed ahead: straight from the buffer, nothing queued.
            if let Some(sock) = &self.sock {
                match send(sock, &[IoSlice::new(out)]) {
                    Ok(n) => {
                        out.advance(n);
                        written = n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !out.is_empty() {
            let replies = out.split().freeze();
            self.bytes += replies.len();
            self.queue.insert(self.held.min(self.queue.len()), replies);
        }
        if !self.writer && written == 0 {
            written += self.write()?;
        }
        if !self.queue.is_empty() {
            self.writer = true;
        }
        Ok(written)
    }

    /// The client's task writes after the socket said it has room; when
    /// nothing is left, publishers may write again. Returns the bytes
    /// written.
    pub(crate) fn flush_owner(&mut self) -> io::Result<usize> {
        let written = self.write()?;
        if self.queue.is_empty() {
            self.writer = false;
        }
        Ok(written)
    }

    /// A publisher writes what it queued, unless the client's task is
    /// running requests or already waits to write. Returns the bytes
    /// written, and whether the client's task must now be told to wait for
    /// the socket and write the rest (or to close on a write error).
    pub(crate) fn flush_publisher(&mut self) -> (usize, bool) {
        self.scheduled = false;
        if self.running || self.writer || self.queue.is_empty() {
            return (0, false);
        }
        let written = match self.write() {
            Ok(n) => n,
            Err(e) => {
                self.error = Some(e.kind());
                0
            }
        };
        if self.queue.is_empty() && self.error.is_none() {
            return (written, false);
        }
        self.writer = true;
        (written, true)
    }

    /// Writes what the socket takes of the queue now, without waiting.
    /// Returns the bytes written; the queue keeps the rest.
    pub(crate) fn write(&mut self) -> io::Result<usize> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        match &self.sock {
            Some(sock) => write_queue(sock, &mut self.queue, &mut self.bytes),
            None => Ok(0),
        }
    }

    /// Everything queued, as if written (tests without a socket).
    #[cfg(test)]
    pub(crate) fn take_all(&mut self) -> Vec<u8> {
        self.bytes = 0;
        self.queue.split_off(0).flat_map(|b| b.to_vec()).collect()
    }
}

/// Writes the front of `queue` to `sock` until the socket is full or the
/// queue empty, one `writev` of up to [`MAX_IOV`] frames at a time.
fn write_queue(sock: &TcpStream, queue: &mut Frames, bytes: &mut usize) -> io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let (result, offered) = if queue.len() == 1 {
            // Not through the array below: filling it costs more than
            // the rest of a one-message write.
            let one = queue.iter().next().map_or(&[][..], |b| &b[..]);
            (send(sock, &[IoSlice::new(one)]), one.len())
        } else {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let (n, offered) = queue.fill(&mut iov);
            (send(sock, &iov[..n]), offered)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        total += n;
        *bytes -= n;
        queue.drop_front(n);
        if n < offered {
            // The socket is full.
            break;
        }
    }
    Ok(total)
}

/// One `send(2)` (one buffer: a shorter path through the kernel than
/// `writev`) or `sendmsg(2)` straight on the socket's descriptor.
///
/// Not tokio's `try_write`: that first loads the socket's readiness word
/// in the runtime's I/O driver, a cache miss per write when a publisher
/// writes to thousands of sockets in turn. Only when the socket is full
/// does this go through tokio's own write, which sees the same `EAGAIN`
/// and clears the readiness, so the connection task's `writable()` then
/// waits for room instead of returning at once (without the clear it would
/// only spin once more: tokio clears it on its own failed write then).
fn send(sock: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let raw = SockRef::from(sock);
    let sent = match iov {
        [one] => raw.send(one),
        _ => raw.send_vectored(iov),
    };
    match sent {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            match iov {
                [one] => sock.try_write(one),
                _ => sock.try_write_vectored(iov),
            }
        }
        sent => sent,
    }
}

/// The queue of frames owed: the front one kept inline, the rest in a
/// ring buffer that is allocated only when a second frame waits. A
/// subscriber that keeps up in a wide fan-out has one message queued at a
/// time, so queuing it touches no memory but the client's own handle, and
/// a client that never had two frames waiting holds no queue buffer.
///
/// An emptied ring is kept up to [`KEEP_FRAMES`] slots: freeing it every
/// time made a narrow fan-out (many messages per subscriber per batch)
/// allocate and grow it again every batch, 80 % more instructions per
/// delivery in callgrind.
#[derive(Debug, Default)]
#[repr(C)]
struct Frames {
    /// `None` only when `rest` is empty too.
    front: Option<Bytes>,
    rest: VecDeque<Bytes>,
}

impl Frames {
    fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.front.iter().chain(self.rest.iter())
    }

    /// Points `iov` at the first frames; returns how many and their bytes.
    /// (Slice by slice: a zip over [`Frames::iter`]'s chained iterators
    /// cost about 20 more instructions per frame in callgrind.)
    fn fill<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> (usize, usize) {
        let (mut n, mut offered) = (0, 0);
        let (a, b) = self.rest.as_slices();
        for part in [self.front.as_slice(), a, b] {
            for msg in part {
                let Some(slot) = iov.get_mut(n) else {
                    return (n, offered);
                };
                *slot = IoSlice::new(msg);
                n += 1;
                offered += msg.len();
            }
        }
        (n, offered)
    }

    fn push(&mut self, msg: Bytes) {
        if self.front.is_none() {
            self.front = Some(msg);
        } else {
            self.rest.push_back(msg);
        }
    }

    /// Puts `msg` at position `at` (at most [`Frames::len`]).
    fn insert(&mut self, at: usize, msg: Bytes) {
        if at == 0 {
            if let Some(old) = self.front.replace(msg) {
                self.rest.push_front(old);
            }
        } else {
            self.rest.insert((at - 1).min(self.rest.len()), msg);
        }
    }

    /// Takes the frames from position `from` on, in order.
    fn split_off(&mut self, from: usize) -> impl Iterator<Item = Bytes> {
        let (front, rest) = if from == 0 {
            (self.front.take(), std::mem::take(&mut self.rest))
        } else {
            (None, self.rest.split_off((from - 1).min(self.rest.len())))
        };
        self.shrink();
        front.into_iter().chain(rest)
    }

    /// Drops `n` written bytes from the front: the whole frames in one
    /// drain, then what was written of the next.
    fn drop_front(&mut self, mut n: usize) {
        let Some(front) = self.front.as_mut() else {
            return;
        };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        let whole = self
            .rest
            .iter()
            .take_while(|msg| {
                let done = n >= msg.len();
                if done {
                    n -= msg.len();
                }
                done
            })
            .count();
        self.rest.drain(..whole);
        self.front = self.rest.pop_front();
        if let Some(front) = self.front.as_mut() {
            front.advance(n.min(front.len()));
        }
        self.shrink();
    }

    /// Frees the ring buffer once it is empty, if it grew large.
    fn shrink(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > KEEP_FRAMES {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &Frames) -> Vec<&[u8]> {
        f.iter().map(|b| &b[..]).collect()
    }

    #[test]
    fn frames_keep_their_order_through_every_operation() {
        let mut f = Frames::default();
        for m in ["a", "bb", "ccc"] {
            f.push(Bytes::from(m));
        }
        f.insert(0, Bytes::from("r"));
        f.insert(2, Bytes::from("s"));
        assert_eq!(frames(&f), [&b"r"[..], b"a", b"s", b"bb", b"ccc"]);
        f.drop_front(3);
        assert_eq!(frames(&f), [&b"bb"[..], b"ccc"]);
        f.drop_front(1);
        assert_eq!(frames(&f), [&b"b"[..], b"ccc"]);
        let tail: Vec<Bytes> = f.split_off(1).collect();
        assert_eq!(tail, [Bytes::from("ccc")]);
        assert_eq!(f.len(), 1);
        f.drop_front(1);
        assert!(f.is_empty());
        assert!(f.rest.capacity() <= KEEP_FRAMES);
        for _ in 0..4 * KEEP_FRAMES {
            f.push(Bytes::from("m"));
        }
        f.drop_front(4 * KEEP_FRAMES);
        assert_eq!(f.rest.capacity(), 0, "a grown queue is freed once empty");
        f.insert(0, Bytes::from("x"));
        assert_eq!(frames(&f), [&b"x"[..]]);
    }
}
