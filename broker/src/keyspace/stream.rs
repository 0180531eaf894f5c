//! A stream value: entries ordered by id, plus what Redis keeps beside
//! them (last generated id, entries ever added, largest deleted id), and
//! an emulation of Redis's storage nodes so that approximate trimming
//! (`MAXLEN ~`, `MINID ~`) removes exactly what Redis would.
//!
//! Redis stores a stream as listpack nodes of at most
//! `stream-node-max-entries` (100) entries, counting deleted ones, and `~`
//! trims whole nodes only. [`Stream::nodes`] records each node's first id
//! and counts; the node byte limit (4 KiB) is not emulated, so streams of
//! large entries may keep a few more entries than Redis after `~`.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Redis's `stream-node-max-entries`.
pub const NODE_MAX_ENTRIES: usize = 100;
/// Estimated bytes per entry besides its fields, and per field.
const ENTRY_OVERHEAD: usize = 48;
const FIELD_OVERHEAD: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn next(self) -> Option<StreamId> {
        if self.seq < u64::MAX {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            })
        } else if self.ms < u64::MAX {
            Some(StreamId {
                ms: self.ms + 1,
                seq: 0,
            })
        } else {
            None
        }
    }

    pub fn prev(self) -> Option<StreamId> {
        if self.seq > 0 {
            Some(StreamId {
                ms: self.ms,
                seq: self.seq - 1,
            })
        } else if self.ms > 0 {
            Some(StreamId {
                ms: self.ms - 1,
                seq: u64::MAX,
            })
        } else {
            None
        }
    }

    pub fn text(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

/// One storage node of Redis's stream: first id, live and total entries.
#[derive(Debug, Clone, Copy)]
struct Node {
    master: StreamId,
    live: usize,
    total: usize,
}

/// How a trim is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

#[derive(Default)]
pub struct Stream {
    pub entries: BTreeMap<StreamId, Box<[Bytes]>>,
    pub last_id: StreamId,
    pub entries_added: u64,
    pub max_deleted: StreamId,
    nodes: VecDeque<Node>,
    bytes: usize,
}

fn entry_mem(fields: &[Bytes]) -> usize {
    ENTRY_OVERHEAD
        + fields
            .iter()
            .map(|f| f.len() + FIELD_OVERHEAD)
            .sum::<usize>()
}

impl Stream {
    pub fn mem(&self) -> usize {
        64 + self.bytes + self.nodes.len() * 32
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Storage nodes, for XINFO's `radix-tree-keys`.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Appends an entry whose id the caller has checked is above `last_id`.
    pub fn append(&mut self, id: StreamId, fields: &[Bytes]) {
        let fields: Box<[Bytes]> = fields.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        self.bytes += entry_mem(&fields);
        self.entries.insert(id, fields);
        self.last_id = id;
        self.entries_added += 1;
        match self.nodes.back_mut() {
            Some(n) if n.total < NODE_MAX_ENTRIES => {
                n.live += 1;
                n.total += 1;
            }
            _ => self.nodes.push_back(Node {
                master: id,
                live: 1,
                total: 1,
            }),
        }
    }

    fn node_of(&self, id: StreamId) -> Option<usize> {
        let i = self.nodes.partition_point(|n| n.master <= id);
        i.checked_sub(1)
    }

    /// XDEL of one id; true if it was there.
    pub fn delete(&mut self, id: StreamId) -> bool {
        let Some(fields) = self.entries.remove(&id) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(entry_mem(&fields));
        if id > self.max_deleted {
            self.max_deleted = id;
        }
        if let Some(i) = self.node_of(id) {
            self.nodes[i].live -= 1;
            if self.nodes[i].live == 0 {
                self.nodes.remove(i);
            }
        }
        true
    }

    /// Removes entries from the head as Redis's `streamTrim` does: whole
    /// nodes while they can go, then (exact trims only) single entries.
    /// `limit` 0 means no limit. Returns how many were removed.
    pub fn trim(&mut self, how: Trim, approx: bool, limit: u64) -> u64 {
        let mut deleted = 0u64;
        while let Some(node) = self.nodes.front().copied() {
            if let Trim::MaxLen(max) = how {
                if self.entries.len() as u64 <= max {
                    break;
                }
            }
            if limit > 0 && deleted + node.live as u64 > limit {
                break;
            }
            let node_end = self.nodes.get(1).map(|n| n.master);
            let remove_node = match how {
                Trim::MaxLen(max) => self.entries.len() as u64 - node.live as u64 >= max,
                Trim::MinId(min) => {
                    let last = match node_end {
                        Some(end) => self.entries.range(..end).next_back().map(|(k, _)| *k),
                        None => self.entries.keys().next_back().copied(),
                    };
                    last.is_some_and(|l| l < min)
                }
            };
            if remove_node {
                let ids: Vec<StreamId> = match node_end {
                    Some(end) => self.entries.range(..end).map(|(k, _)| *k).collect(),
                    None => self.entries.keys().copied().collect(),
                };
                for id in ids {
                    if let Some(f) = self.entries.remove(&id) {
                        self.bytes = self.bytes.saturating_sub(entry_mem(&f));
                    }
                }
                self.nodes.pop_front();
                deleted += node.live as u64;
                continue;
            }
            if approx {
                break;
            }
            // Exact: delete single entries inside this node.
            while let Some((&id, _)) = self.entries.iter().next() {
                let stop = match how {
                    Trim::MaxLen(max) => self.entries.len() as u64 <= max,
                    Trim::MinId(min) => id >= min,
                };
                if stop || node_end.is_some_and(|end| id >= end) {
                    break;
                }
                if let Some(f) = self.entries.remove(&id) {
                    self.bytes = self.bytes.saturating_sub(entry_mem(&f));
                }
                if let Some(n) = self.nodes.front_mut() {
                    n.live -= 1;
                }
                deleted += 1;
            }
            if self.nodes.front().is_some_and(|n| n.live == 0) {
                self.nodes.pop_front();
            }
            break;
        }
        deleted
    }
}

/// Parses a stream id the way Redis's `streamGenericParseIDOrReply` does.
/// `strict` refuses `-` and `+`; `missing_seq` fills an id given as `ms`;
/// `allow_star_seq` accepts `ms-*` (XADD), returned as `seq_given = false`.
pub fn parse_id(
    arg: &[u8],
    strict: bool,
    missing_seq: u64,
    allow_star_seq: bool,
) -> Option<(StreamId, bool)> {
    if arg.len() > 127 {
        return None;
    }
    match arg {
        b"-" if !strict => return Some((StreamId::MIN, true)),
        b"+" if !strict => return Some((StreamId::MAX, true)),
        _ => {}
    }
    let (ms_part, seq_part) = match memchr::memchr(b'-', arg) {
        Some(i) => (&arg[..i], Some(&arg[i + 1..])),
        None => (arg, None),
    };
    let ms = parse_u64(ms_part)?;
    match seq_part {
        Some(b"*") if allow_star_seq => Some((StreamId { ms, seq: 0 }, false)),
        Some(seq) => Some((
            StreamId {
                ms,
                seq: parse_u64(seq)?,
            },
            true,
        )),
        None => Some((
            StreamId {
                ms,
                seq: missing_seq,
            },
            true,
        )),
    }
}

/// Redis's `string2ull`: a non-negative integer, or what `strtoull`
/// accepts (leading spaces, a sign, leading zeros) without overflow.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if let Some(v) = crate::codec::parse_i64(s) {
        return u64::try_from(v).ok();
    }
    let text = std::str::from_utf8(s).ok()?;
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = digits.parse().ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn filled(n: u64) -> Stream {
        let mut s = Stream::default();
        for i in 1..=n {
            s.append(
                id(i, 0),
                &[Bytes::from_static(b"f"), Bytes::from_static(b"v")],
            );
        }
        s
    }

    #[test]
    fn approximate_trim_removes_whole_nodes_only() {
        let mut s = filled(250);
        assert_eq!(s.trim(Trim::MaxLen(120), true, 0), 100);
        assert_eq!(s.len(), 150);
        assert_eq!(s.trim(Trim::MaxLen(10), false, 0), 140);
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn ids_parse_like_redis() {
        assert_eq!(parse_id(b"5", true, 0, false), Some((id(5, 0), true)));
        assert_eq!(parse_id(b"5-*", true, 0, true), Some((id(5, 0), false)));
        assert_eq!(parse_id(b"-", true, 0, false), None);
        assert_eq!(parse_id(b"+", false, 0, false), Some((StreamId::MAX, true)));
        assert_eq!(parse_id(b"007-1", true, 0, false), Some((id(7, 1), true)));
        assert_eq!(parse_id(b"x", true, 0, false), None);
        assert_eq!(parse_id(b"1-2-3", true, 0, false), None);
    }
}
