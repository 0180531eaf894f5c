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
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Most queued frames handed to one `writev`.
const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub struct Outbox {
    /// `None` until the connection task attaches its socket, and again once
    /// it closed (tests run sessions without one: the bytes stay queued).
    sock: Option<Arc<TcpStream>>,
    /// The connection is gone: nothing queued would ever be written.
    pub(crate) closed: bool,
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    pub(crate) bytes: usize,
    /// The connection task is running requests; their replies will go in
    /// at `held`, before whatever was pushed meanwhile.
    running: bool,
    held: usize,
    /// The connection task has been told to wait for the socket and write
    /// the rest: nobody else writes until it has.
    pub(crate) writer: bool,
    /// A publisher holds this client in its [`crate::handle::Fanout`].
    pub(crate) scheduled: bool,
    /// A publisher's write failed; the connection task closes on it.
    error: Option<io::ErrorKind>,
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
        self.queue.clear();
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn push(&mut self, msg: Bytes) {
        self.bytes += msg.len();
        self.queue.push_back(msg);
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
        for msg in self.queue.drain(from..) {
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
                match sock.try_write(out) {
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
        self.queue.drain(..).flat_map(|b| b.to_vec()).collect()
    }
}

/// Writes the front of `queue` to `sock` until the socket is full or the
/// queue empty, one `writev` of up to [`MAX_IOV`] frames at a time.
fn write_queue(
    sock: &TcpStream,
    queue: &mut VecDeque<Bytes>,
    bytes: &mut usize,
) -> io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let (result, offered) = if queue.len() == 1 {
            // send(2), not writev(2): a shorter path through the kernel.
            (sock.try_write(&queue[0]), queue[0].len())
        } else {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let (mut n, mut offered) = (0, 0);
            for (slot, msg) in iov.iter_mut().zip(queue.iter()) {
                *slot = IoSlice::new(msg);
                n += 1;
                offered += msg.len();
            }
            (sock.try_write_vectored(&iov[..n]), offered)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        total += n;
        *bytes -= n;
        drop_front(queue, n);
        if n < offered {
            // The socket is full.
            break;
        }
    }
    Ok(total)
}

/// Drops `n` written bytes from the front of `queue`.
fn drop_front(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            break;
        };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        queue.pop_front();
    }
}
