//! A socket with bytes to read again first: what the HTTP layer read past
//! an upgrade head (the tunnel's generic path), or past the last request
//! of a connection it gave back (parking, see `park`).

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Prefixed<S> {
    inner: S,
    leftover: Bytes,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, leftover: Bytes) -> Prefixed<S> {
        Prefixed { inner, leftover }
    }

    /// Puts back bytes read from this socket and not yet used: they are
    /// read again before what is already waiting here.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.leftover = if self.leftover.is_empty() {
            bytes
        } else {
            [bytes, std::mem::take(&mut self.leftover)].concat().into()
        };
    }

    /// Whether bytes wait to be read again.
    pub fn has_leftover(&self) -> bool {
        !self.leftover.is_empty()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The socket, and what is to be read before its own bytes.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.leftover)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
