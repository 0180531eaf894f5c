//! Load shedding on the message path: the byte budgets of the node's
//! queues and the age past which a room message is dropped rather than
//! delivered late.
//!
//! Under overload a queue that only grows turns into seconds of latency
//! for everyone (messages are delivered, but too late to matter). The node
//! instead keeps every queue on the path client → node → broker → node →
//! client small in bytes, and a room or direct message (an event, which
//! like socket.io's volatile emits is only worth something now) that
//! finds its queue full, or that waited longer than its share of
//! `limits.max_queue_delay` (a quarter: see [`MaxAge`]), is dropped and
//! counted in
//! `limpet_node_shed_total{path, reason}`. Acks, errors, joins, leaves and
//! member lists are never dropped for age: they keep rooms consistent.
//!
//! Nobody is told about an event dropped on the way: the sender's ack
//! means "accepted by the node", as with socket.io and Centrifugo, and
//! recipients just miss it. Only the counters say how much was shed.
//!
//! Queues the node can see are not the whole path: when the node itself
//! falls behind (its CPU share is too small for what clients send),
//! messages wait unread in kernel socket buffers, where no age can be
//! measured, and every queue after them fills with work that will be
//! late anyway. So with `max_queue_delay` set the node also watches how
//! late its own event loop runs, and how long messages from other nodes
//! waited before it handled them ([`Lag`]); while either is over a
//! quarter of that budget, new room and direct messages are refused at
//! the door (error `overloaded` to a sender that asked for an ack,
//! `path="client_to_node",reason="overloaded"` in the counter), which
//! costs a fraction of carrying them, until the node has caught up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where on the message path a message was shed (the `path` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    ClientToNode,
    NodeToBroker,
    BrokerToNode,
    NodeToClient,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::ClientToNode => "client_to_node",
            Path::NodeToBroker => "node_to_broker",
            Path::BrokerToNode => "broker_to_node",
            Path::NodeToClient => "node_to_client",
        }
    }
}

/// Why it was shed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    QueueFull,
    TooOld,
    Overloaded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::TooOld => "too_old",
            Reason::Overloaded => "overloaded",
        }
    }
}

/// Counts a shed message.
pub fn count(counter: &prometheus::IntCounterVec, path: Path, reason: Reason) {
    counter
        .with_label_values(&[path.as_str(), reason.as_str()])
        .inc();
}

/// The age limit of queued events in one queue; `None` (0 in the
/// config) turns it off.
#[derive(Debug, Clone, Copy)]
pub struct MaxAge(Option<Duration>);

impl MaxAge {
    /// The places an event can wait on its way through the node: the
    /// door (the event loop), the queue to the broker, the queue from it
    /// and the queue to the client.
    const PLACES: u32 = 4;

    /// `budget` (`max_queue_delay`) is for the whole way through the
    /// cluster: each place gets an equal share, so an event that waited
    /// close to the limit everywhere is still within the budget.
    pub fn new(budget: Duration) -> MaxAge {
        MaxAge((!budget.is_zero()).then_some(budget / MaxAge::PLACES))
    }

    /// Whether something queued at `since` has waited too long.
    pub fn expired(self, since: Instant) -> bool {
        self.0.is_some_and(|max| since.elapsed() > max)
    }
}

/// How far behind the node is: a task that asks to wake every
/// [`Lag::TICK`] records how late it woke (a runtime whose tasks queue
/// behind each other, or whose threads get too little CPU, wakes it
/// late), and the inbound handler reports how long each message from
/// the broker waited for it.
#[derive(Debug)]
pub struct Lag {
    origin: Instant,
    /// When the watcher last woke, in µs since `origin`.
    woke_us: AtomicU64,
    /// How late it woke then, in µs.
    late_us: AtomicU64,
    /// How long the last inbound message waited, in µs, and when that was
    /// (µs since `origin`): a wait only says something while it is fresh.
    waited_us: AtomicU64,
    waited_at_us: AtomicU64,
    /// Lateness past which new events are refused.
    max: Duration,
}

impl Lag {
    pub const TICK: Duration = Duration::from_millis(10);

    /// Starts the watcher for a node whose queue delay budget is `budget`
    /// (`max_queue_delay`); `None` when shedding is off, so an idle node
    /// with the default config never wakes for it.
    pub fn spawn(budget: MaxAge) -> Option<Arc<Lag>> {
        let max = budget.0?;
        let lag = Arc::new(Lag {
            origin: Instant::now(),
            woke_us: AtomicU64::new(0),
            late_us: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
            waited_at_us: AtomicU64::new(0),
            max,
        });
        let weak = Arc::downgrade(&lag);
        tokio::spawn(async move {
            let mut due = Instant::now() + Lag::TICK;
            loop {
                tokio::time::sleep_until(due.into()).await;
                let Some(lag) = weak.upgrade() else { return };
                let now = Instant::now();
                lag.record(now, now.saturating_duration_since(due));
                due = now + Lag::TICK;
            }
        });
        Some(lag)
    }

    fn record(&self, now: Instant, late: Duration) {
        self.late_us.store(late.as_micros() as u64, Relaxed);
        self.woke_us
            .store(now.duration_since(self.origin).as_micros() as u64, Relaxed);
    }

    /// A message from the broker is handled after waiting `waited` in the
    /// inbound queue.
    pub fn inbound_waited(&self, waited: Duration) {
        self.waited_us.store(waited.as_micros() as u64, Relaxed);
        let now = self.origin.elapsed().as_micros() as u64;
        self.waited_at_us.store(now, Relaxed);
    }

    /// How far behind the node is now: the last wake-up's lateness, how
    /// overdue the next one is (a swamped loop has not woken the watcher
    /// at all yet), or the last inbound wait if it is recent, whichever is
    /// most.
    pub fn current(&self) -> Duration {
        let now = self.origin.elapsed();
        let woke = Duration::from_micros(self.woke_us.load(Relaxed));
        let overdue = now.saturating_sub(woke).saturating_sub(Lag::TICK);
        let waited_at = Duration::from_micros(self.waited_at_us.load(Relaxed));
        let waited = if now.saturating_sub(waited_at) < 2 * Lag::TICK {
            Duration::from_micros(self.waited_us.load(Relaxed))
        } else {
            Duration::ZERO
        };
        overdue
            .max(Duration::from_micros(self.late_us.load(Relaxed)))
            .max(waited)
    }

    /// Whether new room and direct messages should be refused.
    pub fn overloaded(&self) -> bool {
        self.current() > self.max
    }
}

/// Bytes held by one queue, shared by the side that fills it and the side
/// that drains it.
#[derive(Debug)]
pub struct ByteBudget {
    queued: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> ByteBudget {
        ByteBudget {
            queued: AtomicUsize::new(0),
            max,
        }
    }

    /// Reserves `len` bytes if the queue then holds at most `max × factor`
    /// (control messages get headroom over events); `false` when full.
    pub fn take(&self, len: usize, factor: usize) -> bool {
        let limit = self.max.saturating_mul(factor);
        let before = self.queued.fetch_add(len, Relaxed);
        if before.saturating_add(len) > limit {
            self.queued.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }

    /// The bytes have left the queue (sent, handled or dropped).
    pub fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Relaxed);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_frees_what_is_released() {
        let b = ByteBudget::new(100);
        assert!(b.take(60, 1));
        assert!(!b.take(60, 1), "over the budget");
        assert!(b.take(60, 2), "control messages get headroom");
        assert!(!b.take(81, 2));
        assert_eq!(b.queued(), 120);
        b.release(120);
        assert!(b.take(100, 1));
    }

    /// The watcher only runs while this (current-thread) test awaits, so
    /// blocking the thread is what a swamped loop looks like.
    #[tokio::test]
    async fn the_loop_counts_as_overloaded_while_its_watcher_is_late() {
        assert!(
            Lag::spawn(MaxAge::new(Duration::ZERO)).is_none(),
            "off with shedding off"
        );
        let lag = Lag::spawn(MaxAge::new(Duration::from_secs(2))).expect("on");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!lag.overloaded(), "an idle loop is on time");
        lag.record(Instant::now(), Duration::from_millis(800));
        assert!(lag.overloaded(), "800 ms late is over a quarter of 2 s");
        lag.record(Instant::now(), Duration::from_millis(1));
        assert!(!lag.overloaded());
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            lag.overloaded(),
            "the watcher is overdue by more than 500 ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        lag.record(Instant::now(), Duration::ZERO);
        assert!(!lag.overloaded(), "caught up");
        lag.inbound_waited(Duration::from_millis(600));
        assert!(lag.overloaded(), "messages from other nodes wait too long");
        tokio::time::sleep(3 * Lag::TICK).await;
        assert!(!lag.overloaded(), "an old wait says nothing about now");
    }

    #[test]
    fn zero_turns_the_age_limit_off() {
        let long_ago = Instant::now() - Duration::from_secs(5);
        assert!(!MaxAge::new(Duration::ZERO).expired(long_ago));
        assert!(MaxAge::new(Duration::from_millis(100)).expired(long_ago));
        assert!(!MaxAge::new(Duration::from_secs(60)).expired(long_ago));
    }
}
