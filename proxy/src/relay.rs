//! A backend's response body on its way to the client. Once it has been
//! read to the end, its keep-alive connection goes back to the backend's
//! idle list and the backend's in-flight count drops; a body cut short
//! takes its connection with it, since its state is unknown. An engine.io
//! handshake answer is read for its sid on the way (`select::socketio`).

use crate::select::socketio::Learner;
use crate::select::{ActiveGuard, Backend};
use crate::upstream::{Body, BoxError};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A backend response body that, when fully read, returns its connection
/// to the pool and releases the backend's in-flight count.
pub struct Tracked {
    pub inner: Incoming,
    pub guard: Option<ActiveGuard>,
    /// Present when the connection may be reused.
    pub conn: Option<(SendRequest<Body>, Arc<Backend>)>,
    /// Reads the session id of an engine.io handshake answer.
    pub learn: Option<Learner>,
}

impl Tracked {
    fn finish(&mut self, reusable: bool) {
        if let Some((sender, backend)) = self.conn.take() {
            if reusable {
                backend.idle.checkin(sender);
            }
        }
        self.guard.take();
        if let Some(mut learner) = self.learn.take() {
            learner.finish();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(guard) = &this.guard {
                        guard.count_bytes(data.len() as u64);
                    }
                    if let Some(learner) = this.learn.as_mut() {
                        learner.feed(data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper may skip the final poll of a body it knows is empty.
        let done = hyper::body::Body::is_end_stream(&self.inner);
        self.finish(done);
    }
}
