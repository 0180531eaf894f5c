//! `affinity = "socketio"`: engine.io session affinity without a cookie
//! jar. socket.io opens every session with an HTTP long-polling handshake
//! whose answer names the session (`0{"sid":"…",…}`), and every later
//! request of that session, the WebSocket upgrade included, carries
//! `?sid=…`. The proxy reads the sid from the handshake answer as it
//! passes ([`Sniffer`]: the answer is neither buffered nor delayed, and at
//! most [`MAX_SNIFF`] bytes are looked at) and remembers which backend
//! issued it ([`SidTable`]), so clients that keep no cookies (Node's
//! `socket.io-client` without `withCredentials`) stay on their backend.
//!
//! The table is the pool's, per proxy instance, and bounded: at most
//! `socketio.max_sessions` entries, the least recently used forgotten
//! first, and an entry not seen for `socketio.session_idle` expires. Both
//! are counted. A client whose session was forgotten is not lost: its
//! sealed cookie (issued and honoured as with cookie affinity) still
//! names the backend, and without one it is balanced, the backend answers
//! "session unknown" and the client reconnects.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of a handshake answer read for its sid: the open packet is
/// about 120 bytes; anything that has not shown a sid by then is left alone.
pub const MAX_SNIFF: usize = 1024;

/// Longest sid remembered or looked up (engine.io's are 20 characters).
pub const MAX_SID: usize = 64;

/// What the table says about a request's sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidLookup {
    /// Known: the id of the backend that issued it.
    Known(Arc<str>),
    /// Not in this instance's table (never seen, forgotten, or too long).
    Unknown,
}

/// What the table has done, read by `/metrics` when scraped (the table
/// outlives reloads, so these only grow).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SidStats {
    /// Sessions remembered now.
    pub sessions: usize,
    /// Requests whose sid was in the table.
    pub hits: u64,
    /// Requests whose sid was not.
    pub misses: u64,
    /// Entries pushed out by a new session at `max_sessions`.
    pub evicted_full: u64,
    /// Entries not seen for `session_idle`.
    pub evicted_idle: u64,
    /// Handshake answers whose sid was learned.
    pub learned: u64,
    /// Handshake answers without a readable sid within [`MAX_SNIFF`] bytes.
    pub unreadable: u64,
}

struct Entry {
    backend: Arc<str>,
    last: Instant,
    /// Key into `Inner::order`.
    stamp: u64,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Box<str>, Entry>,
    /// Least recently used first: stamps only grow, so the first entry is
    /// also the one seen longest ago.
    order: BTreeMap<u64, Box<str>>,
    next_stamp: u64,
    max: usize,
    idle: Duration,
    stats: SidStats,
}

/// sid → backend id, least recently used first out.
pub struct SidTable {
    inner: Mutex<Inner>,
}

impl SidTable {
    pub fn new(max: usize, idle: Duration) -> SidTable {
        SidTable {
            inner: Mutex::new(Inner {
                max: max.max(1),
                idle,
                ..Inner::default()
            }),
        }
    }

    /// New limits after a reload; entries past a smaller `max` go now.
    pub fn configure(&self, max: usize, idle: Duration) {
        let mut inner = self.inner.lock();
        inner.max = max.max(1);
        inner.idle = idle;
        inner.expire(Instant::now());
        while inner.sessions.len() > inner.max {
            inner.pop_oldest();
            inner.stats.evicted_full += 1;
        }
    }

    /// The backend of `sid`; a hit counts as use (its idle time restarts).
    pub fn lookup(&self, sid: &str, now: Instant) -> SidLookup {
        let mut inner = self.inner.lock();
        inner.expire(now);
        let stamp = inner.next_stamp;
        let Some(entry) = inner.sessions.get_mut(sid).filter(|_| sid.len() <= MAX_SID) else {
            inner.stats.misses += 1;
            return SidLookup::Unknown;
        };
        let old = std::mem::replace(&mut entry.stamp, stamp);
        entry.last = now;
        let backend = entry.backend.clone();
        inner.next_stamp += 1;
        if let Some(key) = inner.order.remove(&old) {
            inner.order.insert(stamp, key);
        }
        inner.stats.hits += 1;
        SidLookup::Known(backend)
    }

    /// Remembers that `backend` issued `sid`.
    pub fn insert(&self, sid: &str, backend: Arc<str>, now: Instant) {
        let mut inner = self.inner.lock();
        inner.expire(now);
        if sid.is_empty() || sid.len() > MAX_SID {
            return;
        }
        if let Some(old) = inner.sessions.remove(sid) {
            inner.order.remove(&old.stamp);
        }
        while inner.sessions.len() >= inner.max {
            inner.pop_oldest();
            inner.stats.evicted_full += 1;
        }
        let stamp = inner.next_stamp;
        inner.next_stamp += 1;
        inner.order.insert(stamp, sid.into());
        inner.sessions.insert(
            sid.into(),
            Entry {
                backend,
                last: now,
                stamp,
            },
        );
        inner.stats.learned += 1;
    }

    /// Counts a handshake answer whose sid could not be read.
    pub fn unreadable(&self) {
        self.inner.lock().stats.unreadable += 1;
    }

    pub fn stats(&self) -> SidStats {
        let inner = self.inner.lock();
        SidStats {
            sessions: inner.sessions.len(),
            ..inner.stats
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn pop_oldest(&mut self) {
        if let Some((_, sid)) = self.order.pop_first() {
            self.sessions.remove(&sid);
        }
    }

    /// Drops entries idle for longer than `idle`, oldest first (the
    /// order is by last use, so the scan stops at the first fresh one).
    fn expire(&mut self, now: Instant) {
        while let Some((_, sid)) = self.order.first_key_value() {
            let stale = self
                .sessions
                .get(sid)
                .is_none_or(|e| now.saturating_duration_since(e.last) > self.idle);
            if !stale {
                break;
            }
            self.pop_oldest();
            self.stats.evicted_idle += 1;
        }
    }
}

/// What the first bytes of a handshake answer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// The open packet's sid.
    Sid(String),
    /// Not known yet: more bytes may tell.
    NotYet,
    /// Not an open packet with a usable sid.
    NotOpen,
}

/// The sid of an engine.io handshake answer, from its first bytes.
///
/// EIO=4 sends the open packet alone (`0{"sid":…}`); EIO=3 frames it
/// in a payload with a length prefix, as text (`96:0{…}`) or, for XHR2
/// binary clients, as bytes (`\x00`, the length's digits as bytes 0-9,
/// `\xff`, then `0{…}`).
pub fn handshake_sid(body: &[u8]) -> Opening {
    let packet = match body.first() {
        None => return Opening::NotYet,
        Some(b'0') => &body[1..],
        Some(b'0'..=b'9') => {
            let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
            match (body.get(digits), body.get(digits + 1)) {
                (None, _) | (Some(b':'), None) => return Opening::NotYet,
                (Some(b':'), Some(b'0')) => &body[digits + 2..],
                _ => return Opening::NotOpen,
            }
        }
        Some(0) => {
            // The length digits here are bytes 0 to 9, not ASCII.
            let digits = body[1..].iter().take_while(|b| **b <= 9).count();
            match (body.get(1 + digits), body.get(2 + digits)) {
                (None, _) | (Some(0xff), None) => return Opening::NotYet,
                (Some(0xff), Some(b'0')) => &body[3 + digits..],
                _ => return Opening::NotOpen,
            }
        }
        Some(_) => return Opening::NotOpen,
    };
    match packet.first() {
        None => return Opening::NotYet,
        Some(b'{') => {}
        Some(_) => return Opening::NotOpen,
    }
    let mut stream = serde_json::Deserializer::from_slice(packet).into_iter::<serde_json::Value>();
    match stream.next() {
        Some(Ok(open)) => match open.get("sid").and_then(serde_json::Value::as_str) {
            Some(sid) if !sid.is_empty() && sid.len() <= MAX_SID => Opening::Sid(sid.to_string()),
            _ => Opening::NotOpen,
        },
        Some(Err(e)) if e.is_eof() => Opening::NotYet,
        _ => Opening::NotOpen,
    }
}

/// What became of a handshake answer read by a [`Sniffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// The sid, remembered for the backend.
    Learned(String),
    /// Not an open packet, no sid, or none within [`MAX_SNIFF`] bytes.
    Unreadable,
}

/// Reads the sid from a handshake answer as its body passes to the
/// client. The frames themselves go on untouched; only a copy of at most
/// [`MAX_SNIFF`] bytes is kept, and only until the sid shows.
pub struct Sniffer {
    seen: Vec<u8>,
    done: bool,
}

impl Default for Sniffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sniffer {
    pub fn new() -> Sniffer {
        Sniffer {
            seen: Vec::new(),
            done: false,
        }
    }

    /// Looks at the next piece of the body; `Some` once it knows.
    pub fn feed(&mut self, data: &[u8]) -> Option<Sniffed> {
        if self.done {
            return None;
        }
        // The common case, the whole open packet in one frame, needs no copy.
        let result = if self.seen.is_empty() {
            handshake_sid(&data[..data.len().min(MAX_SNIFF)])
        } else {
            let room = MAX_SNIFF.saturating_sub(self.seen.len());
            self.seen.extend_from_slice(&data[..data.len().min(room)]);
            handshake_sid(&self.seen)
        };
        let verdict = match result {
            Opening::Sid(sid) => Sniffed::Learned(sid),
            Opening::NotOpen => Sniffed::Unreadable,
            Opening::NotYet if self.seen.len().max(data.len()) >= MAX_SNIFF => Sniffed::Unreadable,
            Opening::NotYet => {
                if self.seen.is_empty() {
                    self.seen.extend_from_slice(data);
                }
                return None;
            }
        };
        self.done = true;
        self.seen = Vec::new();
        Some(verdict)
    }

    /// The body ended before the sid showed.
    pub fn finish(&mut self) -> Option<Sniffed> {
        (!std::mem::replace(&mut self.done, true)).then_some(Sniffed::Unreadable)
    }
}

/// A handshake answer on its way to the client: what its [`Sniffer`]
/// finds goes into the pool's table for the backend that answered. The
/// sid is remembered before the frame that carries it is passed on, so
/// the client's next request, which carries it, finds it.
pub struct Learner {
    sniffer: Sniffer,
    table: Arc<SidTable>,
    backend: Arc<str>,
}

impl Learner {
    pub fn new(table: Arc<SidTable>, backend: &str) -> Learner {
        Learner {
            sniffer: Sniffer::new(),
            table,
            backend: Arc::from(backend),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let verdict = self.sniffer.feed(data);
        self.record(verdict);
    }

    /// The body ended (or was dropped).
    pub fn finish(&mut self) {
        let verdict = self.sniffer.finish();
        self.record(verdict);
    }

    fn record(&self, verdict: Option<Sniffed>) {
        match verdict {
            Some(Sniffed::Learned(sid)) => {
                self.table
                    .insert(&sid, self.backend.clone(), Instant::now());
            }
            Some(Sniffed::Unreadable) => self.table.unreadable(),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
