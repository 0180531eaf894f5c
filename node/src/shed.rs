//! Load shedding on the message path: the byte budgets of the node's
//! queues and the age past which a room message is dropped rather than
//! delivered late.
//!
//! Under overload a queue that only grows turns into seconds of latency
//! for everyone (messages are delivered, but too late to matter). The node
//! instead keeps every queue on the path client → node → broker → node →
//! client small in bytes, and a room or direct message (an event, which
//! like socket.io's volatile emits is only worth something now) that
//! finds its queue full, or that waited longer than
//! `limits.max_queue_delay`, is dropped and counted in
//! `limpet_node_shed_total{path, reason}`. Acks, errors, joins, leaves and
//! member lists are never dropped for age: they keep rooms consistent.
//!
//! Nobody is told about a dropped event: the sender's ack means "accepted
//! by the node", as with socket.io and Centrifugo, and recipients just
//! miss it. Only the counters say how much was shed.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Where on the message path a message was shed (the `path` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    NodeToBroker,
    BrokerToNode,
    NodeToClient,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::TooOld => "too_old",
        }
    }
}

/// Counts a shed message.
pub fn count(counter: &prometheus::IntCounterVec, path: Path, reason: Reason) {
    counter
        .with_label_values(&[path.as_str(), reason.as_str()])
        .inc();
}

/// The age limit of queued events; `None` (0 in the config) turns it off.
#[derive(Debug, Clone, Copy)]
pub struct MaxAge(Option<Duration>);

impl MaxAge {
    pub fn new(limit: Duration) -> MaxAge {
        MaxAge((!limit.is_zero()).then_some(limit))
    }

    /// Whether something queued at `since` has waited too long.
    pub fn expired(self, since: Instant) -> bool {
        self.0.is_some_and(|max| since.elapsed() > max)
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

    #[test]
    fn zero_turns_the_age_limit_off() {
        let long_ago = Instant::now() - Duration::from_secs(5);
        assert!(!MaxAge::new(Duration::ZERO).expired(long_ago));
        assert!(MaxAge::new(Duration::from_millis(100)).expired(long_ago));
        assert!(!MaxAge::new(Duration::from_secs(60)).expired(long_ago));
    }
}
