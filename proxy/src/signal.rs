//! One-to-many signals that open tunnels and waiting requests watch for
//! their whole life: the shutdown drain deadline (every tunnel) and a
//! backend's mark-down by health checks (its tunnels and the requests
//! waiting for its answers).
//!
//! A `Notify` and a count rather than a `watch` channel, for what a waiter
//! costs while nothing happens, which is nearly always:
//!
//! * memory: one 64-byte waiter node, not a receiver and a `changed()`
//!   future (144 bytes) per tunnel;
//! * CPU: a tunnel's task is polled for every message it forwards, and a
//!   waiting `Notified` takes its `Notify`'s lock when polled. A
//!   [`Waiter`] registers once, then only reads the count, so a message
//!   takes no lock shared with every other tunnel.
//!
//! [`Rarely`] gives any such wait (a `watch` channel's `changed()`) the
//! same: polled once to register, then only when a cheap check says it
//! may be done.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// A signal fired any number of times; see the module doc.
#[derive(Default)]
pub struct Signal {
    fired: AtomicU64,
    notify: Arc<Notify>,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.fetch_add(1, SeqCst);
        self.notify.notify_waiters();
    }

    /// A waiter for the next [`Signal::fire`] after this call (one just
    /// before it may count either way).
    pub fn next(&self) -> Waiter {
        // Created before the count is read: a fire after the read still
        // reaches it (a `Notified` counts `notify_waiters` calls made after
        // its creation, polled or not).
        let notified = self.notify.clone().notified_owned();
        Waiter {
            seen: self.fired.load(SeqCst),
            registered: false,
            notified,
        }
    }

    /// A waiter that is ready at once if the signal ever fired, else at
    /// its first fire (the drain deadline: a tunnel opened after it must
    /// close too).
    pub fn ever(&self) -> Waiter {
        Waiter {
            seen: 0,
            registered: false,
            notified: self.notify.clone().notified_owned(),
        }
    }

    /// `waiter` as a future, for a caller that holds the signal anyway.
    pub async fn wait(&self, waiter: Waiter) {
        tokio::pin!(waiter);
        std::future::poll_fn(|cx| waiter.as_mut().poll_fired(cx, self)).await;
    }
}

pin_project_lite::pin_project! {
    /// One waiter of a [`Signal`]; it keeps no reference to the signal
    /// (a tunnel holds the signal's owner anyway), so
    /// [`Waiter::poll_fired`] is given it.
    pub struct Waiter {
        seen: u64,
        registered: bool,
        #[pin]
        notified: OwnedNotified,
    }
}

impl Waiter {
    /// `Ready` once `signal` (the one this waiter came from) has fired
    /// since the waiter was made. The first call registers the task's
    /// waker; later calls read the count only.
    pub fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>, signal: &Signal) -> Poll<()> {
        let this = self.project();
        if signal.fired.load(SeqCst) != *this.seen {
            return Poll::Ready(());
        }
        if !*this.registered {
            *this.registered = true;
            return this.notified.poll(cx);
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A wait polled again only when `may_be_done` says so, or when it
    /// is polled with another waker than the one it registered: tokio's
    /// `Notified` (under `watch::changed()` too) takes its lock on every
    /// poll, and a connection's task is polled for every request.
    pub struct Rarely<F, C> {
        #[pin]
        inner: F,
        may_be_done: C,
        registered: Option<Waker>,
    }
}

impl<F, C> Rarely<F, C> {
    /// `may_be_done` must turn true before whatever resolves `inner`
    /// wakes it (a `watch` sender bumps its version, then notifies).
    pub fn new(inner: F, may_be_done: C) -> Rarely<F, C> {
        Rarely {
            inner,
            may_be_done,
            registered: None,
        }
    }
}

impl<F: Future, C: Fn() -> bool> Future for Rarely<F, C> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let same_waker = this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && !(this.may_be_done)() {
            return Poll::Pending;
        }
        let polled = this.inner.poll(cx);
        if polled.is_pending() && !same_waker {
            *this.registered = Some(cx.waker().clone());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn resolves(signal: &Signal, waiter: Waiter) -> bool {
        let wait = signal.wait(waiter);
        tokio::time::timeout(Duration::from_millis(50), wait)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn next_sees_only_later_fires_ever_sees_earlier_ones() {
        let signal = Signal::default();
        signal.fire();
        assert!(!resolves(&signal, signal.next()).await, "an earlier fire");
        assert!(resolves(&signal, signal.ever()).await, "ever: fired before");
        let later = signal.next();
        signal.fire();
        assert!(resolves(&signal, later).await, "a fire after next()");
    }

    #[tokio::test]
    async fn a_registered_waiter_is_woken_by_a_fire() {
        let signal = Arc::new(Signal::default());
        let waiter = signal.next();
        let task = {
            let signal = signal.clone();
            tokio::spawn(async move { signal.wait(waiter).await })
        };
        // Let the task register, then fire from here.
        tokio::time::sleep(Duration::from_millis(20)).await;
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("no panic");
    }

    /// A future that counts its polls and never resolves by itself.
    struct Counted<'a>(&'a std::cell::Cell<u32>, &'a std::cell::Cell<bool>);

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.set(self.0.get() + 1);
            if self.1.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn rarely_polls_its_wait_once_until_the_check_turns_true() {
        let (polls, done) = (std::cell::Cell::new(0), std::cell::Cell::new(false));
        let wait = Rarely::new(Counted(&polls, &done), || done.get());
        let mut wait = std::pin::pin!(wait);
        let waker = Arc::new(Nudge).into();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1, "registered once, then only checked");
        done.set(true);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
    }

    #[test]
    fn rarely_polls_again_for_another_waker() {
        let (polls, done) = (std::cell::Cell::new(0), std::cell::Cell::new(false));
        let wait = Rarely::new(Counted(&polls, &done), || done.get());
        let mut wait = std::pin::pin!(wait);
        let first = Arc::new(Nudge).into();
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        let other = Arc::new(Nudge).into();
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&other))
            .is_pending());
        assert_eq!(polls.get(), 2, "the new waker was registered");
    }

    /// A waker that does nothing, with an identity `will_wake` can
    /// compare (a clone of `Waker::noop()` may not compare equal).
    struct Nudge;

    impl std::task::Wake for Nudge {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test]
    async fn rarely_sees_a_watch_change() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let probe = rx.clone();
        let task = tokio::spawn(async move {
            Rarely::new(rx.changed(), || probe.has_changed().unwrap_or(true)).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(true);
        let changed = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(changed.is_ok());
    }
}
