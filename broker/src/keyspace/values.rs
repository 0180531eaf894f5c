//! The value types a key can hold, and what each is estimated to cost in
//! memory (kept up to date on every change, so `maxmemory` checks and
//! `INFO memory` are O(1)).
//!
//! Strings, hash fields and values, and set members are [`Str`]s: up to
//! 16 bytes inline, no allocation (the common case: ids, flags, counters).
//!
//! Hashes and sets keep insertion order ([`IndexMap`]/[`IndexSet`]) and
//! remember whether Redis would still hold them in its compact encodings,
//! because clients can see those encodings' order: a small hash (listpack)
//! replies in insertion order, a small all-integer set (intset) in numeric
//! order. Past those sizes Redis's order is its hash table's, which no
//! client can rely on, and ours is insertion order with holes filled.

use super::stream::Stream;
use indexmap::{IndexMap, IndexSet};

type Hasher = ahash::RandomState;

/// A string value: up to 16 bytes inside the table slot (presence flags,
/// counters, short ids), longer ones on the heap; APPEND grows it.
pub type Str = smallvec::SmallVec<[u8; 16]>;

/// Redis's `hash-max-listpack-entries` / `hash-max-listpack-value`.
const HASH_LISTPACK_ENTRIES: usize = 128;
const HASH_LISTPACK_VALUE: usize = 64;
/// Redis's `set-max-intset-entries`.
const SET_INTSET_ENTRIES: usize = 512;
/// Estimated cost of one hash field or set member besides its bytes.
const ITEM_OVERHEAD: usize = 32;

pub enum Value {
    Str(Str),
    /// Boxed, so that a string key's table slot stays small.
    Hash(Box<HashVal>),
    Set(Box<SetVal>),
    Stream(Box<Stream>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::Stream(_) => "stream",
        }
    }

    /// Estimated bytes, besides the key.
    pub fn mem(&self) -> usize {
        match self {
            Value::Str(v) if v.spilled() => v.capacity(),
            Value::Str(_) => 0,
            Value::Hash(h) => h.bytes,
            Value::Set(s) => s.bytes,
            Value::Stream(s) => s.mem(),
        }
    }

    /// Redis deletes a hash or set when its last item goes (not a stream).
    pub fn is_empty_container(&self) -> bool {
        match self {
            Value::Hash(h) => h.map.is_empty(),
            Value::Set(s) => s.set.is_empty(),
            _ => false,
        }
    }
}

pub struct HashVal {
    pub map: IndexMap<Str, Str, Hasher>,
    bytes: usize,
    /// Still small enough for Redis's listpack: insertion order is visible.
    ordered: bool,
}

impl Default for HashVal {
    fn default() -> Self {
        HashVal {
            map: IndexMap::with_hasher(Hasher::new()),
            bytes: 0,
            ordered: true,
        }
    }
}

impl HashVal {
    /// Sets a field; true if it is new.
    pub fn insert(&mut self, field: &[u8], value: &[u8]) -> bool {
        if field.len() > HASH_LISTPACK_VALUE || value.len() > HASH_LISTPACK_VALUE {
            self.ordered = false;
        }
        match self.map.get_mut(field) {
            Some(v) => {
                self.bytes = (self.bytes + value.len()).saturating_sub(v.len());
                *v = Str::from_slice(value);
                false
            }
            None => {
                self.bytes += field.len() + value.len() + ITEM_OVERHEAD;
                self.map
                    .insert(Str::from_slice(field), Str::from_slice(value));
                if self.map.len() > HASH_LISTPACK_ENTRIES {
                    self.ordered = false;
                }
                true
            }
        }
    }

    pub fn remove(&mut self, field: &[u8]) -> bool {
        let removed = if self.ordered {
            self.map.shift_remove_entry(field)
        } else {
            self.map.swap_remove_entry(field)
        };
        match removed {
            Some((f, v)) => {
                self.bytes = self.bytes.saturating_sub(f.len() + v.len() + ITEM_OVERHEAD);
                true
            }
            None => false,
        }
    }
}

pub struct SetVal {
    pub set: IndexSet<Str, Hasher>,
    bytes: usize,
    /// Every member an integer and few enough for Redis's intset: replies
    /// come in numeric order.
    intset: bool,
}

impl Default for SetVal {
    fn default() -> Self {
        SetVal {
            set: IndexSet::with_hasher(Hasher::new()),
            bytes: 0,
            intset: true,
        }
    }
}

impl SetVal {
    pub fn insert(&mut self, member: &[u8]) -> bool {
        if self.set.contains(member) {
            return false;
        }
        if crate::codec::parse_i64(member).is_none() {
            self.intset = false;
        }
        self.bytes += member.len() + ITEM_OVERHEAD;
        self.set.insert(Str::from_slice(member));
        if self.set.len() > SET_INTSET_ENTRIES {
            self.intset = false;
        }
        true
    }

    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.set.swap_remove_full(member) {
            Some((_, m)) => {
                self.bytes = self.bytes.saturating_sub(m.len() + ITEM_OVERHEAD);
                true
            }
            None => false,
        }
    }

    /// Members in the order Redis would give them.
    pub fn members(&self) -> Vec<&Str> {
        let mut out: Vec<&Str> = self.set.iter().collect();
        if self.intset {
            out.sort_by_key(|m| crate::codec::parse_i64(m).unwrap_or(0));
        }
        out
    }
}
