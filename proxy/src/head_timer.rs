//! hyper's header-read deadline on plain connections, without a timer
//! per request.
//!
//! hyper's HTTP/1 server makes a new timer each time it starts waiting
//! for a request head: a boxed tokio `Sleep` put into the runtime's timer
//! wheel and taken out again when the head is in. On keep-alive requests
//! that was about 3.5 % of the proxy's user time (`perf`, plain HTTP).
//!
//! A plain connection's serving loop (`connection::drive`) wakes its task
//! at least once per [`crate::park::PARK_AFTER`] while hyper can be
//! reading a head (a request in flight stretches the period, but hyper
//! reads no head then), and each wake polls hyper. So the deadline here
//! registers nothing: it is a time compared with the clock when hyper
//! polls it. A client that dribbles its head is cut off up to one period
//! after `timeouts.header_read`, not at it (up to [`crate::park::BUSY_LOOK`]
//! when a shutdown began while a request was in flight). TLS connections
//! have no such loop and keep tokio's timer.

use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The [`Timer`] of a plain connection's hyper server; see the module doc.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadTimer;

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(Deadline(deadline))
    }
}

/// Ready once polled at or after its instant; it never wakes anyone.
struct Deadline(Instant);

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Sleep for Deadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_deadline_is_ready_only_once_its_time_has_come() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut past = HeadTimer.sleep_until(Instant::now());
        assert!(past.as_mut().poll(&mut cx).is_ready());
        let mut future = HeadTimer.sleep(Duration::from_secs(3600));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        HeadTimer.reset(&mut future, Instant::now());
        assert!(future.as_mut().poll(&mut cx).is_ready());
    }
}
