//! The keyspace: every key the broker holds (strings, hashes, sets,
//! streams), their expiry times, the memory they are estimated to take,
//! and the hooks that other clients hang on keys (WATCH flags, blocked
//! XREAD waiters, keyspace notifications waiting to be published).
//!
//! In memory only, like Redis with `save ""` and `appendonly no`.
//!
//! **One lock for the whole keyspace.** The broker is multi-threaded, and
//! a single `ReentrantMutex<RefCell<Db>>` is the simplest design that is
//! obviously correct: every command sees and changes the keyspace as one
//! step, `MULTI`/`EXEC` is atomic with respect to every other client by
//! holding the same lock across the queued commands (the lock is
//! reentrant, so the commands EXEC runs take it again on the same thread),
//! and WATCH, expiry and XREAD wake-ups need no cross-shard ordering.
//! Commands on keys are short (bounded by the request size limits), so the
//! lock is held for microseconds; the pub/sub path does not take it at all.
//! Sharding would buy parallelism for key commands at the price of
//! cross-shard MULTI, which socket.io's use (a few HSETs and XADDs per
//! room event) does not need.
//!
//! Expiry is lazy (a key past its time is deleted when a command looks it
//! up) and active: [`Db::expire_cycle`] runs ten times a second and deletes
//! keys in expiry order from an index, a bounded number per run, so
//! `expired` notifications go out even for keys nobody reads.

pub mod notify;
pub mod stream;
pub mod values;

use ahash::AHashMap;
use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::ReentrantMutex;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::Notify;
pub use values::{HashVal, SetVal, Str, Value};

type Hasher = ahash::RandomState;

/// A key name: up to 16 bytes are stored in the table slot itself, longer
/// ones on the heap. A small key's cost is mostly its slot and its
/// allocations; inline names (and values, see [`values::Str`]) save two
/// allocator chunks per key.
pub type Key = smallvec::SmallVec<[u8; 16]>;

/// Estimated bytes one key costs besides its name and value (table slot,
/// entry header, allocator rounding); used for `maxmemory` and INFO.
pub const KEY_OVERHEAD: usize = 64;

/// Most keys the active expiry deletes in one run; the rest wait for the
/// next run (100 ms later), so one run never holds the lock for long.
pub const EXPIRE_BATCH: usize = 2_000;

/// Milliseconds since the Unix epoch, the clock Redis expires keys by.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Entry {
    pub value: Value,
    /// Unix time in ms at which the key expires (never 0: a time already
    /// past deletes the key instead). `NonZeroU64` keeps the entry 8 bytes
    /// smaller than `Option<u64>`.
    expire: Option<NonZeroU64>,
}

impl Entry {
    pub fn expire_at(&self) -> Option<u64> {
        self.expire.map(NonZeroU64::get)
    }
}

/// A keyspace event to publish once the command is done.
pub struct Event {
    pub class: u32,
    pub event: &'static str,
    pub key: Bytes,
}

/// A client blocked in XREAD, woken by an XADD to one of its keys.
pub struct Waiter {
    pub client: u64,
    pub notify: Arc<Notify>,
}

pub struct Db {
    map: IndexMap<Key, Entry, Hasher>,
    /// (expire time, key) for every key with a TTL: active expiry takes
    /// keys from the front.
    expires: BTreeSet<(u64, Box<[u8]>)>,
    /// Estimated bytes held by keys and values.
    used: usize,
    /// Events of the running command; published after it, see [`Keyspace`].
    pub events: Vec<Event>,
    /// `notify-keyspace-events`, parsed (see [`notify`]).
    pub notify_flags: u32,
    watchers: AHashMap<Bytes, Vec<Arc<AtomicBool>>>,
    waiters: AHashMap<Bytes, Vec<Waiter>>,
    pub expired_keys: u64,
    pub hits: u64,
    pub misses: u64,
}

/// What a lookup found.
pub enum Found<'a> {
    Missing,
    Value(&'a mut Value),
}

impl Db {
    fn new(notify_flags: u32) -> Db {
        Db {
            map: IndexMap::with_hasher(Hasher::new()),
            expires: BTreeSet::new(),
            used: 0,
            events: Vec::new(),
            notify_flags,
            watchers: AHashMap::new(),
            waiters: AHashMap::new(),
            expired_keys: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn volatile_count(&self) -> usize {
        self.expires.len()
    }

    /// Deletes `key` if its time has come (lazy expiry). True if it did.
    /// `now` is read only if the key has a TTL (`None`: read the clock).
    fn expire_if_due(&mut self, key: &[u8], now: Option<u64>) -> bool {
        let due = matches!(self.map.get(key),
            Some(e) if e.expire_at().is_some_and(|t| t <= now.unwrap_or_else(now_ms)));
        self.expire_due(key, due)
    }

    fn expire_due(&mut self, key: &[u8], due: bool) -> bool {
        if due {
            if let Some((k, _)) = self.remove_entry(key) {
                self.expired_keys += 1;
                self.notify(notify::EXPIRED, "expired", &k);
            }
        }
        due
    }

    /// The live entry under `key`, after lazy expiry. One hash lookup,
    /// and the clock is read only for a key with a TTL.
    pub fn entry(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let i = self.map.get_index_of(key)?;
        let due = self
            .map
            .get_index(i)
            .and_then(|(_, e)| e.expire_at())
            .is_some_and(|t| t <= now_ms());
        if due {
            self.expire_due(key, true);
            return None;
        }
        self.map.get_index_mut(i).map(|(_, e)| e)
    }

    /// The live value under `key`.
    pub fn get(&mut self, key: &[u8]) -> Option<&mut Value> {
        self.entry(key).map(|e| &mut e.value)
    }

    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.entry(key).is_some()
    }

    /// Inserts or replaces `key`. `keep_ttl` keeps an existing expiry,
    /// otherwise the key has none afterwards.
    pub fn set(&mut self, key: &[u8], value: Value, keep_ttl: bool) {
        self.expire_if_due(key, None);
        let new_mem = value.mem();
        match self.map.get_mut(key) {
            Some(e) => {
                let old = e.value.mem();
                e.value = value;
                self.used = (self.used + new_mem).saturating_sub(old);
                if !keep_ttl {
                    if let Some(t) = e.expire.take().map(NonZeroU64::get) {
                        self.expires.remove(&(t, Box::from(key)));
                    }
                }
            }
            None => {
                let key = Key::from_slice(key);
                self.used += KEY_OVERHEAD + key.len() + new_mem;
                self.map.insert(
                    key,
                    Entry {
                        value,
                        expire: None,
                    },
                );
            }
        }
        self.touch(key);
    }

    /// Changes the value under `key` in place with `f`, keeping the memory
    /// estimate right and deleting a hash or set left empty. `None` when
    /// the key does not exist.
    pub fn modify<R>(&mut self, key: &[u8], f: impl FnOnce(&mut Value) -> R) -> Option<R> {
        let e = self.entry(key)?;
        let before = e.value.mem();
        let r = f(&mut e.value);
        let after = e.value.mem();
        let empty = e.value.is_empty_container();
        self.used = (self.used + after).saturating_sub(before);
        self.touch(key);
        if empty {
            self.remove_entry(key);
        }
        Some(r)
    }

    /// Deletes `key` (no notification). Returns the removed entry.
    pub fn remove_entry(&mut self, key: &[u8]) -> Option<(Key, Entry)> {
        let (k, e) = self.map.swap_remove_entry(key)?;
        if let Some(t) = e.expire_at() {
            self.expires.remove(&(t, Box::from(&k[..])));
        }
        self.used = self
            .used
            .saturating_sub(KEY_OVERHEAD + k.len() + e.value.mem());
        self.touch(&k);
        Some((k, e))
    }

    /// DEL: true if the key existed.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        if self.entry(key).is_none() {
            return false;
        }
        self.remove_entry(key);
        true
    }

    pub fn set_expire(&mut self, key: &[u8], at: Option<u64>) {
        if let Some(e) = self.map.get_mut(key) {
            let k: Box<[u8]> = Box::from(key);
            if let Some(t) = e.expire.take().map(NonZeroU64::get) {
                self.expires.remove(&(t, k.clone()));
            }
            e.expire = at.and_then(NonZeroU64::new);
            if let Some(t) = e.expire_at() {
                self.expires.insert((t, k));
            }
        }
    }

    /// Deletes up to `max` keys whose time has come; returns how many.
    pub fn expire_cycle(&mut self, now: u64, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some((t, key)) = self.expires.first().cloned() else {
                break;
            };
            if t > now {
                break;
            }
            self.expire_if_due(&key, Some(now));
            // A stale index entry (should not happen) must not loop forever.
            self.expires.remove(&(t, key));
            done += 1;
        }
        done
    }

    /// Every key name (KEYS and SCAN filter them); expired keys are skipped.
    pub fn key_at(&self, i: usize, now: u64) -> Option<(&[u8], &Entry)> {
        let (k, e) = self.map.get_index(i)?;
        if e.expire_at().is_some_and(|t| t <= now) {
            return None;
        }
        Some((&k[..], e))
    }

    /// Slots in the key table; SCAN's cursor counts down over them.
    pub fn slots(&self) -> usize {
        self.map.len()
    }

    pub fn flush(&mut self) {
        let keys: Vec<Bytes> = self.watchers.keys().cloned().collect();
        for k in keys {
            if self.map.contains_key(&k[..]) {
                self.touch(&k);
            }
        }
        self.map = IndexMap::with_hasher(Hasher::new());
        self.expires.clear();
        self.used = 0;
    }

    /// Queues a keyspace event if `notify-keyspace-events` asks for its class.
    pub fn notify(&mut self, class: u32, event: &'static str, key: &[u8]) {
        if self.notify_flags & class != 0
            && self.notify_flags & (notify::KEYSPACE | notify::KEYEVENT) != 0
        {
            self.events.push(Event {
                class,
                event,
                key: Bytes::copy_from_slice(key),
            });
        }
    }

    /// Marks every WATCH on `key` as broken and wakes XREADs blocked on it.
    pub fn touch(&mut self, key: &[u8]) {
        if self.watchers.is_empty() {
            return;
        }
        if let Some(list) = self.watchers.remove(key) {
            for flag in list {
                flag.store(true, Relaxed);
            }
        }
    }

    pub fn watch(&mut self, key: &Bytes, flag: &Arc<AtomicBool>) {
        let list = self.watchers.entry(key.clone()).or_default();
        if !list.iter().any(|f| Arc::ptr_eq(f, flag)) {
            list.push(flag.clone());
        }
    }

    pub fn unwatch(&mut self, key: &[u8], flag: &Arc<AtomicBool>) {
        if let Some(list) = self.watchers.get_mut(key) {
            list.retain(|f| !Arc::ptr_eq(f, flag));
            if list.is_empty() {
                self.watchers.remove(key);
            }
        }
    }

    /// Wakes every client blocked in XREAD on `key`.
    pub fn wake(&mut self, key: &[u8]) {
        if self.waiters.is_empty() {
            return;
        }
        if let Some(list) = self.waiters.get(key) {
            for w in list {
                w.notify.notify_one();
            }
        }
    }

    pub fn add_waiter(&mut self, key: &Bytes, client: u64, notify: &Arc<Notify>) {
        self.waiters.entry(key.clone()).or_default().push(Waiter {
            client,
            notify: notify.clone(),
        });
    }

    pub fn remove_waiter(&mut self, key: &[u8], client: u64) {
        if let Some(list) = self.waiters.get_mut(key) {
            list.retain(|w| w.client != client);
            if list.is_empty() {
                self.waiters.remove(key);
            }
        }
    }
}

/// The lock around [`Db`]. See the module doc for why there is one.
pub struct Keyspace {
    db: ReentrantMutex<RefCell<Db>>,
}

impl Keyspace {
    pub fn new(notify_flags: u32) -> Keyspace {
        Keyspace {
            db: ReentrantMutex::new(RefCell::new(Db::new(notify_flags))),
        }
    }

    /// Runs `f` on the keyspace; returns its result and the events it
    /// queued, for the caller to publish. Panics only if `f` itself calls
    /// back into `with` (commands never do; EXEC holds [`Keyspace::hold`]
    /// instead, which is a different guard).
    pub fn with<R>(&self, f: impl FnOnce(&mut Db) -> R) -> (R, Vec<Event>) {
        let guard = self.db.lock();
        let mut db = guard.borrow_mut();
        let r = f(&mut db);
        let events = std::mem::take(&mut db.events);
        (r, events)
    }

    /// Holds the keyspace across several commands (EXEC): other threads
    /// wait, this thread may still call [`Keyspace::with`].
    pub fn hold(&self) -> parking_lot::ReentrantMutexGuard<'_, RefCell<Db>> {
        self.db.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small key's cost is mostly its table slot: keep the slot small.
    #[test]
    fn table_slots_stay_small() {
        eprintln!(
            "Value {} Entry {} key {}",
            std::mem::size_of::<Value>(),
            std::mem::size_of::<Entry>(),
            std::mem::size_of::<Key>()
        );
        assert!(std::mem::size_of::<Value>() <= 32);
        assert!(std::mem::size_of::<Entry>() <= 40);
        assert!(std::mem::size_of::<Key>() <= 24);
    }
}
