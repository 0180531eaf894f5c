//! The other nodes this node has heard from, and the presence queries
//! waiting for their answers.
//!
//! Plain data, each behind its own lock. Heartbeats come from the network,
//! so the peer table is bounded (`limits.max_peer_nodes`): a node past the
//! bound is not remembered (and counted by the caller).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A room member as presence reports it: (socket, node, user).
pub type Member = (String, String, Option<String>);

/// A presence query waiting for other nodes' answers.
struct WhoQuery {
    expected: HashSet<String>,
    members: Vec<Member>,
    answered: HashSet<String>,
    done: Option<oneshot::Sender<()>>,
}

/// The peer table is full: a heartbeat from a new node was not remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peers")]
pub struct TooManyPeers;

#[derive(Default)]
pub struct Peers {
    /// Peer node → last heartbeat.
    seen: Mutex<HashMap<String, Instant>>,
    queries: Mutex<HashMap<u64, WhoQuery>>,
    next_query: AtomicU64,
}

impl Peers {
    /// A heartbeat from `node`; `Ok(true)` when it is new to us.
    pub fn heard(&self, node: &str, max: usize) -> Result<bool, TooManyPeers> {
        let mut seen = self.seen.lock();
        let fresh = !seen.contains_key(node);
        if fresh && seen.len() >= max {
            return Err(TooManyPeers);
        }
        seen.insert(node.to_string(), Instant::now());
        Ok(fresh)
    }

    /// `node` said goodbye.
    pub fn forget(&self, node: &str) {
        self.seen.lock().remove(node);
    }

    /// Removes and returns the peers silent for longer than `timeout`;
    /// silence before `up_since` (our own broker outage) does not count.
    pub fn expire(&self, now: Instant, up_since: Instant, timeout: Duration) -> Vec<String> {
        let mut seen = self.seen.lock();
        let dead: Vec<String> = seen
            .iter()
            .filter(|(_, at)| now.duration_since((**at).max(up_since)) > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &dead {
            seen.remove(n);
        }
        dead
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn names(&self) -> HashSet<String> {
        self.seen.lock().keys().cloned().collect()
    }

    /// Opens a query that waits for answers from `expected`; the receiver
    /// fires once all of them answered.
    pub fn ask(&self, expected: HashSet<String>) -> (u64, oneshot::Receiver<()>) {
        let q = self.next_query.fetch_add(1, Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.queries.lock().insert(
            q,
            WhoQuery {
                expected,
                members: Vec::new(),
                answered: HashSet::new(),
                done: Some(tx),
            },
        );
        (q, rx)
    }

    /// `node`'s answer to query `q` (ignored when the query is closed, or
    /// the node answered already).
    pub fn answer(&self, q: u64, node: &str, found: &[String], users: &[String]) {
        let mut queries = self.queries.lock();
        let Some(query) = queries.get_mut(&q) else {
            return;
        };
        if query.answered.insert(node.to_string()) {
            query.members.extend(found.iter().enumerate().map(|(i, s)| {
                let user = users.get(i).filter(|u| !u.is_empty()).cloned();
                (s.clone(), node.to_string(), user)
            }));
        }
        if query.expected.is_subset(&query.answered) {
            if let Some(done) = query.done.take() {
                let _ = done.send(());
            }
        }
    }

    /// Closes query `q`; the members collected so far.
    pub fn close(&self, q: u64) -> Vec<Member> {
        self.queries
            .lock()
            .remove(&q)
            .map(|query| query.members)
            .unwrap_or_default()
    }
}
