//! The client's request body on its way to a backend: an idle timeout
//! (`timeouts.client_body`), and a record of who broke the request.
//!
//! When an upstream send fails, hyper only says "error from user's Body
//! stream" or "connection closed". Passive health must not blame a backend
//! for a client that sent a malformed chunk, hung up mid-upload or stopped
//! sending, so the body itself records its fault and the moment it was
//! fully read; the request path reads that record to decide who failed,
//! and starts the backend's response timer only once the upload is done.

use crate::upstream::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What the client did wrong with its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// No byte within `timeouts.client_body`.
    #[error("the client sent no body data within the client_body timeout")]
    Timeout,
    /// Closed the connection before the declared length or last chunk.
    #[error("the client closed the connection mid-body")]
    Aborted,
    /// A body hyper could not parse (bad chunk size, and the like).
    #[error("the client sent a malformed body")]
    Invalid,
}

impl ClientFault {
    /// Label of `limpet_proxy_client_body_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ClientFault::Timeout => "timeout",
            ClientFault::Aborted => "aborted",
            ClientFault::Invalid => "invalid",
        }
    }
}

/// Shared between the body (inside hyper's upstream connection) and the
/// request path.
///
/// A flag and one `Notify` rather than a `watch` channel: most requests
/// have no body, are done before anyone waits, and then cost neither the
/// channel's allocation nor its wake-ups.
#[derive(Debug)]
pub struct BodyState {
    done: AtomicBool,
    finished: Notify,
    fault: Mutex<Option<ClientFault>>,
}

impl BodyState {
    /// True once the last byte of the body was handed upstream.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the body is fully read (never, if it never is).
    pub async fn wait_done(&self) {
        // Without a body it is done from the start: no waiter to register
        // (and take the Notify's lock for, twice).
        while !self.is_done() {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the flag is read: a `finish` in between
            // still wakes this waiter.
            finished.as_mut().enable();
            if self.is_done() {
                return;
            }
            finished.await;
        }
    }

    pub fn fault(&self) -> Option<ClientFault> {
        *self.fault.lock()
    }

    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.finished.notify_waiters();
        }
    }
}

/// The client's body with an idle timeout; records faults in a `BodyState`.
pub struct ClientBody {
    inner: Incoming,
    state: Arc<BodyState>,
    idle: Duration,
    /// Armed only while we wait on the client: a backend that reads slowly
    /// (so hyper does not poll us) is not the client's fault. Allocated on
    /// the first wait and reset after that, not once per frame.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl ClientBody {
    pub fn new(inner: Incoming, idle: Duration) -> (ClientBody, Arc<BodyState>) {
        let state = Arc::new(BodyState {
            // No body: done from the start, before anyone can wait.
            done: AtomicBool::new(inner.is_end_stream()),
            finished: Notify::new(),
            fault: Mutex::new(None),
        });
        let body = ClientBody {
            inner,
            state: state.clone(),
            idle,
            timer: None,
            waiting: false,
        };
        (body, state)
    }

    fn fail(&mut self, fault: ClientFault) -> BoxError {
        *self.state.fault.lock() = Some(fault);
        Box::new(fault)
    }
}

fn classify(e: &hyper::Error) -> ClientFault {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ClientFault::Aborted
    } else {
        ClientFault::Invalid
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if this.inner.is_end_stream() {
                    this.state.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.waiting = false;
                let fault = classify(&e);
                tracing::debug!("client body failed: {e}");
                Poll::Ready(Some(Err(this.fail(fault))))
            }
            Poll::Ready(None) => {
                this.waiting = false;
                this.state.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    this.waiting = true;
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = false;
                        Poll::Ready(Some(Err(this.fail(ClientFault::Timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
