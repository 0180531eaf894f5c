//! The wait between attempts to reconnect to the broker.
//!
//! It starts at 100 ms and doubles up to `broker_backoff_max` (1 s by
//! default), and it is counted from the start of the failed attempt, not
//! from its end: an attempt that timed out (a broker behind a black hole
//! takes the whole `broker_connect_timeout`) is followed by the next at
//! once, so a SYN goes out about every second (the attempt's own
//! retransmit after 1 s, then the next attempt) and the node finds the
//! broker about a second after it is reachable again. A broker that
//! refuses at once (restarting) is tried every `broker_backoff_max`.

use std::time::Duration;
use tokio::sync::mpsc;

/// The wait between reconnect attempts: from 100 ms, doubling up to
/// `broker_backoff_max`, counted from the start of the failed attempt.
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        let first = Duration::from_millis(100).min(max);
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// How long after now the next attempt starts, for one that began at
    /// `attempt` (nothing when the attempt itself took that long).
    pub(crate) fn wait(&self, attempt: tokio::time::Instant) -> Duration {
        (attempt + self.next).saturating_duration_since(tokio::time::Instant::now())
    }

    /// Waits for the next attempt after one that began at `attempt`, still
    /// taking commands (each handed to `offline`), and doubles the
    /// back-off; false when the command queue has closed (the node has
    /// gone away).
    pub(crate) async fn sleep<C>(
        &mut self,
        attempt: tokio::time::Instant,
        rx: &mut mpsc::UnboundedReceiver<C>,
        mut offline: impl FnMut(C),
    ) -> bool {
        let deadline = attempt + self.next;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                cmd = rx.recv() => match cmd {
                    None => return false,
                    Some(cmd) => offline(cmd),
                },
            }
        }
        self.next = (self.next * 2).min(self.max);
        true
    }

    /// A connection came up.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn counted_from_the_attempt_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let attempt = Instant::now();
        assert_eq!(b.wait(attempt), Duration::from_millis(100));
        // An attempt that took longer than the back-off (a connect timeout
        // into a black hole): the next starts at once.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.wait(attempt), Duration::ZERO);
        for _ in 0..6 {
            assert!(b.sleep(Instant::now(), &mut rx, |()| {}).await);
        }
        assert_eq!(b.wait(Instant::now()), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.wait(Instant::now()), Duration::from_millis(100));
        drop(tx);
        assert!(!b.sleep(Instant::now(), &mut rx, |()| {}).await);
    }
}
